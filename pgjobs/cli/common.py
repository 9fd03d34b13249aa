"""What every CLI command shares: settings, connecting, and one-line user errors."""

from __future__ import annotations

import json
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any, NoReturn

import psycopg

from .. import config
from ..errors import ConfigurationError
from ..sql import Statements, statements


class UserError(Exception):
    """A mistake the user can fix: printed as one line on stderr, exit code 2."""


def fail(message: str) -> NoReturn:
    """Abort the command with a one-line user error."""
    raise UserError(message)


@dataclass
class Settings:
    """Global options, resolved lazily (the embedded server starts only when needed)."""

    database_url: str | None = None
    schema: str | None = None

    def url(self) -> str:
        return config.resolve_database_url(self.database_url)

    def resolved_schema(self) -> str:
        return config.resolve_schema(self.schema)

    def sql(self) -> Statements:
        return statements(self.resolved_schema())


SETTINGS = Settings()


@contextmanager
def connect(*, autocommit: bool = False) -> Iterator[psycopg.Connection[Any]]:
    """A connection to the configured database, with connection errors made readable."""
    url = SETTINGS.url()
    try:
        conn = psycopg.connect(url, autocommit=autocommit, connect_timeout=10)
    except psycopg.Error as exc:
        fail(describe_connect_error(exc, url))
    with conn:
        yield conn


def describe_connect_error(exc: BaseException, url: str) -> str:
    """One line: what failed (password redacted) and what to check."""
    first = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
    first = config.redact_text(first, url)
    if isinstance(exc, psycopg.ProgrammingError):
        return (
            f"invalid database URL {config.redact_url(url)!r}: {first}; "
            "use postgresql://user:password@host:port/dbname"
        )
    return (
        f"cannot connect to {config.redact_url(url)}: {first}; check PGJOBS_DATABASE_URL "
        "(or DATABASE_URL) and that PostgreSQL is running"
    )


def parse_json_object(text: str, option: str) -> dict[str, Any]:
    """Parse ``--args``-style JSON that must be an object."""
    try:
        value = json.loads(text, parse_constant=_reject_constant)
    except ValueError as exc:
        if not isinstance(exc, json.JSONDecodeError):
            fail(f"{option} is not valid JSON ({exc})")
        fail(f"{option} is not valid JSON ({exc.msg} at line {exc.lineno} column {exc.colno})")
    if not isinstance(value, dict):
        fail(f"{option} must be a JSON object of keyword arguments, like '{{\"key\": 1}}'")
    return value


def _first_line(exc: BaseException) -> str:
    return config.redact_text((str(exc).strip().splitlines() or [type(exc).__name__])[0],
                              SETTINGS.database_url)


def _is_connection_error(exc: psycopg.Error) -> bool:
    sqlstate = getattr(exc, "sqlstate", None)
    return sqlstate is None or sqlstate.startswith("08") or sqlstate in CONNECTION_SQLSTATES


CONNECTION_SQLSTATES = {"57P01", "57P02", "57P03", "53300"}


def _reject_constant(name: str) -> Any:
    # Python's json accepts NaN/Infinity; JSON (and PostgreSQL's jsonb) do not.
    raise ValueError(f"{name} is not a JSON value")


def report_error(exc: BaseException) -> int:
    """Print a user error as one line; return the exit code (2), or re-raise."""
    if isinstance(exc, UserError | ConfigurationError):
        message = str(exc)
    elif isinstance(exc, psycopg.errors.InsufficientPrivilege):
        message = (f"permission denied: {_first_line(exc)}; run this command as a role with "
                   "the needed grants (see `pgjobs roles grant`)")
    elif isinstance(exc, psycopg.OperationalError) and not _is_connection_error(exc):
        message = f"the database refused the operation: {_first_line(exc)}"
    elif isinstance(exc, psycopg.OperationalError):
        message = describe_connect_error(exc, SETTINGS.database_url or "")
    else:
        raise exc
    print(f"pgjobs: error: {message}", file=sys.stderr)
    return 2

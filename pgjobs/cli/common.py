"""What every CLI command shares: settings, connecting, and one-line user errors."""

from __future__ import annotations

import json
import re
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any, NoReturn

import psycopg

from .. import config
from ..config import describe_connect_error
from ..errors import ConfigurationError, SchemaMissingError
from ..sql import Statements, statements

__all__ = [
    "SETTINGS",
    "Settings",
    "UserError",
    "connect",
    "describe_connect_error",
    "fail",
    "parse_duration",
    "parse_json_object",
    "report_error",
]


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
def connect(*, autocommit: bool = False,
            url: str | None = None) -> Iterator[psycopg.Connection[Any]]:
    """A connection to ``url`` (default: the configured database), with connection errors
    made readable."""
    url = url or SETTINGS.url()
    try:
        conn = psycopg.connect(url, autocommit=autocommit, connect_timeout=10)
    except psycopg.Error as exc:
        fail(describe_connect_error(exc, url))
    with conn:
        yield conn


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


_DURATION = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([smhdw]?)\s*$")
_UNIT_SECONDS = {"": 1, "s": 1, "m": 60, "h": 3600, "d": 86400, "w": 604800}


def parse_duration(text: str, option: str) -> float:
    """``90``, ``90s``, ``15m``, ``12h``, ``7d``, ``2w`` → seconds; ``option`` names the
    option in the error."""
    match = _DURATION.match(text.lower())
    if not match:
        fail(f"{option} must be a duration like 90s, 15m, 12h or 7d; got {text!r}")
    return float(match.group(1)) * _UNIT_SECONDS[match.group(2)]


def _first_line(exc: BaseException) -> str:
    return config.redact_text((str(exc).strip().splitlines() or [type(exc).__name__])[0],
                              _url_for_messages())


def _url_for_messages() -> str:
    """The URL the command used, for error messages (never starts the embedded server)."""
    if SETTINGS.database_url:
        return SETTINGS.database_url
    try:
        return config.url_from_environment() or ""
    except ConfigurationError:
        return ""


def _is_connection_error(exc: psycopg.Error) -> bool:
    sqlstate = getattr(exc, "sqlstate", None)
    return sqlstate is None or sqlstate.startswith("08") or sqlstate in CONNECTION_SQLSTATES


CONNECTION_SQLSTATES = {"57P01", "57P02", "57P03", "53300"}


def _reject_constant(name: str) -> Any:
    # Python's json accepts NaN/Infinity; JSON (and PostgreSQL's jsonb) do not.
    raise ValueError(f"{name} is not a JSON value")


# The pgjobs tables (or schema) are missing: the database was never migrated here.
_SCHEMA_MISSING = (psycopg.errors.UndefinedTable, psycopg.errors.InvalidSchemaName)
# A table exists but lacks what this version expects: migrated by an older pgjobs.
_SCHEMA_OUTDATED = (psycopg.errors.UndefinedColumn, psycopg.errors.UndefinedFunction)


def _schema_name() -> str:
    try:
        return SETTINGS.resolved_schema()
    except ConfigurationError:
        return config.DEFAULT_SCHEMA


def _unwrap(exc: BaseException) -> BaseException:
    """The psycopg error inside a SQLAlchemy one (Alembic runs through SQLAlchemy)."""
    orig = getattr(exc, "orig", None)
    if type(exc).__module__.startswith("sqlalchemy") and isinstance(orig, BaseException):
        return orig
    return exc


def report_error(exc: BaseException) -> int:
    """Print a user error as one line; return the exit code (2), or re-raise."""
    original, exc = exc, _unwrap(exc)
    if isinstance(exc, _SCHEMA_MISSING):
        exc = SchemaMissingError(_schema_name())
    if isinstance(exc, UserError | ConfigurationError):
        message = str(exc)
    elif isinstance(exc, _SCHEMA_OUTDATED):
        message = (f"pgjobs schema {_schema_name()!r} is older than this version of pgjobs "
                   f"({_first_line(exc)}): run `pgjobs migrate`")
    elif isinstance(exc, psycopg.errors.InsufficientPrivilege):
        message = (f"permission denied: {_first_line(exc)}; run this command as a role with "
                   "the needed grants (see `pgjobs roles grant`)")
    elif isinstance(exc, psycopg.OperationalError) and not _is_connection_error(exc):
        message = f"the database refused the operation: {_first_line(exc)}"
    elif isinstance(exc, psycopg.OperationalError):
        message = describe_connect_error(exc, _url_for_messages())
    else:
        raise original
    print(f"pgjobs: error: {message}", file=sys.stderr)
    return 2

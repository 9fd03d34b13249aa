"""Where the database is and which schema pgjobs owns: environment, defaults, redaction."""

from __future__ import annotations

import logging
import os
import re
import sys
from pathlib import Path

import psycopg

from .errors import ConfigurationError

DEFAULT_SCHEMA = "pgjobs"
DEFAULT_QUEUE = "default"
DEFAULT_MAX_ATTEMPTS = 5
#: Where the embedded server keeps its data, relative to the current directory.
EMBEDDED_DIR_NAME = ".pgjobs"

#: What to install for the embedded server (named in every "no database" message).
EMBEDDED_EXTRA = "pgjobs[embedded]"

_URL_ENV_VARS = ("PGJOBS_DATABASE_URL", "DATABASE_URL")
# SQLAlchemy-style URLs name a driver (postgresql+psycopg://); libpq does not accept that.
_DRIVER_SUFFIX = re.compile(r"^(postgres(?:ql)?)\+[a-z0-9_]+://", re.IGNORECASE)
_URL_SCHEME = re.compile(r"^([a-z][a-z0-9+.-]*)://", re.IGNORECASE)
_POSTGRES_SCHEMES = {"postgres", "postgresql"}
_URL_FORM = "postgresql://user:password@host:port/dbname"
_logger = logging.getLogger(__name__)
# URLs this process got from the embedded fallback (see is_embedded_url).
_embedded_urls: set[str] = set()
_PASSWORD_IN_URL = re.compile(r"(://[^:/@]*:)([^@]*)(@)")
_PASSWORD_PARAM = re.compile(r"(password=)([^&\s]*)", re.IGNORECASE)


def normalize_url(url: str, source: str = "the database URL") -> str:
    """Turn a SQLAlchemy URL (``postgresql+psycopg://``) into a libpq one.

    Raises :class:`ConfigurationError` for a URL of another database (``mysql://…``),
    naming ``source`` (where the URL came from). libpq's ``key=value`` strings pass.
    """
    url = url.strip()
    scheme = _URL_SCHEME.match(url)
    if scheme and scheme.group(1).split("+", 1)[0].lower() not in _POSTGRES_SCHEMES:
        raise ConfigurationError(
            f"{source} {redact_url(url)!r} is not a PostgreSQL URL: use {_URL_FORM}"
        )
    return _DRIVER_SUFFIX.sub(r"\1://", url)


def describe_connect_error(exc: BaseException, url: str) -> str:
    """One line for a failed connection: what failed (password redacted), what to check."""
    first = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
    first = redact_text(first, url)
    if isinstance(exc, psycopg.ProgrammingError):
        return f"invalid database URL {redact_url(url)!r}: {first}; use {_URL_FORM}"
    return (
        f"cannot connect to {redact_url(url)}: {first}; check PGJOBS_DATABASE_URL "
        "(or DATABASE_URL) and that PostgreSQL is running"
    )


def redact_url(url: str) -> str:
    """Hide the password of a URL so it can be logged or shown in an error."""
    return _PASSWORD_PARAM.sub(r"\1***", _PASSWORD_IN_URL.sub(r"\1***\3", url))


def redact_text(text: str, url: str | None) -> str:
    """Remove ``url``'s password from free text (e.g. a driver's error message)."""
    text = _PASSWORD_PARAM.sub(r"\1***", _PASSWORD_IN_URL.sub(r"\1***\3", text))
    if url:
        match = _PASSWORD_IN_URL.search(url)
        if match and match.group(2):
            text = text.replace(match.group(2), "***")
    return text


def url_from_environment() -> str | None:
    """The URL in ``PGJOBS_DATABASE_URL``, else ``DATABASE_URL``, else ``None``."""
    for name in _URL_ENV_VARS:
        value = os.environ.get(name, "").strip()
        if value:
            return normalize_url(value, name)
    return None


def resolve_database_url(explicit: str | None = None, *, announce: bool = True) -> str:
    """The URL to use: ``explicit``, the environment, or the embedded server.

    The embedded server (data in ``./.pgjobs/``, the ``pgjobs[embedded]`` extra) is
    started on first use and reused by later processes; using it is announced on stderr
    and, where logging is configured (``pgjobs work``), logged as a WARNING. Without the
    extra, :class:`ConfigurationError` says which variable to set or what to install.
    """
    if explicit:
        return normalize_url(explicit)
    from_env = url_from_environment()
    if from_env:
        return from_env
    from .embedded import EmbeddedServerError, embedded_available, embedded_database_url

    if not embedded_available():
        raise ConfigurationError(
            "no database configured: set PGJOBS_DATABASE_URL (or DATABASE_URL) to a "
            f"PostgreSQL URL, or `pip install '{EMBEDDED_EXTRA}'` for a private development "
            "PostgreSQL in ./.pgjobs"
        )
    data_dir = Path.cwd() / EMBEDDED_DIR_NAME
    try:
        url = embedded_database_url(data_dir)
    except EmbeddedServerError as exc:
        raise ConfigurationError(str(exc)) from exc
    if announce:
        print(
            f"pgjobs: no PGJOBS_DATABASE_URL or DATABASE_URL set; using the embedded "
            f"PostgreSQL in {data_dir} (stop it with `pgjobs server stop`)",
            file=sys.stderr,
        )
    _embedded_urls.add(url)
    if logging.getLogger("pgjobs").hasHandlers():
        # Only where the program configured logging (pgjobs work does): an operator
        # reading a worker's log must see that it serves a throwaway database.
        _logger.warning(
            "serving a private development database (the embedded PostgreSQL in %s), not "
            "for production: set PGJOBS_DATABASE_URL", data_dir)
    return url


def is_embedded_url(url: str) -> bool:
    """Whether ``url`` is the embedded server this process fell back to."""
    return url in _embedded_urls


def resolve_schema(explicit: str | None = None) -> str:
    """The schema pgjobs lives in: ``explicit``, ``PGJOBS_SCHEMA``, else ``pgjobs``."""
    schema = explicit if explicit is not None else os.environ.get("PGJOBS_SCHEMA", DEFAULT_SCHEMA)
    validate_schema(schema)
    return schema


def validate_schema(schema: str) -> None:
    """Reject schema names PostgreSQL would silently truncate or refuse."""
    if not schema or "\x00" in schema:
        raise ConfigurationError("schema name must be a non-empty string without NUL bytes")
    if "%" in schema or ":" in schema:
        # Composed statements still pass through placeholder parsing (psycopg's %s,
        # SQLAlchemy's :name in migrations), which quoting does not protect.
        raise ConfigurationError(
            f"schema name {schema!r} contains '%' or ':', which pgjobs does not support; "
            "choose another PGJOBS_SCHEMA"
        )
    if len(schema.encode()) > 50:
        # 63 bytes is PostgreSQL's identifier limit; keep room for derived names.
        raise ConfigurationError(
            f"schema name {schema!r} is too long: use at most 50 bytes (PGJOBS_SCHEMA)"
        )

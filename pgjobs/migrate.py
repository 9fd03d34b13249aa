"""Schema management with Alembic: `pgjobs migrate` and the helpers migrations use.

pgjobs keeps its own version table, ``<schema>.pgjobs_alembic_version``, so it never
collides with an application's own Alembic history: run ``pgjobs migrate`` (or call
:func:`upgrade`) as its own deploy step, before or after the application's migrations.
"""

from __future__ import annotations

import io
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TextIO

import psycopg
from psycopg import sql

from .config import resolve_database_url, resolve_schema

VERSION_TABLE = "pgjobs_alembic_version"

_current_schema: str | None = None


def script_location() -> Path:
    """The directory holding env.py and versions/.

    Installed: the package ``pgjobs.migrations``. From a checkout (editable install): the
    top-level ``alembic/`` directory, which is that same package's source.
    """
    here = Path(__file__).resolve().parent
    for candidate in (here / "migrations", here.parent / "alembic"):
        if (candidate / "env.py").is_file():
            return candidate
    raise RuntimeError(  # a broken installation, not a user error
        f"pgjobs migration scripts not found next to {here}; reinstall pgjobs"
    )


def ddl(template: str) -> str:
    """A DDL template with ``{schema}`` replaced by the quoted migration schema."""
    if _current_schema is None:
        raise RuntimeError("ddl() is only usable while pgjobs migrations run")
    composed = sql.SQL(template).format(schema=sql.Identifier(_current_schema))  # type: ignore[arg-type]
    return composed.as_string(None)


def run_ddl(statements: list[str]) -> None:
    """Run DDL templates (``{schema}`` placeholders) in the current migration."""
    from alembic import op

    for statement in statements:
        op.execute(ddl(statement))


@dataclass
class EnvironmentSettings:
    """What env.py needs: the schema and (online) a SQLAlchemy connection."""

    schema: str
    connection: Any | None


def configure_environment(config: Any) -> EnvironmentSettings:
    """Called by env.py: settle the schema and connection for this Alembic run."""
    global _current_schema
    from alembic import context

    schema = config.attributes.get("pgjobs_schema") or resolve_schema()
    _current_schema = schema
    connection = config.attributes.get("connection")
    if connection is None and not context.is_offline_mode():
        # Plain `alembic upgrade head` from a checkout: same URL rules as pgjobs.
        engine = _engine(resolve_database_url())
        connection = engine.connect()
        config.attributes["connection"] = connection
        config.attributes["close_connection"] = True
    return EnvironmentSettings(schema=schema, connection=connection)


def _engine(database_url: str) -> Any:
    from sqlalchemy import create_engine
    from sqlalchemy.pool import NullPool

    # creator= accepts any libpq URL or key=value string, which SQLAlchemy's parser does not.
    return create_engine(
        "postgresql+psycopg://",
        creator=lambda: psycopg.connect(database_url),
        poolclass=NullPool,
    )


def _alembic_config(schema: str) -> Any:
    from alembic.config import Config

    config = Config()
    config.set_main_option("script_location", str(script_location()))
    config.attributes["pgjobs_schema"] = schema
    return config


def upgrade(database_url: str | None = None, schema: str | None = None) -> None:
    """Create or upgrade the pgjobs schema to the newest revision. Idempotent."""
    from alembic import command

    schema = resolve_schema(schema)
    config = _alembic_config(schema)
    engine = _engine(resolve_database_url(database_url))
    try:
        with engine.begin() as connection:
            config.attributes["connection"] = connection
            command.upgrade(config, "head")
    finally:
        engine.dispose()


def upgrade_sql(schema: str | None = None, out: TextIO | None = None) -> str:
    """The SQL :func:`upgrade` would run on an empty database; touches nothing."""
    from alembic import command

    schema = resolve_schema(schema)
    config = _alembic_config(schema)
    buffer = io.StringIO()
    config.output_buffer = buffer
    command.upgrade(config, "head", sql=True)
    text = buffer.getvalue()
    if out is not None:
        out.write(text)
    return text


def current_revision(conn: psycopg.Connection[Any], schema: str) -> str | None:
    """The schema's Alembic revision, or ``None`` when pgjobs was never migrated there."""
    table = sql.Identifier(schema, VERSION_TABLE)
    exists = conn.execute(
        "SELECT to_regclass(%s) IS NOT NULL", [table.as_string(conn)]
    ).fetchone()
    if not exists or not exists[0]:
        return None
    row = conn.execute(sql.SQL("SELECT version_num FROM {}").format(table)).fetchone()
    return row[0] if row else None


def head_revision() -> str:
    """The newest revision shipped with this version of pgjobs."""
    from alembic.script import ScriptDirectory

    return ScriptDirectory(str(script_location())).get_current_head() or ""


if __name__ == "__main__":  # pragma: no cover - debugging aid
    upgrade_sql(out=sys.stdout)

"""Alembic environment for pgjobs' schema (used by `pgjobs migrate` and by `alembic`)."""

from __future__ import annotations

from alembic import context
from pgjobs.migrate import VERSION_TABLE, configure_environment, ddl

config = context.config
settings = configure_environment(config)
schema = settings.schema

_options = {
    "version_table": VERSION_TABLE,
    "version_table_schema": schema,
    "include_schemas": False,
    "transaction_per_migration": False,
}


def run_offline() -> None:
    """`pgjobs migrate --sql`: print the SQL, touch nothing."""
    context.configure(
        dialect_name="postgresql",
        literal_binds=True,
        **_options,
    )
    with context.begin_transaction():
        # The version table lives in our schema, so the schema must exist first.
        context.execute(ddl("CREATE SCHEMA IF NOT EXISTS {schema}"))
        context.run_migrations()


def run_online() -> None:
    connection = settings.connection
    assert connection is not None
    context.configure(connection=connection, **_options)
    with context.begin_transaction():
        # Serialise concurrent `pgjobs migrate` runs (e.g. several workers starting).
        context.execute("SELECT pg_advisory_xact_lock(8731000042)")
        context.execute(ddl("CREATE SCHEMA IF NOT EXISTS {schema}"))
        context.run_migrations()


if context.is_offline_mode():
    run_offline()
else:
    run_online()

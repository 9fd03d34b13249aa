"""`pgjobs migrate`: create or upgrade the pgjobs schema."""

from __future__ import annotations

import sys
from typing import Annotated

import typer

from .. import migrate as migrations
from .common import SETTINGS, connect


def migrate(
    sql: Annotated[
        bool, typer.Option("--sql", help="Print the SQL instead of running it.")
    ] = False,
) -> None:
    """Create or upgrade the pgjobs schema (Alembic; idempotent)."""
    schema = SETTINGS.resolved_schema()
    if sql:
        migrations.upgrade_sql(schema, out=sys.stdout)
        return
    url = SETTINGS.url()
    with connect(url=url):  # a clear error for a bad URL or unreachable server
        pass
    migrations.upgrade(url, schema)
    print(f"pgjobs schema {schema!r} is at revision {migrations.head_revision()}",
          file=sys.stderr)

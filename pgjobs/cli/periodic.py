"""`pgjobs periodic …`: the registered cron schedules, and running one now.

Reads ``<schema>.cron_schedules`` (written by workers when they start): no App import.
"""

from __future__ import annotations

import datetime as dt
import json
from typing import Annotated, Any

import typer

from .. import periodic_store, tables
from ..errors import QueueFull
from .common import SETTINGS, connect, fail

periodic_cli = typer.Typer(
    help="Cron schedules of periodic jobs (registered by workers when they start).",
    no_args_is_help=True,
)


def _iso(value: Any) -> Any:
    return value.isoformat() if isinstance(value, dt.datetime) else value


@periodic_cli.command("list")
def list_(
    as_json: Annotated[bool, typer.Option("--json", help="A JSON array, for machines.")] = False,
) -> None:
    """List schedules: cron, time zone, active, last tick, next tick (database clock)."""
    with connect(autocommit=True) as conn:
        rows = periodic_store.list_schedules(conn, SETTINGS.sql())
    if as_json:
        # name, cron, timezone, active, last_tick, next_tick first (the contract), then more.
        print(json.dumps([{k: _iso(v) for k, v in row.items()} for row in rows]))
        return
    tables.print_renderable(tables.periodic_table(rows))  # as wide as needed when piped


@periodic_cli.command("run")
def run(
    name: Annotated[str, typer.Argument(help="Schedule name (see `pgjobs periodic list`).")],
) -> None:
    """Enqueue one job of a schedule now, outside its tick series; prints the job id."""
    from ..app import App

    app = App(SETTINGS.url(), schema=SETTINGS.resolved_schema())
    with connect() as conn:
        try:
            job_id = periodic_store.run_now(conn, app, name)
        except QueueFull as exc:
            fail(str(exc))
        conn.commit()
    print(job_id)

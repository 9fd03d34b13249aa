"""`pgjobs stats`: per-queue counts, recent throughput and the workers serving them."""

from __future__ import annotations

import json
import sys
import time
from typing import Annotated, Any

import psycopg
import typer

from .. import admin, tables
from .common import SETTINGS, connect


def stats(
    as_json: Annotated[bool, typer.Option("--json", help="One JSON object, for machines.")] = False,
    watch: Annotated[bool, typer.Option("--watch", help="Refresh live until Ctrl-C.")] = False,
    interval: Annotated[float, typer.Option(
        help="Seconds between --watch refreshes.", min=0.2)] = 2.0,
) -> None:
    """Per-queue counts and the workers serving them.

    Columns: pending, scheduled, running, dead, oldest pending age, jobs succeeded and
    failed in the last 60 seconds (ok/min, fail/min), and the pending limit.
    """
    with connect(autocommit=True) as conn:
        rows, workers = _read(conn)
        if as_json:
            print(json.dumps({"queues": rows, "workers": [_jsonable(w) for w in workers]}))
            return
        if not watch:
            tables.print_renderable(tables.stats_renderable(rows, workers))
            return
        _watch(conn, rows, workers, interval)


def _read(conn: psycopg.Connection[Any]) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    sql = SETTINGS.sql()
    return admin.queue_report(conn, sql), admin.worker_status(conn, sql)


def _watch(conn: psycopg.Connection[Any], rows: list[dict[str, Any]],
           workers: list[dict[str, Any]], interval: float) -> None:
    """Redraw in place on a terminal; elsewhere (a pipe, a log) print each refresh."""
    from rich.console import Console
    from rich.live import Live

    console = Console()
    try:
        if not console.is_terminal:
            while True:
                tables.print_renderable(tables.stats_renderable(rows, workers), console)
                sys.stdout.flush()
                time.sleep(interval)
                rows, workers = _read(conn)
        with Live(tables.stats_renderable(rows, workers), console=console,
                  auto_refresh=False) as live:
            while True:
                time.sleep(interval)
                rows, workers = _read(conn)
                live.update(tables.stats_renderable(rows, workers), refresh=True)
    except KeyboardInterrupt:
        pass


def _jsonable(row: dict[str, Any]) -> dict[str, Any]:
    return {k: v.isoformat() if hasattr(v, "isoformat") else v for k, v in row.items()}

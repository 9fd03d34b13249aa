"""The `pgjobs` command line (Typer). Commands are thin layers over the Python API."""

from __future__ import annotations

import json
import sys
import time
from typing import Annotated, Any

import psycopg
import typer
from psycopg import errors as pg_errors

from .. import admin
from .. import migrate as migrations
from ..errors import QueueFull, SchemaMissingError
from ..payload import DEFAULT_MAX_ARGS_BYTES, dump_args
from ..task import (
    MAX_UNIQUE_KEY_LENGTH,
    JobSpec,
    validate_delay,
    validate_max_attempts,
    validate_priority,
    validate_queue,
    validate_task_name,
)
from .common import SETTINGS, UserError, connect, fail, parse_json_object, report_error

cli = typer.Typer(
    name="pgjobs",
    help="Transactional background jobs on PostgreSQL.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    add_completion=False,
)
queues_cli = typer.Typer(help="Per-queue settings shared by every process.", no_args_is_help=True)
cli.add_typer(queues_cli, name="queues")


@cli.callback()
def _global(
    database_url: Annotated[
        str | None,
        typer.Option(
            "--database-url",
            help="PostgreSQL URL. Default: PGJOBS_DATABASE_URL, else DATABASE_URL, "
            "else the embedded server in ./.pgjobs/.",
            show_default=False,
        ),
    ] = None,
    schema: Annotated[
        str | None,
        typer.Option("--schema", help="Schema of the pgjobs tables. Default: PGJOBS_SCHEMA, "
                     "else 'pgjobs'.", show_default=False),
    ] = None,
) -> None:
    SETTINGS.database_url = database_url
    SETTINGS.schema = schema


def _guard_schema(exc: BaseException) -> None:
    if isinstance(exc, pg_errors.UndefinedTable | pg_errors.InvalidSchemaName):
        raise SchemaMissingError(SETTINGS.resolved_schema()) from exc


@cli.command()
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
    with connect():  # a clear error for a bad URL or unreachable server
        pass
    migrations.upgrade(url, schema)
    print(f"pgjobs schema {schema!r} is at revision {migrations.head_revision()}",
          file=sys.stderr)


@cli.command()
def enqueue(
    task: Annotated[str, typer.Argument(help="Task name, as registered (<module>.<function> "
                                              "unless name= was given).")],
    args: Annotated[str, typer.Option("--args", help="Keyword arguments as a JSON object.")] = "{}",
    queue: Annotated[str, typer.Option(help="Queue to put the job on.")] = "default",
    delay: Annotated[float, typer.Option(help="Seconds before the job may run.")] = 0.0,
    priority: Annotated[int, typer.Option(help="Higher runs first (smallint).")] = 0,
    max_attempts: Annotated[int, typer.Option(help="Attempts before dead letters.")] = 5,
    unique_key: Annotated[
        str | None, typer.Option(help="Skip if a live job holds this key.", show_default=False)
    ] = None,
) -> None:
    """Enqueue a job by task name (no import needed) and print its id."""
    kwargs = parse_json_object(args, "--args")
    try:
        validate_task_name(task)
        if unique_key is not None:
            if not unique_key or len(unique_key) > MAX_UNIQUE_KEY_LENGTH:
                raise ValueError(f"--unique-key must be 1 to {MAX_UNIQUE_KEY_LENGTH} characters")
        spec = JobSpec(
            task=task,
            queue=validate_queue(queue),
            args_json=dump_args(task, kwargs, DEFAULT_MAX_ARGS_BYTES),
            priority=validate_priority(priority),
            delay=validate_delay(delay),
            unique_key=unique_key,
            max_attempts=validate_max_attempts(max_attempts),
        )
    except (TypeError, ValueError) as exc:
        fail(str(exc))
    from ..app import App

    app = App(SETTINGS.url(), schema=SETTINGS.resolved_schema())
    with connect() as conn:
        try:
            job_id = app._enqueuer.enqueue_one(conn, spec)
        except QueueFull as exc:
            fail(str(exc))
        conn.commit()
    print(job_id)


@cli.command()
def stats(
    as_json: Annotated[bool, typer.Option("--json", help="One JSON object, for machines.")] = False,
    watch: Annotated[bool, typer.Option("--watch", help="Refresh live until Ctrl-C.")] = False,
    interval: Annotated[float, typer.Option(help="Seconds between --watch refreshes.")] = 2.0,
) -> None:
    """Per-queue counts (pending, scheduled, running, dead, oldest age, throughput, limit)
    and the workers serving them."""
    with connect(autocommit=True) as conn:
        try:
            rows = admin.queue_report(conn, SETTINGS.sql())
            workers = admin.worker_status(conn, SETTINGS.sql())
        except psycopg.Error as exc:
            _guard_schema(exc)
            raise
        if as_json:
            print(json.dumps({"queues": rows, "workers": [_jsonable(w) for w in workers]}))
            return
        if not watch:
            _print_stats_table(rows, workers)
            return
        _watch(conn, rows, workers, interval)


def _watch(conn: psycopg.Connection[Any], rows: list[dict[str, Any]],
           workers: list[dict[str, Any]], interval: float) -> None:
    """Redraw in place on a terminal; elsewhere (a pipe, a log) print each refresh."""
    from rich.console import Console
    from rich.live import Live

    console = Console()
    try:
        if not console.is_terminal:
            while True:
                console.print(_stats_renderable(rows, workers))
                sys.stdout.flush()
                time.sleep(max(0.2, interval))
                rows = admin.queue_report(conn, SETTINGS.sql())
                workers = admin.worker_status(conn, SETTINGS.sql())
        with Live(_stats_renderable(rows, workers), console=console, auto_refresh=False) as live:
            while True:
                time.sleep(max(0.2, interval))
                rows = admin.queue_report(conn, SETTINGS.sql())
                workers = admin.worker_status(conn, SETTINGS.sql())
                live.update(_stats_renderable(rows, workers), refresh=True)
    except KeyboardInterrupt:
        pass


def _jsonable(row: dict[str, Any]) -> dict[str, Any]:
    return {k: v.isoformat() if hasattr(v, "isoformat") else v for k, v in row.items()}


def _print_stats_table(rows: list[dict[str, Any]],
                       workers: list[dict[str, Any]] | None = None) -> None:
    from rich.console import Console

    Console().print(_stats_renderable(rows, workers))


def _stats_renderable(rows: list[dict[str, Any]], workers: list[dict[str, Any]] | None) -> Any:
    from rich.console import Group
    from rich.table import Table

    table = Table(title=f"pgjobs queues — {time.strftime('%H:%M:%S')}")
    # Short headers: the table must fit an 80-column terminal.
    for column in ("queue", "pending", "sched", "run", "dead", "oldest", "ok/min", "fail/min",
                   "limit"):
        table.add_column(column, justify="left" if column == "queue" else "right",
                         no_wrap=column == "queue")
    for r in rows:
        age = r["oldest_pending_age_seconds"]
        limit = r["limit"]
        if limit is None:
            full = "-"
        elif limit == 0:
            full = "0 (closed)"
        else:
            used = (r["pending"] + r["scheduled"]) / limit
            colour = "red" if used >= 0.8 else "yellow" if used >= 0.5 else "green"
            full = f"{limit} [{colour}]{100 * used:.0f}%[/]"
        table.add_row(
            r["queue"], str(r["pending"]), str(r["scheduled"]), str(r["running"]),
            str(r["dead"]), "-" if age is None else f"{age:.1f}s",
            str(r.get("succeeded_last_minute", "-")), str(r.get("failed_last_minute", "-")),
            full,
        )
    if not rows:
        table.caption = "no queues yet: enqueue a job or set a limit"
    if workers is None:
        return table
    wtable = Table(title="workers")
    for column in ("worker", "queues", "busy", "in hand", "since", "last heartbeat", "alive"):
        wtable.add_column(column)
    for w in workers:
        wtable.add_row(
            w["id"], ",".join(w["queues"]) if w["queues"] else "all",
            f"{w['executors_busy']}/{w['concurrency']}", str(w["jobs_in_hand"]),
            w["started_at"].strftime("%H:%M:%S"), w["last_heartbeat_at"].strftime("%H:%M:%S"),
            "[green]yes[/]" if w["alive"] else "[red]no[/]",
        )
    if not workers:
        wtable.caption = "no worker has registered: start `pgjobs work APP`"
    return Group(table, wtable)


@queues_cli.command("limit")
def queues_limit(
    queue: Annotated[str, typer.Argument(help="Queue name.")],
    limit: Annotated[str, typer.Argument(help="Max pending jobs, or 'none' to remove the limit.")],
) -> None:
    """Set a queue's pending-count limit (enqueue raises QueueFull at it)."""
    value: int | None
    if limit.strip().lower() in {"none", "unlimited", "off"}:
        value = None
    else:
        try:
            value = int(limit)
        except ValueError:
            fail(f"limit must be a whole number >= 0 or 'none', got {limit!r}")
        if value < 0:
            fail(f"limit must be >= 0 (or 'none'), got {value}")
    try:
        validate_queue(queue)
    except ValueError as exc:
        fail(str(exc))
    with connect() as conn:
        try:
            admin.set_queue_limit(conn, SETTINGS.sql(), queue, value)
        except psycopg.Error as exc:
            _guard_schema(exc)
            raise
        conn.commit()
    print(f"queue {queue!r}: pending limit {'none (unlimited)' if value is None else value}")


def main() -> None:
    """Entry point of the `pgjobs` script."""
    from . import extra  # noqa: F401  registers the commands defined in other modules

    try:
        cli()
    except (UserError, Exception) as exc:
        sys.exit(report_error(exc))

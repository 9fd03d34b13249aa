"""`pgjobs dead-letters …`: inspect and act on permanent failures."""

from __future__ import annotations

import datetime as dt
import json
import re
from typing import Annotated, Any

import typer

from .. import admin
from .common import SETTINGS, connect, fail
from .main import cli

dead_cli = typer.Typer(help="Inspect and act on permanent failures.", no_args_is_help=True)
cli.add_typer(dead_cli, name="dead-letters")

_DURATION = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([smhdw]?)\s*$")
_UNIT_SECONDS = {"": 1, "s": 1, "m": 60, "h": 3600, "d": 86400, "w": 604800}


def parse_duration(text: str) -> float:
    """``90``, ``90s``, ``15m``, ``12h``, ``7d``, ``2w`` → seconds."""
    match = _DURATION.match(text.lower())
    if not match:
        fail(f"--older-than must be a duration like 90s, 15m, 12h or 7d; got {text!r}")
    return float(match.group(1)) * _UNIT_SECONDS[match.group(2)]


def _jsonable(row: dict[str, Any]) -> dict[str, Any]:
    return {k: v.isoformat() if isinstance(v, dt.datetime) else v for k, v in row.items()}


@dead_cli.command("list")
def list_(
    as_json: Annotated[bool, typer.Option("--json", help="A JSON array, for machines.")] = False,
    queue: Annotated[str | None, typer.Option(help="Only this queue.", show_default=False)] = None,
    task: Annotated[str | None, typer.Option(help="Only this task.", show_default=False)] = None,
    limit: Annotated[int, typer.Option(help="At most this many rows.")] = 100,
) -> None:
    """List dead letters, oldest first."""
    with connect(autocommit=True) as conn:
        rows = admin.list_dead_letters(conn, SETTINGS.sql(), queue=queue, task=task,
                                       limit=limit)
    if as_json:
        print(json.dumps([_jsonable(r) for r in rows]))
        return
    from rich.console import Console
    from rich.table import Table

    table = Table(title="pgjobs dead letters")
    for column in ("id", "job", "queue", "task", "attempts", "failed at", "error"):
        table.add_column(column, overflow="fold")
    for r in rows:
        first_line = (r["error"].splitlines() or [""])[0]
        table.add_row(str(r["id"]), str(r["job_id"]), r["queue"], r["task"],
                      f"{r['attempts']}/{r['max_attempts']}",
                      r["failed_at"].strftime("%Y-%m-%d %H:%M:%S"), first_line[:120])
    if not rows:
        table.caption = "no dead letters"
    Console().print(table)


@dead_cli.command()
def show(
    dead_letter_id: Annotated[int, typer.Argument(metavar="ID", help="dead_letters.id")],
    as_json: Annotated[bool, typer.Option("--json", help="One JSON object.")] = False,
) -> None:
    """Show one dead letter in full, with its error and traceback."""
    with connect(autocommit=True) as conn:
        row = admin.get_dead_letter(conn, SETTINGS.sql(), dead_letter_id)
    if row is None:
        fail(f"no dead letter with id {dead_letter_id} (see `pgjobs dead-letters list`)")
    if as_json:
        print(json.dumps(_jsonable(row)))
        return
    for key in admin.DEAD_LETTER_FIELDS:
        if key != "error":
            value = json.dumps(row[key]) if key == "args" else row[key]
            print(f"{key:>12}: {value}")
    print(f"{'error':>12}:\n{row['error']}")


@dead_cli.command()
def requeue(
    ids: Annotated[list[int] | None, typer.Argument(
        metavar="ID...", help="dead_letters ids to requeue.", show_default=False)] = None,
    all_: Annotated[bool, typer.Option("--all", help="Every dead letter (with --task: "
                                       "every one of that task).")] = False,
    task: Annotated[str | None, typer.Option(help="With --all: only this task.",
                                             show_default=False)] = None,
    queue: Annotated[str | None, typer.Option(help="With --all: only this queue.",
                                              show_default=False)] = None,
) -> None:
    """Put dead letters back in their queue as fresh jobs (attempts 0); prints new job ids."""
    if bool(ids) == all_:
        fail("give dead-letter IDs or --all (not both)")
    if (task or queue) and not all_:
        fail("--task and --queue only apply with --all")
    with connect() as conn:
        pairs = admin.requeue_dead_letters(conn, SETTINGS.sql(), ids=ids or None, task=task,
                                           queue=queue)
        if ids:
            missing = sorted(set(ids) - {p[0] for p in pairs})
            if missing:
                conn.rollback()
                fail(f"no dead letter with id {', '.join(map(str, missing))}; nothing requeued")
        conn.commit()
    for _, job_id in pairs:
        print(job_id)


@dead_cli.command()
def purge(
    yes: Annotated[bool, typer.Option("--yes", help="Really delete.")] = False,
    older_than: Annotated[str | None, typer.Option(
        help="Only those that failed longer ago than this (90s, 15m, 12h, 7d).",
        show_default=False)] = None,
    queue: Annotated[str | None, typer.Option(help="Only this queue.", show_default=False)] = None,
    task: Annotated[str | None, typer.Option(help="Only this task.", show_default=False)] = None,
) -> None:
    """Delete dead letters for good (asks for --yes)."""
    seconds = parse_duration(older_than) if older_than else None
    with connect() as conn:
        if not yes:
            n = admin.count_dead_letters(conn, SETTINGS.sql(), older_than=seconds, queue=queue,
                                         task=task)
            fail(f"purge would delete {n} dead letter(s) for good; re-run with --yes")
        deleted = admin.purge_dead_letters(conn, SETTINGS.sql(), older_than=seconds,
                                           queue=queue, task=task)
        conn.commit()
    print(f"deleted {deleted} dead letter(s)")

"""`pgjobs dead-letters …`: inspect and act on permanent failures."""

from __future__ import annotations

import datetime as dt
import json
from typing import Annotated, Any

import typer

from .. import admin, tables
from .common import SETTINGS, connect, fail, parse_duration

dead_cli = typer.Typer(help="Inspect and act on permanent failures.", no_args_is_help=True)


def _jsonable(row: dict[str, Any]) -> dict[str, Any]:
    return {k: v.isoformat() if isinstance(v, dt.datetime) else v for k, v in row.items()}


@dead_cli.command("list")
def list_(
    as_json: Annotated[bool, typer.Option("--json", help="A JSON array, for machines.")] = False,
    queue: Annotated[str | None, typer.Option(help="Only this queue.", show_default=False)] = None,
    task: Annotated[str | None, typer.Option(help="Only this task.", show_default=False)] = None,
    limit: Annotated[int, typer.Option(help="At most this many rows.", min=1)] = 100,
) -> None:
    """List dead letters, oldest first."""
    with connect(autocommit=True) as conn:
        rows = admin.list_dead_letters(conn, SETTINGS.sql(), queue=queue, task=task,
                                       limit=limit)
    if as_json:
        print(json.dumps([_jsonable(r) for r in rows]))
        return
    tables.print_renderable(tables.dead_letters_table(rows))


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
    seconds = parse_duration(older_than, "--older-than") if older_than else None
    with connect() as conn:
        if not yes:
            n = admin.count_dead_letters(conn, SETTINGS.sql(), older_than=seconds, queue=queue,
                                         task=task)
            fail(f"purge would delete {n} dead letter(s) for good; re-run with --yes")
        deleted = admin.purge_dead_letters(conn, SETTINGS.sql(), older_than=seconds,
                                           queue=queue, task=task)
        conn.commit()
    print(f"deleted {deleted} dead letter(s)")

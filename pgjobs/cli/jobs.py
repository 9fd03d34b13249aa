"""`pgjobs jobs …`: look jobs up and cancel them."""

from __future__ import annotations

import json
from typing import Annotated, Any

import typer

from ..jobinfo import STATES
from ..lifecycle import cancel
from ..store import JobStore
from .common import SETTINGS, connect, fail

jobs_cli = typer.Typer(help="Look jobs up (live, dead, cancelled, kept results) and cancel "
                       "them.", no_args_is_help=True)

MAX_LIMIT = 1000


@jobs_cli.command("list")
def jobs_list(
    queue: Annotated[str | None, typer.Option(help="Only this queue.")] = None,
    task: Annotated[str | None, typer.Option(help="Only this task.")] = None,
    state: Annotated[str | None, typer.Option(
        help=f"Only this state: {', '.join(STATES)}.")] = None,
    before: Annotated[int | None, typer.Option(
        help="Jobs with a smaller id than this (the next page: the last id shown).")] = None,
    limit: Annotated[int, typer.Option(help=f"At most this many (<= {MAX_LIMIT}).")] = 50,
    as_json: Annotated[bool, typer.Option("--json", help="A JSON array, for machines.")] = False,
) -> None:
    """Jobs, newest first (keyset pages: --before the last id shown).

    Each page reads a bounded window of ids per table, so a rare filter may show fewer
    rows than --limit: page on with --before.
    """
    if state is not None and state not in STATES:
        fail(f"unknown state {state!r}: use one of {', '.join(STATES)}")
    if not 1 <= limit <= MAX_LIMIT:
        fail(f"--limit must be between 1 and {MAX_LIMIT}, got {limit}")
    with connect(autocommit=True) as conn:
        rows = JobStore(SETTINGS.sql()).list_jobs(conn, queue=queue, task=task, state=state,
                                                  before=before, limit=limit)
    if as_json:
        print(json.dumps([r.to_json() for r in rows]))
        return
    if not rows:
        print("no jobs match")
        return
    for r in rows:
        print(f"{r.id:>10}  {r.state:<9}  {r.queue:<16}  {r.task:<28}  "
              f"attempts {r.attempts}/{r.max_attempts}  {_short(r.args)}")
    if len(rows) == limit:
        print(f"more: pgjobs jobs list --before {rows[-1].id}")


@jobs_cli.command("show")
def jobs_show(job_id: Annotated[int, typer.Argument(help="The job id.")]) -> None:
    """Everything known about one job, as JSON."""
    with connect(autocommit=True) as conn:
        row = JobStore(SETTINGS.sql()).get_job(conn, job_id)
    if row is None:
        fail(f"no job {job_id}: not live, not in dead_letters, and no kept result (succeeded "
             "jobs are kept only with result_ttl)")
    print(json.dumps(row.to_json(), indent=2))


@jobs_cli.command("cancel")
def jobs_cancel(
    job_ids: Annotated[list[int], typer.Argument(help="Job ids.", show_default=False)],
) -> None:
    """Cancel jobs: pending ones never run; running ones are asked to stop.

    Prints one line per job: cancelled, cancelling, or not live (finished or unknown).
    Exits 1 if any id was not a live job.
    """
    missing = 0
    with connect() as conn:
        outcomes = [(job_id, cancel(conn, SETTINGS.sql(), job_id)) for job_id in job_ids]
        conn.commit()
    for job_id, outcome in outcomes:
        if outcome is None:
            missing += 1
            print(f"job {job_id}: not a live job (already finished, or no such job)")
        else:
            print(f"job {job_id}: {outcome}")
    if missing:
        raise typer.Exit(1)


def _short(args: Any) -> str:
    text = json.dumps(args)
    return text if len(text) <= 60 else text[:57] + "..."


__all__ = ["jobs_cli"]

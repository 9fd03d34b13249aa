"""Every table pgjobs prints (``pgjobs stats``, ``dead-letters list``, ``pgjobs demo``).

Cells are rich markup; every value that comes from the database (queue and task names,
worker ids, error text) is escaped, so an error saying ``[Errno 111]`` or ``[/]`` prints
as written instead of being taken for markup (or failing the whole table).

One module, so the demo shows exactly what the commands show. Tables are built from the
plain dicts of :mod:`pgjobs.admin` and printed with :func:`print_renderable`, which keeps
headers whole: on a terminal no column is squeezed below its header, and into a pipe or a
file the table is as wide as it needs to be (rich would otherwise assume 80 columns and
truncate headers with "…").
"""

from __future__ import annotations

import datetime as dt
import time
from collections.abc import Iterable, Sequence
from typing import Any

from rich.console import Console, Group, RenderableType
from rich.markup import escape
from rich.measure import Measurement
from rich.table import Table

QUEUE_COLUMNS = ("queue", "pending", "sched", "run", "dead", "oldest", "ok/min", "fail/min",
                 "limit")
WORKER_COLUMNS = ("worker", "queues", "busy", "in hand", "since", "last heartbeat", "alive")
DEAD_LETTER_COLUMNS = ("id", "job", "queue", "task", "attempts", "failed at", "error")

# A pipe has no width; wide enough for any table we print, so nothing wraps.
_UNBOUNDED = 10_000


def _table(title: str | None, columns: Sequence[str], *, right: Iterable[str] = ()) -> Table:
    table = Table(title=title)
    right_aligned = set(right)
    for column in columns:
        # min_width: a squeezed column wraps its cells, never truncates its header.
        table.add_column(column, justify="right" if column in right_aligned else "left",
                         min_width=len(column))
    return table


def queues_table(rows: Sequence[dict[str, Any]], *, title: str | None = None) -> Table:
    """Per-queue counts from :func:`pgjobs.admin.queue_report` (or ``queue_stats``)."""
    table = _table(title or f"pgjobs queues — {time.strftime('%H:%M:%S')}", QUEUE_COLUMNS,
                   right=QUEUE_COLUMNS[1:])
    for r in rows:
        r = {**r, "queue": escape(r["queue"])}  # names are data: "[/]" must not be markup
        age = r["oldest_pending_age_seconds"]
        table.add_row(
            # a paused queue (pgjobs queues pause) says so next to its name
            r["queue"] + (" [yellow](paused)[/]" if r.get("paused") else ""),
            str(r["pending"]), str(r["scheduled"]), str(r["running"]),
            str(r["dead"]), "-" if age is None else f"{age:.1f}s",
            _count(r.get("succeeded_last_minute")), _count(r.get("failed_last_minute")),
            _limit(r),
        )
    if not rows:
        table.caption = "no queues yet: enqueue a job or set a limit"
    return table


def workers_table(workers: Sequence[dict[str, Any]]) -> Table:
    """Registered workers from :func:`pgjobs.admin.worker_status`."""
    table = _table("workers", WORKER_COLUMNS)
    for w in workers:
        table.add_row(
            escape(w["id"]), escape(",".join(w["queues"])) if w["queues"] else "all",
            f"{w['executors_busy']}/{w['concurrency']}", str(w["jobs_in_hand"]),
            clock(w["started_at"]), clock(w["last_heartbeat_at"]),
            "[green]yes[/]" if w["alive"] else "[red]no[/]",
        )
    if not workers:
        table.caption = "no worker has registered: start `pgjobs work APP`"
    return table


def stats_renderable(rows: Sequence[dict[str, Any]],
                     workers: Sequence[dict[str, Any]] | None = None) -> RenderableType:
    """What ``pgjobs stats`` prints: the queues table, then the workers table if given."""
    queues = queues_table(rows)
    return queues if workers is None else Group(queues, workers_table(workers))


def dead_letters_table(rows: Sequence[dict[str, Any]], *, title: str = "pgjobs dead letters",
                       error_width: int = 120) -> Table:
    """Dead letters from :func:`pgjobs.admin.list_dead_letters`: the error's first line."""
    table = _table(title, DEAD_LETTER_COLUMNS, right=("id", "job", "attempts"))
    for r in rows:
        first_line = (r["error"].splitlines() or [""])[0]
        table.add_row(str(r["id"]), str(r["job_id"]), escape(r["queue"]), escape(r["task"]),
                      f"{r['attempts']}/{r['max_attempts']}", clock(r["failed_at"], full=True),
                      escape(first_line[:error_width]))
    if not rows:
        table.caption = "no dead letters"
    return table


PERIODIC_COLUMNS = ("name", "cron", "timezone", "active", "last tick", "outcome", "next tick",
                    "task", "queue")


def periodic_table(rows: Sequence[dict[str, Any]]) -> Table:
    """Cron schedules from :func:`pgjobs.periodic_store.list_schedules` (ticks in UTC)."""
    table = _table("pgjobs periodic schedules", PERIODIC_COLUMNS)
    for r in rows:
        table.add_row(
            escape(r["name"]), escape(r["cron"]), escape(r["timezone"]),
            "yes" if r["active"] else "[dim]no[/]", utc_clock(r["last_tick"]),
            escape(r["last_outcome"] or "-"), utc_clock(r["next_tick"]), escape(r["task"]),
            escape(r["queue"]),
        )
    if not rows:
        table.caption = ("no schedules registered: define them with @app.periodic and start "
                         "`pgjobs work`")
    return table


def progress_table(title: str, counts: dict[str, Any]) -> Table:
    """One row of named counts (the demo's live view)."""
    table = _table(title, tuple(counts), right=tuple(counts))
    table.add_row(*(str(v) for v in counts.values()))
    return table


def print_renderable(renderable: RenderableType, console: Console | None = None) -> None:
    """Print a table whole: into a pipe or file, as wide as it needs (headers intact)."""
    console = console or Console()
    if not console.is_terminal:
        needed = Measurement.get(console, console.options.update_width(_UNBOUNDED),
                                 renderable).maximum
        if needed > console.width:
            console = Console(width=needed, file=console.file, color_system=None)
    console.print(renderable)


def clock(moment: dt.datetime | None, *, full: bool = False) -> str:
    """A timestamp in local time: ``HH:MM:SS`` today, with the date otherwise (or ``full``)."""
    if moment is None:
        return "-"
    local = moment.astimezone() if moment.tzinfo is not None else moment
    if full or local.date() != dt.date.today():
        return local.strftime("%Y-%m-%d %H:%M:%S")
    return local.strftime("%H:%M:%S")


def utc_clock(moment: dt.datetime | None) -> str:
    """A timestamp in UTC, ``2026-12-03 18:00:00Z`` (schedule ticks, whose zone varies)."""
    return "-" if moment is None else moment.astimezone(dt.UTC).strftime("%Y-%m-%d %H:%M:%SZ")


def _count(value: Any) -> str:
    return "-" if value is None else str(value)


def _limit(row: dict[str, Any]) -> str:
    limit = row["limit"]
    if limit is None:
        return "-"
    if limit == 0:
        return "0 (closed)"
    used = (row["pending"] + row["scheduled"]) / limit
    colour = "red" if used >= 0.8 else "yellow" if used >= 0.5 else "green"
    return f"{limit} [{colour}]{100 * used:.0f}%[/]"

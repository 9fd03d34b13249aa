"""Operator actions shared by the CLI and the Python API: limits, stats, dead letters."""

from __future__ import annotations

from dataclasses import asdict
from typing import Any

from . import sql as S
from .connection import raw_connection
from .sql import Statements
from .store import JobStore
from .task import validate_queue


def set_queue_limit(conn: Any, sql: Statements, queue: str, limit: int | None) -> None:
    """Store ``queue``'s pending limit (shared by every process).

    ``None`` stores "unlimited" explicitly, which also overrides an App's default limit.
    """
    validate_queue(queue)
    if limit is not None and (isinstance(limit, bool) or limit < 0):
        raise ValueError(f"a queue limit must be an integer >= 0, got {limit!r}")
    pgconn = raw_connection(conn)
    pgconn.execute(sql.of(S.SET_QUEUE_LIMIT), {"queue": queue, "limit": limit})


def set_queue_paused(conn: Any, sql: Statements, queue: str, paused: bool) -> None:
    """Pause or resume ``queue`` (stored in ``queues``; resuming wakes the workers)."""
    validate_queue(queue)
    JobStore(sql).set_queue_paused(raw_connection(conn), queue, bool(paused))


def queue_list(conn: Any, sql: Statements) -> list[dict[str, Any]]:
    """``pgjobs queues list``: one dict per queue (name, limit, paused, pending, running)."""
    return [asdict(r) for r in JobStore(sql).queue_list(raw_connection(conn))]


def queue_stats(conn: Any, sql: Statements) -> list[dict[str, Any]]:
    """One dict per queue, in the layout of ``pgjobs stats --json``."""
    return [asdict(r) for r in JobStore(sql).queue_stats(raw_connection(conn))]


def queue_report(conn: Any, sql: Statements) -> list[dict[str, Any]]:
    """:func:`queue_stats` plus last minute's throughput and how full each queue is."""
    rows = queue_stats(conn, sql)
    recent = JobStore(sql).recent_throughput(raw_connection(conn))
    for row in rows:
        succeeded, failed = recent.get(row["queue"], (0, 0))
        row["succeeded_last_minute"] = succeeded
        row["failed_last_minute"] = failed
        limit = row["limit"]
        held = row["pending"] + row["scheduled"]
        row["limit_used"] = None if not limit else round(held / limit, 4)
    return rows


def worker_status(conn: Any, sql: Statements) -> list[dict[str, Any]]:
    """Registered workers (alive or not), oldest first."""
    return [asdict(r) for r in JobStore(sql).worker_status(raw_connection(conn))]


DEAD_LETTER_FIELDS = (
    "id", "job_id", "queue", "task", "args", "priority", "attempts", "max_attempts", "error",
    "created_at", "failed_at", "reason",
)


def list_dead_letters(
    conn: Any, sql: Statements, *, queue: str | None = None, task: str | None = None,
    limit: int = 100,
) -> list[dict[str, Any]]:
    """Dead letters, oldest first, optionally filtered by queue and task."""
    rows = JobStore(sql).list_dead_letters(raw_connection(conn), queue=queue, task=task,
                                           limit=limit)
    return [asdict(r) for r in rows]


def get_dead_letter(conn: Any, sql: Statements, dead_letter_id: int) -> dict[str, Any] | None:
    """One dead letter by ``dead_letters.id``."""
    row = JobStore(sql).get_dead_letter(raw_connection(conn), dead_letter_id)
    return asdict(row) if row else None


def requeue_dead_letters(
    conn: Any, sql: Statements, *, ids: list[int] | None = None, task: str | None = None,
    queue: str | None = None,
) -> list[tuple[int, int]]:
    """Move dead letters back to ``jobs`` as fresh pending jobs (attempts 0).

    ``ids=None`` means every dead letter matching ``task``/``queue``. Returns
    ``(dead_letter_id, new_job_id)`` pairs. Runs in ``conn``'s transaction; queue limits
    do not apply (an operator's decision). Listeners are woken at commit.
    """
    pgconn = raw_connection(conn)
    rows = pgconn.execute(
        sql.of(S.REQUEUE_DEAD_LETTERS), {"ids": ids, "task": task, "queue": queue}
    ).fetchall()
    pairs = [(int(r[0]), int(r[1])) for r in rows]
    if pairs:
        pgconn.execute(
            sql.of(S.NOTIFY_JOB_QUEUES), {"channel": sql.channel, "ids": [p[1] for p in pairs]}
        )
    return pairs


def purge_dead_letters(
    conn: Any, sql: Statements, *, older_than: float | None = None, queue: str | None = None,
    task: str | None = None,
) -> int:
    """Delete dead letters (older than ``older_than`` seconds, if given); returns the count."""
    cur = raw_connection(conn).execute(
        sql.of(S.PURGE_DEAD_LETTERS), {"older_than": older_than, "queue": queue, "task": task}
    )
    return cur.rowcount


def count_dead_letters(
    conn: Any, sql: Statements, *, older_than: float | None = None, queue: str | None = None,
    task: str | None = None,
) -> int:
    """How many dead letters :func:`purge_dead_letters` would delete."""
    row = raw_connection(conn).execute(
        sql.of(S.COUNT_DEAD_LETTERS), {"older_than": older_than, "queue": queue, "task": task}
    ).fetchone()
    return int(row[0]) if row else 0

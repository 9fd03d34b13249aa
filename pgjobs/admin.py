"""Operator actions shared by the CLI and the Python API: limits, stats, dead letters."""

from __future__ import annotations

from typing import Any

from .connection import raw_connection
from .sql import Statements
from .task import validate_queue


def set_queue_limit(conn: Any, sql: Statements, queue: str, limit: int | None) -> None:
    """Store ``queue``'s pending limit (shared by every process).

    ``None`` stores "unlimited" explicitly, which also overrides an App's default limit.
    """
    validate_queue(queue)
    if limit is not None and (isinstance(limit, bool) or limit < 0):
        raise ValueError(f"a queue limit must be an integer >= 0, got {limit!r}")
    pgconn = raw_connection(conn)
    pgconn.execute(sql.SET_QUEUE_LIMIT, {"queue": queue, "limit": limit})


def queue_stats(conn: Any, sql: Statements) -> list[dict[str, Any]]:
    """One dict per queue, in the layout of ``pgjobs stats --json``."""
    pgconn = raw_connection(conn)
    rows = pgconn.execute(sql.QUEUE_STATS).fetchall()
    return [
        {
            "queue": r[0],
            "pending": r[1],
            "scheduled": r[2],
            "running": r[3],
            "dead": r[4],
            "oldest_pending_age_seconds": r[5],
            "limit": r[6],
        }
        for r in rows
    ]

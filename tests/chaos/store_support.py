"""Claims and completions for chaos tests, through the worker's own typed store.

Tests that drive the statements by hand call :class:`pgjobs.store.JobStore` exactly as
the worker does, so a statement that gains parameters (the lifecycle's snoozes, cancels
and kept results) changes these tests by itself instead of breaking their hand-written
parameter dictionaries.
"""

from __future__ import annotations

import datetime as dt
import uuid
from collections.abc import Sequence
from typing import Any

import psycopg

import pgjobs
from pgjobs.store import ClaimedJob, JobStore, Written

Conn = psycopg.Connection[Any]
Claimed = ClaimedJob | tuple[int, uuid.UUID | str]


def store(app: pgjobs.App) -> JobStore:
    """The app schema's store; nothing prepared (tests share one connection freely)."""
    return JobStore(app.sql, prepare=False)


def claim(conn: Conn, app: pgjobs.App, *, queues: Sequence[str] | None = None,
          limit: int = 1000, lease_seconds: float = 30.0, worker_id: str = "chaos",
          now: dt.datetime | None = None) -> list[ClaimedJob]:
    """Claim like a worker (all queues when ``queues`` is None)."""
    return store(app).claim(conn, limit=limit, lease_seconds=lease_seconds,
                            worker_id=worker_id, queues=queues, now=now)


def held(job_id: int, token: uuid.UUID | str) -> ClaimedJob:
    """A claim known only by id and lease token: all a completion's guard looks at."""
    return ClaimedJob(id=job_id, queue="", task="", args=None, priority=0, attempt=0,
                      max_attempts=0, due_epoch=0.0,
                      created_at=dt.datetime(2000, 1, 1, tzinfo=dt.UTC), token=str(token),
                      trace_context=None)


def _job(job: Claimed) -> ClaimedJob:
    return job if isinstance(job, ClaimedJob) else held(*job)


def complete(conn: Conn, app: pgjobs.App, *, ok: Sequence[Claimed] = (),
             retry: Sequence[tuple[Claimed, float, str]] = (),
             dead: Sequence[tuple[Claimed, str]] = (),
             durations: Sequence[tuple[int, float]] = (),
             now: dt.datetime | None = None) -> Written:
    """One completion flush, as the completer writes it."""
    return store(app).complete(
        conn, succeeded=[_job(j) for j in ok],
        retried=[(_job(j), delay, error) for j, delay, error in retry],
        dead=[(_job(j), error) for j, error in dead], durations=durations, now=now)


def bury(conn: Conn, app: pgjobs.App, n: int, error: str = "E: boom") -> list[ClaimedJob]:
    """Claim up to ``n`` jobs and move them to dead_letters, as a worker would."""
    jobs = claim(conn, app, limit=n, worker_id="w")
    complete(conn, app, dead=[(j, error) for j in jobs])
    return jobs

"""Periodic schedules in the database: registration, the once-per-tick decision, listing.

Every function takes the connection to use and the composed statements; none commits
anything it did not open a transaction for itself.
"""

from __future__ import annotations

import datetime as dt
import time
from collections.abc import Iterable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import psycopg
from psycopg.rows import args_row

from . import cron as cronlib
from . import sql as S
from .errors import ConfigurationError
from .periodic import Schedule
from .sql import Statements
from .task import JobSpec

if TYPE_CHECKING:
    from .app import App

#: What happened to a tick this process looked at.
ENQUEUED = "enqueued"  # its job was inserted
SKIPPED = "skipped"  # its queue was at its pending limit: recorded, never retried
MISSED = "missed"  # seen more than max_delay after its time: recorded, not enqueued
TAKEN = "taken"  # another worker decided it (or it predates the schedule): nothing done


@dataclass(frozen=True)
class TickResult:
    """The decision about one tick of one schedule, as seen by this process."""

    schedule: str
    tick: dt.datetime
    outcome: str
    job_id: int | None = None
    lag: float = 0.0
    """Seconds from the tick time to the commit of the decision."""
    queue: str | None = None
    pending: int | None = None
    limit: int | None = None


def server_now(conn: psycopg.Connection[Any], sql: Statements,
               now: dt.datetime | None = None) -> dt.datetime:
    """The database's clock (or ``now`` when a test injects one)."""
    row = conn.execute(sql.of(S.PERIODIC_NOW), {"now": now}).fetchone()
    assert row is not None
    value: dt.datetime = row[0]
    return value


def register(conn: psycopg.Connection[Any], sql: Statements, schedules: Iterable[Schedule],
             now: dt.datetime | None = None) -> list[str]:
    """Upsert ``schedules`` (active) and mark every other schedule inactive, in one
    transaction; returns the names marked inactive."""
    ordered = sorted(schedules, key=lambda s: s.name)  # same lock order in every worker
    with conn.transaction():
        current = server_now(conn, sql, now)
        for schedule in ordered:
            conn.execute(sql.of(S.PERIODIC_REGISTER), {
                "name": schedule.name, "cron": schedule.expression,
                "timezone": schedule.timezone, "args": schedule.args_json,
                "task": schedule.task, "queue": schedule.queue,
                "priority": schedule.priority, "max_attempts": schedule.max_attempts,
                "max_delay": schedule.max_delay,
                "next_tick": schedule.cron.next_after(current), "now": now,
            })
        rows = conn.execute(sql.of(S.PERIODIC_DEACTIVATE_OTHERS), {
            "names": [s.name for s in ordered], "now": now,
        }).fetchall()
    return sorted(r[0] for r in rows)


def decide_tick(conn: psycopg.Connection[Any], sql: Statements, schedule: Schedule,
                tick: dt.datetime, now: dt.datetime, *,
                default_limit: int | None = None) -> TickResult:
    """Enqueue ``tick`` of ``schedule`` unless another worker already did; exactly once.

    The high-water mark moves by compare-and-set in the same transaction as the job
    insert: the first transaction to move it gets the tick, the others get
    :data:`TAKEN`. A tick more than ``max_delay`` old is recorded as :data:`MISSED`, one
    meeting a full queue as :data:`SKIPPED` (both move the mark: neither is retried).
    """
    started = time.monotonic()
    late = (now - tick).total_seconds()
    outcome = MISSED if late > schedule.max_delay else ENQUEUED
    with conn.transaction():
        claimed = conn.execute(sql.of(S.PERIODIC_CLAIM_TICK), {
            "name": schedule.name, "tick": tick, "outcome": outcome,
            "next_tick": schedule.cron.next_after(now), "now": now,
        }).fetchone()
        if claimed is None:
            return TickResult(schedule.name, tick, TAKEN)
        task, queue, args_json, priority, max_attempts = claimed
        if outcome == MISSED:
            return TickResult(schedule.name, tick, MISSED, lag=late, queue=queue)
        row = conn.execute(sql.of(S.PERIODIC_ENQUEUE_TICK), {
            "name": schedule.name, "tick": tick, "task": task, "queue": queue,
            "args": args_json, "priority": priority, "max_attempts": max_attempts,
            "default_limit": default_limit, "channel": sql.channel,
        }).fetchone()
        assert row is not None
    job_id, pending, limit = row[0], row[1], row[2]
    lag = late + (time.monotonic() - started)
    if job_id is None:
        return TickResult(schedule.name, tick, SKIPPED, lag=lag, queue=queue,
                          pending=pending, limit=limit)
    return TickResult(schedule.name, tick, ENQUEUED, job_id=int(job_id), lag=lag,
                      queue=queue)


@dataclass(frozen=True)
class ScheduleRow:
    """One row of ``PERIODIC_LIST`` (columns in ``SELECT`` order)."""

    name: str
    cron: str
    timezone: str
    args: Any
    task: str
    queue: str
    priority: int
    max_attempts: int
    max_delay_seconds: float | None
    active: bool
    last_tick: dt.datetime | None
    last_outcome: str | None
    last_job_id: int | None
    ticks_enqueued: int
    ticks_skipped: int
    ticks_missed: int
    registered_at: dt.datetime


@dataclass(frozen=True)
class StoredSchedule:
    """One row of ``PERIODIC_GET``: what :func:`run_now` enqueues (``args`` as JSON text)."""

    name: str
    cron: str
    timezone: str
    args_json: str
    task: str
    queue: str
    priority: int
    max_attempts: int
    active: bool


def list_schedules(conn: psycopg.Connection[Any], sql: Statements,
                   now: dt.datetime | None = None) -> list[dict[str, Any]]:
    """Every registered schedule with its ``next_tick`` computed from the database clock
    (``None`` for inactive schedules: no worker defines them any more)."""
    current = server_now(conn, sql, now)
    result = []
    with conn.cursor(row_factory=args_row(ScheduleRow)) as cur:
        rows = cur.execute(sql.of(S.PERIODIC_LIST)).fetchall()
    for row in rows:
        next_tick = None
        if row.active:
            try:
                next_tick = cronlib.parse(row.cron, row.timezone).next_after(current)
            except cronlib.CronError:  # written by a newer or older pgjobs: show no guess
                next_tick = None
        result.append({
            "name": row.name, "cron": row.cron, "timezone": row.timezone,
            "active": row.active, "last_tick": row.last_tick, "next_tick": next_tick,
            "task": row.task, "queue": row.queue, "args": row.args,
            "priority": row.priority, "max_attempts": row.max_attempts,
            "max_delay_seconds": row.max_delay_seconds, "last_outcome": row.last_outcome,
            "last_job_id": row.last_job_id, "ticks_enqueued": row.ticks_enqueued,
            "ticks_skipped": row.ticks_skipped, "ticks_missed": row.ticks_missed,
            "registered_at": row.registered_at,
        })
    return result


def run_now(conn: psycopg.Connection[Any], app: App, name: str) -> int:
    """Enqueue one job of the registered schedule ``name`` now, outside its tick series
    (the high-water mark is untouched), in ``conn``'s transaction; returns the job id.

    Works for inactive schedules too (an operator's explicit request). Raises
    :class:`ConfigurationError` for an unknown schedule and :class:`pgjobs.QueueFull`
    when its queue is at its pending limit.
    """
    with conn.cursor(row_factory=args_row(StoredSchedule)) as cur:
        row = cur.execute(app.sql.of(S.PERIODIC_GET), {"name": name}).fetchone()
    if row is None:
        raise ConfigurationError(
            f"no periodic schedule named {name!r}: see `pgjobs periodic list` (schedules are "
            "registered when a worker of their App starts)")
    spec = JobSpec(task=row.task, queue=row.queue, args_json=row.args_json,
                   priority=row.priority, max_attempts=row.max_attempts)
    return app._enqueuer.enqueue_one(conn, spec)

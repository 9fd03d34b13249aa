"""An App with coroutine (``async def``) and sync handlers, for tests/test_async_handlers.py.

Handlers record what they see in the test schema's ``executions`` table (created by the
tests) as ``phase`` texts the tests parse.
"""

from __future__ import annotations

import asyncio
import os
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from psycopg import sql

import pgjobs

app = pgjobs.App()

_lock = threading.Lock()
_in_flight = 0  # jobs of either kind running in this process now
_lent = 0  # async connections lent now


def _insert() -> sql.Composed:
    return sql.SQL("INSERT INTO {} (job_id, attempt, phase, pid) VALUES (%s, %s, %s, %s)"
                   ).format(sql.Identifier(app.schema, "executions"))


async def _record(phase: str) -> None:
    job = pgjobs.current_job()
    async with job.aconnection() as conn:
        await conn.execute(_insert(), [job.id, job.attempt, phase, os.getpid()])


def _record_sync(phase: str) -> None:
    job = pgjobs.current_job()
    with job.connection() as conn:
        conn.execute(_insert(), [job.id, job.attempt, phase, os.getpid()])


@contextmanager
def _running() -> Iterator[int]:
    """Counts this job as in flight; yields how many are (this one included)."""
    global _in_flight
    with _lock:
        _in_flight += 1
        now = _in_flight
    try:
        yield now
    finally:
        with _lock:
            _in_flight -= 1


@app.task(name="a.ok", result_ttl=3600)
async def ok(x: int) -> dict[str, Any]:
    """current_job() before and after awaits, and in tasks it gathers."""
    before = pgjobs.current_job().id

    async def child() -> int:
        await asyncio.sleep(0)
        return pgjobs.current_job().id

    await asyncio.sleep(0.01)
    ids = await asyncio.gather(child(), child(), asyncio.create_task(child()))
    after = pgjobs.current_job().id
    await _record("ids " + " ".join(str(i) for i in [before, after, *ids]))
    return {"double": 2 * x}


@app.task(name="a.mixed_async")
async def mixed_async(seconds: float) -> None:
    with _running() as now:
        await _record(f"inflight {now}")
        await asyncio.sleep(seconds)


@app.task(name="a.mixed_sync")
def mixed_sync(seconds: float) -> None:
    with _running() as now:
        _record_sync(f"inflight {now}")
        time.sleep(seconds)


@app.task(name="a.hold_conn")
async def hold_conn(seconds: float) -> None:
    """Holds an async connection; records how many are lent and what the server sees."""
    global _lent
    job = pgjobs.current_job()
    async with job.aconnection() as conn:
        with _lock:
            _lent += 1
            lent = _lent
        try:
            cur = await conn.execute(
                "SELECT count(*) FROM pg_stat_activity "
                "WHERE application_name = current_setting('application_name')")
            row = await cur.fetchone()
            assert row is not None
            await conn.execute(_insert(), [
                job.id, job.attempt,
                f"lent {lent} server {row[0]} prepare {conn.prepare_threshold}",
                os.getpid()])
            await asyncio.sleep(seconds)
        finally:
            with _lock:
                _lent -= 1


@app.task(name="a.too_slow", timeout=2.0, max_attempts=2, backoff=lambda attempt: 0.05)
async def too_slow() -> None:
    await _record("start")
    await asyncio.sleep(60)
    await _record("never")


@app.task(name="a.cancellable", max_attempts=3)
async def cancellable(seconds: float) -> None:
    await _record("start")
    try:
        await asyncio.sleep(seconds)
    except asyncio.CancelledError:
        await _record("cancelled at an await")
        raise
    await _record("done")


@app.task(name="a.nap")
async def nap(seconds: float) -> None:
    await _record("start")
    await asyncio.sleep(seconds)
    await _record("done")


@app.task(name="a.nap_sync")
def nap_sync(seconds: float) -> None:
    _record_sync("start")
    time.sleep(seconds)
    _record_sync("done")


@app.task(name="a.blocker")
async def blocker(seconds: float) -> None:
    time.sleep(seconds)  # blocks the event loop: reported by the worker


@app.task(name="a.snoozer", max_attempts=1)
async def snoozer() -> None:
    """Snoozes once, then succeeds (max_attempts=1: a charged snooze would bury it)."""
    job = pgjobs.current_job()
    async with job.aconnection() as conn:
        cur = await conn.execute(sql.SQL("SELECT count(*) FROM {} WHERE job_id = %s").format(
            sql.Identifier(app.schema, "executions")), [job.id])
        row = await cur.fetchone()
    await _record(f"run attempt={job.attempt}")
    if row is not None and row[0] < 1:
        raise pgjobs.Snooze(0.1)


@app.task(name="a.effect")
async def effect(key: str) -> None:
    """Writes its effect and completes the job in one async transaction."""
    job = pgjobs.current_job()
    async with job.aconnection() as conn:
        async with conn.transaction():
            await conn.execute(
                sql.SQL("INSERT INTO {} (key, job_id) VALUES (%s, %s)").format(
                    sql.Identifier(app.schema, "effects")), [key, job.id])
            await job.complete(conn)

"""Job lifecycle from the application's side: cancel, transactional completion, status
and waiting for a job to finish (``App.cancel``, ``current_job().complete``,
``App.get_job``, ``App.wait_for`` and their async forms).

The statements are :mod:`pgjobs.sql`'s; the sync paths call them through
:class:`pgjobs.store.JobStore`, the async ones compose the same texts.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from typing import Any

import psycopg
from psycopg import sql as pgsql
from psycopg.rows import args_row

from . import sql as S
from .connection import async_raw_connection, raw_connection
from .errors import LeaseLost
from .jobinfo import JobInfo
from .sql import Statements
from .store import JobStore

#: wait_for re-reads the job at least this often (the NOTIFY may be missed: a LISTEN
#: connection is not a guarantee, and the worker does not announce every kind of end).
POLL_INTERVAL = 0.5


# --- cancel -------------------------------------------------------------------------------


def cancel(conn: Any, sql: Statements, job_id: int) -> str | None:
    """See :meth:`pgjobs.App.cancel`."""
    return JobStore(sql).cancel(raw_connection(conn), _job_id(job_id))


async def acancel(aconn: Any, sql: Statements, job_id: int) -> str | None:
    """See :meth:`pgjobs.App.acancel`."""
    raw = await async_raw_connection(aconn)
    job_id = _job_id(job_id)
    cur = await raw.execute(sql.of(S.CANCEL_PENDING),
                            {"id": job_id, "finished_channel": sql.finished_channel})
    if await cur.fetchall():
        return "cancelled"
    cur = await raw.execute(sql.of(S.CANCEL_RUNNING),
                            {"id": job_id, "channel": sql.channel,
                             "cancel_prefix": S.CANCEL_PREFIX})
    if await cur.fetchall():
        return "cancelling"
    return None


def _job_id(job_id: Any) -> int:
    if isinstance(job_id, bool) or not isinstance(job_id, int):
        raise TypeError(f"job_id must be an int (the id enqueue returned), got {job_id!r}")
    return job_id


# --- transactional completion -----------------------------------------------------------


class Lease:
    """What ``current_job().complete(conn)`` needs: the job, its lease token, and whom
    to tell that the handler completed it (so its row vanishing is not a lost lease).
    A plain slotted class: one is made for every job an executor starts."""

    __slots__ = ("job_id", "on_completed", "sql", "token")

    def __init__(self, job_id: int, token: str, sql: Statements,
                 on_completed: Callable[[], None]) -> None:
        self.job_id = job_id
        self.token = token
        self.sql = sql
        self.on_completed = on_completed

    def complete(self, conn: Any) -> None:
        if not JobStore(self.sql).complete_in_transaction(raw_connection(conn), self.job_id,
                                                          self.token):
            raise LeaseLost(self.job_id)
        self.on_completed()

    async def acomplete(self, aconn: Any) -> None:
        raw = await async_raw_connection(aconn)
        cur = await raw.execute(self.sql.of(S.COMPLETE_IN_TRANSACTION),
                                {"id": self.job_id, "token": self.token,
                                 "finished_channel": self.sql.finished_channel})
        if not await cur.fetchall():
            raise LeaseLost(self.job_id)
        self.on_completed()


def is_async_connection(conn: Any) -> bool:
    """psycopg AsyncConnection, SQLAlchemy AsyncConnection or AsyncSession."""
    if isinstance(conn, psycopg.AsyncConnection):
        return True
    try:
        from sqlalchemy.ext.asyncio import AsyncConnection, AsyncSession
    except ImportError:  # pragma: no cover - SQLAlchemy is a dependency
        return False
    return isinstance(conn, AsyncConnection | AsyncSession)


# --- status -------------------------------------------------------------------------------


def get_job(url: str, sql: Statements, job_id: int) -> JobInfo | None:
    """See :meth:`pgjobs.App.get_job`."""
    with psycopg.connect(url, autocommit=True) as conn:
        return JobStore(sql).get_job(conn, _job_id(job_id))


async def aget_job(url: str, sql: Statements, job_id: int) -> JobInfo | None:
    """See :meth:`pgjobs.App.aget_job`."""
    async with await psycopg.AsyncConnection.connect(url, autocommit=True) as conn:
        return await _aread(conn, sql, _job_id(job_id))


async def _aread(conn: psycopg.AsyncConnection[Any], sql: Statements,
                 job_id: int) -> JobInfo | None:
    cur = conn.cursor(row_factory=args_row(JobInfo))
    await cur.execute(sql.of(S.GET_JOB), {"id": job_id, "now": None})
    return await cur.fetchone()


def _finished(seen: JobInfo | None, now: JobInfo | None) -> JobInfo | None:
    """The finished job, if it is: its row says so, or a job we saw live is gone (it
    succeeded without ``result_ttl``, so nothing more is kept)."""
    if now is not None:
        return now if now.finished else None
    if seen is not None:
        return JobInfo(seen.id, seen.queue, seen.task, seen.args, "succeeded",
                       seen.attempts, seen.max_attempts, None, None, seen.created_at,
                       None)
    return None


def _timeout_error(job_id: int, timeout: float, seen: JobInfo) -> TimeoutError:
    return TimeoutError(f"job {job_id} did not finish within {timeout:g}s "
                        f"(state: {seen.state})")


def _unknown(job_id: int) -> LookupError:
    return LookupError(
        f"job {job_id} is unknown: it finished without result_ttl (nothing is kept of "
        "it) or never existed; give its task result_ttl to wait for it after it ends")


def _contains(payload: str, job_id: str) -> bool:
    return job_id in payload.split(",")


def wait_for(url: str, sql: Statements, job_id: int, timeout: float) -> JobInfo:
    """See :meth:`pgjobs.App.wait_for`."""
    job_id = _job_id(job_id)
    key = str(job_id)
    deadline = time.monotonic() + timeout
    store = JobStore(sql)
    with psycopg.connect(url, autocommit=True) as conn:
        # LISTEN first, then read: a finish between the two is announced to us.
        conn.execute(pgsql.SQL("LISTEN {}").format(
            pgsql.Identifier(sql.finished_channel)))
        seen = store.get_job(conn, job_id)
        if seen is None:
            raise _unknown(job_id)
        done = _finished(None, seen)
        while done is None:
            left = deadline - time.monotonic()
            if left <= 0:
                raise _timeout_error(job_id, timeout, seen)
            for note in conn.notifies(timeout=min(left, POLL_INTERVAL)):
                if _contains(note.payload, key):
                    break
            now = store.get_job(conn, job_id)
            done = _finished(seen, now)
            seen = now or seen
        return done


async def await_for(url: str, sql: Statements, job_id: int, timeout: float) -> JobInfo:
    """See :meth:`pgjobs.App.await_for`."""
    job_id = _job_id(job_id)
    key = str(job_id)
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    async with await psycopg.AsyncConnection.connect(url, autocommit=True) as conn:
        await conn.execute(pgsql.SQL("LISTEN {}").format(
            pgsql.Identifier(sql.finished_channel)))
        seen = await _aread(conn, sql, job_id)
        if seen is None:
            raise _unknown(job_id)
        done = _finished(None, seen)
        while done is None:
            left = deadline - loop.time()
            if left <= 0:
                raise _timeout_error(job_id, timeout, seen)
            async for note in conn.notifies(timeout=min(left, POLL_INTERVAL)):
                if _contains(note.payload, key):
                    break
            now = await _aread(conn, sql, job_id)
            done = _finished(seen, now)
            seen = now or seen
        return done


def result_json(task: str, value: Any) -> str:
    """A handler's return value as JSON text (``result_ttl`` tasks), or TypeError."""
    import json

    try:
        return json.dumps(value, allow_nan=False)
    except (TypeError, ValueError) as exc:
        raise TypeError(
            f"task {task!r} has result_ttl, so its return value must be JSON; got "
            f"{type(value).__name__} ({exc}): return a dict, list, str, number, bool or "
            "None") from None


__all__ = ["Lease", "acancel", "aget_job", "await_for", "cancel", "get_job",
           "is_async_connection", "result_json", "wait_for"]

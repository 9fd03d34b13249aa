"""Database work written once, run by a sync or an async driver ("sans-IO").

The write path's rules (pending limit, unique keys, COPY, NOTIFY, metrics, traces) are
generators that *yield* what they need done — run a statement, stream a COPY, wait for
another caller's count — and receive the result. They never touch a connection, so the
same generator serves ``enqueue`` (psycopg ``Connection``) and ``aenqueue`` (psycopg
``AsyncConnection``): :func:`run` and :func:`arun` are the only places that do I/O, and
they differ only in ``await``. An error raised by the I/O is thrown back into the plan at
the point it yielded, so the plan's ``try``/``finally`` (giving back reserved places,
mapping "relation does not exist") works the same for both.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
from collections.abc import Generator, Iterable, Sequence
from dataclasses import dataclass
from typing import Any, TypeVar

import psycopg
from psycopg import sql

T = TypeVar("T")


@dataclass(frozen=True, slots=True)
class Execute:
    """Run one statement; the plan receives its rows (``[]`` when it returns none)."""

    statement: sql.Composed
    params: dict[str, Any]


@dataclass(frozen=True, slots=True)
class Copy:
    """Stream ``rows`` with ``COPY … FROM STDIN`` (binary-typed as ``types``)."""

    statement: sql.Composed
    types: Sequence[str]
    rows: Iterable[Sequence[Any]]


@dataclass(frozen=True, slots=True)
class Wait:
    """Wait (at most ``timeout`` s) until another caller finishes ``done``."""

    done: concurrent.futures.Future[None]
    timeout: float


Op = Execute | Copy | Wait
Plan = Generator[Op, Any, T]


def run(conn: psycopg.Connection[Any], plan: Plan[T]) -> T:
    """Carry out ``plan`` on a psycopg connection (in its current transaction)."""
    result: Any = None
    error: BaseException | None = None
    while True:
        try:
            op = plan.send(result) if error is None else plan.throw(error)
        except StopIteration as stop:
            return stop.value  # type: ignore[no-any-return]
        finally:
            error = None  # drop the reference: no cycle through the traceback
        try:
            result = _perform(conn, op)
        except BaseException as exc:  # thrown into the plan, which decides
            result, error = None, exc


async def arun(aconn: psycopg.AsyncConnection[Any], plan: Plan[T]) -> T:
    """Carry out ``plan`` on a psycopg async connection, never blocking the event loop."""
    result: Any = None
    error: BaseException | None = None
    while True:
        try:
            op = plan.send(result) if error is None else plan.throw(error)
        except StopIteration as stop:
            return stop.value  # type: ignore[no-any-return]
        finally:
            error = None
        try:
            result = await _aperform(aconn, op)
        except BaseException as exc:  # incl. CancelledError: the plan cleans up
            result, error = None, exc


def _returns_rows(cur: Any) -> bool:
    # The result's column count, not ``cur.description``: that builds a Column object
    # per column on every call (~1 µs of each single-row enqueue).
    result = cur.pgresult
    return result is not None and result.nfields > 0


def _perform(conn: psycopg.Connection[Any], op: Op) -> Any:
    if isinstance(op, Execute):
        cur = conn.execute(op.statement, op.params)
        return cur.fetchall() if _returns_rows(cur) else []
    if isinstance(op, Copy):
        with conn.cursor() as cur, cur.copy(op.statement) as copy:
            copy.set_types(op.types)
            write = copy.write_row
            for row in op.rows:
                write(row)
        return None
    concurrent.futures.wait([op.done], timeout=op.timeout)
    return None


async def _aperform(aconn: psycopg.AsyncConnection[Any], op: Op) -> Any:
    if isinstance(op, Execute):
        cur = await aconn.execute(op.statement, op.params)
        return await cur.fetchall() if _returns_rows(cur) else []
    if isinstance(op, Copy):
        async with aconn.cursor() as cur, cur.copy(op.statement) as copy:
            copy.set_types(op.types)
            write = copy.write_row
            for row in op.rows:
                await write(row)
        return None
    # shield: a timeout (or our cancellation) must not cancel the other caller's work.
    try:
        await asyncio.wait_for(asyncio.shield(asyncio.wrap_future(op.done)), op.timeout)
    except TimeoutError:
        pass
    return None

"""The running job, as seen from inside a handler: ``pgjobs.current_job()``."""

from __future__ import annotations

import contextvars
import datetime as dt
from collections.abc import AsyncIterator, Callable, Iterator
from contextlib import (
    AbstractAsyncContextManager,
    AbstractContextManager,
    asynccontextmanager,
    contextmanager,
)
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import psycopg

from .errors import JobCancelled

if TYPE_CHECKING:
    from .lifecycle import Lease
    from .worker.cancellation import CancelFlag


@dataclass(frozen=True)
class JobContext:
    """What a handler may know about its job, and its way to the database.

    ``connection()`` lends a connection from the worker's pool, which is sized with the
    executors, so handlers can never open more connections than the pool allows.
    """

    id: int
    task: str
    queue: str
    attempt: int
    max_attempts: int
    args: dict[str, Any]
    enqueued_at: dt.datetime
    deadline: float | None
    _borrow: Callable[[], AbstractContextManager[psycopg.Connection[Any]]] = field(repr=False)
    _cancel: CancelFlag | None = field(default=None, repr=False)
    _lease: Lease | None = field(default=None, repr=False)
    _aborrow: Callable[[], AbstractAsyncContextManager[psycopg.AsyncConnection[Any]]] | None = (
        field(default=None, repr=False))

    @property
    def cancel_requested(self) -> bool:
        """True once someone asked to cancel this job (``app.cancel``); the worker
        learns it within a second (at once through LISTEN/NOTIFY)."""
        return self._cancel is not None and self._cancel.requested

    def raise_if_cancelled(self) -> None:
        """Raise :class:`pgjobs.JobCancelled` if :attr:`cancel_requested`: call it
        between steps of long work; the job then ends ``cancelled``, never retried."""
        if self._cancel is not None and self._cancel.requested:
            raise JobCancelled(self.id)

    def complete(self, conn: Any) -> Any:
        """Transactional completion: delete this job inside ``conn``'s transaction.

        Write the job's effects and call this in the same transaction: when it commits,
        the effects and the job's completion are one, and no retry (after a crash, a
        lost lease) can apply them twice. ``conn`` is a psycopg or SQLAlchemy connection
        or session; for an async one (psycopg ``AsyncConnection``, SQLAlchemy
        ``AsyncConnection`` / ``AsyncSession``) this returns an awaitable:
        ``await current_job().complete(aconn)``. Raises :class:`pgjobs.LeaseLost` if this
        worker no longer holds the job: roll the transaction back then.
        """
        from .lifecycle import is_async_connection

        if self._lease is None:
            raise RuntimeError("this job context cannot complete its job (no lease)")
        if is_async_connection(conn):
            return self._lease.acomplete(conn)
        self._lease.complete(conn)
        return None

    async def acomplete(self, aconn: Any) -> None:
        """:meth:`complete` for an async connection or session."""
        if self._lease is None:
            raise RuntimeError("this job context cannot complete its job (no lease)")
        await self._lease.acomplete(aconn)

    @contextmanager
    def connection(self) -> Iterator[psycopg.Connection[Any]]:
        """A pooled connection; its transaction commits on success, rolls back on error."""
        with self._borrow() as conn:
            yield conn

    @asynccontextmanager
    async def aconnection(self) -> AsyncIterator[psycopg.AsyncConnection[Any]]:
        """For coroutine handlers: ``async with current_job().aconnection() as conn``
        lends a psycopg ``AsyncConnection`` from the worker's async pool (inside the same
        ``--pool-size`` budget as the sync handlers' pool); its transaction commits on
        success, rolls back on error."""
        if self._aborrow is None:
            raise RuntimeError(
                "current_job().aconnection() is for coroutine (async def) handlers; a sync "
                "handler uses current_job().connection()")
        async with self._aborrow() as conn:
            yield conn


_current: contextvars.ContextVar[JobContext] = contextvars.ContextVar("pgjobs_current_job")


def current_job() -> JobContext:
    """The job this handler is running. Raises RuntimeError outside a pgjobs handler."""
    try:
        return _current.get()
    except LookupError:
        raise RuntimeError(
            "pgjobs.current_job() was called outside a job: only task handlers run by a "
            "pgjobs worker have one"
        ) from None


def set_current(ctx: JobContext) -> contextvars.Token[JobContext]:
    """Make ``ctx`` the current job of this thread (used by the executor)."""
    return _current.set(ctx)


def reset_current(token: contextvars.Token[JobContext]) -> None:
    """Undo :func:`set_current`."""
    _current.reset(token)

"""The running job, as seen from inside a handler: ``pgjobs.current_job()``."""

from __future__ import annotations

import contextvars
import datetime as dt
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager, contextmanager
from dataclasses import dataclass, field
from typing import Any

import psycopg


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

    @contextmanager
    def connection(self) -> Iterator[psycopg.Connection[Any]]:
        """A pooled connection; its transaction commits on success, rolls back on error."""
        with self._borrow() as conn:
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

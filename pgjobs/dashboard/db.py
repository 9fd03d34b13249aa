"""The dashboard's database access: a small connection pool, used from a thread pool.

Pages and actions are plain synchronous functions ``fn(conn, sql, …)`` (so they share
:mod:`pgjobs.admin` with the CLI); :meth:`Database.run` runs one in Starlette's thread
pool on a pooled connection. The pool opens on first use, so an app mounted in another
ASGI app (whose lifespan never reaches it) works too.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from typing import Any, TypeVar

import psycopg
from psycopg_pool import ConnectionPool
from starlette.concurrency import run_in_threadpool

from .. import sql as S
from ..sql import Statements, statements

T = TypeVar("T")

#: No dashboard statement may hold the database longer than this.
STATEMENT_TIMEOUT_MS = 15_000


class Database:
    """A lazily opened pool of autocommit connections to one pgjobs schema."""

    def __init__(self, url: str, schema: str, *, read_only: bool, pool_size: int = 4) -> None:
        self.url = url
        self.sql: Statements = statements(schema)
        self.read_only = read_only
        self.pool_size = pool_size
        self._pool: ConnectionPool[psycopg.Connection[Any]] | None = None
        self._lock = threading.Lock()

    def _configure(self, conn: psycopg.Connection[Any]) -> None:
        # Custom plans only: every dashboard statement folds its NULL filters away, which
        # a prepared (generic) plan cannot do.
        conn.prepare_threshold = None
        # Defence in depth: a read-only dashboard refuses actions before any SQL, and its
        # sessions could not write even if one slipped through.
        conn.execute(self.sql.of(S.DASHBOARD_SESSION_SETUP), {
            "statement_timeout_ms": STATEMENT_TIMEOUT_MS,
            "read_only": "on" if self.read_only else "off",
        })

    def pool(self) -> ConnectionPool[psycopg.Connection[Any]]:
        """The pool, opened on first use."""
        with self._lock:
            if self._pool is None:
                self._pool = ConnectionPool(
                    self.url, min_size=1, max_size=self.pool_size, open=True,
                    kwargs={"autocommit": True, "application_name": "pgjobs-dashboard"},
                    configure=self._configure, timeout=10.0, name="pgjobs-dashboard",
                )
            return self._pool

    def call(self, fn: Callable[..., T], *args: Any) -> T:
        """Run ``fn(conn, sql, *args)`` on a pooled connection (blocking)."""
        with self.pool().connection() as conn:
            return fn(conn, self.sql, *args)

    async def run(self, fn: Callable[..., T], *args: Any) -> T:
        """:meth:`call` in the thread pool, so the event loop never blocks on the database."""
        return await run_in_threadpool(self.call, fn, *args)

    def close(self) -> None:
        """Close the pool (it reopens on the next use)."""
        with self._lock:
            pool, self._pool = self._pool, None
        if pool is not None:
            pool.close()

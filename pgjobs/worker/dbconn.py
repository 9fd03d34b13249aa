"""A dedicated connection that reconnects, for the worker's own long-lived loops."""

from __future__ import annotations

import logging
import os
import random
import socket
import threading
from collections.abc import Callable
from typing import Any, TypeVar

import psycopg

from ..config import redact_text
from .clock import Clock, SystemClock

log = logging.getLogger("pgjobs.worker")

T = TypeVar("T")

# Detect a dead peer in seconds rather than the kernel's default of hours.
KEEPALIVE_OPTIONS: dict[str, Any] = {
    "keepalives": 1,
    "keepalives_idle": 5,
    "keepalives_interval": 2,
    "keepalives_count": 3,
    "tcp_user_timeout": 15000,
    "connect_timeout": 10,
}

#: psycopg errors that mean "this connection is unusable; reconnect and retry".
CONNECTION_ERRORS = (psycopg.OperationalError, psycopg.InterfaceError)


# Server-side errors that mean "this session is gone or cannot start": admin shutdown,
# crash shutdown, cannot connect now, too many connections.
_SESSION_SQLSTATES = {"57P01", "57P02", "57P03", "53300"}


def is_connection_failure(exc: BaseException, conn: psycopg.Connection[Any] | None) -> bool:
    """True for a lost or refused connection, False for an error in a statement.

    psycopg files both under OperationalError (e.g. "index row size exceeds maximum" is
    one), and replaying a statement the server refused would loop forever.
    """
    if conn is None or conn.closed or conn.broken:
        return True
    sqlstate = getattr(exc, "sqlstate", None)
    return sqlstate is None or sqlstate.startswith("08") or sqlstate in _SESSION_SQLSTATES


def _is_transient_statement_error(exc: BaseException) -> bool:
    sqlstate: str | None = getattr(exc, "sqlstate", None)
    return sqlstate is not None and sqlstate.startswith("40")


class ResilientConnection:
    """One autocommit connection owned by one thread; reconnects with jittered backoff.

    Statements taking id arrays of any size are executed with ``prepare=False`` (the
    completer's large flushes, heartbeats, releases): once PostgreSQL switched the
    prepared completion statement to a generic plan it joined the arrays pairwise with
    the jobs it deleted (p50 89 ms per flush instead of 6 ms at concurrency 50).
    Unprepared, each is planned for its real arguments. The rest are prepared.

    ``run(fn)`` calls ``fn(conn)`` until it succeeds or the worker is stopping, so a
    restarted server, a terminated backend or a full ``max_connections`` degrade the
    worker (with a log line) instead of killing it.
    """

    def __init__(self, url: str, name: str, stopping: threading.Event,
                 application_name: str, *, prepare_statements: bool = True,
                 clock: Clock | None = None) -> None:
        self._url = url
        self._clock: Clock = clock or SystemClock()
        #: False behind PgBouncer in transaction mode (``--poll-only``): nothing prepared.
        self.prepare_statements = prepare_statements
        self.name = name
        self._stopping = stopping
        self._application_name = application_name
        self._conn: psycopg.Connection[Any] | None = None
        self._failures = 0
        self._busy_since: float | None = None
        self._renew = threading.Event()

    def connection(self) -> psycopg.Connection[Any]:
        """The live connection, (re)connecting if needed. Raises on failure."""
        if self._renew.is_set():
            self._renew.clear()
            if self._conn is not None and not self._conn.closed:
                log.info("%s connection: replacing it (another connection of this worker "
                         "got no answer from the server)", self.name)
                self.discard()
        if self._conn is None or self._conn.closed:
            self._conn = psycopg.connect(
                self._url, autocommit=True,
                application_name=self._application_name, **KEEPALIVE_OPTIONS,
            )
            if not self.prepare_statements:
                self._conn.prepare_threshold = None  # psycopg's default prepares after 5 runs
            if self._failures:
                log.info("%s connection re-established after %d failed attempt(s)",
                         self.name, self._failures)
            self._failures = 0
        return self._conn

    def run(self, fn: Callable[[psycopg.Connection[Any]], T], *,
            give_up_when_stopping: bool = True) -> T | None:
        """``fn(conn)``, retried across reconnects; ``None`` if stopping first."""
        while True:
            try:
                conn = self.connection()
                self._busy_since = self._clock.monotonic()
                try:
                    return fn(conn)
                finally:
                    self._busy_since = None
            except CONNECTION_ERRORS as exc:
                if _is_transient_statement_error(exc) and not self._stopping.is_set():
                    self._stopping.wait(random.uniform(0.01, 0.1))
                    continue  # deadlock or serialization failure: the same statement may pass
                if not is_connection_failure(exc, self._conn):
                    raise  # a statement the server refused: retrying it cannot help
                self.discard()
                self._failures += 1
                delay = min(5.0, 0.1 * 2 ** min(self._failures, 6)) * random.uniform(0.5, 1.0)
                message = redact_text(str(exc).strip().splitlines()[0] if str(exc) else
                                      type(exc).__name__, self._url)
                log.warning("%s connection failed (%s); retrying in %.1fs", self.name,
                            message, delay)
                if self._stopping.wait(delay) and give_up_when_stopping:
                    return None

    def break_if_stalled(self, limit: float) -> bool:
        """Called from another thread: unblock a call that has waited over ``limit`` s.

        A server or proxy that keeps the TCP connection open but never answers is not
        caught by keepalives; shutting the socket down makes the blocked call fail with a
        connection error, and ``run`` reconnects.
        """
        since, conn = self._busy_since, self._conn
        if since is None or conn is None or self._clock.monotonic() - since < limit:
            return False
        self._busy_since = None
        log.warning("%s connection: no answer from the server for %.0fs; dropping it and "
                    "reconnecting", self.name, limit)
        try:
            fd = os.dup(conn.pgconn.socket)
            with socket.socket(fileno=fd) as sock:
                sock.shutdown(socket.SHUT_RDWR)
        except (OSError, psycopg.Error):
            pass
        return True

    def renew_when_idle(self) -> None:
        """Called from another thread: the next call opens a fresh connection.

        The stall watch calls this on a worker's other connections when one of them stopped
        getting answers: they share the path to the server, and one idle now would find out
        only by hanging just as long when it is next used (a black-holed peer answers
        nothing, and keepalives are answered by whatever holds the TCP connection). The
        owner thread replaces it between calls; a call already waiting is left to
        :meth:`break_if_stalled`.
        """
        self._renew.set()

    def cancel_running(self) -> None:
        """Called from another thread: cancel the statement running now, if any."""
        conn = self._conn
        if self._busy_since is None or conn is None or conn.closed:
            return
        try:
            conn.cancel_safe(timeout=2.0)
        except Exception:
            log.debug("%s connection: could not cancel its statement", self.name,
                      exc_info=True)

    def discard(self) -> None:
        """Drop the connection (it will be re-made on next use)."""
        conn, self._conn = self._conn, None
        if conn is not None:
            try:
                conn.close()
            except Exception:
                pass

    def backend_pid(self) -> int | None:
        """The server process id of the current connection (tests use it)."""
        conn = self._conn
        return None if conn is None or conn.closed else conn.info.backend_pid

"""The fetcher's waiting locks, held on the LISTEN connection (migration 0006).

Enqueues notify only while some fetcher waits for a NOTIFY; a waiting fetcher says so
by holding shared advisory locks that enqueues probe (``sql.HOLD_WAITING_LOCKS``). They
sit on the LISTEN connection, so they live exactly as long as the LISTEN that the
NOTIFYs need, and a LISTEN connection that goes direct to PostgreSQL behind PgBouncer
takes them along.

The fetcher's thread asks; the listener's thread runs the statement on its connection
(psycopg's ``notifies()`` holds the connection while it waits), woken at once by a
socket pair. A generation counts the listener's connections: locks taken on one die
with it, and the fetcher checks the generation before it trusts them.
"""

from __future__ import annotations

import logging
import os
import queue
import select
import socket
import threading
from collections.abc import Callable, Sequence
from typing import Any

import psycopg

from ..store import JobStore

log = logging.getLogger("pgjobs.worker")

#: How long the fetcher waits for the listener to take its waiting locks before it
#: gives up and polls (the listener answers within a round trip unless it is stuck).
HOLD_TIMEOUT = 2.0


class _Request:
    """One fetcher request: hold the locks (True) or release them (False)."""

    __slots__ = ("done", "generation", "hold")

    def __init__(self, hold: bool) -> None:
        self.hold = hold
        self.done = threading.Event()
        self.generation: int | None = None  # set when holding succeeded


class WaitingLockService:
    """Requests from the fetcher's thread, served on the listener's thread."""

    def __init__(self, store: JobStore, queues: Sequence[str] | None,
                 monotonic: Callable[[], float]) -> None:
        self._store = store
        self._monotonic = monotonic
        self._queues = list(queues) if queues is not None else None
        self._requests: queue.SimpleQueue[_Request] = queue.SimpleQueue()
        self._lock = threading.Lock()
        self._accepting = False  # a connection is up and the listener serves requests
        self._generation = 0
        self._holding = False
        self._statement: tuple[float, psycopg.Connection[Any]] | None = None  # since, on
        self._interrupt_recv, self._interrupt_send = socket.socketpair()
        self._interrupt_recv.setblocking(False)
        self._interrupt_send.setblocking(False)

    # --- the fetcher's side --------------------------------------------------------------

    def hold_waiting_locks(self, timeout: float = HOLD_TIMEOUT) -> int | None:
        """Hold the locks that make enqueues notify us; the connection generation that
        holds them, or None (no connection, or a lock was refused: claim and retry)."""
        request = _Request(hold=True)
        if not self._submit(request) or not request.done.wait(timeout):
            return None
        return request.generation

    def release_waiting_locks(self) -> None:
        """Enqueues need not notify us any more (done soon, not waited for)."""
        self._submit(_Request(hold=False))

    def holds_waiting_locks(self, generation: int) -> bool:
        """Whether the locks taken by ``generation`` are still held."""
        return self._holding and self._generation == generation

    def _submit(self, request: _Request) -> bool:
        with self._lock:
            if not self._accepting:
                return False
            self._requests.put(request)
        try:
            self._interrupt_send.send(b"\0")
        except OSError:  # full (the listener is awake anyway), or closed (it has stopped
            pass         # and answered every request)
        return True

    # --- the listener's side -------------------------------------------------------------

    def connected(self) -> None:
        """A new LISTEN connection: serve requests on it."""
        with self._lock:
            self._accepting = True

    def disconnected(self) -> None:
        """The connection is gone, and its locks with it: answer what is still queued."""
        with self._lock:
            self._accepting = False
            self._holding = False
            self._generation += 1
            while True:
                try:
                    self._requests.get_nowait().done.set()
                except queue.Empty:
                    break

    def serve(self, conn: psycopg.Connection[Any]) -> None:
        """Run the queued requests on ``conn`` (the listener's thread)."""
        while True:
            try:
                request = self._requests.get_nowait()
            except queue.Empty:
                return
            # Unlike LISTEN's reads, a statement waits for an answer: on a connection
            # gone silent it would hang the listener, so check_stuck() watches it.
            self._statement = (self._monotonic(), conn)
            try:
                if request.hold:
                    if self._holding or self._store.hold_waiting_locks(
                            conn, queues=self._queues):
                        self._holding = True
                        request.generation = self._generation
                elif self._holding:
                    self._store.release_waiting_locks(conn)
                    self._holding = False
            finally:
                self._statement = None
                request.done.set()

    def wait_readable(self, conn: psycopg.Connection[Any], timeout: float) -> None:
        """Until the server sends something, the fetcher asks something, or timeout."""
        interrupt = self._interrupt_recv.fileno()
        ready, _, _ = select.select([conn.fileno(), interrupt], [], [], timeout)
        if interrupt in ready:
            try:
                while self._interrupt_recv.recv(4096):
                    pass
            except BlockingIOError:
                pass

    def check_stuck(self, limit: float) -> None:
        """From another thread: end the connection if a statement hangs past ``limit``
        seconds (its wait then fails at once with a connection error)."""
        now = self._monotonic()
        statement = self._statement
        if statement is not None and now - statement[0] > limit:
            log.warning("LISTEN connection: no answer for %.1fs; dropping it",
                        now - statement[0])
            _shut_down(statement[1])

    def close(self) -> None:
        """The listener has stopped for good."""
        self.disconnected()
        self._interrupt_recv.close()
        self._interrupt_send.close()


def _shut_down(conn: psycopg.Connection[Any]) -> None:
    """Shut the socket down under the thread blocked on it (closing the connection from
    here would race with libpq)."""
    try:
        with socket.socket(fileno=os.dup(conn.fileno())) as sock:
            sock.shutdown(socket.SHUT_RDWR)
    except (OSError, psycopg.Error):  # already closed
        pass

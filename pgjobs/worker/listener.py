"""LISTEN/NOTIFY: wake the fetcher when jobs are enqueued on our queues.

The connection is checked, not trusted: the maintenance service sends a ping NOTIFY
(the :class:`ListenerPing` plugin) every few seconds and the listener expects to hear it
back. A LISTEN connection that stops delivering (server restart, a proxy silently
dropping packets) is noticed within ``ping_timeout``, replaced, and meanwhile the
fetcher keeps polling.

The same connection holds the fetcher's waiting locks while it waits for a NOTIFY
(enqueues notify only then, see ``sql.HOLD_WAITING_LOCKS``): they live exactly as long
as the LISTEN that the NOTIFYs need, and when the connection is replaced the fetcher
hears of it (``on_waiting_lost``) and claims again. The fetcher's thread asks, the
listener's thread runs the statement (psycopg's ``notifies()`` holds the connection
while it waits): a socket pair interrupts that wait at once.
"""

from __future__ import annotations

import logging
import os
import queue
import random
import select
import socket
import threading
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import psycopg

from ..config import redact_text
from ..sql import CANCEL_PREFIX
from ..store import JobStore
from .clock import Clock
from .dbconn import CONNECTION_ERRORS, KEEPALIVE_OPTIONS
from .service import ThreadService
from .settings import WorkerSettings

if TYPE_CHECKING:
    from .maintenance import MaintenanceSession

log = logging.getLogger("pgjobs.worker")

PING_PREFIX = "pgjobs:ping:"


#: How long the fetcher waits for the listener to take its waiting locks before it
#: gives up and polls (the listener answers within a round trip unless it is stuck).
HOLD_TIMEOUT = 2.0


class ListenerDead(Exception):
    """The LISTEN connection stopped delivering our own pings."""


class _LockRequest:
    """One fetcher request to the listener's thread: hold (True) or release (False)."""

    __slots__ = ("done", "generation", "hold")

    def __init__(self, hold: bool) -> None:
        self.hold = hold
        self.done = threading.Event()
        self.generation: int | None = None  # set when holding succeeded


class Listener(ThreadService):
    """Owns the LISTEN connection; calls ``on_wake`` for notifications on our queues."""

    name = "listener"

    def __init__(
        self,
        store: JobStore,
        url: str,
        clock: Clock,
        settings: WorkerSettings,
        *,
        worker_id: str,
        on_wake: Callable[[], None],
        application_name: str,
        on_cancel: Callable[[list[int]], object] | None = None,
        on_waiting_lost: Callable[[], None] | None = None,
    ) -> None:
        super().__init__()
        self._store = store
        self._url = url
        self._clock = clock
        self._queues = set(settings.queues) if settings.queues is not None else None
        self._queue_list = list(settings.queues) if settings.queues is not None else None
        self._on_wake = on_wake
        self._on_cancel = on_cancel
        self._stopping = self.stopping
        self.ping_payload = f"{PING_PREFIX}{worker_id}"
        self._ping_timeout = settings.ping_timeout
        self._application_name = application_name
        self._ping_sent_at: float | None = None
        self._ping_heard_at = 0.0
        self.healthy = False
        self.reconnects = 0
        self.conn: psycopg.Connection[Any] | None = None
        self._on_waiting_lost = on_waiting_lost
        # Waiting locks: requests from the fetcher, served on this thread. The
        # generation counts connections; locks taken on one die with it.
        self._requests: queue.SimpleQueue[_LockRequest] = queue.SimpleQueue()
        self._accepting = False  # a connection is up and its loop serves requests
        self._requests_lock = threading.Lock()
        self._generation = 0
        self._holding = False
        self._statement: tuple[float, psycopg.Connection[Any]] | None = None  # (since, on)
        self._interrupt_recv, self._interrupt_send = socket.socketpair()
        self._interrupt_recv.setblocking(False)
        self._interrupt_send.setblocking(False)

    # --- waiting locks (called from the fetcher's thread) --------------------------------

    def hold_waiting_locks(self, timeout: float = HOLD_TIMEOUT) -> int | None:
        """Hold the locks that make enqueues notify us; the connection generation that
        holds them, or None (no connection, or a lock was refused: claim and retry)."""
        request = _LockRequest(hold=True)
        if not self._submit(request) or not request.done.wait(timeout):
            return None
        return request.generation

    def release_waiting_locks(self) -> None:
        """Enqueues need not notify us any more (done soon, not waited for)."""
        self._submit(_LockRequest(hold=False))

    def holds_waiting_locks(self, generation: int) -> bool:
        """Whether the locks taken by ``generation`` are still held."""
        return self._holding and self._generation == generation

    def _submit(self, request: _LockRequest) -> bool:
        with self._requests_lock:
            if not self._accepting:
                return False
            self._requests.put(request)
        try:
            self._interrupt_send.send(b"\0")
        except BlockingIOError:  # the pair's buffer is full: the loop is awake anyway
            pass
        except OSError:  # closed: the listener has stopped, and answered every request
            pass
        return True

    def _serve_requests(self, conn: psycopg.Connection[Any]) -> None:
        while True:
            try:
                request = self._requests.get_nowait()
            except queue.Empty:
                return
            # Unlike LISTEN's reads, a statement waits for an answer: on a connection
            # gone silent it would hang this thread, so ping_sent() watches it.
            self._statement = (self._clock.monotonic(), conn)
            try:
                if request.hold:
                    if self._holding or self._store.hold_waiting_locks(
                            conn, queues=self._queue_list):
                        self._holding = True
                        request.generation = self._generation
                elif self._holding:
                    self._store.release_waiting_locks(conn)
                    self._holding = False
            finally:
                self._statement = None
                request.done.set()

    def _stop_accepting(self) -> None:
        """The connection is gone, and its locks with it: answer what is still queued."""
        with self._requests_lock:
            self._accepting = False
            self._holding = False
            self._generation += 1
            while True:
                try:
                    self._requests.get_nowait().done.set()
                except queue.Empty:
                    break

    def _wait_readable(self, conn: psycopg.Connection[Any], timeout: float) -> None:
        """Until the server sends something, the fetcher asks something, or timeout."""
        interrupt = self._interrupt_recv.fileno()
        ready, _, _ = select.select([conn.fileno(), interrupt], [], [], timeout)
        if interrupt in ready:
            try:
                while self._interrupt_recv.recv(4096):
                    pass
            except BlockingIOError:
                pass

    def ping_sent(self) -> None:
        """The maintenance service is about to send our ping (and, on its thread, checks
        that no waiting-lock statement hangs on a connection gone silent)."""
        now = self._clock.monotonic()
        if self._ping_sent_at is None or self._ping_heard_at >= self._ping_sent_at:
            self._ping_sent_at = now
        statement = self._statement
        if statement is not None and now - statement[0] > self._ping_timeout:
            log.warning("LISTEN connection: no answer for %.1fs; dropping it",
                        now - statement[0])
            _shut_down(statement[1])

    def loop(self) -> None:
        failures = 0
        while not self._stopping.is_set():
            try:
                self._listen()
                failures = 0
            except (*CONNECTION_ERRORS, ListenerDead) as exc:
                self.healthy = False
                failures += 1
                message = redact_text(str(exc).strip().splitlines()[0] if str(exc) else
                                      type(exc).__name__, self._url)
                delay = min(5.0, 0.2 * 2 ** min(failures, 5)) * random.uniform(0.5, 1.0)
                log.warning("LISTEN connection lost (%s); polling meanwhile, reconnecting in "
                            "%.1fs", message, delay)
                self._stopping.wait(delay)
            except Exception:
                self.healthy = False
                log.exception("listener: unexpected error; reconnecting")
                self._stopping.wait(1.0)
            finally:
                self._close()
        self._interrupt_recv.close()
        self._interrupt_send.close()

    def _listen(self) -> None:
        conn = self.conn = psycopg.connect(self._url, autocommit=True,
                                           application_name=self._application_name,
                                           **KEEPALIVE_OPTIONS)
        conn.execute(self._store.sql.listen)
        if self.reconnects:
            log.info("LISTEN connection re-established")
        self.reconnects += 1
        self._ping_sent_at = None
        self.healthy = True
        with self._requests_lock:
            self._accepting = True
        if self._on_waiting_lost is not None:
            self._on_waiting_lost()  # locks held on the previous connection are gone
        self._on_wake()  # catch up on anything enqueued while we were not listening
        while not self._stopping.is_set():
            self._serve_requests(conn)
            # Notifications that arrived meanwhile (psycopg keeps those received during
            # other statements), then anything the socket has, without waiting.
            for note in conn.notifies(timeout=0):
                self._handle(note.payload)
            sent = self._ping_sent_at
            if (sent is not None and self._ping_heard_at < sent
                    and self._clock.monotonic() - sent > self._ping_timeout):
                raise ListenerDead(f"no ping heard back for {self._ping_timeout:g}s")
            self._wait_readable(conn, 0.25)

    def _handle(self, payload: str) -> None:
        if payload.startswith(PING_PREFIX):
            if payload == self.ping_payload:
                self._ping_heard_at = self._clock.monotonic()
        elif payload.startswith(CANCEL_PREFIX):  # app.cancel of a running job
            if self._on_cancel is not None:
                job_id = payload[len(CANCEL_PREFIX):]
                if job_id.isdigit():
                    self._on_cancel([int(job_id)])
        elif self._queues is None or payload in self._queues:
            self._on_wake()

    def _close(self) -> None:
        self._stop_accepting()
        conn, self.conn = self.conn, None
        if conn is not None:
            try:
                conn.close()
            except Exception:
                pass


def _shut_down(conn: psycopg.Connection[Any]) -> None:
    """End a connection another thread is blocked on: its wait then fails at once with
    a connection error (closing the connection from here would race with libpq)."""
    try:
        with socket.socket(fileno=os.dup(conn.fileno())) as sock:
            sock.shutdown(socket.SHUT_RDWR)
    except (OSError, psycopg.Error):  # already closed
        pass


class ListenerPing:
    """Maintenance plugin: NOTIFY our own ping, which the listener must hear back."""

    name = "listener ping"
    first_delay = 0.0

    def __init__(self, listener: Listener, interval: float) -> None:
        self._listener = listener
        self.interval = interval

    def run(self, session: MaintenanceSession) -> None:
        self._listener.ping_sent()
        session.store.notify(session.conn, self._listener.ping_payload)

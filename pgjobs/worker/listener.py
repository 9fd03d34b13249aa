"""LISTEN/NOTIFY: wake the fetcher when jobs are enqueued on our queues.

The connection is checked, not trusted: the maintenance service sends a ping NOTIFY
(the :class:`ListenerPing` plugin) every few seconds and the listener expects to hear it
back. A LISTEN connection that stops delivering (server restart, a proxy silently
dropping packets) is noticed within ``ping_timeout``, replaced, and meanwhile the
fetcher keeps polling.

The same connection holds the fetcher's waiting locks while it waits for a NOTIFY
(worker/waiting_locks.py): when it is replaced, the fetcher hears of it
(``on_waiting_lost``) and claims again.
"""

from __future__ import annotations

import logging
import random
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
from .waiting_locks import WaitingLockService

if TYPE_CHECKING:
    from .maintenance import MaintenanceSession

log = logging.getLogger("pgjobs.worker")

PING_PREFIX = "pgjobs:ping:"


class ListenerDead(Exception):
    """The LISTEN connection stopped delivering our own pings."""


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
        #: The fetcher's waiting locks, served on this thread and connection.
        self.waiting_locks = WaitingLockService(store, settings.queues, clock.monotonic)

    def ping_sent(self) -> None:
        """The maintenance service is about to send our ping (and, on its thread, makes
        sure no waiting-lock statement hangs on a connection gone silent)."""
        if self._ping_sent_at is None or self._ping_heard_at >= self._ping_sent_at:
            self._ping_sent_at = self._clock.monotonic()
        self.waiting_locks.check_stuck(self._ping_timeout)

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
        self.waiting_locks.close()

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
        self.waiting_locks.connected()
        if self._on_waiting_lost is not None:
            self._on_waiting_lost()  # locks held on the previous connection are gone
        self._on_wake()  # catch up on anything enqueued while we were not listening
        while not self._stopping.is_set():
            self.waiting_locks.serve(conn)
            # Notifications that arrived meanwhile (psycopg keeps those received during
            # other statements), then anything the socket has, without waiting.
            for note in conn.notifies(timeout=0):
                self._handle(note.payload)
            sent = self._ping_sent_at
            if (sent is not None and self._ping_heard_at < sent
                    and self._clock.monotonic() - sent > self._ping_timeout):
                raise ListenerDead(f"no ping heard back for {self._ping_timeout:g}s")
            self.waiting_locks.wait_readable(conn, 0.25)

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
        self.waiting_locks.disconnected()
        conn, self.conn = self.conn, None
        if conn is not None:
            try:
                conn.close()
            except Exception:
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

"""The heartbeat: renews the leases of every job in hand, then the ``workers`` row.

The one duty that must never wait: it has its own thread and connection, and its
statement skips rows locked by other transactions instead of waiting for them. Leases
are renewed ``HEARTBEATS_PER_LEASE`` times per lease period (see settings.py).
"""

from __future__ import annotations

import logging
import os
import socket
from collections.abc import Callable

from ..store import Conn, JobStore, Renewal, WorkerRow
from .clock import Clock
from .dbconn import ResilientConnection
from .errortext import first_line
from .inhand import InHand
from .service import ThreadService
from .settings import WorkerSettings
from .stats import WorkerStats

log = logging.getLogger("pgjobs.worker")

#: How often the jobs in hand are checked for cancel requests (the fallback when the
#: NOTIFY is missed): a plain read of a tiny partial index, never a lock wait.
CANCEL_POLL_INTERVAL = 0.5


class Heartbeat(ThreadService):
    """Lease renewals and this worker's registration."""

    name = "heartbeat"

    def __init__(self, store: JobStore, conn: ResilientConnection, clock: Clock,
                 settings: WorkerSettings, *, worker_id: str, in_hand: InHand,
                 stats: WorkerStats, executors_busy: Callable[[], int]) -> None:
        super().__init__()
        self._store = store
        self._conn = conn
        self._clock = clock
        self._settings = settings
        self._worker_id = worker_id
        self._in_hand = in_hand
        self._stats = stats
        self._executors_busy = executors_busy
        self._renewed_at = clock.monotonic()
        self._refused: set[int] = set()  # renewals the server refused this round

    def loop(self) -> None:
        interval = self._settings.heartbeat_interval
        tick = min(CANCEL_POLL_INTERVAL, interval)
        waited = 0.0
        while not self.stopping.wait(tick):
            waited += tick
            try:
                if waited >= interval - 1e-6:
                    waited = 0.0
                    self.beat()
                else:
                    started = self._clock.monotonic()
                    self.poll_cancels()
                    # a slow read must not push the next renewal back
                    waited += self._clock.monotonic() - started
            except Exception:
                log.exception("heartbeat: unexpected error; trying again")

    def beat(self) -> None:
        """Renew leases (what expires), then the workers row, then cancel requests."""
        self.renew_leases()
        self._conn.run(self.register)
        self.poll_cancels()

    def poll_cancels(self) -> None:
        """Flag the jobs in hand that someone asked to cancel (NOTIFY's fallback)."""
        if not len(self._in_hand):
            return
        ids = self._conn.run(lambda c: self._store.cancel_requests(
            c, worker_id=self._worker_id))
        if ids:
            flagged = self._in_hand.request_cancel(ids)
            if flagged:
                log.info("cancel requested for job(s) %s", flagged[:20])

    def register(self, conn: Conn) -> None:
        """Insert or refresh this worker's ``workers`` row."""
        s = self._settings
        self._store.register_worker(conn, WorkerRow(
            id=self._worker_id, hostname=socket.gethostname(), pid=os.getpid(),
            queues=list(s.queues) if s.queues else None, concurrency=s.concurrency,
            lease_seconds=s.lease_timeout, jobs_in_hand=len(self._in_hand),
            executors_busy=self._executors_busy()), now=self._clock.sql_now())

    def unregister(self) -> None:
        """Remove the row at a clean stop (it would otherwise age out)."""
        try:
            self._conn.run(lambda c: self._store.delete_worker(c, self._worker_id))
        except Exception:
            log.debug("could not remove the workers row", exc_info=True)

    def _renew(self, ids: list[int], tokens: list[str]) -> list[Renewal] | None:
        """Renew, isolating a job whose renewal the server refuses (bisection): the
        others are renewed; that one is kept (not taken for lost) and, if it keeps being
        refused, its lease expires and the rescue decides."""
        try:
            return self._conn.run(lambda c: self._store.renew_leases(
                c, ids, tokens, lease_seconds=self._settings.lease_timeout,
                now=self._clock.sql_now()))
        except Exception as exc:
            if len(ids) == 1:
                self._refused.add(ids[0])
                log.error("could not renew the lease of job %d (%s: %s)", ids[0],
                          type(exc).__name__, first_line(str(exc)))
                return [Renewal(ids[0], renewed=False)]
            middle = len(ids) // 2
            first = self._renew(ids[:middle], tokens[:middle])
            second = self._renew(ids[middle:], tokens[middle:])
            if first is None or second is None:
                return None
            return first + second

    def renew_leases(self) -> None:
        self._refused = set()
        ids, tokens = self._in_hand.snapshot()
        if not ids:
            self._renewed_at = self._clock.monotonic()
            return
        rows = self._renew(ids, tokens)
        if rows is None:  # stopping while the database was unreachable
            return
        since = self._clock.monotonic() - self._renewed_at
        self._renewed_at = self._clock.monotonic()
        ours = {r.id for r in rows}
        # Jobs finished since the snapshot are gone from in_hand; only the rest were lost.
        still_held = set(self._in_hand.snapshot()[0])
        lost = [i for i in ids if i not in ours and i in still_held
                and not self._in_hand.self_completed(i) and not self._in_hand.is_settling(i)]
        if lost:
            self._stats.lost_leases += len(lost)
            self._in_hand.remove(lost)
            log.warning("lost the lease of job(s) %s (expired and rescued elsewhere?): they "
                        "may run twice; the previous renewal was %.2f s ago (lease %g s)",
                        lost[:20], since, self._settings.lease_timeout)
        skipped = [r.id for r in rows if not r.renewed and r.id not in self._refused]
        if skipped:
            log.info("lease renewal skipped %d job(s) whose row another transaction holds "
                     "locked; renewing them at the next heartbeat: %s", len(skipped),
                     skipped[:20])

"""The per-queue pending-count limit, checked before enqueue writes anything.

Why it is shaped like this (full semantics in docs/backpressure.md):

* The limit lives in ``<schema>.queues`` so every process agrees on it.
* The check must not serialise application transactions, so there is no counter row
  updated inside the caller's transaction. It reads committed state only.
* The check must not cost more as the backlog grows: the pending count is counted no
  further than the limit (an index-only range scan), and each process re-counts a queue
  at most once per ``refresh_interval``. Between counts, the process adds the jobs it has
  enqueued itself to the last count; checking and taking a place happen under one lock,
  so callers of one process never overshoot between two counts.
* Nothing here blocks an event loop: :meth:`PendingLimits.reserve` is a plan
  (:mod:`pgjobs.plan`) that the sync and the async enqueue both run. The lock guards
  memory only and is never held across a query; a stale reading is re-counted by one
  caller while the others wait for that count's completion (a future: a thread blocks on
  it, a coroutine awaits it), so nobody takes a place on a reading about to be replaced.
* A full queue costs the database nothing more: rejections within the refresh interval
  are answered from memory.

Overshoot bound: the committed pending count of a queue can exceed its limit by at most
(a) the jobs other processes enqueued during one refresh interval, plus (b) the jobs in
transactions that were still uncommitted when the count was taken.
"""

from __future__ import annotations

import concurrent.futures
import threading
import time
from dataclasses import dataclass

from . import sql as S
from .errors import QueueFull
from .plan import Execute, Plan, Wait
from .sql import Statements

DEFAULT_REFRESH_INTERVAL = 0.1
DEFAULT_RETRY_AFTER = 1.0
#: How long a caller waits for another caller's count before counting itself. A count is
#: one index-only round trip; this only matters if that caller stalls (e.g. a sync
#: enqueue run on the event loop thread while a coroutine of that loop is counting).
COUNT_WAIT_SECONDS = 2.0


@dataclass
class _Reading:
    limit: int | None
    counted: int
    read_at: float
    added: int = 0


@dataclass
class Reservation:
    """Places taken in a queue by one enqueue call."""

    limits: PendingLimits
    reading: _Reading
    queue: str
    count: int

    def give_back(self, count: int | None = None) -> None:
        """Return places that were not used (insert failed, or a unique key matched)."""
        self.limits._give_back(self.reading, self.count if count is None else count)


class PendingLimits:
    """Per-process cache of queue limits and pending counts, shared by all callers
    (threads and event loops alike)."""

    def __init__(
        self,
        statements: Statements,
        *,
        default_limit: int | None,
        refresh_interval: float = DEFAULT_REFRESH_INTERVAL,
        retry_after: float = DEFAULT_RETRY_AFTER,
    ) -> None:
        self._statements = statements
        self._default_limit = default_limit
        self._refresh_interval = refresh_interval
        self._retry_after = retry_after
        self._readings: dict[str, _Reading] = {}
        # queue -> the count in flight; done when its reading is installed (or it failed).
        self._counting: dict[str, concurrent.futures.Future[None]] = {}
        self._lock = threading.Lock()  # memory only: never held across a query

    def reserve(self, queue: str, adding: int = 1) -> Plan[Reservation]:
        """Take ``adding`` places in ``queue`` or raise :class:`QueueFull` (a plan: run
        it with :func:`pgjobs.plan.run` / ``arun`` on the caller's connection).

        Check and reservation happen under one lock, so callers of this process can
        never both take the last place. Give back what was not inserted with
        :meth:`Reservation.give_back`.

        A stale reading is re-counted by one caller; the others wait for that count
        instead of taking places on the reading it is about to replace, and no two
        counts race to replace each other out of order. (Letting every caller count and
        take places meanwhile let 8 threads of one process overshoot a limit of 200 by
        11 on a fast local socket.) The count is one index-only round trip once per
        refresh interval.
        """
        waited = False
        while True:
            with self._lock:
                reading = self._readings.get(queue)
                if reading is not None and self._fresh(reading):
                    return self._take(queue, reading, adding)
                in_flight = self._counting.get(queue)
                if in_flight is not None and in_flight.done():  # never expected; no spin
                    in_flight = None
                if in_flight is None or waited:
                    mine: concurrent.futures.Future[None] = concurrent.futures.Future()
                    # RUNNING: nobody can cancel it, so set_result below always works.
                    mine.set_running_or_notify_cancel()
                    if in_flight is None:
                        self._counting[queue] = mine
            if in_flight is not None and not waited:
                yield Wait(in_flight, COUNT_WAIT_SECONDS)
                # Done: a fresh reading is installed (re-checked above). Timed out: the
                # other caller stalled, so this one counts for itself.
                waited = not in_flight.done()
                continue
            try:
                started = time.monotonic()
                rows = yield Execute(
                    self._statements.of(S.PENDING_LIMIT_AND_COUNT),
                    {"queue": queue, "default_limit": self._default_limit},
                )
                reading = _Reading(limit=rows[0][0], counted=rows[0][1] or 0, read_at=started)
                with self._lock:
                    current = self._readings.get(queue)
                    if current is None or current.read_at <= started:
                        self._readings[queue] = reading
                    # Taken on our own count even when refresh_interval is 0 (always stale).
                    return self._take(queue, reading, adding)
            finally:
                with self._lock:
                    if self._counting.get(queue) is mine:
                        del self._counting[queue]
                mine.set_result(None)

    def _fresh(self, reading: _Reading) -> bool:
        return time.monotonic() - reading.read_at < self._refresh_interval

    def _take(self, queue: str, reading: _Reading, adding: int) -> Reservation:
        # Under self._lock.
        seen = reading.counted + reading.added
        if reading.limit is not None and seen + adding > reading.limit:
            raise QueueFull(
                queue, pending=seen, limit=reading.limit,
                retry_after=self._retry_after, requested=adding,
            )
        reading.added += adding
        return Reservation(self, reading, queue, adding)

    def _give_back(self, reading: _Reading, count: int) -> None:
        # If a re-count replaced this reading meanwhile, the change is simply unused.
        with self._lock:
            reading.added -= min(max(count, 0), reading.added)

    def forget(self, queue: str | None = None) -> None:
        """Drop cached readings (e.g. after changing a limit from this process)."""
        with self._lock:
            if queue is None:
                self._readings.clear()
            else:
                self._readings.pop(queue, None)

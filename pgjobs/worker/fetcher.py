"""The fetcher: claims batches of due jobs into a small local buffer.

It claims when executor capacity frees up *and* more work is likely (the last claim was
full, or a NOTIFY arrived), when the fallback poll timer fires, or when the next
scheduled job becomes due; otherwise it sleeps. One claim statement takes up to the
free capacity (executors + prefetch buffer), so executors rarely wait on a round trip.
"""

from __future__ import annotations

import logging
import random
import threading
from typing import Protocol

from ..store import ClaimedJob, Conn, JobStore
from .clock import Clock
from .dbconn import ResilientConnection
from .inhand import InHand
from .service import ThreadService
from .settings import WorkerSettings

log = logging.getLogger("pgjobs.worker")

POLL_JITTER = 0.2
# Outcomes waiting to be written beyond which claiming pauses: enough to keep executors
# busy while the completer flushes, small enough that a stalled completer cannot leave
# tens of thousands of jobs leased (and the completion statement slow) behind it.
MAX_UNWRITTEN_BACKLOG = 1000
# A fetcher going to wait while an enqueue transaction is in flight (or while an enqueue
# probes a waiting lock) claims again after this long, doubling up to the poll interval,
# until its waiting locks and the wake-up key are granted.
MARK_RETRY_MIN = 0.005
# How often an all-queue fetcher looks whether paused queues hold a backlog, to pick
# the claim that jumps over it (sql.CLAIM_ANY_QUEUE_PAUSED_BACKLOG) only while they do.
PAUSED_RECHECK_SECONDS = 1.0
# Due jobs in paused queues from which jumping pays: stepping over a thousand index
# entries costs about what the larger claim's set-up does.
PAUSED_BACKLOG_ENOUGH = 1000


class JobSink(Protocol):
    """Where claimed jobs go: the sync executors' buffer, or a router that also feeds
    the coroutine executor (worker/aexecutor.py)."""

    def put(self, job: ClaimedJob, /) -> None: ...


class WaitingLocks(Protocol):
    """The locks that make enqueues notify this fetcher, held on the LISTEN connection
    (worker/waiting_locks.py): a generation names the connection that holds them."""

    def hold_waiting_locks(self) -> int | None: ...

    def release_waiting_locks(self) -> None: ...

    def holds_waiting_locks(self, generation: int) -> bool: ...


class Fetcher(ThreadService):
    """Claims jobs for ``capacity`` slots (executors plus prefetch)."""

    name = "fetcher"

    def __init__(
        self,
        store: JobStore,
        conn: ResilientConnection,
        clock: Clock,
        settings: WorkerSettings,
        *,
        worker_id: str,
        buffer: JobSink,
        in_hand: InHand,
        stopping: threading.Event | None = None,
    ) -> None:
        super().__init__(stopping)
        self._store = store
        self._conn = conn
        self._clock = clock
        self._queues = settings.queues
        capacity = self._capacity = settings.capacity
        # Wait for a few free slots before claiming again, so claims stay batched.
        self._min_batch = max(1, capacity // 4)
        self._buffer = buffer
        self._in_hand = in_hand
        self._lease_seconds = settings.lease_timeout
        self._worker_id = worker_id
        self._poll_interval = settings.poll_interval
        self._stopping = self.stopping
        self._cv = threading.Condition()
        # Executors plus prefetch: jobs claimed and not yet finished running.
        self._unfinished = 0
        # Jobs claimed whose outcome is not written yet (a superset of the above).
        self._unwritten = 0
        self._max_in_hand = capacity + MAX_UNWRITTEN_BACKLOG
        self._more_likely = True  # claim at start-up
        self._next_poll = 0.0
        self.claims = 0
        # Enqueues notify only while some fetcher waits (holds its waiting locks), so a
        # fetcher that finds too little says so before it relies on NOTIFYs; without a
        # listener (--poll-only) it never relies on them.
        self._waiting_locks: WaitingLocks | None = None
        self._waiting = False     # our waiting locks may be held
        self._confirmed = False   # ...and the wake-up key was granted after they were
        self._mark_retry = MARK_RETRY_MIN
        self._jump_paused = False
        self._paused_checked_at = float("-inf")

    def use_waiting_locks(self, locks: WaitingLocks) -> None:
        """Wait for NOTIFYs, advertised by ``locks`` (the listener); before it starts."""
        self._waiting_locks = locks

    # --- signals from the other parts ----------------------------------------------------

    def waiting_lost(self) -> None:
        """The LISTEN connection was replaced: our waiting locks went with it."""
        with self._cv:
            self._waiting = self._confirmed = False

    def wake(self) -> None:
        """Work may be waiting (a NOTIFY for our queues, or LISTEN just reconnected)."""
        with self._cv:
            self._more_likely = True
            self._cv.notify()

    def job_finished(self) -> None:
        """A claimed job's attempt ended (its outcome is queued for writing)."""
        with self._cv:
            self._unfinished -= 1
            self._notify_if_room()

    def jobs_settled(self, count: int) -> None:
        """``count`` claimed jobs have had their outcome written (or given up on).

        Jobs whose outcome is not written yet still count against ``max_in_hand``: if
        writing outcomes falls behind, claiming stops too, so the jobs a worker holds
        leases on stay bounded.
        """
        with self._cv:
            self._unwritten -= count
            self._notify_if_room()

    def _free(self) -> int:
        return min(self._capacity - self._unfinished, self._max_in_hand - self._unwritten)

    def _notify_if_room(self) -> None:
        if self._more_likely and self._free() >= self._min_batch:
            self._cv.notify()

    def wake_at(self, monotonic_time: float) -> None:
        """Claim again no later than ``monotonic_time`` (a retry becomes due then)."""
        with self._cv:
            if monotonic_time < self._next_poll:
                self._next_poll = monotonic_time
                self._cv.notify()

    def stop(self) -> None:
        """Stop claiming (the loop exits at once, even while waiting for capacity)."""
        super().stop()
        with self._cv:
            self._cv.notify()

    @property
    def outstanding(self) -> int:
        """Jobs claimed and not yet finished running."""
        return self._unfinished

    # --- the loop ------------------------------------------------------------------------

    def loop(self) -> None:
        while not self._stopping.is_set():
            try:
                wanted = self._wait_for_capacity_and_reason()
                if wanted:
                    self.claim(wanted)
            except Exception:
                log.exception("fetcher: unexpected error; retrying in 1s")
                self._stopping.wait(1.0)
        if self._waiting:
            self._set_busy()  # the locks end with the LISTEN connection anyway
        self._conn.discard()

    def _wait_for_capacity_and_reason(self) -> int:
        with self._cv:
            while not self._stopping.is_set():
                free = self._free()
                now = self._clock.monotonic()
                if free >= self._min_batch or (free > 0 and self._unfinished == 0):
                    if self._more_likely or now >= self._next_poll:
                        self._more_likely = False
                        return free
                    self._cv.wait(self._next_poll - now)
                else:
                    self._cv.wait(self._poll_interval)
        return 0

    def claim(self, wanted: int) -> None:
        """Claim up to ``wanted`` jobs into the buffer now (the loop decides when)."""
        jump_paused = self._jump_paused

        def claim(conn: Conn) -> list[ClaimedJob]:
            return self._store.claim(conn, limit=wanted, lease_seconds=self._lease_seconds,
                                     worker_id=self._worker_id, queues=self._queues,
                                     now=self._clock.sql_now(), jump_paused=jump_paused)

        jobs = self._conn.run(claim)
        if jobs is None:  # stopping while the database was unreachable
            return
        self.claims += 1
        # Claim order is not row order (UPDATE … RETURNING); run by priority, then due time.
        jobs.sort(key=lambda j: (-j.priority, j.due_epoch, j.id))
        if jobs:
            self._in_hand.add((j.id, j.token) for j in jobs)
            with self._cv:
                self._unfinished += len(jobs)
                self._unwritten += len(jobs)
            for job in jobs:
                self._buffer.put(job)
        if self._queues is None:  # after the jobs are handed over: off the pickup path
            self._check_paused_backlog()
        if len(jobs) == wanted:
            with self._cv:
                self._more_likely = True
            if self._waiting:
                self._set_busy()
            return
        if self._waiting_locks is not None and not self._confirmed:
            self._go_waiting(self._waiting_locks)
            return
        self._schedule_next_poll()

    def _check_paused_backlog(self) -> None:
        """Whether paused queues hold a backlog, for the next claims: read at most once
        a second (a stale answer only picks the slower of two correct claims)."""
        now = self._clock.monotonic()
        if now - self._paused_checked_at >= PAUSED_RECHECK_SECONDS:
            backlog = self._conn.run(lambda conn: self._store.paused_backlog(
                conn, enough=PAUSED_BACKLOG_ENOUGH))
            if backlog is not None:  # None: stopping while the database was unreachable
                self._jump_paused = backlog
            self._paused_checked_at = now

    def _go_waiting(self, locks: WaitingLocks) -> None:
        """Hold the waiting locks, try the wake-up key, then claim once more (the
        race-closing claim; see ``sql.TRY_WAKE_KEY``)."""
        self._waiting = True  # from here on, busy again means releasing the locks
        generation = locks.hold_waiting_locks()
        granted: bool | None = False
        if generation is not None:
            granted = self._conn.run(self._store.try_wake_key)
            if granted is None:  # stopping while the database was unreachable
                return
        with self._cv:
            if granted and generation is not None and locks.holds_waiting_locks(generation):
                # Every enqueue that missed our locks has committed: this claim sees its
                # jobs; every later enqueue notifies us.
                self._confirmed = True
                self._mark_retry = MARK_RETRY_MIN
                self._more_likely = True
            else:
                # An enqueue that may have missed our locks is still open (or a lock was
                # refused, or the LISTEN connection is down): claim again soon rather
                # than wait for it while holding the key.
                self._next_poll = self._clock.monotonic() + self._mark_retry
                self._mark_retry = min(self._mark_retry * 2, self._poll_interval)

    def _set_busy(self) -> None:
        """A full claim: enqueues need not wake us (release our waiting locks)."""
        self._waiting = self._confirmed = False
        self._mark_retry = MARK_RETRY_MIN
        if self._waiting_locks is not None:
            self._waiting_locks.release_waiting_locks()

    def _schedule_next_poll(self) -> None:
        """Sleep until the fallback poll, or until the next scheduled job is due."""
        delay = self._poll_interval * random.uniform(1 - POLL_JITTER, 1 + POLL_JITTER)
        due_in = self._conn.run(lambda conn: self._store.seconds_until_next_due(
            conn, queues=self._queues, now=self._clock.sql_now()))
        if due_in is not None:
            delay = max(0.0, min(delay, due_in))
        with self._cv:
            self._next_poll = self._clock.monotonic() + delay

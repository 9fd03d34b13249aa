"""The completer: writes outcomes in batches, one statement per flush.

One thread, one connection, outcomes only (leases are the heartbeat's, maintenance has
its own service). It blocks for the first outcome, then takes everything else already
queued: under load batches grow by themselves, when idle an outcome is written within one
round trip. A flush the server refuses is split until the one outcome that cannot be
written is alone, and that job still ends with a storable description (``_write_alone``):
a batch is never dropped.
"""

from __future__ import annotations

import logging
import queue
import random
from collections.abc import Callable
from typing import Any, Protocol

from ..retry import default_backoff
from ..store import ClaimedJob, JobStore, KeptResult
from .clock import Clock
from .dbconn import ResilientConnection
from .errortext import first_line, storable
from .inhand import InHand
from .jobs import Outcome, Result
from .outcome_log import OutcomeLog
from .service import ThreadService
from .stats import WorkerStats

log = logging.getLogger("pgjobs.worker")

MAX_BATCH = 2000
HISTOGRAM_SAMPLES_PER_FLUSH = 16


class Claimer(Protocol):
    """What the completer tells the fetcher."""

    def jobs_settled(self, count: int) -> None:
        """``count`` claimed jobs have their outcome written (or given up on)."""

    def wake_at(self, monotonic_time: float) -> None:
        """A retry becomes due then: claim again no later than that."""


class Completer(ThreadService):
    """Batched outcome writes."""

    name = "completer"

    def __init__(
        self,
        store: JobStore,
        conn: ResilientConnection,
        clock: Clock,
        *,
        in_hand: InHand,
        stats: WorkerStats,
        claimer: Claimer,
        instruments: Any = None,
        outcome_log: OutcomeLog | None = None,
        on_outcomes: Callable[[list[Result]], None] | None = None,
    ) -> None:
        super().__init__()
        self._store = store
        self._conn = conn
        self._clock = clock
        self._in_hand = in_hand
        self.stats = stats
        self._claimer = claimer
        self._instruments = instruments
        self._log = outcome_log or OutcomeLog(clock)
        self._on_outcomes = on_outcomes
        self._results: queue.SimpleQueue[Result | None] = queue.SimpleQueue()

    def report(self, result: Result) -> None:
        """Queue an outcome for the next flush (called from executor threads)."""
        self._results.put(result)

    def stop(self) -> None:
        """Flush everything reported so far, then stop."""
        super().stop()
        self._results.put(None)

    # --- the loop ------------------------------------------------------------------------

    def loop(self) -> None:
        self._conn.run(lambda conn: None)  # connect now: the first outcome waits for nothing
        while True:
            # Once stopping, never block: the wake-up sentinel may be consumed already.
            batch = self._take(0.0 if self.stopping.is_set()
                               else self._log.seconds_to_summary())
            if batch:
                try:
                    self.flush(batch)
                except Exception:  # flush isolates statement errors; this is a bug
                    log.exception("completer: unexpected error writing %d outcome(s)",
                                  len(batch))
            self._log.tick()
            if self.stopping.is_set() and self._results.empty() and not batch:
                break
        self._conn.discard()

    def _take(self, timeout: float | None) -> list[Result]:
        batch: list[Result] = []
        try:
            first = self._results.get(timeout=timeout)
            if first is not None:
                batch.append(first)
            while len(batch) < MAX_BATCH:
                item = self._results.get_nowait()
                if item is not None:
                    batch.append(item)
        except queue.Empty:
            pass
        return batch

    # --- outcomes ------------------------------------------------------------------------

    def flush(self, batch: list[Result]) -> None:
        """Write a batch of outcomes (never drops one; see the module doc)."""
        finished = [r for r in batch if r.outcome is not Outcome.RELEASE]
        released = [r for r in batch if r.outcome is Outcome.RELEASE]
        # Before the write: a renewal racing it must not take these rows for lost leases.
        self._in_hand.settling(r.job.id for r in batch)
        if finished:
            self._isolating(finished, self._write_finished)
        if released:
            self._isolating(released, self._write_released)
        self._in_hand.remove(r.job.id for r in batch)
        self._claimer.jobs_settled(len(batch))
        delays = [r.delay for r in finished if r.outcome is Outcome.RETRY]
        if delays:  # the fetcher would otherwise only find them at its next poll
            self._claimer.wake_at(self._clock.monotonic() + min(delays))
        self._log.record(finished)
        if self._instruments is not None:
            self._record(finished)
        if self._on_outcomes is not None:
            self._on_outcomes(batch)

    def _isolating(self, batch: list[Result], write: Callable[[list[Result]], None]) -> None:
        """``write(batch)``; if refused, halves until the refused outcome is alone."""
        try:
            write(batch)
        except Exception as exc:
            if len(batch) == 1:
                self._write_alone(batch[0], exc)
                return
            middle = len(batch) // 2
            self._isolating(batch[:middle], write)
            self._isolating(batch[middle:], write)

    def _write_finished(self, batch: list[Result]) -> None:
        succeeded: list[ClaimedJob] = []
        retried: list[tuple[ClaimedJob, float, str]] = []
        dead: list[tuple[ClaimedJob, str]] = []
        cancelled: list[tuple[ClaimedJob, str]] = []
        snoozed: list[tuple[ClaimedJob, float]] = []
        results: list[KeptResult] = []
        for r in batch:
            if r.outcome is Outcome.SUCCEEDED:
                succeeded.append(r.job)
                if r.result is not None and r.result_ttl:
                    results.append(KeptResult(r.job, r.result, r.result_ttl,
                                              self._in_hand.self_completed(r.job.id)))
            elif r.outcome is Outcome.RETRY:
                retried.append((r.job, r.delay, storable(r.error or "failed")))
            elif r.outcome is Outcome.SNOOZED:
                snoozed.append((r.job, r.delay))
            elif r.outcome is Outcome.CANCELLED:
                cancelled.append((r.job, storable(r.error or "cancelled")))
            else:
                dead.append((r.job, storable(r.error or "failed")))
        durations = [(r.job.id, r.duration) for r in batch]
        now = self._clock.sql_now()
        written = self._conn.run(lambda c: self._store.complete(
            c, succeeded=succeeded, retried=retried, dead=dead, durations=durations, now=now,
            cancelled=cancelled, snoozed=snoozed, results=results))
        if written is None:  # aborted: the database stayed unreachable past shutdown
            return
        # A job its handler completed in its own transaction is gone already: success.
        self_completed = sum(1 for r in batch if r.outcome is Outcome.SUCCEEDED
                             and self._in_hand.self_completed(r.job.id))
        self.stats.succeeded += written.succeeded
        self.stats.retried += written.retried
        self.stats.dead_lettered += written.dead_lettered
        self.stats.cancelled += written.cancelled
        self.stats.snoozed += written.snoozed
        self.stats.timed_out += sum(1 for r in batch if r.timed_out)
        missing = len(batch) - written.total
        if missing and self_completed:
            taken = min(missing, self_completed)
            self.stats.succeeded += taken
            missing -= taken
        if missing:
            log.warning("%d outcome(s) not written: their lease was lost (the job was "
                        "rescued and may run again)", missing)

    def _write_released(self, batch: list[Result]) -> None:
        jobs = [r.job for r in batch]
        count = self._conn.run(lambda c: self._store.release(c, jobs))
        if count is not None:
            self.stats.released += count

    def _write_alone(self, result: Result, exc: Exception) -> None:
        """The last resort for one outcome the database refused.

        First the job fails as its attempts say (retry or dead letter) with a description
        of what happened; if even that is refused (e.g. a row changed by hand that can no
        longer be pending), it is buried with its names bounded. Only when that fails too
        is it left to its lease, which expires and lets the rescue decide.
        """
        job = result.job
        problem = storable(f"{type(exc).__name__}: {first_line(str(exc), 500)}")
        what = (f"pgjobs could not store this attempt's outcome ({result.outcome.value}): "
                f"{problem}")
        if result.error:
            what += f"; the attempt's error was: {result.error}"
        log.error("job %d (%s): could not write its outcome (%s): %s", job.id, job.task,
                  result.outcome.value, problem)
        if result.outcome is Outcome.RELEASE:
            return  # nothing else to say: its lease expires and it is rescued
        if job.attempt < job.max_attempts:
            fallback = Result(job, Outcome.RETRY, error=storable(what),
                              delay=default_backoff(job.attempt), duration=result.duration)
        else:
            fallback = Result(job, Outcome.DEAD, error=storable(what), duration=result.duration)
        try:
            self._write_finished([fallback])
            return
        except Exception as second:
            what += f"; then: {type(second).__name__}: {first_line(str(second), 500)}"
        now = self._clock.sql_now()
        try:
            buried = self._conn.run(
                lambda c: self._store.bury_unwritable(c, job, storable(what), now))
        except Exception:
            log.exception("job %d: could not bury it either; its lease will expire and the "
                          "rescue will retry it", job.id)
            return
        if buried:
            self.stats.dead_lettered += 1

    def _record(self, finished: list[Result]) -> None:
        instruments = self._instruments
        counts: dict[tuple[str, str, str], int] = {}
        for r in finished:
            key = (r.job.queue, r.job.task, r.outcome.value)
            counts[key] = counts.get(key, 0) + 1
            if r.timed_out:
                key = (r.job.queue, r.job.task, "timed_out")
                counts[key] = counts.get(key, 0) + 1
        # Outcome counts are exact (one add per kind per flush). Histogram records cost
        # microseconds each in the SDK; under load a uniform sample per flush keeps the
        # distributions (and their quantiles) while bounding that cost.
        if len(finished) > HISTOGRAM_SAMPLES_PER_FLUSH:
            finished = random.sample(finished, HISTOGRAM_SAMPLES_PER_FLUSH)
        for r in finished:
            attrs = {"queue": r.job.queue, "task": r.job.task}
            instruments.duration.record(r.duration, {**attrs, "outcome": r.outcome.value})
            if r.pickup_latency is not None:
                instruments.pickup.record(r.pickup_latency, attrs)
        for (queue_name, task, outcome), n in counts.items():
            instruments.outcomes.add(n, {"queue": queue_name, "task": task, "outcome": outcome})

"""The completer: writes outcomes in batches, and runs the worker's periodic duties.

One thread, one connection. Outcomes are flushed as soon as the thread is free (results
that arrive during a flush make up the next batch), one statement per flush. Between
flushes it renews leases (heartbeat), rescues jobs whose lease expired (any worker may:
SKIP LOCKED keeps rescuers apart), pings the LISTEN connection, and runs the executors'
deadline watchdog.
"""

from __future__ import annotations

import logging
import queue
import random
import threading
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any

import psycopg

from ..retry import default_backoff
from ..sql import Statements
from .dbconn import ResilientConnection
from .errortext import first_line, storable
from .inhand import InHand
from .jobs import Outcome, Result

log = logging.getLogger("pgjobs.worker")

MAX_BATCH = 2000
WATCHDOG_INTERVAL = 0.05
RETENTION_INTERVAL = 600.0
HISTOGRAM_SAMPLES_PER_FLUSH = 16
#: Flushes of at most this many outcomes use a prepared statement (see _write).
PREPARED_FLUSH_MAX = 32
#: Leases are renewed this many times per lease period, so a live worker keeps its jobs
#: through a stall (GIL-bound handler, slow flush, CPU starvation) of up to 3/4 of
#: ``--lease-timeout``. With half the lease as slack, a 1 s lease was lost by a live
#: worker whose handler was zero-filling 900 MB on a loaded CI machine.
HEARTBEATS_PER_LEASE = 4
MIN_HEARTBEAT_INTERVAL = 0.1


def array_literal(values: Iterable[int | float | str]) -> str:
    """A PostgreSQL array literal of job ids, lease tokens or seconds, sent as one
    parameter (the statements cast it, e.g. ``%(ok_ids)s::bigint[]``).

    Adapting lists element by element was the largest cost in the completer's profile.
    Numbers and UUID text never contain commas, quotes, braces or spaces, so joining
    their ``str()`` is an exact literal; never use this for arbitrary text.
    """
    return "{" + ",".join(map(str, values)) + "}"


@dataclass
class WorkerStats:
    """Running totals since the worker started (read by the CLI's live view)."""

    succeeded: int = 0
    retried: int = 0
    dead_lettered: int = 0
    timed_out: int = 0
    released: int = 0
    rescued: int = 0
    lost_leases: int = 0

    @property
    def finished(self) -> int:
        return self.succeeded + self.dead_lettered


class _Timer:
    def __init__(self, interval: float, action: Callable[[], None]) -> None:
        self.interval = interval
        self.action = action
        self.due = time.monotonic() + interval


class Completer:
    """Batched completion writes plus heartbeat, rescue and listener ping timers."""

    def __init__(
        self,
        sql: Statements,
        conn: ResilientConnection,
        *,
        in_hand: InHand,
        lease_seconds: float,
        stats: WorkerStats,
        watchdog: Callable[[], None],
        ping: Callable[[psycopg.Connection[Any]], None] | None,
        ping_interval: float,
        rescue_interval: float,
        register: Callable[[psycopg.Connection[Any]], None] | None = None,
        unregister: tuple[Any, dict[str, Any]] | None = None,
        retention: Callable[[psycopg.Connection[Any]], None] | None = None,
        instruments: Any = None,
        on_settled: Callable[[int], None] = lambda count: None,
        on_retry_due: Callable[[float], None] = lambda monotonic_time: None,
        on_outcomes: Callable[[list[Result]], None] | None = None,
    ) -> None:
        self._sql = sql
        self._conn = conn
        self._in_hand = in_hand
        self._lease_seconds = lease_seconds
        self.stats = stats
        self._results: queue.SimpleQueue[Result | None] = queue.SimpleQueue()
        self._closing = threading.Event()
        self._on_outcomes = on_outcomes
        self._on_settled = on_settled
        self._on_retry_due = on_retry_due
        self._instruments = instruments
        self._register = register
        self._renewed_at = time.monotonic()
        self._unregister = unregister
        self._timers = [
            _Timer(WATCHDOG_INTERVAL, watchdog),
            _Timer(max(MIN_HEARTBEAT_INTERVAL, lease_seconds / HEARTBEATS_PER_LEASE),
                   self._heartbeat),
            _Timer(rescue_interval, self._rescue),
        ]
        if ping is not None:
            self._timers.append(_Timer(ping_interval, lambda: self._run_db(ping)))
        if retention is not None:
            timer = _Timer(RETENTION_INTERVAL, lambda: self._run_db(retention))
            timer.due = time.monotonic() + 5.0  # soon after start, then every interval
            self._timers.append(timer)
        self.thread = threading.Thread(target=self._loop, name="pgjobs-completer", daemon=True)

    def report(self, result: Result) -> None:
        """Queue an outcome for the next flush (called from executor threads)."""
        self._results.put(result)

    def close(self) -> None:
        """Flush everything reported so far, then stop."""
        self._closing.set()
        self._results.put(None)

    # --- the loop ------------------------------------------------------------------------

    def _loop(self) -> None:
        while True:
            try:
                if self._step():
                    self._finish()
                    return
            except Exception:
                log.exception("completer: unexpected error; continuing")
                time.sleep(0.1)

    def _step(self) -> bool:
        now = time.monotonic()
        wait = max(0.0, min(t.due for t in self._timers) - now)
        batch: list[Result] = []
        try:
            first = self._results.get(timeout=wait)
            if first is not None:
                batch.append(first)
            while len(batch) < MAX_BATCH:
                item = self._results.get_nowait()
                if item is not None:
                    batch.append(item)
        except queue.Empty:
            pass
        if batch:
            self.flush(batch)
        now = time.monotonic()
        for timer in self._timers:
            if now >= timer.due:
                timer.due = now + timer.interval
                if self._closing.is_set() and timer.action is not self._timers[0].action:
                    continue  # while closing only flushes (and the watchdog) matter
                timer.action()
        return self._closing.is_set() and self._results.empty() and not batch

    def _finish(self) -> None:
        if self._unregister is not None:
            try:
                self._conn.connection().execute(*self._unregister)
            except Exception:  # the row ages out; worker_status shows it as not alive
                log.debug("could not remove the workers row", exc_info=True)
        self._conn.discard()

    def _run_db(self, fn: Callable[[psycopg.Connection[Any]], Any]) -> Any:
        return self._conn.run(fn)

    # --- outcomes ------------------------------------------------------------------------

    def flush(self, batch: list[Result]) -> None:
        """Write a batch of outcomes: one statement (plus one for shutdown releases).

        Connection errors are retried inside. A statement the server (or the driver)
        refuses is split in halves until the one outcome that cannot be written is
        alone; that job still gets a storable outcome (see ``_write_alone``). A batch is
        never dropped.
        """
        self._write_isolating(batch)
        self._in_hand.remove(r.job.id for r in batch)
        self._on_settled(len(batch))
        delays = [r.delay for r in batch if r.outcome is Outcome.RETRY]
        if delays:  # the fetcher would otherwise only find them at its next poll
            self._on_retry_due(time.monotonic() + min(delays))
        if self._instruments is not None:
            self._record(batch)
        if self._on_outcomes is not None:
            self._on_outcomes(batch)

    def _write_isolating(self, batch: list[Result]) -> None:
        try:
            self._write(batch)
        except Exception as exc:
            if len(batch) == 1:
                self._write_alone(batch[0], exc)
                return
            middle = len(batch) // 2
            self._write_isolating(batch[:middle])
            self._write_isolating(batch[middle:])

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
            self._write([fallback])
            return
        except Exception as second:
            what += f"; then: {type(second).__name__}: {first_line(str(second), 500)}"
        params = {"now": None, "id": job.id, "token": job.token, "error": storable(what)}
        try:
            rows = self._run_db(lambda c: c.execute(self._sql.BURY_UNWRITABLE, params,
                                                    prepare=False).fetchall())
        except Exception:
            log.exception("job %d: could not bury it either; its lease will expire and the "
                          "rescue will retry it", job.id)
            return
        if rows:
            self.stats.dead_lettered += 1

    def _write(self, batch: list[Result]) -> None:
        ok = [r for r in batch if r.outcome is Outcome.SUCCEEDED]
        retry = [r for r in batch if r.outcome is Outcome.RETRY]
        dead = [r for r in batch if r.outcome is Outcome.DEAD]
        release = [r for r in batch if r.outcome is Outcome.RELEASE]
        if ok or retry or dead:
            params = {
                "now": None,
                "ok_ids": array_literal(r.job.id for r in ok),
                "ok_tokens": array_literal(r.job.token for r in ok),
                "retry_ids": array_literal(r.job.id for r in retry),
                "retry_tokens": array_literal(r.job.token for r in retry),
                "retry_delays": array_literal(r.delay for r in retry),
                "retry_errors": [storable(r.error or "failed") for r in retry],
                "dead_ids": array_literal(r.job.id for r in dead),
                "dead_tokens": array_literal(r.job.token for r in dead),
                "dead_errors": [storable(r.error or "failed") for r in dead],
                "all_ids": array_literal(r.job.id for r in batch),
                "all_durations": array_literal(r.duration for r in batch),
            }
            # Small flushes (an idle worker's) reuse a prepared plan; large ones are
            # planned for their arrays: the generic plan joins them pairwise, O(n²).
            prepare = self._conn.prepare_statements and len(batch) <= PREPARED_FLUSH_MAX
            row = self._run_db(lambda c: c.execute(self._sql.COMPLETE_BATCH, params,
                                                   prepare=prepare).fetchone())
            if row is not None:
                succeeded, retried, buried, _ = row
                self.stats.succeeded += succeeded
                self.stats.retried += retried
                self.stats.dead_lettered += buried
                self.stats.timed_out += sum(1 for r in batch if r.timed_out)
                written = succeeded + retried + buried
                if written < len(ok) + len(retry) + len(dead):
                    log.warning("%d outcome(s) not written: their lease was lost (the job was "
                                "rescued and may run again)",
                                len(ok) + len(retry) + len(dead) - written)
        if release:
            params = {"ids": array_literal(r.job.id for r in release),
                      "tokens": array_literal(r.job.token for r in release)}
            rows = self._run_db(
                lambda c: c.execute(self._sql.RELEASE_JOBS, params, prepare=False).fetchall())
            if rows is not None:
                self.stats.released += len(rows)

    def _record(self, batch: list[Result]) -> None:
        instruments = self._instruments
        counts: dict[tuple[str, str, str], int] = {}
        finished = [r for r in batch if r.outcome is not Outcome.RELEASE]
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

    # --- periodic duties -----------------------------------------------------------------

    def _heartbeat(self) -> None:
        self._renew_leases()
        if self._register is not None:  # after the leases: those are what expire
            self._run_db(self._register)

    def _renew_leases(self) -> None:
        ids, tokens = self._in_hand.snapshot()
        if not ids:
            self._renewed_at = time.monotonic()
            return
        params = {"now": None, "ids": array_literal(ids), "tokens": array_literal(tokens),
                  "lease_seconds": self._lease_seconds}
        rows = self._run_db(
            lambda c: c.execute(self._sql.HEARTBEAT, params, prepare=False).fetchall())
        if rows is None:
            return
        since = time.monotonic() - self._renewed_at
        self._renewed_at = time.monotonic()
        kept = {r[0] for r in rows}
        lost = [i for i in ids if i not in kept]
        # Jobs finished since the snapshot are gone from in_hand; only the rest were lost.
        still_held = set(self._in_hand.snapshot()[0])
        lost = [i for i in lost if i in still_held]
        if lost:
            self.stats.lost_leases += len(lost)
            self._in_hand.remove(lost)
            log.warning("lost the lease of job(s) %s (expired and rescued elsewhere?): they "
                        "may run twice; the previous renewal was %.2f s ago (lease %g s)",
                        lost[:20], since, self._lease_seconds)

    def _rescue(self) -> None:
        params = {"now": None, "limit": 1000}
        rows = self._run_db(lambda c: c.execute(self._sql.RESCUE_EXPIRED, params).fetchall())
        if not rows:
            return
        rescued = [r for r in rows if r[0] == "rescued"]
        buried = [r for r in rows if r[0] == "dead"]
        self.stats.rescued += len(rescued)
        if self._instruments is not None:
            for _, _, queue_name, task in rescued:
                self._instruments.outcomes.add(
                    1, {"queue": queue_name, "task": task, "outcome": "rescued"})
        if rescued:
            log.warning("rescued %d job(s) whose worker stopped renewing its lease: %s",
                        len(rescued), [r[1] for r in rescued][:20])
        if buried:
            log.warning("%d job(s) with an expired lease were out of attempts and moved to "
                        "dead_letters: %s", len(buried), [r[1] for r in buried][:20])

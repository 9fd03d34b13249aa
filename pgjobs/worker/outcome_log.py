"""Log lines an operator can use: every retry (INFO) and dead letter (WARNING).

Each line names the job id, task, attempt and the error's first line, with the same
facts as structured fields (``job_id``, ``task``, ``attempt``, ``error``) for
``--log-format json``. Under a flood (more than ``per_second`` in one second) the rest
of that second is summed up in one line instead.
"""

from __future__ import annotations

import logging
from collections import Counter
from collections.abc import Iterable

from .clock import Clock
from .errortext import first_line
from .jobs import Outcome, Result

log = logging.getLogger("pgjobs.worker.outcomes")

DEFAULT_PER_SECOND = 20


class OutcomeLog:
    """Rate-limited retry and dead-letter lines (called by the completer only)."""

    def __init__(self, clock: Clock, per_second: int = DEFAULT_PER_SECOND) -> None:
        self._clock = clock
        self._per_second = per_second
        self._window_start: float | None = None
        self._logged = 0
        self._retries: Counter[str] = Counter()
        self._dead: Counter[str] = Counter()

    def record(self, results: Iterable[Result]) -> None:
        """Log the retries and dead letters among outcomes just written."""
        for r in results:
            if r.outcome is Outcome.CANCELLED:
                # Never a flood: only jobs a worker holds can end cancelled here.
                job = r.job
                log.info("job %d (%s) cancelled on attempt %d/%d: %s", job.id, job.task,
                         job.attempt, job.max_attempts, first_line(r.error),
                         extra={"job_id": job.id, "task": job.task, "queue": job.queue,
                                "attempt": job.attempt, "error": first_line(r.error)})
                continue
            if r.outcome is not Outcome.RETRY and r.outcome is not Outcome.DEAD:
                continue
            now = self._clock.monotonic()
            if self._window_start is None or now - self._window_start >= 1.0:
                self._summarise(now)
                self._window_start = now
            if self._logged >= self._per_second:
                (self._retries if r.outcome is Outcome.RETRY else self._dead)[r.job.task] += 1
                continue
            self._logged += 1
            self._line(r)

    def seconds_to_summary(self) -> float | None:
        """When a pending summary line is due (None: nothing held back)."""
        if self._window_start is None or not (self._retries or self._dead):
            return None
        return max(0.0, self._window_start + 1.0 - self._clock.monotonic())

    def tick(self) -> None:
        """Write the summary of a finished second, if one is held back."""
        now = self._clock.monotonic()
        if self._window_start is not None and now - self._window_start >= 1.0:
            self._summarise(now)
            self._window_start = None

    def _summarise(self, now: float) -> None:
        self._logged = 0
        if not (self._retries or self._dead):
            return
        retries, dead = sum(self._retries.values()), sum(self._dead.values())
        tasks = (self._retries + self._dead).most_common(5)
        log.log(logging.WARNING if dead else logging.INFO,
                "%d more retries and %d more dead letters in the last second (over %d per "
                "second are summed up): %s", retries, dead, self._per_second,
                ", ".join(f"{task}: {n}" for task, n in tasks),
                extra={"retried": retries, "dead_lettered": dead})
        self._retries.clear()
        self._dead.clear()

    @staticmethod
    def _line(r: Result) -> None:
        job = r.job
        error = first_line(r.error)
        fields = {"job_id": job.id, "task": job.task, "queue": job.queue,
                  "attempt": job.attempt, "max_attempts": job.max_attempts, "error": error}
        if r.outcome is Outcome.RETRY:
            log.info("job %d (%s) attempt %d/%d failed, retrying in %.1fs: %s", job.id,
                     job.task, job.attempt, job.max_attempts, r.delay, error,
                     extra={**fields, "retry_in": r.delay})
        else:
            log.warning("job %d (%s) moved to dead_letters after attempt %d/%d: %s", job.id,
                        job.task, job.attempt, job.max_attempts, error, extra=fields)

"""What flows between the worker's parts: claimed jobs and their outcomes."""

from __future__ import annotations

import enum
from dataclasses import dataclass

from ..store import ClaimedJob

__all__ = ["ClaimedJob", "Outcome", "Result"]


class Outcome(enum.Enum):
    """How an attempt ended, i.e. which write the completer makes."""

    SUCCEEDED = "succeeded"
    RETRY = "retried"
    DEAD = "dead_lettered"
    RELEASE = "released"  # shutdown: back to pending, attempt not charged
    CANCELLED = "cancelled"  # app.cancel: to dead_letters with reason 'cancelled'
    SNOOZED = "snoozed"  # pgjobs.Snooze: back to pending after `delay`, attempt given back


@dataclass(slots=True)
class Result:
    """One attempt's outcome, queued for the completer's next batched flush."""

    job: ClaimedJob
    outcome: Outcome
    error: str | None = None
    delay: float = 0.0
    duration: float = 0.0
    timed_out: bool = False
    pickup_latency: float | None = None
    result: str | None = None  # JSON return value, kept for tasks with result_ttl
    result_ttl: float | None = None

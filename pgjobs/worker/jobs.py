"""What flows between the worker's parts: claimed jobs and their outcomes."""

from __future__ import annotations

import datetime as dt
import enum
from dataclasses import dataclass
from typing import Any


@dataclass(slots=True)
class ClaimedJob:
    """A job this worker holds a lease on (one row returned by the claim)."""

    id: int
    queue: str
    task: str
    args: Any  # JSON text as claimed; the executor decodes it
    priority: int
    attempt: int
    max_attempts: int
    due_epoch: float  # next_run_at as Unix time: cheaper to load than a datetime
    created_at: dt.datetime
    token: str  # the lease token (a UUID) as text: loaded and sent back without parsing
    trace_context: Any  # JSON text or None

    @classmethod
    def from_row(cls, row: tuple[Any, ...]) -> ClaimedJob:
        (job_id, queue, task, args, priority, attempt, max_attempts, due_epoch, created_at,
         token, trace_context) = row
        return cls(job_id, queue, task, args, priority, attempt, max_attempts, due_epoch,
                   created_at, token, trace_context)


class Outcome(enum.Enum):
    """How an attempt ended, i.e. which write the completer makes."""

    SUCCEEDED = "succeeded"
    RETRY = "retried"
    DEAD = "dead_lettered"
    RELEASE = "released"  # shutdown: back to pending, attempt not charged


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

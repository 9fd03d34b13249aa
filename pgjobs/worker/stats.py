"""What an embedding program can read about a running worker."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass
class WorkerStats:
    """Running totals since the worker started, counted when outcomes are *written*.

    A program embedding a worker can poll these (or set ``worker.on_outcomes``) to know
    that a job's outcome is in the database.
    """

    succeeded: int = 0
    retried: int = 0
    dead_lettered: int = 0
    timed_out: int = 0
    released: int = 0
    rescued: int = 0
    lost_leases: int = 0
    cancelled: int = 0  # ended cancelled (dead_letters, reason 'cancelled')
    snoozed: int = 0

    @property
    def finished(self) -> int:
        return self.succeeded + self.dead_lettered + self.cancelled

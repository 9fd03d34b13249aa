"""``pgjobs.JobInfo``: a job as ``app.get_job`` / ``app.wait_for`` / ``pgjobs jobs`` see it."""

from __future__ import annotations

import datetime as dt
from dataclasses import asdict, dataclass
from typing import Any

#: Every state a JobInfo can have. ``pending`` is due, ``scheduled`` is pending but not
#: yet due; ``succeeded`` is known only while the task's ``result_ttl`` lasts.
STATES = ("pending", "scheduled", "running", "succeeded", "dead", "cancelled")
FINISHED_STATES = frozenset({"succeeded", "dead", "cancelled"})


@dataclass(frozen=True, slots=True)
class JobInfo:
    """One job: live (``pending``, ``scheduled``, ``running``), or finished
    (``succeeded`` with its JSON ``result`` while ``result_ttl`` lasts; ``dead`` or
    ``cancelled`` while its ``dead_letters`` row is kept, ``error`` saying why)."""

    id: int
    queue: str
    task: str
    args: Any
    state: str
    attempts: int
    max_attempts: int
    result: Any
    error: str | None
    created_at: dt.datetime
    finished_at: dt.datetime | None

    @property
    def finished(self) -> bool:
        """True for ``succeeded``, ``dead`` and ``cancelled``."""
        return self.state in FINISHED_STATES

    def to_json(self) -> dict[str, Any]:
        """The fields as JSON-ready values (timestamps in ISO 8601)."""
        out = asdict(self)
        for key in ("created_at", "finished_at"):
            value = out[key]
            out[key] = value.isoformat() if value is not None else None
        return out

"""The one clock the worker reads: injected everywhere time matters.

``monotonic()`` paces the worker (timers, deadlines, lease renewals); ``wall()`` is Unix
time (pickup latency); ``sql_now()`` is the ``now`` parameter of time-dependent
statements. The system clock passes ``None`` there, so the *database's* clock decides
due times and lease expiry and the workers' clocks may drift without harm. A
:class:`FakeClock` passes its own time instead: component tests move it forward and
the same statements see backoff, lease expiry and retention happen, without sleeping.
"""

from __future__ import annotations

import datetime as dt
import threading
import time
from typing import Protocol


class Clock(Protocol):
    """What the worker's services ask about time."""

    def monotonic(self) -> float:
        """Seconds on a clock that never goes back (pacing, deadlines)."""

    def wall(self) -> float:
        """Unix time in seconds."""

    def sql_now(self) -> dt.datetime | None:
        """The ``now`` bound into SQL: None means the database's own ``now()``."""


class SystemClock:
    """The real clock; SQL uses the server's time."""

    def monotonic(self) -> float:
        return time.monotonic()

    def wall(self) -> float:
        return time.time()

    def sql_now(self) -> dt.datetime | None:
        return None


class FakeClock:
    """A clock that only moves when told to (``advance``); SQL sees the same time."""

    def __init__(self, start: dt.datetime | None = None) -> None:
        self._start = start or dt.datetime.now(dt.UTC)
        self._offset = 0.0
        self._lock = threading.Lock()

    def advance(self, seconds: float) -> None:
        with self._lock:
            self._offset += seconds

    def monotonic(self) -> float:
        return 1_000_000.0 + self._offset

    def wall(self) -> float:
        return self._start.timestamp() + self._offset

    def sql_now(self) -> dt.datetime:
        return self._start + dt.timedelta(seconds=self._offset)

"""The worker runtime (what `pgjobs work` runs). Start at runtime.py."""

from .clock import Clock, FakeClock, SystemClock
from .jobs import Outcome, Result
from .runtime import Worker
from .settings import WorkerSettings, default_pool_size, internal_connections
from .stats import WorkerStats

__all__ = ["Clock", "FakeClock", "Outcome", "Result", "SystemClock", "Worker",
           "WorkerSettings", "WorkerStats", "default_pool_size", "internal_connections"]

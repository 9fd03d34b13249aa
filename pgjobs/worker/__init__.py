"""The worker runtime (what `pgjobs work` runs). Start at runtime.py."""

from .completer import WorkerStats
from .runtime import Worker, default_pool_size, internal_connections

__all__ = ["Worker", "WorkerStats", "default_pool_size", "internal_connections"]

"""pgjobs: transactional background jobs on PostgreSQL.

Enqueue inside your own transaction, work with a fixed pool of ``SKIP LOCKED`` workers,
fail fast with :class:`QueueFull` when a queue is full, retry with backoff, and keep
permanent failures in ``dead_letters``.
"""

from .app import App
from .context import JobContext, current_job
from .errors import (
    ConfigurationError,
    JobCancelled,
    JobTimeout,
    LeaseLost,
    PermanentError,
    PgjobsError,
    QueueFull,
    Snooze,
)
from .jobinfo import JobInfo
from .task import JobSpec, Task, TaskWithOptions

__all__ = [
    "App",
    "ConfigurationError",
    "JobCancelled",
    "JobContext",
    "JobInfo",
    "JobSpec",
    "JobTimeout",
    "LeaseLost",
    "PermanentError",
    "PgjobsError",
    "QueueFull",
    "Snooze",
    "Task",
    "TaskWithOptions",
    "current_job",
]
__version__ = "0.1.0"

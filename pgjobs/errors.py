"""Exceptions raised by pgjobs. Every message says what went wrong and what to do."""

from __future__ import annotations


class PgjobsError(Exception):
    """Base class of the errors pgjobs raises itself."""


class ConfigurationError(PgjobsError):
    """A setting a user controls is wrong (URL, schema, pool size, app path…).

    The CLI prints these as one line on stderr and exits 2.
    """


class SchemaMissingError(ConfigurationError):
    """The pgjobs tables do not exist in the configured schema."""

    def __init__(self, schema: str) -> None:
        super().__init__(
            f"pgjobs tables not found in schema {schema!r}: run `pgjobs migrate` "
            "(or check PGJOBS_SCHEMA / the database URL)"
        )
        self.schema = schema


class QueueFull(PgjobsError):
    """Raised by ``enqueue`` when a queue's pending-count limit is reached.

    Nothing was written and the caller's transaction is still usable. A web handler
    typically answers ``429 Too Many Requests`` with ``Retry-After: ceil(retry_after)``.
    """

    def __init__(
        self, queue: str, pending: int, limit: int, retry_after: float, requested: int = 1
    ) -> None:
        self.queue = queue
        self.pending = pending
        self.limit = limit
        self.retry_after = float(retry_after)
        self.requested = requested
        super().__init__(
            f"queue {queue!r} is full: {pending} pending jobs, limit {limit} "
            f"(requested {requested}); retry after {self.retry_after:g}s "
            "or raise the limit with `pgjobs queues limit`"
        )


class JobTimeout(BaseException):
    """Raised inside a handler's thread when its job passed its ``timeout``.

    A ``BaseException`` (like ``KeyboardInterrupt``), so a handler's ``except Exception``
    cannot swallow it and keep running past its deadline: it unwinds the handler, and
    every ``with`` block on the way gives back what it holds (pooled connections too).
    """


class PermanentError(Exception):
    """Raise from a task handler to fail the job without retrying it.

    The job moves to ``dead_letters`` at once, with this error's message.
    """

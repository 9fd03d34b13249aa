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


class JobCancelled(PgjobsError):
    """Raised by ``current_job().raise_if_cancelled()`` once someone asked to cancel the
    running job (``app.cancel``). Let it propagate: the job then ends ``cancelled`` in
    ``dead_letters`` (reason ``'cancelled'``) and is never retried."""

    def __init__(self, job_id: int) -> None:
        super().__init__(f"job {job_id} was cancelled (app.cancel / pgjobs jobs cancel)")
        self.job_id = job_id


class Snooze(Exception):
    """Raise from a handler to run the job again in ``seconds``, without charging the
    attempt: the job goes back to ``pending``, due then."""

    def __init__(self, seconds: float) -> None:
        seconds = float(seconds)
        if not seconds >= 0 or seconds == float("inf"):
            raise ValueError(f"Snooze needs a finite number of seconds >= 0, got {seconds!r}")
        super().__init__(f"snoozed for {seconds:g}s")
        self.seconds = seconds


class LeaseLost(PgjobsError):
    """``current_job().complete(conn)`` found the job no longer held by this worker (its
    lease expired and it was rescued, or it already finished). Roll the transaction back:
    committing would apply the handler's effects for a job someone else now runs."""

    def __init__(self, job_id: int) -> None:
        super().__init__(
            f"job {job_id}: this worker no longer holds its lease (expired, rescued or "
            "finished); roll back this transaction instead of committing it")
        self.job_id = job_id

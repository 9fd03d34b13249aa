"""Tasks: a handler function plus its options, and the jobs built from it."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, fields, replace
from typing import TYPE_CHECKING, Any, Generic, ParamSpec, TypeVar

from .payload import dump_args

if TYPE_CHECKING:
    from .app import App

P = ParamSpec("P")
R = TypeVar("R")

Backoff = Callable[[int], float]

_SMALLINT = (-32768, 32767)
#: Longest task name / unique key accepted: both are indexed (job_history's primary key,
#: the unique-key index), and PostgreSQL cannot index values of a few kilobytes.
MAX_NAME_LENGTH = 500
MAX_UNIQUE_KEY_LENGTH = 1000


def validate_task_name(name: str) -> str:
    """Task names are free text, but not empty and small enough to index."""
    if not isinstance(name, str) or not name or len(name) > MAX_NAME_LENGTH \
            or "\x00" in name or not _encodable(name):
        raise ValueError(
            f"task name {name[:80]!r}… is invalid: use a non-empty string of at most "
            f"{MAX_NAME_LENGTH} characters without NUL" if isinstance(name, str) and
            len(name) > 80 else
            f"task name {name!r} is invalid: use a non-empty string of at most "
            f"{MAX_NAME_LENGTH} characters without NUL (valid Unicode)"
        )
    return name


@dataclass(frozen=True, slots=True)
class JobSpec:
    """One job to enqueue: built by ``Task.job()`` and passed to ``App.enqueue_many``."""

    task: str
    queue: str
    args_json: str
    priority: int = 0
    delay: float = 0.0
    unique_key: str | None = None
    max_attempts: int = 5


def _spec_builder() -> Callable[[str, str, str, int, float, str | None, int], JobSpec]:
    """``JobSpec(...)`` at half the cost, for ``Task.job``.

    enqueue_many callers build tens of thousands of specs; the frozen dataclass's
    ``__init__`` (an ``object.__setattr__`` per field) took 0.70 µs of each, writing the
    slots directly takes 0.36 µs. Same object: a JobSpec with every field set.
    """
    new = object.__new__
    (set_task, set_queue, set_args, set_priority, set_delay, set_unique_key,
     set_max_attempts) = (getattr(JobSpec, f.name).__set__ for f in fields(JobSpec))

    def build(task: str, queue: str, args_json: str, priority: int, delay: float,
              unique_key: str | None, max_attempts: int) -> JobSpec:
        spec = new(JobSpec)
        set_task(spec, task)
        set_queue(spec, queue)
        set_args(spec, args_json)
        set_priority(spec, priority)
        set_delay(spec, delay)
        set_unique_key(spec, unique_key)
        set_max_attempts(spec, max_attempts)
        return spec
    return build


_build_spec = _spec_builder()


@dataclass(frozen=True, slots=True)
class EnqueueOptions:
    """Per-enqueue overrides of a task's defaults (``Task.options``)."""

    delay: float = 0.0
    priority: int | None = None
    queue: str | None = None
    unique_key: str | None = None
    max_attempts: int | None = None


def _encodable(text: str) -> bool:
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:  # lone surrogates: not valid Unicode text
        return False
    return True


def validate_queue(queue: str) -> str:
    """Queue names are free text, but not empty and small enough for a NOTIFY payload."""
    if (not isinstance(queue, str) or not queue or len(queue) > 200 or "\x00" in queue
            or not _encodable(queue)):
        raise ValueError(
            f"queue name {queue!r} is invalid: use a non-empty string of at most 200 "
            "characters without NUL (valid Unicode)"
        )
    return queue


def validate_priority(priority: int) -> int:
    """Priorities are a smallint; higher runs first."""
    if isinstance(priority, bool) or not isinstance(priority, int):
        raise TypeError(f"priority must be an int, got {priority!r}")
    if not _SMALLINT[0] <= priority <= _SMALLINT[1]:
        raise ValueError(f"priority {priority} is out of range {_SMALLINT[0]}..{_SMALLINT[1]}")
    return priority


def validate_max_attempts(max_attempts: int) -> int:
    """At least one attempt; the row's value is what the worker obeys."""
    if isinstance(max_attempts, bool) or not isinstance(max_attempts, int) or max_attempts < 1:
        raise ValueError(f"max_attempts must be an int >= 1, got {max_attempts!r}")
    return max_attempts


def validate_delay(delay: float) -> float:
    """Delays are seconds from the enqueueing transaction's ``now()``."""
    delay = float(delay)
    if not delay >= 0 or delay == float("inf"):
        raise ValueError(f"delay must be a finite number of seconds >= 0, got {delay!r}")
    return delay


class _JobFactory(Generic[P]):
    """What ``Task`` and ``Task.options(...)`` share: building and enqueueing jobs."""

    _task: Task[P, Any]
    _options: EnqueueOptions

    def job(self, *args: P.args, **kwargs: P.kwargs) -> JobSpec:
        """A job for ``App.enqueue_many``; arguments are validated as JSON now."""
        if args:
            raise TypeError(
                f"task {self._task.name!r} takes keyword arguments only "
                "(they are stored as a JSON object)"
            )
        task, options = self._task, self._options
        return _build_spec(
            task.name,
            options.queue if options.queue is not None else task.queue,
            dump_args(task.name, kwargs, task.app.max_args_bytes),
            options.priority if options.priority is not None else task.priority,
            options.delay,
            options.unique_key,
            options.max_attempts if options.max_attempts is not None else task.max_attempts,
        )

    def enqueue(self, conn: Any, /, *args: P.args, **kwargs: P.kwargs) -> int:
        """Insert the job in ``conn``'s current transaction and return its id.

        ``conn`` is a psycopg 3 Connection, a SQLAlchemy 2 Connection or Session. Nothing
        is committed: workers see the job when the caller commits; a rollback discards it.
        With a ``unique_key`` already held by a live job, nothing is inserted and that
        job's id is returned. Raises :class:`pgjobs.QueueFull` before writing when the
        queue is at its pending limit.
        """
        spec = self.job(*args, **kwargs)
        return self._task.app._enqueuer.enqueue_one(conn, spec)

    async def aenqueue(self, aconn: Any, /, *args: P.args, **kwargs: P.kwargs) -> int:
        """``enqueue`` for async applications: same rules, on an async connection.

        ``aconn`` is a psycopg 3 AsyncConnection, a SQLAlchemy 2 AsyncConnection or
        AsyncSession (``postgresql+psycopg://`` engine). The job joins ``aconn``'s
        transaction and is never committed here; unique keys, :class:`pgjobs.QueueFull`
        (raised before writing, the transaction still usable) and NOTIFY work exactly as
        in :meth:`enqueue`. Waiting never blocks the event loop.
        """
        spec = self.job(*args, **kwargs)
        return await self._task.app._enqueuer.aenqueue_one(aconn, spec)

    def options(
        self,
        *,
        delay: float | None = None,
        priority: int | None = None,
        queue: str | None = None,
        unique_key: str | None = None,
        max_attempts: int | None = None,
    ) -> TaskWithOptions[P]:
        """The same task with per-enqueue overrides (delay in seconds, priority…)."""
        changes: dict[str, Any] = {}
        if delay is not None:
            changes["delay"] = validate_delay(delay)
        if priority is not None:
            changes["priority"] = validate_priority(priority)
        if queue is not None:
            changes["queue"] = validate_queue(queue)
        if unique_key is not None:
            if (not isinstance(unique_key, str) or not unique_key or "\x00" in unique_key
                    or len(unique_key) > MAX_UNIQUE_KEY_LENGTH):
                raise ValueError(
                    f"unique_key must be a non-empty string of at most "
                    f"{MAX_UNIQUE_KEY_LENGTH} characters without NUL (hash longer keys), "
                    f"got {str(unique_key)[:80]!r}")
            changes["unique_key"] = unique_key
        if max_attempts is not None:
            changes["max_attempts"] = validate_max_attempts(max_attempts)
        return TaskWithOptions(self._task, replace(self._options, **changes))


class Task(_JobFactory[P], Generic[P, R]):
    """A registered task. Call it to run the handler inline; ``enqueue`` to run it later."""

    def __init__(
        self,
        app: App,
        fn: Callable[P, R],
        *,
        name: str,
        queue: str,
        max_attempts: int,
        timeout: float | None,
        backoff: Backoff | None,
        priority: int,
        result_ttl: float | None = None,
    ) -> None:
        self.app = app
        self.fn = fn
        self.name = validate_task_name(name)
        self.queue = validate_queue(queue)
        self.max_attempts = validate_max_attempts(max_attempts)
        if timeout is not None and not timeout > 0:
            raise ValueError(f"timeout must be a positive number of seconds, got {timeout!r}")
        self.timeout = timeout
        self.backoff = backoff
        self.priority = validate_priority(priority)
        if result_ttl is not None and not (0 < result_ttl < float("inf")):
            raise ValueError(f"result_ttl must be a positive number of seconds, got "
                             f"{result_ttl!r}")
        #: Seconds a success (and its JSON return value) stays visible to app.get_job.
        self.result_ttl = float(result_ttl) if result_ttl is not None else None
        self._task = self
        self._options = EnqueueOptions()
        self.__doc__ = fn.__doc__
        self.__wrapped__ = fn

    def __call__(self, *args: P.args, **kwargs: P.kwargs) -> R:
        return self.fn(*args, **kwargs)

    def __repr__(self) -> str:
        return f"<Task {self.name} queue={self.queue}>"


class TaskWithOptions(_JobFactory[P]):
    """A task bound to per-enqueue options; see :meth:`Task.options`."""

    def __init__(self, task: Task[P, Any], options: EnqueueOptions) -> None:
        self._task = task
        self._options = options

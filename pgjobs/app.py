"""The App: configuration, the task registry and the entry points to enqueue and work."""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import TYPE_CHECKING, Any, ParamSpec, TypeVar, overload

import psycopg

from . import config
from .backpressure import DEFAULT_REFRESH_INTERVAL, DEFAULT_RETRY_AFTER, PendingLimits
from .connection import async_raw_connection, raw_connection
from .depths import queue_depths
from .enqueue import Enqueuer
from .errors import ConfigurationError
from .metrics import enqueue_instruments
from .payload import DEFAULT_MAX_ARGS_BYTES
from .plan import arun, run
from .sql import Statements, statements
from .task import Backoff, JobSpec, Task, validate_max_attempts, validate_queue

if TYPE_CHECKING:
    from .jobinfo import JobInfo
    from .periodic import Schedule
    from .worker import Worker

P = ParamSpec("P")
R = TypeVar("R")
T = TypeVar("T", bound=Task[Any, Any])


class App:
    """A pgjobs application: where the database is, and which tasks exist.

    ``database_url`` defaults to ``PGJOBS_DATABASE_URL``, else ``DATABASE_URL``, else an
    embedded PostgreSQL under ``./.pgjobs/`` (started on first use). ``schema`` defaults
    to ``PGJOBS_SCHEMA``, else ``pgjobs``. ``default_queue_limit`` is the pending-count
    limit of queues that have none set with ``pgjobs queues limit`` (``None``: unlimited).
    ``meter_provider`` / ``tracer_provider``: OpenTelemetry providers (default: global).
    """

    def __init__(
        self,
        database_url: str | None = None,
        *,
        schema: str | None = None,
        default_queue: str = config.DEFAULT_QUEUE,
        default_max_attempts: int = config.DEFAULT_MAX_ATTEMPTS,
        default_queue_limit: int | None = None,
        limit_refresh_interval: float = DEFAULT_REFRESH_INTERVAL,
        retry_after: float = DEFAULT_RETRY_AFTER,
        max_args_bytes: int = DEFAULT_MAX_ARGS_BYTES,
        meter_provider: Any | None = None,
        tracer_provider: Any | None = None,
    ) -> None:
        self._database_url = config.normalize_url(database_url) if database_url else None
        self.schema = config.resolve_schema(schema)
        self.default_queue = validate_queue(default_queue)
        self.default_max_attempts = validate_max_attempts(default_max_attempts)
        if default_queue_limit is not None and default_queue_limit < 0:
            raise ValueError("default_queue_limit must be >= 0 or None")
        self.default_queue_limit = default_queue_limit
        self.max_args_bytes = max_args_bytes
        self.meter_provider = meter_provider
        self.tracer_provider = tracer_provider
        self.tasks: dict[str, Task[Any, Any]] = {}
        self.schedules: dict[str, Schedule] = {}  # @app.periodic, by schedule name
        self._limit_settings = (limit_refresh_interval, retry_after)
        self._use_schema(self.schema)

    def _use_schema(self, schema: str) -> None:
        """Point the App at ``schema`` (the CLI's ``--schema`` overrides the App's)."""
        self.schema = config.resolve_schema(schema)
        self.sql: Statements = statements(self.schema)
        refresh_interval, retry_after = self._limit_settings
        self.limits = PendingLimits(
            self.sql,
            default_limit=self.default_queue_limit,
            refresh_interval=refresh_interval,
            retry_after=retry_after,
        )
        self._enqueuer = Enqueuer(self.sql, self.limits,
                                  enqueue_instruments(self.meter_provider),
                                  self.tracer_provider)

    @property
    def database_url(self) -> str:
        """The resolved URL (starting the embedded server if that is the default)."""
        if self._database_url is None:
            self._database_url = config.resolve_database_url()
        return self._database_url

    @overload
    def task(self, fn: Callable[P, R], /) -> Task[P, R]: ...

    @overload
    def task(
        self,
        *,
        name: str | None = None,
        queue: str | None = None,
        max_attempts: int | None = None,
        timeout: float | None = None,
        backoff: Backoff | None = None,
        priority: int = 0,
        result_ttl: float | None = None,
    ) -> Callable[[Callable[P, R]], Task[P, R]]: ...

    def task(  # type: ignore[misc]  # mypy trips on ParamSpec in decorator overloads
        self,
        fn: Callable[..., Any] | None = None,
        /,
        *,
        name: str | None = None,
        queue: str | None = None,
        max_attempts: int | None = None,
        timeout: float | None = None,
        backoff: Backoff | None = None,
        priority: int = 0,
        result_ttl: float | None = None,
    ) -> Any:
        """Register a task. Usable bare (``@app.task``) or with options.

        ``name`` defaults to ``<module>.<function>``; ``backoff(attempt)`` returns the
        seconds to wait after failed attempt ``attempt`` (default: exponential with
        jitter, see :func:`pgjobs.retry.default_backoff`); ``timeout`` is in seconds;
        ``result_ttl`` (seconds) keeps each success and the handler's JSON return value
        visible to :meth:`get_job` that long (without it nothing is written for a success).
        """

        def register(func: Callable[..., Any]) -> Task[Any, Any]:
            task_name = name or f"{func.__module__}.{func.__qualname__}"
            if task_name in self.tasks and self.tasks[task_name].fn is not func:
                raise ConfigurationError(
                    f"two tasks are named {task_name!r}; give one of them name=..."
                )
            task: Task[Any, Any] = Task(
                self,
                func,
                name=task_name,
                queue=queue or self.default_queue,
                max_attempts=max_attempts or self.default_max_attempts,
                timeout=timeout,
                backoff=backoff,
                priority=priority,
                result_ttl=result_ttl,
            )
            self.tasks[task_name] = task
            return task

        if fn is not None:
            return register(fn)
        return register

    def periodic(
        self,
        *,
        cron: str,
        timezone: str = "UTC",
        args: dict[str, Any] | None = None,
        name: str | None = None,
        max_delay: float = 600.0,
    ) -> Callable[[T], T]:
        """Run a task on a cron schedule; stack it above ``@app.task``.

        ``cron``: 5 fields (minute hour day-of-month month day-of-week) or an alias
        (``@hourly``, ``@daily``…), evaluated in ``timezone`` (IANA name, DST-correct).
        ``args``: the task's keyword arguments. ``name`` (default: the task's name)
        identifies the schedule. Every running worker of the App schedules it and the
        database makes each tick run exactly once; a tick seen more than ``max_delay``
        seconds late (no worker was running) is skipped. See :mod:`pgjobs.periodic`.
        """
        from .periodic import decorator

        return decorator(self, cron=cron, timezone=timezone, args=args, name=name,
                         max_delay=max_delay)

    def enqueue_many(self, conn: Any, jobs: Iterable[JobSpec]) -> list[int]:
        """Enqueue many jobs in ``conn``'s transaction (COPY); returns their ids.

        Backpressure is all or nothing: if the batch would take any queue past its
        pending limit, :class:`pgjobs.QueueFull` is raised and nothing is written.
        """
        return self._enqueuer.enqueue_many(conn, jobs)

    async def aenqueue_many(self, aconn: Any, jobs: Iterable[JobSpec]) -> list[int]:
        """``enqueue_many`` for async applications, in ``aconn``'s transaction.

        ``aconn`` is a psycopg 3 AsyncConnection, a SQLAlchemy 2 AsyncConnection or
        AsyncSession (``postgresql+psycopg://`` engine). Same rules as ``enqueue_many``:
        one id per job in order, COPY, all-or-nothing :class:`pgjobs.QueueFull`.
        """
        return await self._enqueuer.aenqueue_many(aconn, jobs)

    def queue_depths(self, conn: Any, queues: Iterable[str] | None = None, *,
                     at_most: int | None = None) -> dict[str, int]:
        """Pending jobs per queue (due or scheduled: what the pending limit counts).

        Cheap on a big table, unlike the ``queue_stats`` view: it reads only index
        entries of pending jobs (the queue claim index), so its cost follows the pending
        jobs counted, never the running ones or the table's size. Without ``queues``:
        every queue that has pending jobs; with them: exactly those (0 when empty).
        ``at_most`` stops each count there.
        Runs in ``conn``'s transaction (psycopg or SQLAlchemy, like ``enqueue``).
        """
        return run(raw_connection(conn), queue_depths(self.sql, queues, at_most))

    async def aqueue_depths(self, aconn: Any, queues: Iterable[str] | None = None, *,
                            at_most: int | None = None) -> dict[str, int]:
        """:meth:`queue_depths` on an async connection (the kinds ``aenqueue`` takes)."""
        return await arun(await async_raw_connection(aconn),
                          queue_depths(self.sql, queues, at_most))

    def connect(self, **kwargs: Any) -> psycopg.Connection[Any]:
        """A new psycopg connection to the App's database (the caller closes it)."""
        return psycopg.connect(self.database_url, **kwargs)

    def set_queue_limit(self, conn: Any, queue: str, limit: int | None) -> None:
        """Set ``queue``'s pending-count limit (``None``: unlimited), in ``conn``'s transaction."""
        from .admin import set_queue_limit

        set_queue_limit(conn, self.sql, queue, limit)
        self.limits.forget(queue)

    # --- job lifecycle (see pgjobs.lifecycle) ---------------------------------------------

    def cancel(self, conn: Any, job_id: int) -> str | None:
        """Cancel a job in ``conn``'s transaction (psycopg or SQLAlchemy, like enqueue).

        ``"cancelled"``: it was pending; at the caller's commit it leaves ``jobs`` for
        ``dead_letters`` (reason ``'cancelled'``) and never runs. ``"cancelling"``: it is
        running; at commit its handler is asked to stop (``current_job().cancel_requested``,
        ``raise_if_cancelled()``); if it then fails or stops it ends cancelled, never
        retried; if it succeeds, it succeeded. ``None``: no live job has that id.
        """
        from .lifecycle import cancel

        return cancel(conn, self.sql, job_id)

    async def acancel(self, aconn: Any, job_id: int) -> str | None:
        """:meth:`cancel` on an async connection (the kinds ``aenqueue`` takes)."""
        from .lifecycle import acancel

        return await acancel(aconn, self.sql, job_id)

    def get_job(self, job_id: int) -> JobInfo | None:
        """The job with this id (its own connection): live, dead, cancelled, or succeeded
        while its task's ``result_ttl`` lasts; None when nothing is known of it."""
        from .lifecycle import get_job

        return get_job(self.database_url, self.sql, job_id)

    async def aget_job(self, job_id: int) -> JobInfo | None:
        """:meth:`get_job` without blocking the event loop."""
        from .lifecycle import aget_job

        return await aget_job(self.database_url, self.sql, job_id)

    def wait_for(self, job_id: int, timeout: float = 30.0) -> JobInfo:
        """Block until the job has finished (succeeded, dead or cancelled) and return it;
        ``TimeoutError`` if it has not within ``timeout`` seconds.

        Listens for the worker's finish notifications (subscribed before the first read,
        so no finish is missed) and re-reads every half second as a fallback. A job seen
        live that then succeeds without ``result_ttl`` leaves nothing behind: it is
        returned as ``succeeded`` with ``result`` and ``finished_at`` None. A job unknown
        at the first read (finished without ``result_ttl``, or never enqueued) raises
        ``LookupError``: give tasks you wait for a ``result_ttl``.
        """
        from .lifecycle import wait_for

        return wait_for(self.database_url, self.sql, job_id, timeout)

    async def await_for(self, job_id: int, timeout: float = 30.0) -> JobInfo:
        """:meth:`wait_for` for async code."""
        from .lifecycle import await_for

        return await await_for(self.database_url, self.sql, job_id, timeout)

    def set_queue_paused(self, conn: Any, queue: str, paused: bool) -> None:
        """Pause (no worker claims from it; enqueue still works) or resume ``queue``, in
        ``conn``'s transaction; every worker sees it at once (the claim reads it)."""
        from .admin import set_queue_paused

        set_queue_paused(conn, self.sql, queue, paused)

    def worker(
        self,
        *,
        concurrency: int = 10,
        queues: Iterable[str] | None = None,
        **options: Any,
    ) -> Worker:
        """A worker runtime serving this App's tasks; ``run()`` blocks until stopped.

        ``queues=None`` serves every queue; an empty list is a ``ValueError``. Other
        options (``pool_size``, ``lease_timeout``, ``wait_for_database``…) are those of
        :class:`pgjobs.worker.WorkerSettings`; see :class:`pgjobs.worker.Worker` for
        embedding (``wait_started``, ``on_outcomes``, ``stats``).
        """
        from .worker import Worker

        return Worker(self, concurrency=concurrency, queues=queues, **options)

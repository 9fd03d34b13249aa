"""The coroutine executor: ``async def`` handlers on one event loop, beside the threads.

Jobs of coroutine tasks are routed here by the fetcher (:class:`JobRouter`); each runs as
an ``asyncio.Task`` with a context of its own (``pgjobs.current_job()`` and the
OpenTelemetry context follow it into tasks it gathers) once it holds a slot of the
``--concurrency`` budget it shares with the sync executors (:mod:`.capacity`). What ends
an attempt is classified exactly as for sync handlers (the :class:`ExecutorPool`'s
``admit`` / ``success`` / ``failure`` / ``timeout_result``), and outcomes go to the same
batched completer.

- ``timeout``: ``asyncio.timeout`` cancels the coroutine; the attempt fails as a timeout.
- cancel requests: the job's cancel flag cancels its task (``CancelledError`` at its next
  await); the failure of a cancel-requested job is ``cancelled``.
- shutdown: jobs not started are handed back; running ones may finish until the
  deadline, then are disowned (handed back uncharged) and their tasks cancelled.
- a coroutine that blocks the loop: a monitor thread posts a beat to the loop every
  0.1 s; a beat unanswered for ``slow_callback`` seconds while a handler is on the loop's
  stack logs one WARNING naming the task, the job and where it is blocked (no asyncio
  debug mode needed).
"""

from __future__ import annotations

import asyncio
import contextvars
import inspect
import logging
import sys
import threading
import weakref
from collections import deque
from collections.abc import AsyncIterator, Callable, Coroutine, Iterator
from contextlib import AbstractContextManager, asynccontextmanager
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import psycopg

from ..context import JobContext, _current, set_current
from ..tracing import TracingSwitch, end_process_span, get_tracer, process_span
from .capacity import Capacity
from .clock import Clock
from .executor import ExecutorPool
from .inhand import InHand
from .jobs import ClaimedJob, Result

if TYPE_CHECKING:
    from ..app import App

log = logging.getLogger("pgjobs.worker")

#: A handler holding the event loop this long without an await is reported.
SLOW_CALLBACK_SECONDS = 0.5
LAG_CHECK_INTERVAL = 0.1


def is_coroutine_task(fn: Callable[..., Any]) -> bool:
    """True for an ``async def`` handler (run by the coroutine executor)."""
    return inspect.iscoroutinefunction(inspect.unwrap(fn))


def split_handler_connections(budget: int, has_sync: bool, has_async: bool
                              ) -> tuple[int, int]:
    """The handlers' connection budget (``--pool-size`` minus pgjobs' own) as the
    maximum sizes of (sync pool, async pool): all of it to the sync pool without
    coroutine handlers; half each with both kinds; all but one (kept for
    ``connection()`` and the metrics' reads) to the async pool with coroutines only."""
    if not has_async:
        return budget, 0
    if has_sync:
        return budget - budget // 2, budget // 2
    return 1, budget - 1


@dataclass(slots=True)
class _Attempt:
    job: ClaimedJob
    task: asyncio.Task[None]


class JobRouter:
    """What the fetcher puts claimed jobs into: coroutine tasks' jobs to the coroutine
    executor, everything else (unknown tasks too) to the sync executors' buffer."""

    def __init__(self, app: App, sync_buffer: Any, coroutines: CoroutineExecutor) -> None:
        self._app = app
        self._sync = sync_buffer
        self._coroutines = coroutines
        self._kinds: dict[str, bool] = {}

    def put(self, job: ClaimedJob) -> None:
        is_async = self._kinds.get(job.task)
        if is_async is None:
            task = self._app.tasks.get(job.task)
            is_async = self._kinds[job.task] = task is not None and is_coroutine_task(task.fn)
        if is_async:
            self._coroutines.submit(job)
        else:
            self._sync.put(job)


class CoroutineExecutor:
    """One event-loop thread running coroutine handlers (see the module doc)."""

    name = "coroutines"

    def __init__(
        self,
        app: App,
        classifier: ExecutorPool,
        capacity: Capacity,
        report: Callable[[Result], None],
        borrow: Callable[[], AbstractContextManager[psycopg.Connection[Any]]],
        clock: Clock,
        in_hand: InHand,
        *,
        database_url: str,
        pool_size: int,
        pool_kwargs: dict[str, Any],
        tracer_provider: Any = None,
        slow_callback: float = SLOW_CALLBACK_SECONDS,
    ) -> None:
        self._app = app
        self._classifier = classifier
        self._capacity = capacity
        self._report = report
        self._borrow = borrow
        self._clock = clock
        self._in_hand = in_hand
        self._url = database_url
        self._pool_size = pool_size
        self._pool_kwargs = pool_kwargs
        self._tracing = TracingSwitch(tracer_provider)
        self._tracer = get_tracer(tracer_provider)
        self.slow_callback = slow_callback
        self._loop = asyncio.new_event_loop()
        self._loop.set_task_factory(self._task_factory)  # type: ignore[arg-type]
        self._pending: deque[ClaimedJob] = deque()  # claimed, waiting for a slot
        self._running: dict[int, _Attempt] = {}
        self._lock = threading.Lock()  # a plain lock: taken several times per job
        self._loop_ident: int | None = None
        self._pump_scheduled = False
        self._disowned: list[asyncio.Task[None]] = []
        self._finished: list[Result] = []  # outcomes of this loop iteration (loop thread)
        self._apool: Any = None
        self._apool_open: asyncio.Future[None] | None = None
        # Tasks a handler spawned (gather, create_task) -> its job: to name the job when
        # one of them blocks the loop.
        self._spawned: weakref.WeakKeyDictionary[asyncio.Task[Any], JobContext] = (
            weakref.WeakKeyDictionary())
        self._stopping = threading.Event()
        self._thread = threading.Thread(target=self._main, daemon=True,
                                        name="pgjobs-coroutines")
        self._monitor = threading.Thread(target=self._watch_lag, daemon=True,
                                         name="pgjobs-loop-monitor")
        self._beat_sent: float | None = None
        self._lag_reported = False
        self.blocked_reports = 0
        capacity.on_room = self._on_room

    # --- lifecycle (called by the runtime) -----------------------------------------------

    def start(self) -> None:
        self._thread.start()
        self._monitor.start()

    def _main(self) -> None:
        self._loop_ident = threading.get_ident()
        asyncio.set_event_loop(self._loop)
        try:
            self._loop.run_forever()
        except BaseException:
            log.exception("coroutine executor: the event loop stopped on an error")
        finally:
            self._loop.close()

    def busy(self) -> int:
        """Coroutine jobs running now."""
        return len(self._running)

    def running_jobs(self) -> list[ClaimedJob]:
        with self._lock:
            return [a.job for a in self._running.values()]

    def take_unstarted(self) -> list[ClaimedJob]:
        """Shutdown: the jobs still waiting for a slot (they will not start)."""
        with self._lock:
            jobs = list(self._pending)
            self._pending.clear()
            return jobs

    def join(self, deadline: float) -> bool:
        """Wait until no coroutine job runs, or ``deadline`` (monotonic); True if none."""
        while self._running or self._finished:  # polled: shutdown is not latency-bound
            left = deadline - self._clock.monotonic()
            if left <= 0:
                return False
            self._stopping.wait(min(left, 0.05))
        return True

    def abandon_running(self) -> list[ClaimedJob]:
        """Shutdown timeout: disown every running job (its outcome is dropped; the
        runtime hands it back) and cancel its task."""
        with self._lock:
            attempts = list(self._running.values())
            self._running.clear()
        for attempt in attempts:
            self._disowned.append(attempt.task)
            self._capacity.release()
            self._loop.call_soon_threadsafe(attempt.task.cancel)
        return [a.job for a in attempts]

    def stop(self, timeout: float = 5.0) -> None:
        """Close the async pool, stop the loop and its thread (after the last job)."""
        self._stopping.set()
        if self._loop.is_closed() or not self._thread.is_alive():
            return
        try:
            asyncio.run_coroutine_threadsafe(self._aclose(), self._loop).result(timeout)
        except Exception:
            log.warning("coroutine executor: could not close its pool cleanly",
                        exc_info=True)
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(timeout)
        self._monitor.join(timeout)

    async def _aclose(self) -> None:
        for task in self._disowned:  # handlers past the shutdown timeout
            task.cancel()
        # First the pool (it stops its own tasks, which may have been started from a
        # handler's context), then whatever handlers spawned and left running.
        if self._apool is not None:
            await self._apool.close(timeout=1.0)
        left = [t for t in [*self._disowned, *self._spawned] if not t.done()]
        for task in left:
            task.cancel()
        if left:
            await asyncio.wait(left, timeout=1.0)

    # --- jobs in ---------------------------------------------------------------------------

    def submit(self, job: ClaimedJob) -> None:
        """A claimed coroutine job (fetcher thread): starts when a slot is free."""
        with self._lock:
            self._pending.append(job)
            schedule = not self._pump_scheduled
            self._pump_scheduled = True
        if schedule:
            self._loop.call_soon_threadsafe(self._pump)

    def _on_room(self) -> None:
        """A slot freed somewhere (any thread): start a waiting job, if any."""
        if threading.get_ident() == self._loop_ident:
            return  # our own job ended: _finish pumps directly
        with self._lock:
            if not self._pending or self._pump_scheduled:
                return
            self._pump_scheduled = True
        try:
            self._loop.call_soon_threadsafe(self._pump)
        except RuntimeError:  # the loop is closed: shutting down
            pass

    def _pump(self) -> None:
        """Start waiting jobs while slots are free (loop thread), as one batch."""
        with self._lock:
            self._pump_scheduled = False
            waiting = len(self._pending)
        granted = self._capacity.try_acquire_many(waiting) if waiting else 0
        if not granted:
            return
        loop = self._loop
        with self._lock:
            jobs = [self._pending.popleft() for _ in range(min(granted, len(self._pending)))]
            for job in jobs:
                # Not loop.create_task: our own tasks skip the task factory (hot path).
                task = asyncio.Task(self._run_job(job), loop=loop,
                                    context=contextvars.Context())
                self._running[job.id] = _Attempt(job, task)
        for _ in range(granted - len(jobs)):  # taken back by the shutdown meanwhile
            self._capacity.release()

    def _task_factory(self, loop: asyncio.AbstractEventLoop,
                      coro: Coroutine[Any, Any, Any], **kwargs: Any) -> asyncio.Task[Any]:
        task = asyncio.Task(coro, loop=loop, **kwargs)
        ctx = _current.get(None)  # a handler spawning a task: remember whose it is
        if ctx is not None:
            self._spawned[task] = ctx
        return task

    # --- one attempt -----------------------------------------------------------------------

    async def _run_job(self, job: ClaimedJob) -> None:
        started = self._clock.monotonic()
        pickup = self._clock.wall() - job.due_epoch
        result: Result | None = None
        try:
            if self._tracing.enabled():
                with process_span(self._tracer, queue=job.queue, task=job.task,
                                  job_id=job.id, attempt=job.attempt,
                                  trace_context=job.trace_context) as span:
                    result, exc = await self._execute(job, started)
                    end_process_span(span, result.outcome.value, exc)
            else:
                result, _ = await self._execute(job, started)
            result.pickup_latency = max(0.0, pickup)
        except BaseException as exc:  # cancelled while disowned, or an internal error
            if job.id in self._running:
                log.exception("coroutine executor: internal error on job %d", job.id)
            result = self._classifier.failure(job, exc, self._clock.monotonic() - started)
        finally:
            self._finish(job, result)

    async def _execute(self, job: ClaimedJob, started: float
                       ) -> tuple[Result, BaseException | None]:
        task = self._app.tasks.get(job.task)
        args, refused = self._classifier.admit(job, task)
        if refused is not None:
            return refused, None
        assert task is not None
        timeout = task.timeout
        flag = self._in_hand.cancel_flag(job.id)
        loop, running = self._loop, self._running

        def cancel_task() -> None:  # from the listener's or the heartbeat's thread
            attempt = running.get(job.id)
            if attempt is not None:
                loop.call_soon_threadsafe(attempt.task.cancel)

        # Not unregistered when the attempt ends: the flag goes when the outcome is
        # written, and a late request finds no running attempt (one lock less per job).
        flag.on_cancel(cancel_task)
        set_current(JobContext(
            id=job.id, task=job.task, queue=job.queue, attempt=job.attempt,
            max_attempts=job.max_attempts, args=args, enqueued_at=job.created_at,
            deadline=started + timeout if timeout else None, _borrow=self._borrow,
            _cancel=flag, _lease=self._classifier.lease(job), _aborrow=self._aconnection,
        ))  # this task's own context: nothing to reset
        scope = None
        try:
            if timeout:
                async with asyncio.timeout(timeout) as scope:
                    value = await task.fn(**args)
            else:
                value = await task.fn(**args)
        except TimeoutError as exc:
            duration = self._clock.monotonic() - started
            if scope is not None and scope.expired():
                return self._classifier.timeout_result(job, timeout or 0.0, duration), exc
            return self._classifier.failure(job, exc, duration), exc
        except BaseException as exc:  # CancelledError included: a cancel request
            return self._classifier.failure(job, exc, self._clock.monotonic() - started), exc
        return self._classifier.success(job, task, value,
                                        self._clock.monotonic() - started), None

    def _finish(self, job: ClaimedJob, result: Result | None) -> None:
        with self._lock:
            attempt = self._running.pop(job.id, None)
        if attempt is None or result is None:
            return  # disowned at shutdown: the runtime handed it back already
        # Reported once per loop iteration, as a batch: the completer then writes them in
        # one flush and the fetcher claims their slots in one claim (reported one by one,
        # flushes and claims were twice as many, and the database on the same cores paid).
        self._finished.append(result)
        if len(self._finished) == 1:
            self._loop.call_soon(self._report_finished)

    def _report_finished(self) -> None:
        done, self._finished = self._finished, []
        self._capacity.release_many(len(done))
        for result in done:
            self._report(result)
        # Jobs waiting for a slot start now, as many as slots freed (one pump per batch).
        with self._lock:
            pump = bool(self._pending) and not self._pump_scheduled
            if pump:
                self._pump_scheduled = True
        if pump:
            self._pump()

    # --- connections -----------------------------------------------------------------------

    @asynccontextmanager
    async def _aconnection(self) -> AsyncIterator[psycopg.AsyncConnection[Any]]:
        if self._apool_open is None:
            from psycopg_pool import AsyncConnectionPool

            # Lazily, on the loop: the pool belongs to it. Its size is the async share of
            # the handlers' budget (split_handler_connections).
            self._apool = AsyncConnectionPool(
                self._url, min_size=0, max_size=self._pool_size, open=False,
                name="pgjobs-async-handlers", timeout=30, kwargs=self._pool_kwargs,
                check=AsyncConnectionPool.check_connection)
            self._apool_open = self._loop.create_task(self._apool.open(),
                                                      context=contextvars.Context())
        await asyncio.shield(self._apool_open)
        async with self._apool.connection() as conn:
            yield conn

    # --- a blocked loop ----------------------------------------------------------------------

    def _watch_lag(self) -> None:
        while not self._stopping.wait(LAG_CHECK_INTERVAL):
            now = self._clock.monotonic()
            sent = self._beat_sent
            if sent is None:
                self._beat_sent = now
                try:
                    self._loop.call_soon_threadsafe(self._beat)
                except RuntimeError:  # closed
                    return
            elif now - sent >= self.slow_callback and not self._lag_reported:
                self._lag_reported = self._report_blocker(now - sent)

    def _beat(self) -> None:
        self._beat_sent = None
        self._lag_reported = False

    def _report_blocker(self, lag: float) -> bool:
        """Log the handler holding the loop (True), if one is running on it."""
        task = asyncio.current_task(self._loop)
        ctx: JobContext | None = self._spawned.get(task) if task is not None else None
        job: tuple[int, str] | None = (ctx.id, ctx.task) if ctx is not None else None
        if job is None:
            with self._lock:
                for attempt in self._running.values():
                    if attempt.task is task:
                        job = (attempt.job.id, attempt.job.task)
        if job is None:
            return False  # the loop's own machinery, or a starved process: not a handler
        self.blocked_reports += 1
        log.warning(
            "slow callback: task %r (job %d) has blocked the event loop for %.2fs%s; "
            "coroutine handlers must not block (await, or use asyncio.to_thread)",
            job[1], job[0], lag, self._where(), extra={"job_id": job[0], "task": job[1]})
        return True

    def _where(self) -> str:
        frame = sys._current_frames().get(self._thread.ident or -1)
        for f in _innermost_first(frame):
            if f.f_code.co_filename != __file__:
                return f" (at {f.f_code.co_filename}:{f.f_lineno} in {f.f_code.co_name})"
        return ""


def _innermost_first(frame: Any) -> Iterator[Any]:
    while frame is not None:
        yield frame
        frame = frame.f_back

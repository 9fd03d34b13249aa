"""The executor pool: a fixed number of threads running handlers, with deadlines.

Python cannot kill a thread. When a job passes its ``timeout``, the watchdog (a thread
of the pool, every few milliseconds) records the attempt as failed, asks the thread to stop
by raising ``JobTimeout`` inside it (this interrupts Python code, not a blocking C call
such as ``time.sleep`` or a socket read), and starts a replacement thread for the slot,
so capacity stays at ``concurrency``. The abandoned thread's eventual result is
discarded; it exits as soon as its handler returns.
"""

from __future__ import annotations

import asyncio
import ctypes
import inspect
import json
import logging
import queue
import threading
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager, contextmanager
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import psycopg

from ..context import JobContext, reset_current, set_current
from ..errors import JobCancelled, JobTimeout, Snooze
from ..lifecycle import Lease, result_json
from ..retry import is_permanent, retry_delay
from ..tracing import TracingSwitch, end_process_span, get_tracer, process_span
from .capacity import Capacity
from .clock import Clock
from .errortext import format_error
from .inhand import InHand
from .jobs import ClaimedJob, Outcome, Result

if TYPE_CHECKING:
    from ..app import App

log = logging.getLogger("pgjobs.worker")

STOP = None  # sentinel in the job buffer: one per executor thread on shutdown
WATCHDOG_INTERVAL = 0.05
__all__ = ["ExecutorPool", "JobTimeout", "format_error"]


@dataclass(slots=True)
class _Running:
    job: ClaimedJob
    started: float
    deadline: float | None
    # Pooled connections the handler holds now: cancelled if the job times out, so a
    # handler stuck in a query gives its connection back to the pool.
    connections: list[psycopg.Connection[Any]] = field(default_factory=list)


class _Slot:
    __slots__ = ("current", "generation", "index", "lock", "thread")

    def __init__(self, index: int) -> None:
        self.index = index
        self.lock = threading.Lock()
        self.generation = 0
        self.current: _Running | None = None
        self.thread: threading.Thread | None = None


class ExecutorPool:
    """``concurrency`` threads taking jobs from ``buffer`` and reporting ``Result``s."""

    def __init__(
        self,
        app: App,
        concurrency: int,
        buffer: queue.SimpleQueue[ClaimedJob | None],
        report: Callable[[Result], None],
        borrow: Callable[[], AbstractContextManager[psycopg.Connection[Any]]],
        worker_name: str,
        clock: Clock,
        tracer_provider: Any = None,
        in_hand: InHand | None = None,
        capacity: Capacity | None = None,
        release: Callable[[ClaimedJob], Result] | None = None,
    ) -> None:
        self._app = app
        # --concurrency shared with the coroutine executor (worker/capacity.py): a thread
        # starts its job only with a slot; ``release`` hands back a job that never started.
        self._capacity = capacity
        self._release = release
        # Cancel flags of the jobs in hand (see worker/cancellation.py); a private map
        # when the pool runs alone (component tests).
        self._in_hand = in_hand if in_hand is not None else InHand()
        self._clock = clock
        self._tracing = TracingSwitch(tracer_provider)
        self._tracer = get_tracer(tracer_provider)
        self._buffer = buffer
        self._report = report
        self._borrow = borrow
        self._worker_name = worker_name
        self._slots = [_Slot(i) for i in range(concurrency)]
        self._signatures: dict[str, _Signature | None] = {}
        self.abandoned_threads = 0
        self._watchdog_stop = threading.Event()
        self._watchdog = threading.Thread(target=self._watch_deadlines, daemon=True,
                                          name="pgjobs-watchdog")

    # --- lifecycle -----------------------------------------------------------------------

    def start(self) -> None:
        for slot in self._slots:
            self._spawn(slot)
        self._watchdog.start()

    def stop_watchdog(self) -> None:
        """After the last job: no deadline left to watch."""
        self._watchdog_stop.set()

    def _watch_deadlines(self) -> None:
        while not self._watchdog_stop.wait(WATCHDOG_INTERVAL):
            try:
                self.check_deadlines()
            except Exception:
                log.exception("watchdog: unexpected error")

    def _spawn(self, slot: _Slot) -> None:
        generation = slot.generation
        thread = threading.Thread(
            target=self._loop, args=(slot, generation), daemon=True,
            name=f"pgjobs-executor-{slot.index}.{generation}",
        )
        slot.thread = thread
        thread.start()

    def stop_threads(self) -> None:
        """Ask every executor to exit once it finishes its current job."""
        for _ in self._slots:
            self._buffer.put(STOP)

    def join(self, deadline: float) -> bool:
        """Wait for the executors until ``deadline`` (monotonic); True if all exited."""
        for slot in self._slots:
            thread = slot.thread
            if thread is not None:
                thread.join(max(0.0, deadline - self._clock.monotonic()))
        return not self.running_jobs()

    def running_jobs(self) -> list[ClaimedJob]:
        jobs = []
        for slot in self._slots:
            with slot.lock:
                if slot.current is not None:
                    jobs.append(slot.current.job)
        return jobs

    def busy(self) -> int:
        """Executors running a job right now."""
        return sum(1 for slot in self._slots if slot.current is not None)

    @property
    def size(self) -> int:
        return len(self._slots)

    def abandon_running(self) -> list[ClaimedJob]:
        """Shutdown timeout: disown every running job (their results will be dropped)."""
        jobs = []
        for slot in self._slots:
            with slot.lock:
                if slot.current is not None:
                    jobs.append(slot.current.job)
                    slot.current = None
                    slot.generation += 1
                    self._free_slot()
        return jobs

    def _free_slot(self) -> None:
        # Called by whoever clears ``slot.current`` (the thread, the watchdog, shutdown).
        if self._capacity is not None:
            self._capacity.release()

    # --- the executor thread -------------------------------------------------------------

    def _loop(self, slot: _Slot, generation: int) -> None:
        while True:
            try:
                job = self._buffer.get()
                if job is STOP:
                    return
                if self._capacity is not None and not self._capacity.acquire():
                    if self._release is not None:  # shutting down: never started
                        self._report(self._release(job))
                    continue
                try:
                    result = self._run(slot, generation, job)
                except JobTimeout:
                    # Delivered after the handler returned: only matters if not abandoned.
                    result = self._timeout_result(job, 0.0, 0.0)
                except BaseException as exc:
                    log.exception("executor %d: internal error on job %d", slot.index, job.id)
                    result = self.failure(job, exc, 0.0)
                with slot.lock:
                    if slot.generation != generation:
                        return  # the watchdog gave up on us; a replacement took the slot
                    slot.current = None
                self._free_slot()
                self._report(result)
            except JobTimeout:
                with slot.lock:
                    if slot.generation != generation:
                        return
            except BaseException:
                log.exception("executor %d: internal error", slot.index)

    def _run(self, slot: _Slot, generation: int, job: ClaimedJob) -> Result:
        task = self._app.tasks.get(job.task)
        started = self._clock.monotonic()
        pickup = self._clock.wall() - job.due_epoch
        timeout = task.timeout if task is not None else None
        running = _Running(job, started, started + timeout if timeout else None)
        with slot.lock:
            slot.current = running
        if self._tracing.enabled():
            with process_span(self._tracer, queue=job.queue, task=job.task, job_id=job.id,
                              attempt=job.attempt, trace_context=job.trace_context) as span:
                result, exc = self._execute(job, task, started, timeout, running)
                end_process_span(span, result.outcome.value, exc)
        else:
            result, _ = self._execute(job, task, started, timeout, running)
        result.pickup_latency = max(0.0, pickup)
        return result

    def _execute(self, job: ClaimedJob, task: Any, started: float, timeout: float | None,
                 running: _Running) -> tuple[Result, BaseException | None]:
        args, refused = self.admit(job, task)
        if refused is not None:
            return refused, None
        flag = self._in_hand.cancel_flag(job.id)
        ctx = JobContext(
            id=job.id, task=job.task, queue=job.queue, attempt=job.attempt,
            max_attempts=job.max_attempts, args=args, enqueued_at=job.created_at,
            deadline=started + timeout if timeout else None,
            _borrow=lambda: self._borrow_tracked(running),
            _cancel=flag, _lease=self.lease(job),
        )
        token = set_current(ctx)
        try:
            outcome = task.fn(**args)
            if inspect.isawaitable(outcome):
                outcome = asyncio.run(_await(outcome))
        except JobTimeout as exc:
            return self._timeout_result(job, timeout or 0.0, self._clock.monotonic() - started), exc
        except BaseException as exc:
            return self.failure(job, exc, self._clock.monotonic() - started), exc
        finally:
            reset_current(token)
        return self.success(job, task, outcome, self._clock.monotonic() - started), None

    def admit(self, job: ClaimedJob, task: Any) -> tuple[Any, Result | None]:
        """The job's decoded arguments, or the outcome that ends it without running
        (unknown task, malformed or mismatched arguments, cancelled while prefetched).
        Shared with the coroutine executor."""
        if task is None:
            return None, Result(job, Outcome.DEAD, error=self._unknown_task(job))
        try:
            args = json.loads(job.args) if isinstance(job.args, str) else job.args
        except (ValueError, RecursionError) as exc:
            return None, Result(job, Outcome.DEAD, error=(
                f"malformed job: args could not be decoded ({type(exc).__name__}: "
                f"{str(exc)[:200]})"))
        problem = self._argument_problem(job.task, args, task.fn)
        if problem:
            return None, Result(job, Outcome.DEAD, error=problem)
        if self._in_hand.cancel_requested(job.id):  # cancelled while prefetched
            return None, Result(job, Outcome.CANCELLED, error="cancelled before it started")
        return args, None

    def lease(self, job: ClaimedJob) -> Lease:
        """What ``current_job().complete(conn)`` uses for ``job``."""
        return Lease(job.id, job.token, self._app.sql,
                     lambda: self._in_hand.mark_self_completed(job.id))

    def success(self, job: ClaimedJob, task: Any, value: Any, duration: float) -> Result:
        """A handler returned ``value``: kept as JSON for tasks with ``result_ttl`` (a
        value that is not JSON fails the attempt), ignored otherwise."""
        ttl = getattr(task, "result_ttl", None)
        if not ttl:
            return Result(job, Outcome.SUCCEEDED, duration=duration)
        try:
            encoded = result_json(job.task, value)
        except TypeError as exc:
            return self.failure(job, exc, duration)
        return Result(job, Outcome.SUCCEEDED, duration=duration, result=encoded,
                      result_ttl=float(ttl))

    @contextmanager
    def _borrow_tracked(self, running: _Running) -> Iterator[psycopg.Connection[Any]]:
        with self._borrow() as conn:
            running.connections.append(conn)
            try:
                yield conn
            finally:
                running.connections.remove(conn)

    # --- outcomes ------------------------------------------------------------------------

    def failure(self, job: ClaimedJob, exc: BaseException, duration: float) -> Result:
        """Classify a handler's exception: snoozed; cancelled (after a cancel request,
        whatever the error); dead letter now; or retry after backoff."""
        if isinstance(exc, Snooze):
            return Result(job, Outcome.SNOOZED, delay=exc.seconds, duration=duration)
        if isinstance(exc, JobCancelled) or self._in_hand.cancel_requested(job.id):
            return Result(job, Outcome.CANCELLED, duration=duration,
                          error=f"cancelled on attempt {job.attempt}: {format_error(exc)}")
        error = format_error(exc)
        if is_permanent(exc):
            return Result(job, Outcome.DEAD, error=f"permanent error: {error}",
                          duration=duration)
        return self._retry_or_bury(job, error, duration)

    def _retry_or_bury(self, job: ClaimedJob, error: str, duration: float,
                       timed_out: bool = False) -> Result:
        if job.attempt >= job.max_attempts:
            return Result(job, Outcome.DEAD, duration=duration, timed_out=timed_out,
                          error=f"attempt {job.attempt} of {job.max_attempts} failed: {error}")
        task = self._app.tasks.get(job.task)
        delay = retry_delay(task.backoff if task else None, job.attempt, job.task)
        return Result(job, Outcome.RETRY, error=error, delay=delay, duration=duration,
                      timed_out=timed_out)

    def timeout_result(self, job: ClaimedJob, timeout: float, duration: float) -> Result:
        """A job past its ``timeout``: a failed attempt (retry or dead letter as its
        attempts say), or cancelled if a cancel request came first."""
        return self._timeout_result(job, timeout, duration)

    def _timeout_result(self, job: ClaimedJob, timeout: float, duration: float) -> Result:
        if self._in_hand.cancel_requested(job.id):
            return Result(job, Outcome.CANCELLED, duration=duration, timed_out=True,
                          error=f"cancelled, then timed out after {timeout:g}s")
        return self._retry_or_bury(
            job, f"JobTimeout: task {job.task!r} exceeded its timeout of {timeout:g}s",
            duration, timed_out=True)

    def check_deadlines(self) -> None:
        """Watchdog: fail jobs past their timeout and give their slot a fresh thread."""
        now = self._clock.monotonic()
        for slot in self._slots:
            with slot.lock:
                running = slot.current
                if running is None or running.deadline is None or now < running.deadline:
                    continue
                slot.current = None
                slot.generation += 1
                stuck = slot.thread
                self._spawn(slot)
                self._free_slot()
            self.abandoned_threads += 1
            log.warning(
                "job %d (%s) passed its deadline; executor thread %s abandoned and replaced",
                running.job.id, running.job.task, stuck.name if stuck else "?")
            if stuck is not None and stuck.ident is not None:
                _raise_in_thread(stuck.ident, JobTimeout)
            if running.connections:
                # A query blocks the thread in libpq, out of reach of JobTimeout: cancel
                # it server-side so the handler fails and its connection returns. In a
                # thread of its own: cancelling is a network round trip.
                threading.Thread(target=_cancel_queries, args=(running,), daemon=True,
                                 name=f"pgjobs-cancel-{running.job.id}").start()
            timeout = running.deadline - running.started
            self._report(self._timeout_result(running.job, timeout, now - running.started))

    def _unknown_task(self, job: ClaimedJob) -> str:
        known = sorted(self._app.tasks)
        shown = ", ".join(known[:10]) + (" …" if len(known) > 10 else "")
        return (
            f"unknown task {job.task!r}: no task of that name is registered in the worker "
            f"({self._worker_name}); registered: {shown or 'none'}. Deploy the task, then "
            "`pgjobs dead-letters requeue`"
        )

    def _argument_problem(self, task: str, args: Any, fn: Callable[..., Any]) -> str | None:
        if not isinstance(args, dict):
            return (f"malformed job: args must be a JSON object of keyword arguments, got "
                    f"{type(args).__name__}: {str(args)[:200]}")
        if task not in self._signatures:
            self._signatures[task] = _Signature.of(fn)
        signature = self._signatures[task]
        if signature is not None and not signature.accepts(args):
            try:
                signature.full.bind(**args)
            except TypeError as exc:
                return (f"arguments do not match task {task!r}{signature.full}: {exc} "
                        f"(args: {str(args)[:200]})")
        return None


@dataclass(frozen=True, slots=True)
class _Signature:
    """A handler's keyword parameters, for a per-job check much cheaper than
    ``Signature.bind`` (which then only runs to explain a mismatch)."""

    full: inspect.Signature
    names: frozenset[str]
    required: frozenset[str]
    any_keyword: bool
    needs_positional: bool  # a required positional-only parameter: never satisfiable

    @classmethod
    def of(cls, fn: Callable[..., Any]) -> _Signature | None:
        try:
            full = inspect.signature(fn)
        except (TypeError, ValueError):
            return None
        kinds = (inspect.Parameter.POSITIONAL_OR_KEYWORD, inspect.Parameter.KEYWORD_ONLY)
        params = [p for p in full.parameters.values() if p.kind in kinds]
        return cls(
            full,
            frozenset(p.name for p in params),
            frozenset(p.name for p in params if p.default is inspect.Parameter.empty),
            any(p.kind is inspect.Parameter.VAR_KEYWORD for p in full.parameters.values()),
            any(p.kind is inspect.Parameter.POSITIONAL_ONLY and p.default is p.empty
                for p in full.parameters.values()),
        )

    def accepts(self, args: dict[str, Any]) -> bool:
        keys = args.keys()
        return (not self.needs_positional and self.required <= keys
                and (self.any_keyword or keys <= self.names))


async def _await(awaitable: Any) -> Any:
    return await awaitable


def _cancel_queries(running: _Running) -> None:
    for conn in list(running.connections):
        try:
            conn.cancel_safe(timeout=5.0)
        except Exception:
            log.warning("could not cancel the query of timed-out job %d", running.job.id,
                        exc_info=True)


def _raise_in_thread(ident: int, exc_type: type[BaseException]) -> None:
    ctypes.pythonapi.PyThreadState_SetAsyncExc(ctypes.c_ulong(ident), ctypes.py_object(exc_type))

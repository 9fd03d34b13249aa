"""The worker runtime: builds the services, runs them, and owns the shutdown sequence.

Services (each a thread; see docs/architecture.md for the picture):

- ``fetcher``     claims due jobs into the buffer            (connection "fetch")
- ``executors``   N handler threads + the deadline watchdog  (handlers borrow from the pool)
- ``coroutines``  ``async def`` handlers on one event loop     (async pool, same budget;
                  only when the App has coroutine tasks; --concurrency counts both kinds)
- ``completer``   writes outcomes in batches                 (connection "complete")
- ``heartbeat``   renews leases, then the ``workers`` row    (connection "heartbeat")
- ``maintenance`` plugins: rescue, retention, listener ping  (connection "maintenance")
- ``listener``    LISTEN, wakes the fetcher                  (connection "listen")

Shutdown (SIGTERM, SIGINT or ``stop()``):
  1. stop claiming (fetcher, listener, maintenance, periodic scheduler stop);
  2. hand jobs that were claimed but not started back to ``pending``, uncharged;
  3. let running jobs finish, up to ``shutdown_timeout`` (leases still renewed);
  4. hand jobs still running after that back to ``pending``, uncharged (their threads are
     abandoned; a late result is ignored because the lease token no longer matches);
  5. flush every outcome, stop the heartbeat, remove the ``workers`` row, return. A second
     signal exits at once (non-zero); the leases of whatever was in hand then expire and
     are rescued.
"""

from __future__ import annotations

import logging
import os
import queue
import secrets
import signal
import socket
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from types import FrameType
from typing import TYPE_CHECKING, Any

import psycopg

from ..config import describe_connect_error
from ..errors import ConfigurationError, SchemaMissingError
from ..metrics import WorkerInstruments
from ..store import JobStore
from .aexecutor import CoroutineExecutor, JobRouter, is_coroutine_task, split_handler_connections
from .capacity import Capacity
from .clock import Clock, SystemClock
from .completer import Completer
from .dbconn import CONNECTION_ERRORS, ResilientConnection
from .executor import ExecutorPool
from .fetcher import Fetcher
from .heartbeat import Heartbeat
from .inhand import InHand
from .jobs import ClaimedJob, Outcome, Result
from .listener import Listener, ListenerPing
from .maintenance import MaintenanceService, Plugin, Rescue, Retention
from .settings import (
    DEFAULT_CONCURRENCY,
    DEFAULT_DEAD_LETTER_RETENTION,
    DEFAULT_HISTORY_RETENTION,
    DEFAULT_LEASE_TIMEOUT,
    DEFAULT_POLL_INTERVAL,
    DEFAULT_SHUTDOWN_TIMEOUT,
    DEFAULT_WAIT_FOR_DATABASE,
    INTERNAL_CONNECTIONS,
    POOL_HEADROOM,
    WorkerSettings,
    default_pool_size,
    internal_connections,
)
from .stats import WorkerStats

if TYPE_CHECKING:
    from ..app import App

__all__ = [
    "DEFAULT_CONCURRENCY", "DEFAULT_DEAD_LETTER_RETENTION", "DEFAULT_HISTORY_RETENTION",
    "DEFAULT_LEASE_TIMEOUT", "DEFAULT_POLL_INTERVAL", "DEFAULT_SHUTDOWN_TIMEOUT",
    "DEFAULT_WAIT_FOR_DATABASE", "INTERNAL_CONNECTIONS", "POOL_HEADROOM", "Worker",
    "default_pool_size", "internal_connections",
]

log = logging.getLogger("pgjobs.worker")

STALL_TIMEOUT = 10.0  # an internal statement unanswered this long: drop the connection
# Sync executor threads of an App whose tasks are all coroutines (unknown tasks' jobs).
COROUTINE_ONLY_SYNC_THREADS = 2


class Worker:
    """A fixed pool of executors serving an App's tasks. See the module doc.

    Embedding (tests, adapters, notebooks): run ``run()`` in a thread, wait with
    ``wait_started(timeout)``, read ``stats`` (counted when outcomes are *written*) or set
    ``on_outcomes`` to a callable receiving each flushed batch of :class:`Result`, and
    call ``stop()``. ``run()`` waits up to ``wait_for_database`` seconds for an
    unreachable database before it gives up with one clear line.
    """

    def __init__(
        self,
        app: App,
        *,
        install_signal_handlers: bool = True,
        clock: Clock | None = None,
        listen_database_url: str | None = None,
        **options: Any,
    ) -> None:
        settings = self.settings = WorkerSettings.build(**options)
        if listen_database_url is not None and settings.poll_only:
            raise ConfigurationError("--listen-database-url has no use with --poll-only "
                                     "(no LISTEN): drop one of them")
        #: LISTEN goes here when set (direct to PostgreSQL), everything else through the
        #: App's URL, which is then taken for a transaction-mode pooler (PgBouncer).
        self.listen_database_url = listen_database_url
        #: Behind a transaction-mode pooler (``--poll-only`` or a separate LISTEN URL) no
        #: connection of the worker prepares: the next transaction may run on another
        #: server connection, where the prepared statement does not exist.
        self.prepare_statements = not (settings.poll_only or listen_database_url)
        self.app = app
        self.clock: Clock = clock or SystemClock()
        self.install_signal_handlers = install_signal_handlers
        # The settings, as attributes (read by the CLI, the demo and tests).
        self.concurrency = settings.concurrency
        self.queues = list(settings.queues) if settings.queues is not None else None
        self.pool_size = settings.pool_size
        self.shutdown_timeout = settings.shutdown_timeout
        self.lease_timeout = settings.lease_timeout
        self.poll_interval = settings.poll_interval
        self.poll_only = settings.poll_only
        self.prefetch = settings.prefetch
        self.history_retention = settings.history_retention
        self.dead_letter_retention = settings.dead_letter_retention
        self.id = f"{socket.gethostname()}:{os.getpid()}:{secrets.token_hex(3)}"
        self._application_name = f"pgjobs worker {self.id}"[:63]
        self.stats = WorkerStats()
        #: Set once every service runs and the ``workers`` row exists.
        self.started = threading.Event()
        #: Set when ``run()`` is about to return.
        self.stopped = threading.Event()
        #: Called by the completer after each flush with that batch's results (their
        #: outcomes are written, or were found to have lost their lease).
        self.on_outcomes: Callable[[list[Result]], None] | None = None
        self.plugins: list[Plugin] = []  # extra maintenance plugins, added before run()
        self._stop_requested = threading.Event()
        self._signals = 0
        self._handler_pool: Any = None
        self._handler_pool_lock = threading.Lock()
        self.fetcher: Fetcher | None = None
        self.listener: Listener | None = None
        self.completer: Completer | None = None
        self.heartbeat: Heartbeat | None = None
        self.maintenance: MaintenanceService | None = None
        self.executors: ExecutorPool | None = None
        #: ``async def`` handlers' event loop (only when the App has coroutine tasks).
        self.coroutines: CoroutineExecutor | None = None
        kinds = [is_coroutine_task(t.fn) for t in app.tasks.values()]
        self.has_coroutine_tasks = any(kinds)
        has_sync_tasks = not all(kinds)
        #: Threads for sync handlers. An App of coroutines only needs them just for jobs
        #: of tasks it does not know (each fails at once): not one per --concurrency slot,
        #: which at --concurrency 500 meant 500 idle threads.
        self.sync_threads = (min(self.concurrency, COROUTINE_ONLY_SYNC_THREADS)
                             if self.has_coroutine_tasks and not has_sync_tasks
                             else self.concurrency)
        if self.has_coroutine_tasks and has_sync_tasks and settings.handler_pool_size < 2:
            raise ConfigurationError(
                f"pool size {settings.pool_size} leaves {settings.handler_pool_size} "
                "connection for handlers, and this App has sync and coroutine handlers, "
                "each kind with a pool of its own: use --pool-size "
                f"{settings.pool_size + 2 - settings.handler_pool_size} or more")
        #: Maximum sizes of the handlers' pools (sync, async): one budget split in two.
        self.handler_pools = split_handler_connections(
            settings.handler_pool_size, has_sync_tasks, self.has_coroutine_tasks)
        self.periodic: Any = None  # pgjobs.periodic_scheduler.PeriodicScheduler, if any

    # --- public --------------------------------------------------------------------------

    def stop(self) -> None:
        """Begin the graceful shutdown (same as SIGTERM); ``run()`` returns when done."""
        self._stop_requested.set()

    def wait_started(self, timeout: float | None = None) -> bool:
        """Block until the worker serves jobs (True), it stopped, or ``timeout`` passed."""
        deadline = None if timeout is None else self.clock.monotonic() + timeout
        while not self.started.wait(0.05):
            if self.stopped.is_set():
                return False
            if deadline is not None and self.clock.monotonic() >= deadline:
                return False
        return True

    def run(self) -> None:
        """Serve jobs until ``stop()`` or SIGTERM/SIGINT, then drain and return."""
        restore = self._install_signals()
        try:
            url = self.app.database_url
            if not self._wait_for_database(url):
                log.info("worker stopped before it started: nothing was claimed")
                return
            self._check_schema(url)
            if self._stop_requested.is_set():  # stop() (or a signal) before it started
                log.info("worker stopped before it started: nothing was claimed")
                return
            self._start(url)
            log.info("worker %s: %d executors on %s, pool %d connections, schema %r",
                     self.id, self.concurrency,
                     ", ".join(self.queues) if self.queues else "all queues",
                     self.pool_size, self.app.schema)
            self.started.set()
            while not self._stop_requested.wait(0.5):
                pass
            self._shutdown()
        finally:
            restore()
            self.stopped.set()

    # --- start ---------------------------------------------------------------------------

    def _wait_for_database(self, url: str) -> bool:
        """Retry connecting for up to ``wait_for_database`` s; False if stopped first."""
        deadline = self.clock.monotonic() + self.settings.wait_for_database
        delay = 0.1
        while True:
            try:
                with psycopg.connect(url, autocommit=True, connect_timeout=5):
                    return True
            except psycopg.ProgrammingError as exc:  # a malformed URL: waiting cannot help
                raise ConfigurationError(describe_connect_error(exc, url)) from exc
            except CONNECTION_ERRORS as exc:
                left = deadline - self.clock.monotonic()
                if left <= 0 or not _may_come_up(exc):
                    waited = (f" (waited {self.settings.wait_for_database:g}s: "
                              "--wait-for-database)" if _may_come_up(exc) else "")
                    raise ConfigurationError(describe_connect_error(exc, url) + waited
                                             ) from exc
                if delay == 0.1:  # DEBUG: the CLI's contract is one line if it gives up
                    log.debug("database not reachable yet; retrying for up to %.0fs",
                              max(left, 0.0))
                if self._stop_requested.wait(min(delay, max(left, 0.0))):
                    return False
                delay = min(delay * 2, 1.0)

    def _check_schema(self, url: str) -> None:
        store = JobStore(self.app.sql)
        try:
            with psycopg.connect(url, autocommit=True, connect_timeout=10) as conn:
                exists = store.schema_exists(conn)
        except psycopg.OperationalError as exc:
            raise ConfigurationError(describe_connect_error(exc, url)) from exc
        if not exists:
            raise SchemaMissingError(self.app.schema)
        from ..migrate import current_revision, head_revision

        with psycopg.connect(url, autocommit=True, connect_timeout=10) as conn:
            revision = current_revision(conn, self.app.schema)
        if revision != head_revision():
            raise ConfigurationError(
                f"pgjobs schema {self.app.schema!r} is at revision {revision}, this version "
                f"needs {head_revision()}: run `pgjobs migrate`"
            )

    def _connection(self, url: str, role: str, stopping: threading.Event
                    ) -> ResilientConnection:
        return ResilientConnection(url, role, stopping, self._application_name,
                                   prepare_statements=self.prepare_statements,
                                   clock=self.clock)

    def _start(self, url: str) -> None:
        from ..periodic_scheduler import start_for_worker

        # First, so a refused registration leaves nothing running. Its own thread and
        # short-lived connections: outside --pool-size, never starved by busy executors.
        self.periodic = start_for_worker(self.app, clock=self.clock)
        s, clock = self.settings, self.clock
        self._url = url
        self._abort = threading.Event()  # outcome writes and renewals give up (hard deadline)
        self._in_hand = InHand()
        self._buffer: queue.SimpleQueue[ClaimedJob | None] = queue.SimpleQueue()
        store = self.store = JobStore(self.app.sql, prepare=self.prepare_statements)
        self.instruments = WorkerInstruments(
            self.app.meter_provider, executors=self._executor_counts,
            queue_rows=self._queue_rows)
        fetch_stop, maintenance_stop = threading.Event(), threading.Event()
        self._fetch_conn = self._connection(url, "fetch", fetch_stop)
        self._complete_conn = self._connection(url, "complete", self._abort)
        self._heartbeat_conn = self._connection(url, "heartbeat", self._abort)
        self._maintenance_conn = self._connection(url, "maintenance", maintenance_stop)
        # One --concurrency budget for sync and coroutine handlers (worker/capacity.py).
        self._capacity = Capacity(self.concurrency)
        self.executors = ExecutorPool(
            self.app, self.sync_threads, self._buffer, report=self._report,
            borrow=self._borrow_connection, worker_name=self.id, clock=clock,
            tracer_provider=self.app.tracer_provider, in_hand=self._in_hand,
            capacity=self._capacity, release=self._release)
        sink: Any = self._buffer
        if self.has_coroutine_tasks:
            self.coroutines = CoroutineExecutor(
                self.app, self.executors, self._capacity, self._report,
                self._borrow_connection, clock, self._in_hand, database_url=url,
                pool_size=self.handler_pools[1], pool_kwargs=self._handler_pool_kwargs(),
                tracer_provider=self.app.tracer_provider)
            sink = JobRouter(self.app, self._buffer, self.coroutines)
        self.fetcher = Fetcher(store, self._fetch_conn, clock, s, worker_id=self.id,
                               buffer=sink, in_hand=self._in_hand,
                               stopping=fetch_stop)
        self.completer = Completer(
            store, self._complete_conn, clock, in_hand=self._in_hand, stats=self.stats,
            claimer=self.fetcher, instruments=self.instruments,
            on_outcomes=self._outcomes_written)
        self.heartbeat = Heartbeat(
            store, self._heartbeat_conn, clock, s, worker_id=self.id, in_hand=self._in_hand,
            stats=self.stats, executors_busy=self._busy)
        plugins: list[Plugin] = [
            Rescue(store, clock, self.stats, self.instruments, s.rescue_interval),
            Retention(store, clock, s, maintenance_stop),
        ]
        if not self.poll_only:
            self.listener = Listener(store, self.listen_database_url or url, clock, s,
                                     worker_id=self.id,
                                     on_wake=self.fetcher.wake,
                                     application_name=self._application_name,
                                     on_cancel=self._in_hand.request_cancel,
                                     on_waiting_lost=self.fetcher.waiting_lost)
            self.fetcher.use_waiting_locks(self.listener.waiting_locks)
            plugins.append(ListenerPing(self.listener, s.ping_interval))
        self.maintenance = MaintenanceService(store, self._maintenance_conn, clock,
                                              plugins + self.plugins,
                                              s.maintenance_statement_timeout,
                                              stopping=maintenance_stop)
        # Registered before anything is claimed: `workers` shows it from the start.
        self._heartbeat_conn.run(self.heartbeat.register)
        self._stall_watch = threading.Thread(target=self._watch_stalls, daemon=True,
                                             name="pgjobs-stall-watch")
        self.heartbeat.start()
        self.completer.start()
        self.executors.start()
        if self.coroutines is not None:
            self.coroutines.start()
        self._stall_watch.start()
        self.maintenance.start()
        if self.listener is not None:
            self.listener.start()
        self.fetcher.start()

    def _report(self, result: Result) -> None:
        """An attempt ended: its executor slot is free; its outcome goes to be written."""
        assert self.completer is not None and self.fetcher is not None
        self.completer.report(result)
        self.fetcher.job_finished()

    def _release(self, job: ClaimedJob) -> Result:
        """Shutdown: back to pending uncharged, unless someone asked to cancel it."""
        if self._in_hand.cancel_requested(job.id):
            return Result(job, Outcome.CANCELLED, error="cancelled (its worker was stopping)")
        return Result(job, Outcome.RELEASE)

    def _outcomes_written(self, batch: list[Result]) -> None:
        hook = self.on_outcomes
        if hook is not None:
            hook(batch)

    def _executor_counts(self) -> tuple[int, int]:
        return self.concurrency, self._busy()

    def _busy(self) -> int:
        """Jobs running now, sync and coroutine handlers together."""
        busy = self.executors.busy() if self.executors else 0
        return busy + (self.coroutines.busy() if self.coroutines else 0)

    def _handler_pool_kwargs(self) -> dict[str, Any]:
        # prepare_threshold None: nothing prepared behind a pooler (a handler's
        # statement run 5 times would be, by psycopg's default).
        return {"application_name": self._application_name,
                **({} if self.prepare_statements else {"prepare_threshold": None})}

    def _watch_stalls(self) -> None:
        """Unblock internal connections whose server stopped answering (see dbconn)."""
        # Claims, flushes and renewals take milliseconds; 10 s of silence means a dead
        # peer. Stay well inside the lease so renewals resume before leases expire.
        # Maintenance statements are bounded by their statement_timeout instead.
        limit = min(STALL_TIMEOUT, max(1.0, self.lease_timeout / 2))
        assert self.completer is not None and self.heartbeat is not None
        watched = (self._fetch_conn, self._complete_conn, self._heartbeat_conn)
        siblings = (*watched, self._maintenance_conn)
        while self.heartbeat.thread.is_alive() or not self._stop_requested.is_set():
            for conn in watched:
                if conn.break_if_stalled(limit):
                    # The others likely share the dead path: each reconnects before its
                    # next statement instead of hanging `limit` seconds in turn.
                    for other in siblings:
                        if other is not conn:
                            other.renew_when_idle()
            if self.stopped.wait(1.0):
                return

    def _queue_rows(self) -> list[dict[str, Any]] | None:
        """Per-queue counts for the metrics gauges, on a pooled connection."""
        from ..admin import queue_stats

        try:
            with self._borrow_connection(timeout=2.0) as conn:
                return queue_stats(conn, self.app.sql)
        except Exception:
            log.warning("could not read queue depth for metrics", exc_info=True)
            return None

    @contextmanager
    def _borrow_connection(self, timeout: float | None = None
                           ) -> Iterator[psycopg.Connection[Any]]:
        with self._handler_pool_lock:
            if self._handler_pool is None:
                from psycopg_pool import ConnectionPool

                # Everything the pool may open is inside --pool-size, with our own
                # connections already subtracted.
                self._handler_pool = ConnectionPool(
                    self._url, min_size=0, max_size=self.handler_pools[0],
                    open=True, name="pgjobs-handlers", timeout=30,
                    kwargs=self._handler_pool_kwargs(),
                    # One empty round trip per borrow, so a connection that died idle
                    # (server restart, failover, pg_terminate_backend) is replaced
                    # instead of failing the next handler's attempt.
                    check=ConnectionPool.check_connection,
                )
        with self._handler_pool.connection(timeout=timeout) as conn:
            yield conn

    # --- stop ----------------------------------------------------------------------------

    def _install_signals(self) -> Callable[[], None]:
        on_main_thread = threading.current_thread() is threading.main_thread()
        if not self.install_signal_handlers or not on_main_thread:
            return lambda: None
        previous = {s: signal.getsignal(s) for s in (signal.SIGTERM, signal.SIGINT)}

        def on_signal(signum: int, frame: FrameType | None) -> None:
            self._signals += 1
            if self._signals > 1:
                log.warning("second %s: exiting now; leases will recover jobs in hand",
                            signal.Signals(signum).name)
                os._exit(128 + signum)
            log.info("%s: draining (up to %gs); send it again to exit at once",
                     signal.Signals(signum).name, self.shutdown_timeout)
            self._stop_requested.set()

        for s in previous:
            signal.signal(s, on_signal)

        def restore() -> None:
            for s, handler in previous.items():
                signal.signal(s, handler)

        return restore

    def _shutdown(self) -> None:
        assert self.fetcher and self.completer and self.executors
        assert self.heartbeat and self.maintenance
        deadline = self.clock.monotonic() + self.shutdown_timeout
        if self.periodic is not None:
            self.periodic.stop()
        self.fetcher.stop()
        self.maintenance.stop()
        if self.listener is not None:
            self.listener.stop()
        self.fetcher.join(max(1.0, self.shutdown_timeout))
        # Claimed but never started: back to pending, uncharged. No job starts from here on.
        self._capacity.close()
        unstarted = 0
        for waiting in self.coroutines.take_unstarted() if self.coroutines else ():
            unstarted += 1
            self._report(self._release(waiting))
        while True:
            try:
                job = self._buffer.get_nowait()
            except queue.Empty:
                break
            if job is not None:
                unstarted += 1
                self._report(self._release(job))
        self.executors.stop_threads()
        coroutines = self.coroutines
        running = len(self.executors.running_jobs()) + (coroutines.busy() if coroutines else 0)
        if running:
            log.info("waiting up to %.0fs for %d running job(s)",
                     max(0.0, deadline - self.clock.monotonic()), running)
        drained = self.executors.join(deadline)
        drained = (coroutines.join(deadline) if coroutines else True) and drained
        if not drained:
            abandoned = self.executors.abandon_running()
            abandoned += coroutines.abandon_running() if coroutines else []
            log.warning("shutdown timeout: returning %d unfinished job(s) to pending "
                        "without charging the attempt: %s", len(abandoned),
                        [j.id for j in abandoned][:20])
            for job in abandoned:
                self._report(self._release(job))
        self.executors.stop_watchdog()
        if coroutines is not None:
            coroutines.stop()
        self.completer.stop()
        if not self.completer.join(15.0):
            self._abort.set()  # database unreachable: leases will recover what is left
            self.completer.join(5.0)
        self.heartbeat.stop()
        self.heartbeat.join(5.0)
        self._abort.set()  # from here on, one attempt per statement: we are leaving
        self.heartbeat.unregister()
        self._heartbeat_conn.discard()
        self.maintenance.join(5.0)
        if self.periodic is not None:
            self.periodic.join(5.0)
        if self.listener is not None:
            self.listener.join(5.0)
        if self._handler_pool is not None:
            self._handler_pool.close(timeout=1.0)
        log.info("worker %s stopped: %d succeeded, %d retried, %d dead-lettered, %d returned "
                 "to pending (%d never started)", self.id, self.stats.succeeded,
                 self.stats.retried, self.stats.dead_lettered, self.stats.released, unstarted)


# Server answers that waiting may cure (libpq gives connection failures no SQLSTATE).
_TRANSIENT_SERVER_ANSWERS = ("starting up", "shutting down", "in recovery", "too many clients",
                             "remaining connection slots")


def _may_come_up(exc: BaseException) -> bool:
    """True for a database that is not reachable *yet* (refused, unresolved, timing out,
    starting up, full); False for answers that waiting cannot change (unknown database
    or role, bad password, a malformed option)."""
    text = str(exc)
    if "FATAL:" in text:
        return any(answer in text for answer in _TRANSIENT_SERVER_ANSWERS)
    return "invalid" not in text.lower()

"""The worker runtime: wiring, run/stop, signals and the shutdown sequence.

Shutdown (SIGTERM, SIGINT or ``stop()``):
  1. stop claiming (fetcher and listener exit);
  2. hand jobs that were claimed but not started back to ``pending``, uncharged;
  3. let running jobs finish, up to ``shutdown_timeout``;
  4. hand jobs still running after that back to ``pending``, uncharged (their threads are
     abandoned; a late result is ignored because the lease token no longer matches);
  5. flush every outcome, close connections, return. A second signal exits at once
     (non-zero); the leases of whatever was in hand then expire and are rescued.
"""

from __future__ import annotations

import logging
import os
import queue
import secrets
import signal
import socket
import threading
import time
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from types import FrameType
from typing import TYPE_CHECKING, Any

import psycopg

from ..errors import ConfigurationError, SchemaMissingError
from ..metrics import WorkerInstruments
from .completer import Completer, WorkerStats
from .dbconn import ResilientConnection
from .executor import ExecutorPool
from .fetcher import Fetcher
from .inhand import InHand
from .jobs import ClaimedJob, Outcome, Result
from .listener import Listener

if TYPE_CHECKING:
    from ..app import App

log = logging.getLogger("pgjobs.worker")

#: pgjobs' own connections: fetch (claims), complete (outcomes, heartbeat, rescue), listen.
INTERNAL_CONNECTIONS = 3
POOL_HEADROOM = 2
DEFAULT_CONCURRENCY = 10
DEFAULT_SHUTDOWN_TIMEOUT = 30.0
DEFAULT_LEASE_TIMEOUT = 30.0
DEFAULT_POLL_INTERVAL = 2.0
STALL_TIMEOUT = 10.0  # an internal statement unanswered this long: drop the connection
DEFAULT_HISTORY_RETENTION = 7 * 86400.0  # job_history rows (per-minute counts)
DEFAULT_DEAD_LETTER_RETENTION = 30 * 86400.0


def internal_connections(poll_only: bool) -> int:
    """Connections the worker opens for itself (not for handlers)."""
    return INTERNAL_CONNECTIONS - (1 if poll_only else 0)


def default_pool_size(concurrency: int, poll_only: bool = False) -> int:
    """Executors + pgjobs' own connections + a little headroom for handlers."""
    return concurrency + internal_connections(poll_only) + POOL_HEADROOM


class Worker:
    """A fixed pool of executors serving an App's tasks. See the module doc for shutdown."""

    def __init__(
        self,
        app: App,
        *,
        concurrency: int = DEFAULT_CONCURRENCY,
        queues: Iterable[str] | None = None,
        pool_size: int | None = None,
        shutdown_timeout: float = DEFAULT_SHUTDOWN_TIMEOUT,
        lease_timeout: float = DEFAULT_LEASE_TIMEOUT,
        poll_interval: float = DEFAULT_POLL_INTERVAL,
        poll_only: bool = False,
        prefetch: int | None = None,
        ping_interval: float = 5.0,
        ping_timeout: float = 10.0,
        history_retention: float | None = DEFAULT_HISTORY_RETENTION,
        dead_letter_retention: float | None = DEFAULT_DEAD_LETTER_RETENTION,
        install_signal_handlers: bool = True,
    ) -> None:
        if isinstance(concurrency, bool) or not isinstance(concurrency, int) or concurrency < 1:
            raise ConfigurationError(
                f"concurrency must be a whole number >= 1, got {concurrency!r}")
        internal = internal_connections(poll_only)
        size = default_pool_size(concurrency, poll_only) if pool_size is None else pool_size
        if concurrency + internal > size:
            raise ConfigurationError(
                f"pool size {size} is too small for concurrency {concurrency}: the worker "
                f"needs {concurrency} connections for handlers plus {internal} of its own "
                f"(fetch, complete{', listen' if not poll_only else ''}); use --pool-size "
                f"{concurrency + internal} or more, or lower --concurrency"
            )
        for name, value in (("shutdown_timeout", shutdown_timeout),
                            ("lease_timeout", lease_timeout), ("poll_interval", poll_interval)):
            if not value > 0:
                raise ConfigurationError(f"{name} must be a positive number of seconds")
        self.app = app
        self.concurrency = concurrency
        self.queues = sorted(set(queues)) if queues else None
        self.pool_size = size
        self.shutdown_timeout = float(shutdown_timeout)
        self.lease_timeout = float(lease_timeout)
        self.poll_interval = float(poll_interval)
        self.poll_only = poll_only
        self.prefetch = min(concurrency, 100) if prefetch is None else max(0, prefetch)
        self.ping_interval = ping_interval
        self.ping_timeout = ping_timeout
        self.install_signal_handlers = install_signal_handlers
        # None or 0: keep forever.
        self.history_retention = history_retention or None
        self.dead_letter_retention = dead_letter_retention or None
        self.id = f"{socket.gethostname()}:{os.getpid()}:{secrets.token_hex(3)}"
        self.stats = WorkerStats()
        self.started = threading.Event()
        self.stopped = threading.Event()
        self._stop_requested = threading.Event()
        self._signals = 0
        self._handler_pool: Any = None
        self._handler_pool_lock = threading.Lock()
        self.fetcher: Fetcher | None = None
        self.listener: Listener | None = None
        self.completer: Completer | None = None
        self.executors: ExecutorPool | None = None
        self.on_outcomes: Callable[[list[Result]], None] | None = None
        self.periodic: Any = None  # pgjobs.periodic_scheduler.PeriodicScheduler, if any

    # --- public --------------------------------------------------------------------------

    def stop(self) -> None:
        """Begin the graceful shutdown (same as SIGTERM); ``run()`` returns when done."""
        self._stop_requested.set()

    def run(self) -> None:
        """Serve jobs until ``stop()`` or SIGTERM/SIGINT, then drain and return."""
        url = self.app.database_url
        self._check_schema(url)
        restore = self._install_signals()
        if self._stop_requested.is_set():  # stop() (or a signal) before it started
            log.info("worker stopped before it started: nothing was claimed")
            restore()
            self.stopped.set()
            return
        try:
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

    def _check_schema(self, url: str) -> None:
        try:
            with psycopg.connect(url, autocommit=True, connect_timeout=10) as conn:
                row = conn.execute(self.app.sql.SCHEMA_EXISTS,
                                   {"jobs_table": self.app.sql.jobs_table}).fetchone()
        except psycopg.OperationalError as exc:
            from ..config import describe_connect_error

            raise ConfigurationError(describe_connect_error(exc, url)) from exc
        if not row or not row[0]:
            raise SchemaMissingError(self.app.schema)
        from ..migrate import current_revision, head_revision

        with psycopg.connect(url, autocommit=True, connect_timeout=10) as conn:
            revision = current_revision(conn, self.app.schema)
        if revision != head_revision():
            raise ConfigurationError(
                f"pgjobs schema {self.app.schema!r} is at revision {revision}, this version "
                f"needs {head_revision()}: run `pgjobs migrate`"
            )

    def _start(self, url: str) -> None:
        from ..periodic_scheduler import start_for_worker

        # First, so a refused registration leaves nothing running. Its own thread and
        # short-lived connections: outside --pool-size, never starved by busy executors.
        self.periodic = start_for_worker(self.app)
        self._stopping = threading.Event()  # claimers stop
        self._abort = threading.Event()  # outcome writes give up (hard deadline)
        name = self._application_name = f"pgjobs worker {self.id}"[:63]
        self._in_hand = InHand()
        self._buffer: queue.SimpleQueue[ClaimedJob | None] = queue.SimpleQueue()
        self._url = url
        prepare = not self.poll_only  # --poll-only: PgBouncer in transaction mode
        self._fetch_conn = ResilientConnection(url, "fetch", self._stopping, name,
                                               prepare_statements=prepare)
        self._complete_conn = ResilientConnection(url, "complete", self._abort, name,
                                                  prepare_statements=prepare)
        self.fetcher = Fetcher(
            self.app.sql, self._fetch_conn,
            queues=self.queues, capacity=self.concurrency + self.prefetch, buffer=self._buffer,
            in_hand=self._in_hand, lease_seconds=self.lease_timeout, worker_id=self.id,
            poll_interval=self.poll_interval, stopping=self._stopping,
        )
        if not self.poll_only:
            self.listener = Listener(
                self.app.sql, url, queues=self.queues, on_wake=self.fetcher.wake,
                stopping=self._stopping, worker_id=self.id, ping_timeout=self.ping_timeout,
                application_name=name,
            )
        executors_ref: list[ExecutorPool] = []
        self.instruments = WorkerInstruments(
            self.app.meter_provider,
            executors=lambda: (self.concurrency,
                               executors_ref[0].busy() if executors_ref else 0),
            queue_rows=self._queue_rows,
        )
        self.completer = Completer(
            self.app.sql, self._complete_conn,
            in_hand=self._in_hand, lease_seconds=self.lease_timeout, stats=self.stats,
            watchdog=lambda: executors_ref[0].check_deadlines() if executors_ref else None,
            ping=self.listener.send_ping if self.listener else None,
            ping_interval=self.ping_interval,
            rescue_interval=min(5.0, max(0.5, self.lease_timeout / 4)),
            register=self._register, retention=self._prune,
            unregister=(self.app.sql.DELETE_WORKER, {"id": self.id}),
            on_settled=self.fetcher.jobs_settled, on_retry_due=self.fetcher.wake_at,
            instruments=self.instruments,
            on_outcomes=lambda batch: self.on_outcomes(batch) if self.on_outcomes else None,
        )
        self.executors = ExecutorPool(
            self.app, self.concurrency, self._buffer, report=self._report,
            borrow=self._borrow_connection,
            worker_name=self.id, tracer_provider=self.app.tracer_provider,
        )
        executors_ref.append(self.executors)
        self._stall_watch = threading.Thread(target=self._watch_stalls, daemon=True,
                                             name="pgjobs-stall-watch")
        self.completer.thread.start()
        self.executors.start()
        self._stall_watch.start()
        if self.listener is not None:
            self.listener.thread.start()
        self.fetcher.thread.start()

    def _report(self, result: Result) -> None:
        """An attempt ended: its executor slot is free; its outcome goes to be written."""
        assert self.completer is not None and self.fetcher is not None
        self.completer.report(result)
        self.fetcher.job_finished()

    def _watch_stalls(self) -> None:
        """Unblock internal connections whose server stopped answering (see dbconn)."""
        # Claims and flushes take milliseconds; 10 s of silence means a dead peer. Stay
        # well inside the lease so heartbeats resume before leases expire.
        limit = min(STALL_TIMEOUT, max(1.0, self.lease_timeout / 2))
        assert self.completer is not None
        while self.completer.thread.is_alive() or not self._stopping.is_set():
            for conn in (self._fetch_conn, self._complete_conn):
                conn.break_if_stalled(limit)
            if self.stopped.wait(1.0):
                return

    def _register(self, conn: psycopg.Connection[Any]) -> None:
        """Upsert this worker's row in ``workers`` (with each heartbeat)."""
        conn.execute(self.app.sql.UPSERT_WORKER, {
            "id": self.id, "hostname": socket.gethostname(), "pid": os.getpid(),
            "queues": self.queues, "concurrency": self.concurrency,
            "lease_seconds": self.lease_timeout, "jobs_in_hand": len(self._in_hand),
            "executors_busy": self.executors.busy() if self.executors else 0,
        })

    def _prune(self, conn: psycopg.Connection[Any]) -> None:
        row = conn.execute(self.app.sql.PRUNE_HISTORY, {
            "history_seconds": self.history_retention,
            "dead_letter_seconds": self.dead_letter_retention,
        }).fetchone()
        if row and any(row):
            log.info("retention: pruned %d history row(s), %d dead letter(s), %d stale "
                     "worker row(s)", *row)

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
                    self._url, min_size=0,
                    max_size=self.pool_size - internal_connections(self.poll_only),
                    open=True, name="pgjobs-handlers", timeout=30,
                    kwargs={"application_name": self._application_name},
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
        deadline = time.monotonic() + self.shutdown_timeout
        self._stopping.set()
        if self.periodic is not None:
            self.periodic.stop()
        self.fetcher.stop()
        self.fetcher.thread.join(timeout=max(1.0, self.shutdown_timeout))
        # Claimed but never started: back to pending, uncharged.
        unstarted = 0
        while True:
            try:
                job = self._buffer.get_nowait()
            except queue.Empty:
                break
            if job is not None:
                unstarted += 1
                self._report(Result(job, Outcome.RELEASE))
        self.executors.stop_threads()
        running = len(self.executors.running_jobs())
        if running:
            log.info("waiting up to %.0fs for %d running job(s)",
                     max(0.0, deadline - time.monotonic()), running)
        if not self.executors.join(deadline):
            abandoned = self.executors.abandon_running()
            log.warning("shutdown timeout: returning %d unfinished job(s) to pending "
                        "without charging the attempt: %s", len(abandoned),
                        [j.id for j in abandoned][:20])
            for job in abandoned:
                self._report(Result(job, Outcome.RELEASE))
        self.completer.close()
        self.completer.thread.join(timeout=15.0)
        if self.completer.thread.is_alive():
            self._abort.set()  # database unreachable: leases will recover what is left
            self.completer.thread.join(timeout=5.0)
        if self.listener is not None:
            self.listener.thread.join(timeout=5.0)
        if self._handler_pool is not None:
            self._handler_pool.close(timeout=1.0)
        log.info("worker %s stopped: %d succeeded, %d retried, %d dead-lettered, %d returned "
                 "to pending (%d never started)", self.id, self.stats.succeeded,
                 self.stats.retried, self.stats.dead_lettered, self.stats.released, unstarted)

"""Maintenance: small periodic duties off the lease path, on a connection of their own.

Rescue of expired leases, retention (history, dead letters, stale worker rows) and the
listener's self-ping are *plugins* (Oban's model) run by one maintenance service: one
thread, one connection, each plugin when it is due. Every plugin statement runs in a
transaction bounded by ``statement_timeout`` (and retention deletes in LIMITed
batches), so a slow prune delays the next rescue at most, never a lease renewal: those
belong to the heartbeat service, on its own connection.

To add a duty, write a class with ``name``, ``interval``, ``first_delay`` and
``run(session)``, and pass it to the service (see runtime.py).
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from typing import Any, Protocol

import psycopg

from ..store import Conn, JobStore, RescuedJob
from .clock import Clock
from .dbconn import ResilientConnection, is_connection_failure
from .errortext import first_line, storable
from .service import ThreadService
from .settings import WorkerSettings
from .stats import WorkerStats

log = logging.getLogger("pgjobs.worker")

RESCUE_BATCH = 1000
RETENTION_BATCH = 5000
WORKER_ROW_RETENTION = 86400.0  # workers rows not heard from for a day


class MaintenanceSession:
    """What a plugin gets: the connection, and bounded transactions on it."""

    def __init__(self, conn: Conn, store: JobStore, statement_timeout: float) -> None:
        self.conn = conn
        self.store = store
        self.statement_timeout = statement_timeout

    @contextmanager
    def bounded(self) -> Iterator[Conn]:
        """A transaction whose statements are cancelled after ``statement_timeout``."""
        with self.conn.transaction():
            self.store.set_local_statement_timeout(self.conn, self.statement_timeout)
            yield self.conn


class Plugin(Protocol):
    """One periodic maintenance duty."""

    name: str
    interval: float  # seconds between runs
    first_delay: float  # seconds from start to the first run

    def run(self, session: MaintenanceSession) -> None:
        """Do the duty once; raise on failure (logged, retried at the next interval)."""


class MaintenanceService(ThreadService):
    """Runs plugins when due, one at a time, on the maintenance connection."""

    name = "maintenance"

    def __init__(self, store: JobStore, conn: ResilientConnection, clock: Clock,
                 plugins: Sequence[Plugin], statement_timeout: float,
                 stopping: threading.Event | None = None) -> None:
        super().__init__(stopping)
        self._store = store
        self._conn = conn
        self._clock = clock
        self.plugins = list(plugins)
        self._statement_timeout = statement_timeout
        start = clock.monotonic()
        self._due = {id(p): start + p.first_delay for p in self.plugins}

    def run_due(self) -> float:
        """Run every plugin that is due; returns seconds until the next one is."""
        for plugin in self.plugins:
            if self.stopping.is_set():
                break
            if self._clock.monotonic() >= self._due[id(plugin)]:
                self.run_plugin(plugin)
                self._due[id(plugin)] = self._clock.monotonic() + plugin.interval
        if not self._due:
            return 1.0
        return max(0.0, min(self._due.values()) - self._clock.monotonic())

    def run_plugin(self, plugin: Plugin) -> None:
        def run(conn: Conn) -> None:
            plugin.run(MaintenanceSession(conn, self._store, self._statement_timeout))

        try:
            self._conn.run(run)
        except Exception as exc:
            log.warning("maintenance: %s failed (%s: %s); trying again in %gs", plugin.name,
                        type(exc).__name__, str(exc).strip().split("\n", 1)[0],
                        plugin.interval)

    def loop(self) -> None:
        while not self.stopping.is_set():
            wait = self.run_due()
            self.stopping.wait(min(wait, 1.0))
        self._conn.discard()

    def stop(self) -> None:
        super().stop()
        self._conn.cancel_running()  # a long prune ends now, not at its statement_timeout


class Rescue:
    """Jobs whose worker stopped renewing their lease go back to pending (or to
    dead_letters when out of attempts). Every worker runs it; SKIP LOCKED keeps them apart."""

    name = "rescue"

    def __init__(self, store: JobStore, clock: Clock, stats: WorkerStats,
                 instruments: Any, interval: float) -> None:
        self._store = store
        self._clock = clock
        self._stats = stats
        self._instruments = instruments
        self.interval = interval
        self.first_delay = 0.0

    def run(self, session: MaintenanceSession) -> None:
        try:
            with session.bounded() as conn:
                rows = self._store.rescue_expired(conn, limit=RESCUE_BATCH,
                                                  now=self._clock.sql_now())
        except psycopg.Error as exc:
            if not _refused_by_a_row(exc, session.conn):
                raise
            rows = self._one_by_one(session)
        self._report(rows)

    def _one_by_one(self, session: MaintenanceSession) -> list[RescuedJob]:
        """The batch was refused: rescue the oldest expired job alone, and bury it (names
        bounded) if even that is refused, so one bad row never blocks every rescue."""
        rows: list[RescuedJob] = []
        for _ in range(RESCUE_BATCH):
            try:
                with session.bounded() as conn:
                    one = self._store.rescue_expired(conn, limit=1,
                                                     now=self._clock.sql_now())
            except psycopg.Error as exc:
                if not _refused_by_a_row(exc, session.conn):
                    raise
                problem = storable(f"{type(exc).__name__}: {first_line(str(exc), 300)}")
                log.error("rescue: an expired job cannot go back to pending (%s); moving "
                          "it to dead_letters", problem)
                with session.bounded() as conn:
                    one = self._store.bury_oldest_expired(conn, error=problem,
                                                          now=self._clock.sql_now())
            if not one:
                break
            rows += one
        return rows

    def _report(self, rows: list[RescuedJob]) -> None:
        rescued = [r for r in rows if r.outcome == "rescued"]
        buried = [r for r in rows if r.outcome == "dead"]
        self._stats.rescued += len(rescued)
        if self._instruments is not None:
            for r in rescued:
                self._instruments.outcomes.add(
                    1, {"queue": r.queue, "task": r.task, "outcome": "rescued"})
        if rescued:
            log.warning("rescued %d job(s) whose worker stopped renewing its lease: %s",
                        len(rescued), [r.id for r in rescued][:20])
        if buried:
            log.warning("%d job(s) with an expired lease were out of attempts and moved to "
                        "dead_letters: %s", len(buried), [r.id for r in buried][:20])


def _refused_by_a_row(exc: psycopg.Error, conn: Conn) -> bool:
    """True when retrying cannot help: the server refused the statement for its data.

    Not for lost connections, timeouts, lock waits, deadlocks or serialization failures:
    those pass, and the rescue simply runs again at its next interval.
    """
    if is_connection_failure(exc, conn):
        return False
    if isinstance(exc, (psycopg.errors.QueryCanceled, psycopg.errors.LockNotAvailable)):
        return False
    return not (exc.sqlstate or "").startswith("40")


class Retention:
    """Deletes history, dead letters and worker rows past their retention, in batches."""

    name = "retention"

    def __init__(self, store: JobStore, clock: Clock, settings: WorkerSettings,
                 stopping: threading.Event | None = None) -> None:
        self._store = store
        self._clock = clock
        self._history = settings.history_retention
        self._dead_letters = settings.dead_letter_retention
        self.interval = settings.retention_interval
        self.first_delay = settings.retention_delay
        self._stopping = stopping

    def run(self, session: MaintenanceSession) -> None:
        counts = []
        for prune, older_than in ((self._store.prune_history, self._history),
                                  (self._store.prune_dead_letters, self._dead_letters),
                                  (self._store.prune_workers, WORKER_ROW_RETENTION)):
            total = 0
            while older_than is not None:
                with session.bounded() as conn:
                    n = prune(conn, older_than=older_than, limit=RETENTION_BATCH,
                              now=self._clock.sql_now())
                total += n
                if n < RETENTION_BATCH or (self._stopping and self._stopping.is_set()):
                    break
            counts.append(total)
        total = 0
        while True:  # kept results past their result_ttl
            with session.bounded() as conn:
                n = self._store.prune_results(conn, limit=RETENTION_BATCH,
                                              now=self._clock.sql_now())
            total += n
            if n < RETENTION_BATCH or (self._stopping and self._stopping.is_set()):
                break
        counts.append(total)
        if any(counts):
            log.info("retention: pruned %d history row(s), %d dead letter(s), %d stale "
                     "worker row(s), %d expired result(s)", *counts)


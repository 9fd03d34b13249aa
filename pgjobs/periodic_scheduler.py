"""The periodic scheduler: a worker service that enqueues its App's cron ticks.

Every ``pgjobs work`` process of an App runs one. There is no leader: each scheduler
wakes at its schedules' tick times, reads the **database's** clock, and for each schedule
tries to advance the schedule's high-water mark to the latest tick that is due
(:func:`pgjobs.periodic_store.decide_tick`); the transaction that moves it inserts the
job, the others change nothing. A process killed at any point loses no tick: before its
commit nothing happened and the others still see the tick as due; after it, the job is
in ``jobs``.

It runs on its own thread with its own connection, never on the executor pool, so a
worker whose executors are all busy still enqueues its ticks on time. By default the
connection is opened for each wake-up and closed after it (a few per minute at most), so
it holds no connection between ticks and takes nothing from ``--pool-size``.

Time is injected: a :class:`Clock` says what "now" is (``None``: the database's clock)
and how to wait, so tests run a simulated day in seconds. The worker's own clock
(``monotonic()`` / ``sql_now()``) is accepted too (:func:`scheduler_clock`).
"""

from __future__ import annotations

import datetime as dt
import logging
import random
import threading
import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, Protocol

import psycopg

from . import periodic_store as store
from .errors import ConfigurationError
from .metrics import PeriodicInstruments, periodic_instruments
from .periodic import Schedule

if TYPE_CHECKING:
    from .app import App

log = logging.getLogger("pgjobs.periodic")

#: Longest sleep between two readings of the database clock (it may be stepped by NTP).
MAX_SLEEP = 60.0
#: Woken this much after a tick, so the database clock has certainly reached it.
WAKE_MARGIN = 0.005
RETRY_MIN, RETRY_MAX = 0.5, 10.0


class Clock(Protocol):
    """Where the scheduler's time comes from."""

    def now(self) -> dt.datetime | None:
        """The current time, or ``None`` to use the database's ``now()``."""

    def sleep(self, seconds: float, stop: threading.Event) -> bool:
        """Wait ``seconds`` (of this clock) or until ``stop`` is set; True if stopped."""


class DatabaseClock:
    """Production time: the database's clock, and real waiting."""

    def now(self) -> dt.datetime | None:
        return None

    def sleep(self, seconds: float, stop: threading.Event) -> bool:
        return stop.wait(max(0.0, seconds))


class WorkerClock(Protocol):
    """The worker runtime's clock (``pgjobs.worker.clock``), as far as scheduling needs it."""

    def monotonic(self) -> float:
        """Seconds that never go back."""

    def sql_now(self) -> dt.datetime | None:
        """The ``now`` bound into SQL; ``None``: the database's clock."""


class _FromWorkerClock:
    """Adapts a worker clock: its ``sql_now()`` is "now"; waiting follows its monotonic
    time (really waiting on the system clock, polling a fake one a test advances)."""

    POLL = 0.2

    def __init__(self, clock: WorkerClock) -> None:
        self._clock = clock

    def now(self) -> dt.datetime | None:
        return self._clock.sql_now()

    def sleep(self, seconds: float, stop: threading.Event) -> bool:
        if self._clock.sql_now() is None:  # the real clock: one plain wait
            return stop.wait(max(0.0, seconds))
        until = self._clock.monotonic() + max(0.0, seconds)
        while (left := until - self._clock.monotonic()) > 0:
            if stop.wait(min(left, self.POLL)):
                return True
        return stop.is_set()


def scheduler_clock(clock: Clock | WorkerClock | None) -> Clock:
    """The scheduler's clock from ``clock``: a :class:`Clock`, a worker clock, or None
    (the database's clock and real waiting)."""
    if clock is None:
        return DatabaseClock()
    if hasattr(clock, "sleep") and hasattr(clock, "now"):
        return clock  # type: ignore[return-value]
    if hasattr(clock, "sql_now") and hasattr(clock, "monotonic"):
        return _FromWorkerClock(clock)
    raise TypeError(f"not a clock: {clock!r} (needs now()/sleep() or sql_now()/monotonic())")


class PeriodicScheduler:
    """Enqueues the ticks of ``app.schedules``; ``start()`` registers them and starts the
    thread, ``stop()`` asks it to end, ``join()`` waits (the worker's service shape).
    ``run_once()`` is one wake-up (tests drive it directly).

    ``connect`` makes a new autocommit connection (default: to the App's database).
    ``hold_connection``: keep one connection for the scheduler's life instead of one per
    wake-up (then count it in the pool budget).
    """

    def __init__(
        self,
        app: App,
        *,
        clock: Clock | WorkerClock | None = None,
        connect: Callable[[], psycopg.Connection[Any]] | None = None,
        hold_connection: bool = False,
        schedules: dict[str, Schedule] | None = None,
        instruments: PeriodicInstruments | None = None,
        name: str = "pgjobs-periodic",
    ) -> None:
        self.app = app
        self.clock: Clock = scheduler_clock(clock)
        self.schedules = dict(app.schedules if schedules is None else schedules)
        self.hold_connection = hold_connection
        self.instruments = instruments or periodic_instruments(app.meter_provider)
        self.results: list[store.TickResult] = []  # decided by this process (bounded)
        # Nothing prepared: a handful of statements per tick gain nothing from it, and
        # PgBouncer in transaction mode (`--poll-only`) would break on it.
        self._connect = connect or (lambda: psycopg.connect(
            app.database_url, autocommit=True, connect_timeout=10, prepare_threshold=None,
            application_name="pgjobs periodic"))
        self._conn: psycopg.Connection[Any] | None = None
        self._seen: dict[str, dt.datetime] = {}  # schedule -> last tick decided here
        self.name = name
        self._stop = threading.Event()
        self._failures = 0
        self._registered = False  # the thread registers first if start() could not
        self.thread = threading.Thread(target=self._run, name=name, daemon=True)

    # --- service -------------------------------------------------------------------------

    def start(self) -> None:
        """Register the App's schedules (raises if the database refuses), then run."""
        self.register()
        self.thread.start()

    def stop(self) -> None:
        """Ask the thread to stop; returns at once (a decision in progress commits or
        rolls back; either way its tick stays exactly-once)."""
        self._stop.set()

    def join(self, timeout: float) -> bool:
        """Wait up to ``timeout`` seconds for the thread; True once it has stopped."""
        if self.thread.ident is not None and self.thread is not threading.current_thread():
            self.thread.join(timeout)
        if self.thread.is_alive():
            return False
        self._close()  # a held connection of a scheduler whose thread never ran
        return True

    def register(self) -> list[str]:
        """Upsert this App's schedules; mark the others inactive. Returns those names."""
        try:
            conn = self._connection()
            gone = store.register(conn, self.app.sql, self.schedules.values(),
                                  self.clock.now())
            self._registered = True
        finally:
            if not self.hold_connection:
                self._close()
        if self.schedules:
            log.info("periodic: %d schedule(s) registered: %s", len(self.schedules),
                     ", ".join(f"{s.name} ({s.expression} {s.timezone})"
                               for s in sorted(self.schedules.values(), key=lambda s: s.name)))
        if gone:
            log.info("periodic: schedule(s) no longer defined by this App marked inactive: %s",
                     ", ".join(gone))
        return gone

    # --- one wake-up ---------------------------------------------------------------------

    def run_once(self) -> float:
        """Decide every due tick; return the seconds (of the clock) until the next one."""
        try:
            conn = self._connection()
            injected = self.clock.now()
            now = store.server_now(conn, self.app.sql, injected)
            started = time.monotonic()
            for schedule in sorted(self.schedules.values(), key=lambda s: s.name):
                if self._stop.is_set():
                    break
                tick = schedule.cron.latest_at_or_before(now)
                if tick is None or self._seen.get(schedule.name) == tick:
                    continue
                try:
                    result = store.decide_tick(conn, self.app.sql, schedule, tick, now,
                                               default_limit=self.app.default_queue_limit)
                except psycopg.Error as exc:
                    if conn.closed or conn.broken or isinstance(exc, psycopg.OperationalError):
                        raise  # the connection: the whole pass retries after a backoff
                    # This schedule's statement failed (rolled back): the others go on;
                    # this tick is tried again at the next wake-up while still the latest.
                    log.error("periodic schedule %r: tick %s failed: %s", schedule.name,
                              tick.isoformat(), (str(exc).strip().splitlines() or ["?"])[0])
                    continue
                self._seen[schedule.name] = tick
                self._record(result)
            # On the real clock, the time this pass took is already spent.
            spent = time.monotonic() - started if injected is None else 0.0
            return max(0.0, self._until_next(now) - spent)
        finally:
            if not self.hold_connection:
                self._close()

    def _until_next(self, now: dt.datetime) -> float:
        upcoming = [t for s in self.schedules.values()
                    if (t := s.cron.next_after(now)) is not None]
        if not upcoming:
            return MAX_SLEEP
        return min(MAX_SLEEP, (min(upcoming) - now).total_seconds() + WAKE_MARGIN)

    def _record(self, result: store.TickResult) -> None:
        if result.outcome == store.TAKEN:
            return
        self.results.append(result)
        del self.results[:-10_000]
        attributes = {"schedule": result.schedule}
        tick = result.tick.isoformat()
        if result.outcome == store.ENQUEUED:
            self.instruments.enqueued.add(1, attributes)
            self.instruments.lag.record(result.lag, attributes)
            log.info("periodic schedule %r: tick %s enqueued as job %s (lag %.3fs)",
                     result.schedule, tick, result.job_id, result.lag)
        elif result.outcome == store.SKIPPED:
            self.instruments.skipped.add(1, attributes)
            log.warning("periodic schedule %r: tick %s skipped: queue %r is full (%s pending, "
                        "limit %s); the next tick will try again", result.schedule, tick,
                        result.queue, result.pending, result.limit)
        else:
            self.instruments.missed.add(1, attributes)
            log.warning("periodic schedule %r: tick %s missed: seen %.0fs late, over its "
                        "max_delay (no worker was running?)", result.schedule, tick,
                        result.lag)

    # --- thread --------------------------------------------------------------------------

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                if not self._registered:
                    self.register()
                wait = self.run_once()
                self._failures = 0
            except Exception as exc:  # keep scheduling: the next wake-up retries the tick
                self._failures += 1
                self._close()
                wait = min(RETRY_MAX, RETRY_MIN * 2 ** min(self._failures, 5))
                wait *= random.uniform(0.5, 1.0)
                first = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
                log.warning("periodic scheduler: %s; retrying in %.1fs", first, wait,
                            exc_info=not isinstance(exc, psycopg.OperationalError))
            if self.clock.sleep(wait, self._stop):
                break
        self._close()

    def _connection(self) -> psycopg.Connection[Any]:
        if self._conn is None or self._conn.closed:
            self._conn = self._connect()
        return self._conn

    def _close(self) -> None:
        conn, self._conn = self._conn, None
        if conn is not None:
            try:
                conn.close()
            except Exception:
                pass


def start_for_worker(app: App, clock: Clock | WorkerClock | None = None
                     ) -> PeriodicScheduler | None:
    """The worker's hook: register the App's schedules and start scheduling them on
    ``clock`` (the worker's own; default: the database's clock).

    An App without schedules gets no scheduler thread; the schedules a previous version
    registered are still marked inactive, best effort (a least-privilege worker role may
    not touch ``cron_schedules`` at all, and needs not when it schedules nothing).

    A connection the server refuses right now (``too many clients``, a restart) does not
    stop the worker: without schedules the clean-up waits for the next start, with them
    the scheduler's thread registers them first, retrying with its backoff.
    """
    scheduler = PeriodicScheduler(app, clock=clock)
    if not app.schedules:
        try:
            scheduler.register()
        except psycopg.errors.InsufficientPrivilege:
            log.debug("periodic: no privilege on cron_schedules; nothing to schedule anyway")
        except psycopg.OperationalError as exc:
            log.info("periodic: could not mark old schedules inactive (%s); the next worker "
                     "start will", _first_line(exc))
        return None
    try:
        scheduler.start()
    except psycopg.OperationalError as exc:
        log.warning("periodic: cannot register the schedules yet (%s); retrying",
                    _first_line(exc))
        scheduler.thread.start()
    except psycopg.errors.InsufficientPrivilege as exc:
        first = (str(exc).strip().splitlines() or ["permission denied"])[0]
        raise ConfigurationError(
            f"cannot register this App's periodic schedules ({first}): the worker's role "
            "needs SELECT, INSERT and UPDATE on cron_schedules and INSERT on jobs"
        ) from exc
    return scheduler


def _first_line(exc: BaseException) -> str:
    return (str(exc).strip().splitlines() or [type(exc).__name__])[0]

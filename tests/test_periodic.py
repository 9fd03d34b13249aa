"""Periodic jobs: definitions, registration, and exactly one job per tick with an injected
clock (a simulated day, missed ticks, both DST transitions, full queues, a killed peer)."""

from __future__ import annotations

import datetime as dt
import threading
from typing import Any

import psycopg
import pytest
from psycopg import sql

import pgjobs
import pgjobs.sql as pgsql
from pgjobs import cron as cronlib
from pgjobs import periodic_store as store
from pgjobs.periodic_scheduler import PeriodicScheduler, start_for_worker

from .conftest import count
from .workers import wait_until

UTC = dt.UTC


class ManualClock:
    """A clock the test moves; schedulers sleep on it until it reaches their wake time."""

    def __init__(self, start: dt.datetime) -> None:
        self._now = start
        self._cond = threading.Condition()
        self._sleeping: dict[int, dt.datetime] = {}  # thread id -> wakes at

    def now(self) -> dt.datetime:
        with self._cond:
            return self._now

    def sleep(self, seconds: float, stop: threading.Event) -> bool:
        me = threading.get_ident()
        with self._cond:
            self._sleeping[me] = self._now + dt.timedelta(seconds=seconds)
            self._cond.notify_all()
            try:
                while self._now < self._sleeping[me] and not stop.is_set():
                    self._cond.wait(0.05)
            finally:
                del self._sleeping[me]
                self._cond.notify_all()
        return stop.is_set()

    def advance_to(self, moment: dt.datetime) -> None:
        with self._cond:
            self._now = moment
            self._cond.notify_all()

    def wait_idle(self, sleepers: int, timeout: float = 30.0) -> None:
        """Until ``sleepers`` threads sleep past the current time (their pass is done)."""
        with self._cond:
            ok = self._cond.wait_for(
                lambda: len(self._sleeping) == sleepers
                and all(until > self._now for until in self._sleeping.values()),
                timeout)
        assert ok, f"schedulers did not settle at {self._now}"


def _jobs(db: psycopg.Connection[Any], schema: str, task: str) -> list[tuple[Any, ...]]:
    return db.execute(sql.SQL(
        "SELECT next_run_at, args, queue FROM {} WHERE task = %s ORDER BY next_run_at"
    ).format(sql.Identifier(schema, "jobs")), [task]).fetchall()


def _row(db: psycopg.Connection[Any], schema: str, name: str) -> dict[str, Any]:
    cur = db.execute(sql.SQL("SELECT * FROM {} WHERE name = %s").format(
        sql.Identifier(schema, "periodic_schedules")), [name])
    row = cur.fetchone()
    assert row is not None
    assert cur.description is not None
    return dict(zip([c.name for c in cur.description], row, strict=True))


def _scheduler(app: pgjobs.App, pg_url: str, clock: ManualClock) -> PeriodicScheduler:
    return PeriodicScheduler(
        app, clock=clock, hold_connection=True,
        connect=lambda: psycopg.connect(pg_url, autocommit=True))


def _drive(clock: ManualClock, moments: list[dt.datetime], sleepers: int) -> None:
    for moment in moments:
        clock.advance_to(moment)
        clock.wait_idle(sleepers)


# --- definitions --------------------------------------------------------------------------


def test_periodic_decorator_registers_a_schedule_and_returns_the_task():
    app = pgjobs.App("postgresql://unused")

    @app.periodic(cron="*/5 * * * *", timezone="Europe/Paris", args={"region": "eu"},
                  name="eu-report", max_delay=30)
    @app.task(queue="reports")
    def report(region: str) -> None: ...

    @app.periodic(cron="@hourly")
    @app.task(name="hourly")
    def hourly() -> None: ...

    assert isinstance(report, pgjobs.Task) and report.queue == "reports"
    eu = app.schedules["eu-report"]
    assert (eu.expression, eu.timezone, dict(eu.args), eu.queue, eu.max_delay) == (
        "*/5 * * * *", "Europe/Paris", {"region": "eu"}, "reports", 30.0)
    assert eu.task == report.name
    assert app.schedules["hourly"].timezone == "UTC"  # default name: the task's
    at = dt.datetime(2026, 5, 1, 10, 17, 3, tzinfo=UTC)
    assert app.schedules["hourly"].cron.latest_at_or_before(at) == at.replace(minute=0, second=0)


@pytest.mark.parametrize(("options", "message"), [
    ({"cron": "61 * * * *"}, "bad minute"),
    ({"cron": "* * * *"}, "has 4 field(s): use exactly 5"),
    ({"cron": "0 0 * * * *"}, "has 6 field(s)"),
    ({"cron": "@reboot"}, "alias '@reboot' is not supported"),
    ({"cron": "0 0 31 2 *"}, "bad day-of-month"),
    ({"cron": "* * * * *", "timezone": "Europe/Pariss"}, "unknown time zone 'Europe/Pariss'"),
    ({"cron": "* * * * *", "args": {"n": 1}}, "do not match"),
    ({"cron": "* * * * *", "args": {"region": "eu", "extra": 1}}, "do not match"),
    ({"cron": "* * * * *", "args": {"region": object()}}, "not JSON-serialisable"),
    ({"cron": "* * * * *", "args": ["eu"]}, "args must be a dict"),
    ({"cron": "* * * * *", "max_delay": 0}, "max_delay must be a positive number"),
])
def test_invalid_schedules_fail_at_import_with_a_clear_error(options, message):
    app = pgjobs.App("postgresql://unused")
    options.setdefault("args", {"region": "eu"})

    @app.task(name="report")
    def report(region: str) -> None: ...

    with pytest.raises(pgjobs.ConfigurationError) as info:
        app.periodic(**options)(report)
    assert message in str(info.value)
    assert "\n" not in str(info.value)
    assert "report" in str(info.value)
    assert app.schedules == {}


def test_periodic_must_be_stacked_above_task_and_names_must_be_unique():
    app = pgjobs.App("postgresql://unused")

    def plain() -> None: ...

    with pytest.raises(pgjobs.ConfigurationError, match=r"stacked above @app\.task"):
        app.periodic(cron="* * * * *")(plain)  # type: ignore[type-var]

    @app.task(name="a")
    def a() -> None: ...

    app.periodic(cron="* * * * *", name="same")(a)
    with pytest.raises(pgjobs.ConfigurationError, match="two periodic schedules are named"):
        app.periodic(cron="0 * * * *", name="same")(a)


def test_cron_interface_rounds_to_ticks_in_the_zone():
    paris = cronlib.parse("0 9 * * MON-FRI", "Europe/Paris")
    saturday = dt.datetime(2026, 6, 6, 12, 0, tzinfo=UTC)
    assert paris.latest_at_or_before(saturday) == dt.datetime(2026, 6, 5, 7, 0, tzinfo=UTC)
    assert paris.next_after(saturday) == dt.datetime(2026, 6, 8, 7, 0, tzinfo=UTC)
    exact = dt.datetime(2026, 6, 5, 7, 0, tzinfo=UTC)
    assert paris.latest_at_or_before(exact) == exact  # a tick is due at its own instant
    assert paris.next_after(exact) == dt.datetime(2026, 6, 8, 7, 0, tzinfo=UTC)


# --- registration -------------------------------------------------------------------------


def _app_with(pg_url: str, schema: str, *names: str, cron: str = "* * * * *") -> pgjobs.App:
    app = pgjobs.App(pg_url, schema=schema)

    @app.task(name="tick", queue="ticks")
    def tick(label: str = "") -> None: ...

    for name in names:
        app.periodic(cron=cron, name=name, args={"label": name})(tick)
    return app


def test_workers_register_schedules_and_mark_removed_ones_inactive(pg_url, schema, db):
    old = _app_with(pg_url, schema, "kept", "removed")
    PeriodicScheduler(old).register()
    new = _app_with(pg_url, schema, "kept", "added", cron="*/10 * * * *")
    assert PeriodicScheduler(new).register() == ["removed"]
    kept, removed, added = (_row(db, schema, n) for n in ("kept", "removed", "added"))
    assert kept["active"] and added["active"] and not removed["active"]  # kept, not deleted
    assert kept["cron"] == "*/10 * * * *"  # the newest registration wins
    assert (kept["task"], kept["queue"], kept["args"]) == ("tick", "ticks", {"label": "kept"})
    assert kept["next_tick"] is not None and removed["next_tick"] is None
    # An App without schedules (or whose role may not touch them) starts no scheduler.
    assert start_for_worker(pgjobs.App(pg_url, schema=schema)) is None
    assert not any(_row(db, schema, n)["active"] for n in ("kept", "added"))


# --- exactly once per tick ----------------------------------------------------------------


@pytest.mark.timeout(600)
def test_three_schedulers_over_a_simulated_day_enqueue_exactly_1440_jobs(pg_url, schema, db):
    """Three schedulers, each on its own thread and connection, race for every tick of a
    `* * * * *` schedule over a day of an injected clock: one job per minute, no more."""
    day = dt.datetime(2026, 7, 1, tzinfo=UTC)
    clock = ManualClock(day - dt.timedelta(seconds=30))
    schedulers = [_scheduler(_app_with(pg_url, schema, "every-minute"), pg_url, clock)
                  for _ in range(3)]
    for scheduler in schedulers:
        scheduler.start()
    try:
        clock.wait_idle(3)
        # Each step lands somewhere in the minute, so wake-ups and passes interleave.
        _drive(clock, [day + dt.timedelta(minutes=m, seconds=(m * 7) % 50 + 0.5)
                       for m in range(1440)], 3)
    finally:
        for scheduler in schedulers:
            scheduler.stop()
        for scheduler in schedulers:
            assert scheduler.join(10)
    runs = [row[0] for row in _jobs(db, schema, "tick")]
    assert len(runs) == 1440
    assert runs == [day + dt.timedelta(minutes=m) for m in range(1440)]  # next_run_at = tick
    won = [sum(r.outcome == store.ENQUEUED for r in s.results) for s in schedulers]
    assert sum(won) == 1440 and all(w > 0 for w in won), won  # everyone raced, nobody doubled
    row = _row(db, schema, "every-minute")
    assert row["ticks_enqueued"] == 1440 and row["ticks_skipped"] == 0
    assert row["last_tick"] == day + dt.timedelta(minutes=1439)


def test_a_peer_killed_inside_its_tick_transaction_loses_no_tick(pg_url, schema, db):
    """The worker that took the tick's row lock dies before committing: the tick stays due
    and the next scheduler enqueues it (the database-side half of SIGKILL)."""
    app = _app_with(pg_url, schema, "every-minute")
    tick_at = dt.datetime(2026, 7, 1, 12, 0, tzinfo=UTC)
    clock = ManualClock(tick_at - dt.timedelta(minutes=5))
    PeriodicScheduler(app, clock=clock).register()
    schedule = app.schedules["every-minute"]
    now = tick_at + dt.timedelta(seconds=1)
    victim = psycopg.connect(pg_url)
    victim.execute(app.sql.of(pgsql.PERIODIC_CLAIM_TICK), {
        "name": schedule.name, "tick": tick_at, "outcome": "enqueued", "next_tick": None,
        "now": now})  # holds the row lock, never commits
    results: list[store.TickResult] = []

    def survivor() -> None:
        with psycopg.connect(pg_url, autocommit=True) as conn:
            results.append(store.decide_tick(conn, app.sql, schedule, tick_at, now))

    thread = threading.Thread(target=survivor)
    thread.start()
    wait_until(lambda: db.execute(
        "SELECT count(*) FROM pg_stat_activity WHERE wait_event_type = 'Lock' "
        "AND datname = current_database()").fetchone()[0] >= 1, 20,
        message="survivor waiting on the victim's row lock")
    db.execute("SELECT pg_terminate_backend(%s)", [victim.info.backend_pid])
    thread.join(20)
    victim.close()
    assert [r.outcome for r in results] == [store.ENQUEUED]
    assert [r[0] for r in _jobs(db, schema, "tick")] == [tick_at]


# --- missed ticks ---------------------------------------------------------------------------


def test_after_downtime_only_the_latest_tick_runs_and_only_within_max_delay(pg_url, schema, db):
    app = pgjobs.App(pg_url, schema=schema)

    @app.periodic(cron="*/5 * * * *", name="five", max_delay=120)
    @app.periodic(cron="0 3 * * *", name="nightly", max_delay=600)
    @app.task(name="tick")
    def tick() -> None: ...

    start = dt.datetime(2026, 7, 1, 0, 0, 30, tzinfo=UTC)
    clock = ManualClock(start)
    PeriodicScheduler(app, clock=clock, connect=lambda: psycopg.connect(
        pg_url, autocommit=True)).register()
    # Down from 00:00:30 to 03:06:10: 37 five-minute ticks and the nightly one went by.
    back = dt.datetime(2026, 7, 1, 3, 6, 10, tzinfo=UTC)
    clock.advance_to(back)
    scheduler = _scheduler(app, pg_url, clock)
    scheduler.run_once()
    five, nightly = _row(db, schema, "five"), _row(db, schema, "nightly")
    # five: 03:05 is 70 s old (<= 120): enqueued, once; nothing of 00:05 … 03:00.
    # nightly: 03:00 is 370 s old (<= 600): enqueued.
    assert [r[0] for r in _jobs(db, schema, "tick")] == [back.replace(minute=0, second=0),
                                                         back.replace(minute=5, second=0)]
    assert five["last_outcome"] == "enqueued" and five["ticks_enqueued"] == 1
    assert nightly["last_outcome"] == "enqueued" and nightly["ticks_enqueued"] == 1
    # A second downtime past max_delay: the tick is recorded as missed, not enqueued.
    clock.advance_to(dt.datetime(2026, 7, 2, 3, 12, tzinfo=UTC))
    scheduler.run_once()
    nightly = _row(db, schema, "nightly")
    assert nightly["last_outcome"] == "missed" and nightly["ticks_missed"] == 1
    assert nightly["last_tick"] == dt.datetime(2026, 7, 2, 3, 0, tzinfo=UTC)
    tasks_run = [r[0] for r in _jobs(db, schema, "tick")]
    assert dt.datetime(2026, 7, 2, 3, 0, tzinfo=UTC) not in tasks_run
    assert dt.datetime(2026, 7, 2, 3, 10, tzinfo=UTC) in tasks_run  # five: 120 s old
    scheduler.run_once()  # the same instant again: nothing new, nothing retried
    assert len(_jobs(db, schema, "tick")) == len(tasks_run)


# --- time zones -----------------------------------------------------------------------------


@pytest.mark.parametrize(("day", "expected_utc"), [
    # Spring forward in Paris: 02:00 -> 03:00, 02:30 does not exist; runs once, at 03:00.
    (dt.date(2026, 3, 29), [dt.datetime(2026, 3, 29, 1, 0, tzinfo=UTC)]),
    # Fall back: 03:00 -> 02:00, 02:30 happens twice; runs once, at the first one.
    (dt.date(2026, 10, 25), [dt.datetime(2026, 10, 25, 0, 30, tzinfo=UTC)]),
])
def test_a_daily_0230_job_runs_once_on_both_dst_transition_days(pg_url, schema, db, day,
                                                                  expected_utc):
    app = pgjobs.App(pg_url, schema=schema)

    @app.periodic(cron="30 2 * * *", timezone="Europe/Paris", name="nightly")
    @app.task(name="tick")
    def tick() -> None: ...

    # From 20:00 UTC the evening before to 06:00 UTC the day after the transition, every
    # five minutes, with three schedulers racing.
    start = dt.datetime.combine(day, dt.time(0, 0), UTC) - dt.timedelta(hours=4)
    clock = ManualClock(start)
    schedulers = [_scheduler(app, pg_url, clock) for _ in range(3)]
    for scheduler in schedulers:
        scheduler.start()
    try:
        clock.wait_idle(3)
        _drive(clock, [start + dt.timedelta(minutes=5 * k + 0.1) for k in range(1, 12 * 34)], 3)
    finally:
        for scheduler in schedulers:
            scheduler.stop()
        for scheduler in schedulers:
            assert scheduler.join(10)
    runs = [r[0] for r in _jobs(db, schema, "tick")]
    in_day = [t for t in runs
              if t.astimezone(cronlib.parse("* * * * *", "Europe/Paris").zone).date() == day]
    assert in_day == expected_utc
    assert len(runs) == 2  # the transition day and the day after, once each


# --- pending limit ------------------------------------------------------------------------


def test_a_tick_meeting_a_full_queue_is_skipped_once_and_the_next_one_runs(pg_url, schema, db,
                                                                         caplog):
    app = _app_with(pg_url, schema, "every-minute")
    with psycopg.connect(pg_url) as conn:
        app.set_queue_limit(conn, "ticks", 0)
        conn.commit()
    start = dt.datetime(2026, 7, 1, 12, 0, 30, tzinfo=UTC)
    clock = ManualClock(start)
    scheduler = _scheduler(app, pg_url, clock)
    scheduler.register()
    clock.advance_to(start + dt.timedelta(seconds=31))
    with caplog.at_level("WARNING", logger="pgjobs.periodic"):
        scheduler.run_once()
        scheduler.run_once()  # same tick again: not retried
    assert count(db, schema, "jobs") == 0
    row = _row(db, schema, "every-minute")
    assert (row["last_outcome"], row["ticks_skipped"], row["ticks_enqueued"]) == ("skipped", 1, 0)
    assert row["last_tick"] == dt.datetime(2026, 7, 1, 12, 1, tzinfo=UTC)  # mark advanced
    assert [r.outcome for r in scheduler.results] == [store.SKIPPED]
    assert len([r for r in caplog.records if "skipped: queue 'ticks' is full" in r.message]) == 1
    with psycopg.connect(pg_url) as conn:
        app.set_queue_limit(conn, "ticks", None)
        conn.commit()
    clock.advance_to(start + dt.timedelta(seconds=91))
    scheduler.run_once()
    assert [r[0] for r in _jobs(db, schema, "tick")] == [dt.datetime(2026, 7, 1, 12, 2,
                                                                     tzinfo=UTC)]


# --- the worker's clock ---------------------------------------------------------------------


class FakeWorkerClock:
    """Shaped like the worker runtime's clock: monotonic() and sql_now(), moved by tests."""

    def __init__(self, start: dt.datetime) -> None:
        self.start, self.offset = start, 0.0

    def monotonic(self) -> float:
        return 1000.0 + self.offset

    def wall(self) -> float:
        return self.start.timestamp() + self.offset

    def sql_now(self) -> dt.datetime:
        return self.start + dt.timedelta(seconds=self.offset)


def test_the_scheduler_runs_on_the_workers_clock(pg_url, schema, db):
    app = _app_with(pg_url, schema, "every-minute")
    clock = FakeWorkerClock(dt.datetime(2026, 7, 1, 12, 0, 30, tzinfo=UTC))
    scheduler = start_for_worker(app, clock=clock)
    assert scheduler is not None
    try:
        for minute in (1, 2, 3):
            clock.offset += 60.0  # 12:01:30, 12:02:30, 12:03:30
            wait_until(lambda m=minute: len(_jobs(db, schema, "tick")) == m, 20,
                       message=f"the tick of 12:0{minute}")
    finally:
        scheduler.stop()
        assert scheduler.join(10)
    assert [r[0] for r in _jobs(db, schema, "tick")] == [
        dt.datetime(2026, 7, 1, 12, m, tzinfo=UTC) for m in (1, 2, 3)]


# --- metrics --------------------------------------------------------------------------------


def _points(reader: Any, name: str) -> list[Any]:
    data = reader.get_metrics_data()
    return [point for rm in (data.resource_metrics if data else [])
            for sm in rm.scope_metrics for metric in sm.metrics if metric.name == name
            for point in metric.data.data_points]


def test_ticks_enqueued_skipped_missed_and_lag_are_measured(pg_url, schema):
    from opentelemetry.sdk.metrics import MeterProvider
    from opentelemetry.sdk.metrics.export import InMemoryMetricReader

    reader = InMemoryMetricReader()
    app = pgjobs.App(pg_url, schema=schema, meter_provider=MeterProvider(metric_readers=[reader]))

    @app.periodic(cron="* * * * *", name="minutely", max_delay=30)
    @app.task(name="tick", queue="ticks")
    def tick() -> None: ...

    start = dt.datetime(2026, 7, 1, 12, 0, 30, tzinfo=UTC)
    clock = ManualClock(start)
    scheduler = _scheduler(app, pg_url, clock)
    scheduler.register()
    for seconds in (32, 92):  # 12:01:02 and 12:02:02: enqueued, 2 s late each
        clock.advance_to(start + dt.timedelta(seconds=seconds))
        scheduler.run_once()
    with psycopg.connect(pg_url) as conn:
        app.set_queue_limit(conn, "ticks", 0)
        conn.commit()
    clock.advance_to(start + dt.timedelta(seconds=152))  # 12:03:02: the queue is full
    scheduler.run_once()
    # Down until 12:07:38: the latest tick, 12:07, is 38 s old, over max_delay (30 s).
    clock.advance_to(start + dt.timedelta(seconds=428))
    scheduler.run_once()
    attrs = {"schedule": "minutely"}
    assert [p.value for p in _points(reader, "pgjobs.periodic.ticks_enqueued")
            if p.attributes == attrs] == [2]
    assert [p.value for p in _points(reader, "pgjobs.periodic.ticks_skipped")
            if p.attributes == attrs] == [1]
    assert [p.value for p in _points(reader, "pgjobs.periodic.ticks_missed")
            if p.attributes == attrs] == [1]
    (lag,) = [p for p in _points(reader, "pgjobs.periodic.tick_lag") if p.attributes == attrs]
    assert lag.count == 2 and 4.0 <= lag.sum < 10.0  # 2 s + 2 s, plus the round trips


def test_a_schedule_whose_insert_fails_does_not_stop_the_others(pg_url, schema, db, caplog):
    app = pgjobs.App(pg_url, schema=schema)

    @app.periodic(cron="* * * * *", name="a-refused")
    @app.task(name="refused")
    def refused() -> None: ...

    @app.periodic(cron="* * * * *", name="b-fine")
    @app.task(name="fine")
    def fine() -> None: ...

    # The database refuses one schedule's job (a trigger stands in for any statement error).
    db.execute(sql.SQL(
        "CREATE FUNCTION {fn}() RETURNS trigger LANGUAGE plpgsql AS $$ BEGIN "
        "IF NEW.task = 'refused' THEN RAISE EXCEPTION 'refused by a test trigger'; END IF; "
        "RETURN NEW; END $$; "
        "CREATE TRIGGER refuse BEFORE INSERT ON {jobs} FOR EACH ROW EXECUTE FUNCTION {fn}()"
    ).format(fn=sql.Identifier(schema, "refuse"), jobs=sql.Identifier(schema, "jobs")))
    start = dt.datetime(2026, 7, 1, 12, 0, 30, tzinfo=UTC)
    clock = ManualClock(start)
    scheduler = _scheduler(app, pg_url, clock)
    scheduler.register()
    clock.advance_to(start + dt.timedelta(seconds=31))
    with caplog.at_level("ERROR", logger="pgjobs.periodic"):
        scheduler.run_once()
    assert [r[0] for r in _jobs(db, schema, "fine")] == [dt.datetime(2026, 7, 1, 12, 1,
                                                                     tzinfo=UTC)]
    assert _jobs(db, schema, "refused") == []
    assert _row(db, schema, "a-refused")["last_tick"] is None  # rolled back with the insert
    assert any("refused by a test trigger" in r.message for r in caplog.records)
    db.execute(sql.SQL("DROP TRIGGER refuse ON {}").format(sql.Identifier(schema, "jobs")))
    scheduler.run_once()  # the same tick, still the latest: tried again, now enqueued
    assert len(_jobs(db, schema, "refused")) == 1 and len(_jobs(db, schema, "fine")) == 1


class FastClock:
    """A worker clock running `speed` times faster than real time from `start`."""

    def __init__(self, start: dt.datetime, speed: float) -> None:
        import time

        self._time, self.start, self.speed = time, start, speed
        self._origin = time.monotonic()

    def monotonic(self) -> float:
        return self._origin + (self._time.monotonic() - self._origin) * self.speed

    def wall(self) -> float:
        return self.start.timestamp() + (self.monotonic() - self._origin)

    def sql_now(self) -> dt.datetime:
        return self.start + dt.timedelta(seconds=self.monotonic() - self._origin)


def test_a_worker_ticks_on_the_clock_it_is_given_and_runs_the_jobs(pg_url, schema, db):
    """The hook in the worker runtime: the scheduler starts with the worker, follows the
    worker's clock (here a minute per real second), its jobs are claimed and run like any
    other, and it stops with the worker."""
    app = pgjobs.App(pg_url, schema=schema)
    ran: list[str] = []

    @app.periodic(cron="* * * * *", name="minutely")
    @app.task(name="tick")
    def tick() -> None:
        ran.append(pgjobs.current_job().id)

    clock = FastClock(dt.datetime(2026, 7, 1, 12, 0, 30, tzinfo=UTC), speed=60.0)
    worker = app.worker(concurrency=2, install_signal_handlers=False, clock=clock,
                        lease_timeout=3600.0, poll_interval=60.0)
    thread = threading.Thread(target=worker.run, daemon=True)
    thread.start()
    try:
        assert worker.wait_started(30)
        assert worker.periodic is not None and worker.periodic.thread.is_alive()
        wait_until(lambda: len(ran) >= 3, 60, message="three ticks run by the worker")
    finally:
        worker.stop()
        thread.join(60)
    assert not worker.periodic.thread.is_alive()  # stopped and joined with the worker
    row = _row(db, schema, "minutely")
    ticks = row["ticks_enqueued"]
    assert ticks >= 3 and len(set(ran)) == len(ran) <= ticks
    # Ticks of the given clock's time (July 2026), not of the database's.
    assert (dt.datetime(2026, 7, 1, 12, 3, tzinfo=UTC) <= row["last_tick"]
            < dt.datetime(2026, 7, 1, 14, 0, tzinfo=UTC))


def test_a_worker_whose_role_cannot_register_schedules_refuses_to_start(pg_url, schema, db):
    import uuid

    role = f"periodic_norights_{uuid.uuid4().hex[:8]}"
    ident = sql.Identifier(role)
    db.execute(sql.SQL("CREATE ROLE {} LOGIN").format(ident))
    try:
        db.execute(sql.SQL("GRANT USAGE ON SCHEMA {} TO {}").format(sql.Identifier(schema), ident))
        db.execute(sql.SQL("GRANT SELECT ON ALL TABLES IN SCHEMA {} TO {}").format(
            sql.Identifier(schema), ident))  # enough to pass the schema check, no writes
        url = psycopg.conninfo.make_conninfo(pg_url, user=role)
        app = _app_with(url, schema, "every-minute")
        worker = app.worker(concurrency=1, install_signal_handlers=False)
        with pytest.raises(pgjobs.ConfigurationError) as info:
            worker.run()
        assert "cannot register this App's periodic schedules" in str(info.value)
        assert "permission denied" in str(info.value) and "\n" not in str(info.value)
        assert count(db, schema, "workers") == 0  # refused before anything started
    finally:
        db.execute(sql.SQL("DROP OWNED BY {}").format(ident))
        db.execute(sql.SQL("DROP ROLE {}").format(ident))

"""Periodic jobs in real time: three `pgjobs work` processes, a `* * * * *` schedule, two
minute boundaries (so this takes 1 to 2 minutes), executors all busy, and the process that
enqueued the first tick SIGKILLed before the second."""

from __future__ import annotations

import datetime as dt
import signal

import psycopg
import pytest
from psycopg import sql

import pgjobs

from .apps import periodic_app
from .workers import WorkerProcess, create_executions_table, wait_until

pytestmark = pytest.mark.slow

APP = "tests.apps.periodic_app:app"


def _ticks(db: psycopg.Connection, schema: str) -> list[tuple[dt.datetime, dt.datetime]]:
    return db.execute(sql.SQL(
        "SELECT next_run_at, created_at FROM {} WHERE task = 'periodic.record' "
        "ORDER BY next_run_at").format(sql.Identifier(schema, "jobs"))).fetchall()


def _db_now(db: psycopg.Connection) -> dt.datetime:
    return db.execute("SELECT now()").fetchone()[0]


def _wait_for_tick(db: psycopg.Connection, schema: str, boundary: dt.datetime) -> None:
    budget = (boundary - _db_now(db)).total_seconds() + 30
    wait_until(lambda: any(t == boundary for t, _ in _ticks(db, schema)), budget, 0.2,
               message=f"the tick of {boundary:%H:%M}")


@pytest.mark.timeout(300)
def test_three_workers_enqueue_one_job_per_minute_on_time_even_busy_and_killed(pg_url, schema,
                                                                                db):
    create_executions_table(db, schema)
    app = pgjobs.App(pg_url, schema=schema)
    app.tasks.update(periodic_app.app.tasks)
    hold = app.tasks["periodic.hold"]
    with psycopg.connect(pg_url) as conn:  # more than 3 workers can hold, prefetch included
        app.enqueue_many(conn, [hold.job(seconds=600.0) for _ in range(30)])
        conn.commit()
    workers = [WorkerProcess(pg_url, schema, "--concurrency", "1", app=APP) for _ in range(3)]
    try:
        for worker in workers:
            worker.wait_started()
        # Every executor busy and every claim slot full (holds are still pending, and
        # they come before any tick's job in claim order): ticks must not need one.
        wait_until(lambda: db.execute(sql.SQL(
            "SELECT count(DISTINCT worker_id) FILTER (WHERE state = 'running'), "
            "count(*) FILTER (WHERE state = 'pending' AND task = 'periodic.hold') FROM {}").format(
            sql.Identifier(schema, "jobs"))).fetchone() >= (3, 1), 30,
            message="every worker holding")
        first = _db_now(db).replace(second=0, microsecond=0) + dt.timedelta(minutes=1)
        second = first + dt.timedelta(minutes=1)

        _wait_for_tick(db, schema, first)
        ((tick, created),) = _ticks(db, schema)
        assert tick == first and created - first < dt.timedelta(seconds=10)  # on time
        (job_id,) = db.execute(sql.SQL(
            "SELECT id FROM {} WHERE task = 'periodic.record'").format(
            sql.Identifier(schema, "jobs"))).fetchone()
        enqueuers = [w for w in workers if f"enqueued as job {job_id} " in w.log]
        assert len(enqueuers) == 1, [w.log for w in workers]
        enqueuers[0].signal(signal.SIGKILL)
        enqueuers[0].wait(10)

        _wait_for_tick(db, schema, second)
        # A duplicate would come within milliseconds of the first; give it seconds.
        wait_until(lambda: _db_now(db) > second + dt.timedelta(seconds=3), 30, 0.2)
        ticks = _ticks(db, schema)
        assert [t for t, _ in ticks] == [first, second]
        assert ticks[1][1] - second < dt.timedelta(seconds=10)
        survivors = [w for w in workers if w is not enqueuers[0]]
        assert sum("enqueued as job" in w.log for w in survivors) == 1
        row = db.execute(sql.SQL(
            "SELECT last_tick, ticks_enqueued, active FROM {} WHERE name = 'every-minute'"
        ).format(sql.Identifier(schema, "periodic_schedules"))).fetchone()
        assert row == (second, 2, True)
        # No executor ever ran a periodic job: they were all holding.
        assert db.execute(sql.SQL("SELECT count(*) FROM {}").format(
            sql.Identifier(schema, "executions"))).fetchone()[0] == 0
    finally:
        for worker in workers:
            worker.kill()

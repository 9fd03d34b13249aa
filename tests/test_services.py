"""The worker's services driven one at a time against the real database, with a fake clock.

No threads and no sleeping: each test builds the services it needs from a store, a
connection, a :class:`FakeClock` and settings, calls their one-step methods, moves the
clock, and looks at the rows. Backoff, lease expiry, rescue and retention take
milliseconds.
"""

from __future__ import annotations

import datetime as dt
import logging
import queue
import secrets
import threading
from contextlib import nullcontext
from typing import Any

import pytest
from psycopg import sql

import pgjobs
from pgjobs.store import ClaimedJob, JobStore
from pgjobs.worker import fetcher as fetcher_module
from pgjobs.worker import maintenance
from pgjobs.worker.clock import FakeClock
from pgjobs.worker.completer import Completer
from pgjobs.worker.dbconn import ResilientConnection
from pgjobs.worker.executor import ExecutorPool
from pgjobs.worker.fetcher import Fetcher
from pgjobs.worker.heartbeat import Heartbeat
from pgjobs.worker.inhand import InHand
from pgjobs.worker.jobs import Outcome, Result
from pgjobs.worker.maintenance import MaintenanceService, Rescue, Retention
from pgjobs.worker.outcome_log import OutcomeLog
from pgjobs.worker.settings import WorkerSettings
from pgjobs.worker.stats import WorkerStats

from .conftest import count


class Rig:
    """A fetcher, executor pool (no threads), completer, heartbeat and maintenance on
    one connection, all reading one fake clock."""

    def __init__(self, app: pgjobs.App, pg_url: str, db: Any, **options: Any) -> None:
        now = db.execute("SELECT now()").fetchone()[0]
        self.clock = FakeClock(now)
        self.settings = WorkerSettings.build(**options)
        self.store = JobStore(app.sql)
        self.conn = ResilientConnection(pg_url, "test", threading.Event(), "pgjobs test")
        self.in_hand = InHand()
        self.stats = WorkerStats()
        self.buffer: queue.SimpleQueue[ClaimedJob | None] = queue.SimpleQueue()
        self.fetcher = Fetcher(self.store, self.conn, self.clock, self.settings,
                               worker_id="w-test", buffer=self.buffer, in_hand=self.in_hand)
        self.executors = ExecutorPool(app, 1, self.buffer, report=lambda r: None,
                                      borrow=lambda: nullcontext(None),  # type: ignore
                                      worker_name="w-test", clock=self.clock)
        self.completer = Completer(self.store, self.conn, self.clock, in_hand=self.in_hand,
                                   stats=self.stats, claimer=self.fetcher)
        self.heartbeat = Heartbeat(self.store, self.conn, self.clock, self.settings,
                                   worker_id="w-test", in_hand=self.in_hand,
                                   stats=self.stats, executors_busy=lambda: 0)
        self.rescue = Rescue(self.store, self.clock, self.stats, None,
                             self.settings.rescue_interval)
        self.retention = Retention(self.store, self.clock, self.settings)
        self.maintenance = MaintenanceService(self.store, self.conn, self.clock,
                                              [self.rescue, self.retention], 5.0)

    def claim(self, limit: int = 10) -> list[ClaimedJob]:
        self.fetcher.claim(limit)
        jobs = []
        while True:
            try:
                jobs.append(self.buffer.get_nowait())
            except queue.Empty:
                return jobs  # type: ignore[return-value]

    def close(self) -> None:
        self.conn.discard()


@pytest.fixture
def rig_for(app, pg_url, db):
    rigs: list[Rig] = []

    def make(**options: Any) -> Rig:
        rig = Rig(app, pg_url, db, **options)
        rigs.append(rig)
        return rig

    yield make
    for rig in rigs:
        rig.close()


def _jobs(db: Any, schema: str, columns: str) -> list[tuple[Any, ...]]:
    return db.execute(sql.SQL(f"SELECT {columns} FROM {{}} ORDER BY id").format(  # noqa: S608
        sql.Identifier(schema, "jobs"))).fetchall()


def test_backoff_delays_the_next_claim_by_exactly_the_tasks_delay(app, conn, db, schema,
                                                                     rig_for):
    @app.task(name="flaky", max_attempts=3, backoff=lambda attempt: 30.0 * attempt)
    def flaky() -> None:
        raise ValueError("boom")

    job_id = flaky.enqueue(conn)
    conn.commit()
    rig = rig_for(lease_timeout=60)
    (job,) = rig.claim()
    result = rig.executors.failure(job, ValueError("boom"), 0.01)
    assert (result.outcome, result.delay) == (Outcome.RETRY, 30.0)
    rig.completer.flush([result])
    ((state, next_run_at, error),) = _jobs(db, schema, "state, next_run_at, last_error")
    assert state == "pending" and "ValueError: boom" in error
    assert next_run_at == rig.clock.sql_now() + dt.timedelta(seconds=30)
    rig.clock.advance(29.9)
    assert rig.claim() == []
    rig.clock.advance(0.2)
    (again,) = rig.claim()
    assert (again.id, again.attempt) == (job_id, 2)
    # The second failure waits backoff(2) = 60 s; the third is the last attempt.
    assert rig.executors.failure(again, ValueError("boom"), 0.0).delay == 60.0


def test_a_lease_renewed_by_the_heartbeat_is_not_rescued_an_expired_one_is(app, conn, db,
                                                                           schema, rig_for):
    @app.task(name="held")
    def held() -> None: ...

    held.enqueue(conn)
    conn.commit()
    rig = rig_for(lease_timeout=10)
    (job,) = rig.claim()
    assert len(rig.in_hand) == 1
    rig.clock.advance(8)
    rig.heartbeat.renew_leases()  # lease now ends at +18
    rig.clock.advance(9)  # +17: the original lease (+10) is long gone, the renewed one not
    rig.maintenance.run_plugin(rig.rescue)
    assert rig.stats.rescued == 0
    assert _jobs(db, schema, "state, attempts") == [("running", 1)]
    rig.clock.advance(2)  # +19: expired
    rig.maintenance.run_plugin(rig.rescue)
    assert rig.stats.rescued == 1
    ((state, attempts, error),) = _jobs(db, schema, "state, attempts, last_error")
    assert (state, attempts) == ("pending", 1) and "lease expired" in error
    # The worker that held it notices at its next renewal.
    rig.heartbeat.renew_leases()
    assert rig.stats.lost_leases == 1 and len(rig.in_hand) == 0
    # And a late outcome from it changes nothing.
    rig.completer.flush([Result(job, Outcome.SUCCEEDED)])
    assert count(db, schema, "jobs") == 1 and rig.stats.succeeded == 0


def test_a_lease_the_server_refuses_to_renew_does_not_stop_the_others(app, conn, db,
                                                                      schema, rig_for):
    @app.task(name="held3")
    def held3() -> None: ...

    ids = app.enqueue_many(conn, [held3.job() for _ in range(3)])
    conn.commit()
    rig = rig_for(lease_timeout=10)
    assert len(rig.claim()) == 3
    # A trigger added by hand refuses any update of one row.
    jobs = sql.Identifier(schema, "jobs")
    db.execute(sql.SQL(
        "CREATE FUNCTION {}() RETURNS trigger LANGUAGE plpgsql AS $$ BEGIN "
        "IF NEW.id = {} THEN RAISE EXCEPTION 'refused by hand'; END IF; RETURN NEW; END $$"
    ).format(sql.Identifier(schema, "refuse"), sql.Literal(ids[1])))
    db.execute(sql.SQL("CREATE TRIGGER refuse BEFORE UPDATE ON {} FOR EACH ROW "
                       "EXECUTE FUNCTION {}()").format(jobs, sql.Identifier(schema, "refuse")))
    rig.clock.advance(5)
    rig.heartbeat.renew_leases()
    expiry = dict(db.execute(sql.SQL("SELECT id, lease_expires_at FROM {}").format(jobs)))
    renewed_until = rig.clock.sql_now() + dt.timedelta(seconds=10)
    assert expiry[ids[0]] == expiry[ids[2]] == renewed_until
    assert expiry[ids[1]] < renewed_until
    assert rig.stats.lost_leases == 0 and len(rig.in_hand) == 3


def test_rescue_buries_a_job_out_of_attempts(app, conn, db, schema, rig_for):
    @app.task(name="once", max_attempts=1)
    def once() -> None: ...

    job_id = once.enqueue(conn)
    conn.commit()
    rig = rig_for(lease_timeout=5)
    rig.claim()
    rig.clock.advance(6)
    assert rig.maintenance.run_due() >= 0  # both plugins are due at start
    assert count(db, schema, "jobs") == 0
    (error,) = db.execute(sql.SQL("SELECT error FROM {} WHERE job_id = %s").format(
        sql.Identifier(schema, "dead_letters")), [job_id]).fetchone()
    assert "lease expired" in error and "attempt 1 of 1" in error


def test_one_expired_row_that_cannot_go_back_to_pending_does_not_block_every_rescue(
        app, conn, db, schema, rig_for):
    # A row changed by hand while running (a queue name too large for the pending-job
    # indexes) made the whole rescue statement fail, at every interval, on every worker:
    # no expired job was ever rescued again.
    @app.task(name="orphan")
    def orphan() -> None: ...

    ids = app.enqueue_many(conn, [orphan.job() for _ in range(3)])
    conn.commit()
    rig = rig_for(lease_timeout=5)
    assert len(rig.claim()) == 3
    huge = secrets.token_hex(4000)
    db.execute(sql.SQL("UPDATE {} SET queue = %s, lease_expires_at = lease_expires_at - "
                       "interval '1 second' WHERE id = %s").format(
        sql.Identifier(schema, "jobs")), [huge, ids[1]])  # the oldest expired: first in line
    rig.clock.advance(6)
    rig.maintenance.run_plugin(rig.rescue)
    assert rig.stats.rescued == 2
    assert _jobs(db, schema, "id, state") == [(ids[0], "pending"), (ids[2], "pending")]
    (row,) = db.execute(sql.SQL("SELECT job_id, queue, error FROM {}").format(
        sql.Identifier(schema, "dead_letters"))).fetchall()
    assert row[0] == ids[1] and row[1] == huge[:200]
    assert "could not go back to pending" in row[2] and "lease expired" in row[2]


def test_retention_prunes_in_bounded_batches_by_the_clock(app, db, schema, rig_for,
                                                           monkeypatch):
    monkeypatch.setattr(maintenance, "RETENTION_BATCH", 3)
    rig = rig_for(history_retention=3600, dead_letter_retention=86400)
    now = rig.clock.sql_now()
    hour, day = dt.timedelta(hours=1), dt.timedelta(days=1)
    db.execute(sql.SQL(
        "INSERT INTO {} (minute, queue, task, succeeded) "
        "SELECT %s - n * interval '1 minute', 'q', 't', 1 FROM generate_series(1, 70) n"
    ).format(sql.Identifier(schema, "job_history")), [now])
    db.execute(sql.SQL(
        "INSERT INTO {} (job_id, queue, task, args, attempts, max_attempts, error, "
        "created_at, failed_at) SELECT n, 'q', 't', '{{}}', 1, 1, 'x', %s, %s - n * %s "
        "FROM generate_series(1, 10) n"
    ).format(sql.Identifier(schema, "dead_letters")), [now, now, day / 4])
    rig.maintenance.run_plugin(rig.retention)
    # History older than an hour (minutes 61..70) and dead letters older than a day
    # (n = 5..10: failed_at 1.25 .. 2.5 days ago) went, three rows per statement.
    assert count(db, schema, "job_history") == 60
    assert count(db, schema, "dead_letters") == 4
    rig.clock.advance(hour.total_seconds())
    rig.maintenance.run_plugin(rig.retention)
    assert count(db, schema, "job_history") == 0
    assert count(db, schema, "dead_letters") == 3  # n = 4 is now more than a day old


def test_a_refused_outcome_never_costs_the_others_in_its_flush(app, conn, db, schema,
                                                                rig_for):
    @app.task(name="mixed", max_attempts=3)
    def mixed() -> None: ...

    ids = app.enqueue_many(conn, [mixed.job() for _ in range(9)])
    conn.commit()
    rig = rig_for()
    jobs = sorted(rig.claim(), key=lambda j: j.id)
    # Changed by hand under the worker: a queue name too large for the pending indexes.
    db.execute(sql.SQL("UPDATE {} SET queue = %s WHERE id = %s").format(
        sql.Identifier(schema, "jobs")), [secrets.token_hex(4000), ids[4]])
    batch = [Result(j, Outcome.SUCCEEDED) for j in jobs[:4]]
    batch.append(Result(jobs[4], Outcome.RETRY, error="transient", delay=1.0))
    batch += [Result(j, Outcome.RETRY, error="nul\x00here", delay=1.0) for j in jobs[5:7]]
    batch += [Result(j, Outcome.DEAD, error="lone \udcff", delay=1.0) for j in jobs[7:]]
    rig.completer.flush(batch)
    assert (rig.stats.succeeded, rig.stats.retried, rig.stats.dead_lettered) == (4, 2, 3)
    assert _jobs(db, schema, "id, state, last_error") == [
        (ids[5], "pending", "nul\ufffdhere"), (ids[6], "pending", "nul\ufffdhere")]
    errors = dict(db.execute(sql.SQL("SELECT job_id, error FROM {}").format(
        sql.Identifier(schema, "dead_letters"))).fetchall())
    assert errors[ids[7]] == errors[ids[8]] == "lone \ufffd"
    assert "could not store this attempt's outcome (retried)" in errors[ids[4]]
    assert "transient" in errors[ids[4]]
    assert len(rig.in_hand) == 0


def test_retries_and_dead_letters_are_logged_then_summed_up_under_a_flood(caplog):
    clock = FakeClock()
    outcome_log = OutcomeLog(clock, per_second=20)
    job = ClaimedJob(7, "q", "tasks.send", "{}", 0, 2, 5, 0.0, dt.datetime.now(dt.UTC),
                     "token", None)
    dead = ClaimedJob(8, "q", "tasks.send", "{}", 0, 5, 5, 0.0, dt.datetime.now(dt.UTC),
                      "token", None)
    caplog.set_level(logging.INFO, logger="pgjobs.worker.outcomes")
    outcome_log.record([Result(job, Outcome.RETRY, error="ValueError: boom\n\ntrace",
                               delay=4.0),
                        Result(dead, Outcome.DEAD, error="attempt 5 of 5 failed: KeyError")])
    retry_line, dead_line = caplog.records
    assert retry_line.levelno == logging.INFO
    assert retry_line.getMessage() == (
        "job 7 (tasks.send) attempt 2/5 failed, retrying in 4.0s: ValueError: boom")
    assert (retry_line.job_id, retry_line.task, retry_line.attempt) == (7, "tasks.send", 2)
    assert dead_line.levelno == logging.WARNING and "job 8" in dead_line.getMessage()
    caplog.clear()
    clock.advance(1.5)
    outcome_log.record([Result(job, Outcome.RETRY, error="flood", delay=1.0)] * 500)
    assert len(caplog.records) == 20  # the first 20 of this second, one line each
    assert outcome_log.seconds_to_summary() == pytest.approx(1.0)
    clock.advance(1.0)
    outcome_log.tick()
    summary = caplog.records[-1].getMessage()
    assert "480 more retries and 0 more dead letters in the last second" in summary
    assert outcome_log.seconds_to_summary() is None


def test_settings_refuse_an_empty_queue_list_and_count_every_connection():
    with pytest.raises(ValueError, match="omit queues to serve every queue"):
        pgjobs.App("postgresql://localhost/x").worker(queues=[])
    with pytest.raises(pgjobs.ConfigurationError, match=r"--pool-size 15 .*"):
        WorkerSettings.build(concurrency=10, pool_size=12)
    try:
        WorkerSettings.build(concurrency=10, pool_size=12)
    except pgjobs.ConfigurationError as exc:
        assert "fetch, complete, heartbeat, maintenance, listen" in str(exc)
    assert WorkerSettings.build(concurrency=10, pool_size=14, poll_only=True).pool_size == 14


def test_the_worker_row_exists_when_started_is_set(app, db, schema, pg_url):
    worker = app.worker(concurrency=1, install_signal_handlers=False)
    thread = threading.Thread(target=worker.run, daemon=True)
    thread.start()
    try:
        assert worker.wait_started(30)
        row = db.execute(sql.SQL("SELECT id, started_at, alive FROM {}").format(
            sql.Identifier(schema, "worker_status"))).fetchone()
        assert row is not None and row[0] == worker.id and row[2] is True
        assert row[1] <= db.execute("SELECT now()").fetchone()[0]
    finally:
        worker.stop()
        thread.join(30)
    assert not worker.wait_started(0.1) or worker.stopped.is_set()


def test_run_waits_for_an_unreachable_database_then_says_so_in_one_line():
    app = pgjobs.App("postgresql://postgres@127.0.0.1:1/nowhere", schema="pgjobs")
    worker = app.worker(concurrency=1, install_signal_handlers=False, wait_for_database=0.5)
    with pytest.raises(pgjobs.ConfigurationError) as info:
        worker.run()
    message = str(info.value)
    assert "\n" not in message and "cannot connect" in message
    assert "waited 0.5s" in message and "--wait-for-database" in message
    assert worker.stopped.is_set() and not worker.wait_started(0.1)


def test_run_stops_waiting_for_the_database_when_stopped():
    app = pgjobs.App("postgresql://postgres@127.0.0.1:1/nowhere", schema="pgjobs")
    worker = app.worker(concurrency=1, install_signal_handlers=False, wait_for_database=60)
    thread = threading.Thread(target=worker.run, daemon=True)
    thread.start()
    worker.stop()
    thread.join(10)
    assert not thread.is_alive() and worker.stopped.is_set()



def test_run_does_not_wait_for_a_database_that_does_not_exist(pg_url):
    url = pg_url.rsplit("/", 1)[0] + "/no_such_database_w8"
    worker = pgjobs.App(url, schema="pgjobs").worker(
        concurrency=1, install_signal_handlers=False, wait_for_database=600)
    with pytest.raises(pgjobs.ConfigurationError) as info:
        worker.run()  # would block for 10 minutes if it waited
    assert "does not exist" in str(info.value) and "waited" not in str(info.value)


def test_an_all_queue_fetcher_jumps_over_paused_queues_only_while_they_hold_a_backlog(
        app, conn, db, rig_for, monkeypatch):
    @app.task(name="t")
    def t() -> None: ...

    monkeypatch.setattr(fetcher_module, "PAUSED_BACKLOG_ENOUGH", 1)  # one due job will do

    t.enqueue(conn)
    conn.commit()
    rig = rig_for()
    used: list[bool] = []
    claim = rig.store.claim

    def spying_claim(*args: Any, **kwargs: Any) -> list[ClaimedJob]:
        used.append(kwargs["jump_paused"])
        return claim(*args, **kwargs)

    rig.store.claim = spying_claim  # type: ignore[method-assign]
    # It looks after a claim (off the pickup path), at most once a second, and the
    # answer serves the claims that follow.
    assert [j.queue for j in rig.claim()] == ["default"] and used == [False]
    app.set_queue_paused(conn, "held", True)
    t.options(queue="held").enqueue(conn)
    t.enqueue(conn)
    conn.commit()  # both due a moment after the rig's clock: found once it moves on
    assert rig.claim() == [] and used[-1] is False  # it looked less than a second ago
    rig.clock.advance(5.0)
    assert [j.queue for j in rig.claim()] == ["default"] and used[-1] is False  # then looks
    t.enqueue(conn)
    conn.commit()
    assert [j.queue for j in rig.claim()] == ["default"] and used[-1] is True  # jumping
    app.set_queue_paused(conn, "held", False)
    conn.commit()
    rig.clock.advance(5.0)
    # The jumping claim reads the pauses itself: the resumed queue at once. Then it looks.
    assert [j.queue for j in rig.claim()] == ["held"] and used[-1] is True
    t.enqueue(conn)
    conn.commit()
    assert [j.queue for j in rig.claim()] == ["default"] and used[-1] is False
    app.set_queue_paused(conn, "other", True)  # paused, but holding nothing to step over
    conn.commit()
    rig.clock.advance(5.0)
    rig.claim()
    assert rig.claim() == [] and used[-2:] == [False, False]

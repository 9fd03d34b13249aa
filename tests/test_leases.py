"""A live worker keeps what it holds: leases renewed through stalls, pooled connections checked."""

from __future__ import annotations

import threading
import time
from typing import Any

import psycopg
from psycopg import sql

import pgjobs
from pgjobs.worker.settings import CONNECTION_ROLES, internal_connections

from .conftest import count
from .workers import wait_until


def test_a_live_worker_renews_its_leases_four_times_per_lease_period(pg_url, schema, db):
    # A worker that renewed only twice per period lost a 1 s lease while alive (a handler
    # zero-filling 900 MB on a loaded machine delayed one renewal by half a second), so
    # its job ran twice. Four renewals per period leave 3/4 of the lease as slack.
    app = pgjobs.App(pg_url, schema=schema)
    release = threading.Event()

    @app.task(name="lease.held")
    def held() -> None:
        release.wait(30)

    with psycopg.connect(pg_url) as conn:
        job_id = held.enqueue(conn)
        conn.commit()
    worker = app.worker(concurrency=1, install_signal_handlers=False, lease_timeout=1.0)
    thread = threading.Thread(target=worker.run, daemon=True)
    thread.start()
    query = sql.SQL("SELECT lease_expires_at FROM {} WHERE id = %s AND state = 'running'"
                    ).format(sql.Identifier(schema, "jobs"))
    try:
        first = wait_until(lambda: db.execute(query, [job_id]).fetchone(), 30,
                           message="the job running")
        seen = {first[0]}
        window_end = time.monotonic() + 2.0
        pacer = threading.Event()
        while time.monotonic() < window_end and not pacer.wait(0.01):  # sampling
            row = db.execute(query, [job_id]).fetchone()
            assert row is not None, "the job lost its lease or left 'running' while held"
            seen.add(row[0])
        release.set()
        wait_until(lambda: count(db, schema, "jobs") == 0, 30, message="job completed")
    finally:
        release.set()
        worker.stop()
        thread.join(30)
    # Every 0.25 s: about 8 renewals in 2 s; every 0.5 s (the old rate) at most 4.
    assert len(seen) - 1 >= 6, sorted(seen)
    assert worker.stats.lost_leases == 0


def test_a_pooled_connection_that_died_idle_does_not_cost_a_job_an_attempt(pg_url, schema, db):
    # The handler pool checks a connection when lending it: one terminated while idle
    # (server restart, failover, pg_terminate_backend) is replaced, not handed to a job.
    app = pgjobs.App(pg_url, schema=schema)
    attempts: list[int] = []

    @app.task(name="pool.query", max_attempts=3, backoff=lambda attempt: 0.05)
    def query() -> None:
        job = pgjobs.current_job()
        with job.connection() as conn:
            conn.execute("SELECT 1")
        attempts.append(job.attempt)

    worker = app.worker(concurrency=1, install_signal_handlers=False, poll_interval=0.2)
    thread = threading.Thread(target=worker.run, daemon=True)
    thread.start()
    try:
        assert worker.started.wait(30)

        def backends() -> list[int]:
            return [r[0] for r in db.execute(
                "SELECT pid FROM pg_stat_activity WHERE application_name = %s",
                [worker._application_name])]

        own = internal_connections(poll_only=False)
        wait_until(lambda: len(backends()) == own, 10,
                   message=f"the worker's {own} own connections: {CONNECTION_ROLES}")
        before = set(backends())
        with psycopg.connect(pg_url) as conn:
            query.enqueue(conn)
            conn.commit()
        wait_until(lambda: attempts == [1], 30, message="the first job done")
        wait_until(lambda: count(db, schema, "jobs") == 0, 30, message="its outcome written")
        # The pool opens connections on demand (min_size 0): the worker's backends that
        # were not there before the first job are the pooled one.
        pooled = set(backends()) - before
        assert len(pooled) == 1, (before, backends())
        terminated = db.execute("SELECT pg_terminate_backend(pid) FROM unnest(%s::int[]) pid",
                                [list(pooled)]).fetchall()
        assert terminated == [(True,)], terminated
        with psycopg.connect(pg_url) as conn:
            query.enqueue(conn)
            conn.commit()
        wait_until(lambda: len(attempts) == 2, 30, message="the second job done")
        assert attempts == [1, 1]  # not failed once on the dead connection, then retried
    finally:
        worker.stop()
        thread.join(30)


def test_a_retention_prune_longer_than_the_lease_does_not_get_live_jobs_rescued(
        pg_url, schema, db):
    # Maintenance (rescue, retention) has its own thread and connection: while its
    # statement waits (here on a table lock, three lease periods long), the heartbeat
    # keeps renewing. When maintenance shared the completer's thread, renewals stopped
    # and the live job's lease expired under it.
    app = pgjobs.App(pg_url, schema=schema)
    release = threading.Event()
    runs: list[int] = []

    @app.task(name="lease.live")
    def live() -> None:
        runs.append(1)
        release.wait(60)

    dead_letters = sql.Identifier(schema, "dead_letters")
    db.execute(sql.SQL(
        "INSERT INTO {} (job_id, queue, task, args, attempts, max_attempts, error, "
        "created_at, failed_at) VALUES (1, 'q', 't', '{{}}', 1, 1, 'old', now(), "
        "now() - interval '2 days')").format(dead_letters))
    with psycopg.connect(pg_url) as conn:
        job_id = live.enqueue(conn)
        conn.commit()
    worker = app.worker(concurrency=1, install_signal_handlers=False, lease_timeout=1.0,
                        dead_letter_retention=86400, retention_delay=0.0)
    lease = sql.SQL("SELECT lease_expires_at > clock_timestamp(), lease_expires_at FROM {} "
                    "WHERE id = %s").format(sql.Identifier(schema, "jobs"))
    with psycopg.connect(pg_url) as locker:
        locker.execute(sql.SQL("LOCK TABLE {} IN ACCESS EXCLUSIVE MODE").format(dead_letters))
        thread = threading.Thread(target=worker.run, daemon=True)
        thread.start()
        try:
            wait_until(lambda: runs, 30, message="the job running")
            wait_until(lambda: db.execute(
                "SELECT 1 FROM pg_stat_activity WHERE application_name = %s "
                "AND wait_event_type = 'Lock'", [worker._application_name]).fetchone(), 30,
                message="maintenance blocked on the lock")
            renewals: set[Any] = set()
            window_end = time.monotonic() + 3.0  # three lease periods
            pacer = threading.Event()
            while time.monotonic() < window_end and not pacer.wait(0.02):  # sampling
                row = db.execute(lease, [job_id]).fetchone()
                assert row is not None and row[0], "the live job's lease expired"
                renewals.add(row[1])
            assert len(renewals) >= 6, sorted(renewals)
        finally:
            locker.rollback()
            release.set()
        try:
            wait_until(lambda: count(db, schema, "jobs") == 0, 30, message="job done")
            wait_until(lambda: count(db, schema, "dead_letters") == 0, 30,
                       message="the prune done once the lock went")
        finally:
            worker.stop()
            thread.join(30)
    assert runs == [1] and worker.stats.lost_leases == 0 and worker.stats.rescued == 0

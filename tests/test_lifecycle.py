"""Job lifecycle with real `pgjobs work` processes: cancel (pending, running, prefetched,
finished, rolled back), pause/resume across a restart, snooze, and transactional
completion (exactly once under SIGKILL; a handler holding its transaction open for
several lease periods)."""

from __future__ import annotations

import json
import time
from typing import Any

import psycopg
import pytest
from psycopg import sql

import pgjobs

from .conftest import cli_env, count, run_cli
from .workers import (
    WorkerProcess,
    create_executions_table,
    dead_letter,
    phases,
    started_worker,
    wait_until,
)
from .workers import stop_worker as stop

APP = "tests.apps.lifecycle_app:app"

# name -> (max_attempts, result_ttl): as tests/apps/lifecycle_app.py defines them.
TASKS = {"cooperative": (3, None), "ignores_cancel": (3, None),
         "fails_after_cancel": (3, None), "snoozer": (1, None), "effect": (5, None),
         "plain": (5, None), "stubborn": (3, None)}


@pytest.fixture
def tables(db: psycopg.Connection[Any], schema: str) -> None:
    create_executions_table(db, schema)
    db.execute(sql.SQL("CREATE TABLE {} (key text, job_id bigint, attempt int)")
               .format(sql.Identifier(schema, "effects")))


def enqueue(app: pgjobs.App, conn: psycopg.Connection[Any], name: str, *,
            queue: str = "default", priority: int = 0, **kwargs: Any) -> int:
    if name not in app.tasks:
        attempts, ttl = TASKS[name]
        app.task(name=name, max_attempts=attempts, result_ttl=ttl)(lambda **kw: None)
    job_id = app.tasks[name].options(queue=queue, priority=priority).enqueue(conn, **kwargs)
    conn.commit()
    return job_id


def worker(pg_url: str, schema: str, *args: str) -> WorkerProcess:
    return started_worker(pg_url, schema, *args, app=APP)


def test_cancel_pending_rolled_back_does_nothing_committed_never_runs(
        app, conn, db, schema, pg_url, tables):
    target = enqueue(app, conn, "cooperative", seconds=0.1)
    assert app.cancel(conn, target) == "cancelled"
    conn.rollback()  # the caller changed their mind: nothing happened
    assert app.get_job(target).state == "pending"
    assert count(db, schema, "dead_letters") == 0

    assert app.cancel(conn, target) == "cancelled"
    conn.commit()
    assert app.cancel(conn, target) is None  # no live job any more
    conn.commit()
    info = app.get_job(target)
    assert info is not None and info.state == "cancelled" and info.error
    assert dead_letter(db, schema, target)[0] == "cancelled"

    w = worker(pg_url, schema)
    try:
        marker = enqueue(app, conn, "cooperative", seconds=0.0)
        wait_until(lambda: phases(db, schema, marker) == ["start", "done"], 30,
                   message="the marker job ran")
        assert phases(db, schema, target) == []  # the cancelled job never ran
    finally:
        stop(w)


@pytest.mark.parametrize("poll_only", [False, True], ids=["notify", "heartbeat-fallback"])
def test_cancel_running_sync_handler(app, conn, db, schema, pg_url, tables, poll_only):
    w = worker(pg_url, schema, *(["--poll-only"] if poll_only else []))
    try:
        job = enqueue(app, conn, "cooperative", seconds=120)
        wait_until(lambda: phases(db, schema, job) == ["start"], 30, message="job started")
        assert app.get_job(job).state == "running"
        assert app.cancel(conn, job) == "cancelling"
        conn.commit()
        row = wait_until(lambda: dead_letter(db, schema, job), 30, message="job cancelled")
        reason, attempts, error = row
        assert reason == "cancelled" and attempts == 1 and "JobCancelled" in error
        assert count(db, schema, "jobs") == 0  # never retried
        info = app.get_job(job)
        assert info.state == "cancelled" and info.finished_at is not None
        assert phases(db, schema, job) == ["start"]
        wait_until(lambda: f"job {job} (cooperative) cancelled on attempt 1/3" in w.log, 10,
                   message="the worker logged the cancellation")
    finally:
        stop(w)


def test_cancelled_handler_that_fails_is_cancelled_one_that_succeeds_succeeded(
        app, conn, db, schema, pg_url, tables):
    w = worker(pg_url, schema, "--concurrency", "2")
    try:
        fails = enqueue(app, conn, "fails_after_cancel", seconds=120)
        succeeds = enqueue(app, conn, "ignores_cancel", seconds=120)
        wait_until(lambda: phases(db, schema, fails) == ["start"]
                   and phases(db, schema, succeeds) == ["start"], 30, message="both started")
        assert app.cancel(conn, fails) == "cancelling"
        assert app.cancel(conn, succeeds) == "cancelling"
        conn.commit()
        row = wait_until(lambda: dead_letter(db, schema, fails), 30, message="cancelled")
        assert row[0] == "cancelled" and row[1] == 1 and "stopping half-way" in row[2]
        wait_until(lambda: phases(db, schema, succeeds) == ["start", "saw_cancel", "done"],
                   30, message="the other finished")
        wait_until(lambda: count(db, schema, "jobs") == 0, 30, message="outcomes written")
        assert dead_letter(db, schema, succeeds) is None  # it succeeded
    finally:
        stop(w)


def test_cancel_prefetched_job_never_starts(app, conn, db, schema, pg_url, tables):
    # Both claimed at start (1 executor + 1 prefetch slot): the blocker runs first.
    blocker = enqueue(app, conn, "cooperative", priority=5, seconds=120)
    target = enqueue(app, conn, "cooperative", seconds=0.0)
    w = worker(pg_url, schema, "--concurrency", "1")
    try:
        wait_until(lambda: phases(db, schema, blocker) == ["start"], 30, message="blocker")
        wait_until(lambda: app.get_job(target).state == "running", 30,
                   message="target claimed (prefetched)")
        assert app.cancel(conn, target) == "cancelling"
        conn.commit()
        assert app.cancel(conn, blocker) == "cancelling"
        conn.commit()
        row = wait_until(lambda: dead_letter(db, schema, target), 30, message="target ended")
        assert row[0] == "cancelled" and "before it started" in row[2]
        assert phases(db, schema, target) == []
        wait_until(lambda: dead_letter(db, schema, blocker), 30, message="blocker ended")
    finally:
        stop(w)


def test_cancel_finished_job_is_none(app, conn, db, schema, pg_url, tables):
    w = worker(pg_url, schema)
    try:
        job = enqueue(app, conn, "plain", n=1)
        wait_until(lambda: count(db, schema, "jobs") == 0, 30, message="job done")
        assert app.cancel(conn, job) is None
        conn.commit()
        assert count(db, schema, "dead_letters") == 0
        # and from the CLI: one line, exit 1
        env = cli_env(pg_url, schema)
        out = run_cli("jobs", "cancel", str(job), env=env)
        assert out.returncode == 1 and "not a live job" in out.stdout
    finally:
        stop(w)


def test_snooze_does_not_charge_the_attempt(app, conn, db, schema, pg_url, tables):
    w = worker(pg_url, schema)
    try:
        job = enqueue(app, conn, "snoozer", times=2, seconds=0.2)  # max_attempts=1
        wait_until(lambda: count(db, schema, "jobs") == 0, 30, message="job finished")
        assert dead_letter(db, schema, job) is None  # a charged snooze would be dead
        assert phases(db, schema, job) == ["run attempt=1"] * 3
    finally:
        stop(w)


def _queues(env: dict[str, str]) -> dict[str, dict[str, Any]]:
    out = run_cli("queues", "list", "--json", env=env)
    assert out.returncode == 0, out.stderr
    return {r["name"]: r for r in json.loads(out.stdout)}


def test_pause_stops_claims_survives_restart_and_resume_wakes(
        app, conn, db, schema, pg_url, tables):
    env = cli_env(pg_url, schema)
    w = worker(pg_url, schema)
    try:
        out = run_cli("queues", "pause", "slow", env=env)
        assert out.returncode == 0 and "paused" in out.stdout, out.stderr
        out = run_cli("queues", "limit", "slow", "3", env=env)
        assert out.returncode == 0, out.stderr
        held = [enqueue(app, conn, "plain", queue="slow", n=i) for i in range(3)]
        with pytest.raises(pgjobs.QueueFull):  # still accepted, within the limit only
            enqueue(app, conn, "plain", queue="slow", n=3)
        conn.rollback()
        # A job enqueued after them on another queue runs: the worker claimed and
        # passed the paused queue by.
        marker = enqueue(app, conn, "cooperative", queue="other", seconds=0.0)
        wait_until(lambda: phases(db, schema, marker) == ["start", "done"], 30)
        assert all(app.get_job(j).state == "pending" for j in held)
        stop(w)

        w = worker(pg_url, schema)  # a new worker: the pause is in the database
        marker = enqueue(app, conn, "cooperative", queue="other", seconds=0.0)
        wait_until(lambda: phases(db, schema, marker) == ["start", "done"], 30)
        assert all(app.get_job(j).state == "pending" for j in held)
        queues = _queues(env)
        assert queues["slow"] == {"name": "slow", "limit": 3, "paused": True, "pending": 3,
                                  "running": 0}
        assert "other" not in queues  # nothing pending, running, dead nor configured
        stats = json.loads(run_cli("stats", "--json", env=env).stdout)
        assert {q["queue"]: q["paused"] for q in stats["queues"]}["slow"] is True
        assert "slow (paused)" in run_cli("stats", env=env).stdout

        out = run_cli("queues", "resume", "slow", env=env)
        assert out.returncode == 0, out.stderr
        wait_until(lambda: count(db, schema, "jobs") == 0, 30, message="resumed jobs ran")
        assert _queues(env)["slow"]["paused"] is False
    finally:
        stop(w)


def test_pause_keeps_the_apps_default_limit(pg_url, schema, conn):
    app = pgjobs.App(pg_url, schema=schema, default_queue_limit=1)
    app.set_queue_paused(conn, "q", True)
    conn.commit()
    t = app.task(name="t", queue="q")(lambda: None)
    t.enqueue(conn)
    conn.commit()
    with pytest.raises(pgjobs.QueueFull):
        t.enqueue(conn)


def test_transactional_completion_exactly_once_under_sigkill(
        app, conn, db, schema, pg_url, tables):
    w = worker(pg_url, schema, "--lease-timeout", "1")
    job = enqueue(app, conn, "effect", key="k1", sleep_after=120)
    wait_until(lambda: phases(db, schema, job) == ["committed"], 30,
               message="the handler committed its effect and the completion")
    w.kill()  # SIGKILL before the worker's own outcome flush
    w2 = worker(pg_url, schema, "--lease-timeout", "1")
    try:
        # The lease (1 s) has expired many times over by the time a marker job enqueued
        # later has run; a rescue would have run the job again.
        deadline = time.monotonic() + 3.0
        while time.monotonic() < deadline:
            marker = enqueue(app, conn, "plain", n=0)
            wait_until(lambda m=marker: app.get_job(m) is None, 30, message="marker ran")
        assert count(db, schema, "effects") == 1
        assert count(db, schema, "jobs") == 0 and count(db, schema, "dead_letters") == 0
        assert "rescued" not in w2.log
    finally:
        stop(w2)


def test_completion_holding_the_transaction_for_several_lease_periods(
        app, conn, db, schema, pg_url, tables):
    w = worker(pg_url, schema, "--lease-timeout", "1")
    try:
        job = enqueue(app, conn, "effect", key="k2", hold=3.5)
        wait_until(lambda: phases(db, schema, job) == ["committed"], 30)
        wait_until(lambda: count(db, schema, "jobs") == 0, 30)
        assert count(db, schema, "effects") == 1 and count(db, schema, "dead_letters") == 0
        # Renewal skipped the row the handler's transaction held instead of waiting on it,
        # and nothing took the job for lost or rescued it.
        assert "lease renewal skipped" in w.log
        assert "lost the lease" not in w.log and "rescued" not in w.log
        assert "not written" not in w.log
    finally:
        stop(w)


def test_jobs_cli_list_show_cancel(app, conn, db, schema, pg_url, tables):
    env = cli_env(pg_url, schema)
    a = enqueue(app, conn, "plain", queue="qa", n=1)
    b = enqueue(app, conn, "plain", queue="qb", n=2)
    out = run_cli("jobs", "cancel", str(a), env=env)
    assert out.returncode == 0 and f"job {a}: cancelled" in out.stdout, out.stderr
    rows = json.loads(run_cli("jobs", "list", "--json", env=env).stdout)
    assert [(r["id"], r["state"]) for r in rows] == [(b, "pending"), (a, "cancelled")]
    assert set(rows[0]) == {"id", "queue", "task", "args", "state", "attempts",
                            "max_attempts", "result", "error", "created_at", "finished_at"}
    rows = json.loads(run_cli("jobs", "list", "--json", "--state", "cancelled",
                              env=env).stdout)
    assert [r["id"] for r in rows] == [a]
    rows = json.loads(run_cli("jobs", "list", "--json", "--queue", "qb", env=env).stdout)
    assert [r["id"] for r in rows] == [b]
    rows = json.loads(run_cli("jobs", "list", "--json", "--before", str(b), env=env).stdout)
    assert [r["id"] for r in rows] == [a]
    shown = json.loads(run_cli("jobs", "show", str(b), env=env).stdout)
    assert shown["args"] == {"n": 2} and shown["state"] == "pending"
    out = run_cli("jobs", "show", "999999", env=env)
    assert out.returncode == 2 and "no job 999999" in out.stderr
    out = run_cli("jobs", "list", "--state", "nope", env=env)
    assert out.returncode == 2 and "unknown state" in out.stderr
    # requeue works for a cancelled job too
    dl = db.execute(sql.SQL("SELECT id FROM {} WHERE job_id = %s").format(
        sql.Identifier(schema, "dead_letters")), [a]).fetchone()[0]
    out = run_cli("dead-letters", "requeue", str(dl), env=env)
    assert out.returncode == 0, out.stderr
    assert count(db, schema, "jobs", "queue = 'qa' AND state = 'pending'") == 1


def test_cancel_requested_job_is_never_handed_back_nor_rescued(
        app, conn, db, schema, pg_url, tables):
    """A handler that ignores the request: at a shutdown past --shutdown-timeout it ends
    cancelled instead of going back to pending; after SIGKILL, the rescue buries it as
    cancelled instead of running it again."""
    w = worker(pg_url, schema, "--shutdown-timeout", "1", "--concurrency", "2")
    drained = enqueue(app, conn, "stubborn", seconds=120)
    killed = enqueue(app, conn, "stubborn", seconds=120)
    wait_until(lambda: phases(db, schema, drained) == ["start"]
               and phases(db, schema, killed) == ["start"], 30, message="both started")
    assert app.cancel(conn, drained) == "cancelling"
    conn.commit()
    stop(w)  # SIGTERM: the handler is still running after the 1 s shutdown timeout
    row = dead_letter(db, schema, drained)
    assert row is not None and row[0] == "cancelled", row

    w = worker(pg_url, schema, "--lease-timeout", "1")
    wait_until(lambda: phases(db, schema, killed) == ["start", "start"], 30,
               message="the other job claimed again")
    assert app.cancel(conn, killed) == "cancelling"
    conn.commit()
    w.kill()  # before its worker could end it
    w = worker(pg_url, schema, "--lease-timeout", "1")
    try:
        row = wait_until(lambda: dead_letter(db, schema, killed), 30,
                         message="rescue buried it")
        assert row[0] == "cancelled" and "after the cancel request" in row[2]
        assert phases(db, schema, killed) == ["start", "start"]  # never run again
        assert count(db, schema, "jobs") == 0
    finally:
        stop(w)

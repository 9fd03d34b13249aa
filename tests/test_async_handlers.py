"""Coroutine (``async def``) handlers in the same `pgjobs work` process as sync ones: run
and succeed, share --concurrency, current_job() and aconnection() inside coroutines,
timeout, cancel, SIGTERM drain and release, the blocked-loop warning, lifecycle outcomes
(Snooze, result_ttl, complete(aconn)) and the span per attempt. Real PostgreSQL, real
worker processes (tests/apps/async_app.py) except where the test needs in-process spans.
"""

from __future__ import annotations

import asyncio
import re
import signal
import threading
from typing import Any

import psycopg
import pytest
from opentelemetry import trace
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from psycopg import sql

import pgjobs
from tests.apps import async_app

from .conftest import count
from .workers import (
    WorkerProcess,
    create_executions_table,
    dead_letter,
    phases,
    started_worker,
    wait_until,
)
from .workers import stop_worker as stop

APP = "tests.apps.async_app:app"


@pytest.fixture
def tables(db: psycopg.Connection[Any], schema: str) -> None:
    create_executions_table(db, schema)
    db.execute(sql.SQL("CREATE TABLE {} (key text, job_id bigint)")
               .format(sql.Identifier(schema, "effects")))


def enqueue(pg_url: str, task: pgjobs.Task[Any, Any], schema: str, n: int = 1,
            priority: int = 0, **kwargs: Any) -> list[int]:
    app = pgjobs.App(pg_url, schema=schema)
    bound = app.task(name=task.name, timeout=task.timeout, max_attempts=task.max_attempts,
                     result_ttl=task.result_ttl)(task.fn)
    with psycopg.connect(pg_url) as conn:
        ids = [bound.options(priority=priority).enqueue(conn, **kwargs) for _ in range(n)]
        conn.commit()
    return ids


def start(pg_url: str, schema: str, *args: str) -> WorkerProcess:
    return started_worker(pg_url, schema, *args, app=APP)


def test_coroutine_handler_runs_current_job_follows_awaits_and_gathered_tasks(
        pg_url, schema, db, tables):
    ids = enqueue(pg_url, async_app.ok, schema, 5, x=21)
    w = start(pg_url, schema, "--concurrency", "3")
    try:
        wait_until(lambda: count(db, schema, "jobs") == 0, 30, message="jobs done")
        app = pgjobs.App(pg_url, schema=schema)
        for job_id in ids:
            (seen,) = phases(db, schema, job_id)
            # before and after awaits, and in each of the 3 gathered tasks: its own id
            assert seen == "ids " + " ".join([str(job_id)] * 5)
            info = app.get_job(job_id)
            assert info is not None and info.state == "succeeded"
            assert info.result == {"double": 42}
    finally:
        stop(w)


def test_sync_and_async_jobs_share_concurrency(pg_url, schema, db, tables):
    n = 4
    enqueue(pg_url, async_app.mixed_async, schema, 12, seconds=0.3)
    enqueue(pg_url, async_app.mixed_sync, schema, 12, seconds=0.3)
    w = start(pg_url, schema, "--concurrency", str(n))
    try:
        wait_until(lambda: count(db, schema, "jobs") == 0, 60, message="jobs done")
    finally:
        stop(w)
    seen = [int(p.split()[1]) for p in phases(db, schema) if p.startswith("inflight")]
    assert len(seen) == 24
    assert max(seen) <= n, seen  # never more than N in flight, both kinds together
    assert max(seen) == n  # and the budget was used


def test_aconnection_is_bounded_and_unprepared_behind_a_pooler(pg_url, schema, db, tables):
    # --poll-only: 4 own connections; pool 12 leaves 8 for handlers, split between the
    # sync pool (4) and the async pool (4): this App has both kinds of handlers.
    enqueue(pg_url, async_app.hold_conn, schema, 12, seconds=0.4)
    w = start(pg_url, schema, "--concurrency", "8", "--pool-size", "12", "--poll-only")
    try:
        wait_until(lambda: count(db, schema, "jobs") == 0, 60, message="jobs done")
    finally:
        stop(w)
    rows = [re.match(r"lent (\d+) server (\d+) prepare (\S+)", p) for p in phases(db, schema)]
    assert len(rows) == 12 and all(rows)
    lent = [int(m.group(1)) for m in rows if m]
    server = [int(m.group(2)) for m in rows if m]
    assert max(lent) == 4  # 8 jobs could run at once: the async pool is the bound
    assert max(server) <= 12  # the server never saw more than --pool-size from it
    assert {m.group(3) for m in rows if m} == {"None"}  # nothing prepared


def test_timeout_cancels_the_coroutine_and_fails_the_attempt(pg_url, schema, db, tables):
    (job_id,) = enqueue(pg_url, async_app.too_slow, schema)
    w = start(pg_url, schema)
    try:
        row = wait_until(lambda: dead_letter(db, schema, job_id), 30, message="dead letter")
    finally:
        stop(w)
    reason, attempts, error = row
    assert reason == "failed" and attempts == 2  # retried once, then dead letter
    assert "JobTimeout" in error and "exceeded its timeout of 2s" in error
    assert phases(db, schema, job_id) == ["start", "start"]  # never reached "never"
    assert "retry" in w.log.lower()


def test_cancel_running_coroutine_job(pg_url, schema, db, tables):
    (job_id,) = enqueue(pg_url, async_app.cancellable, schema, seconds=120)
    w = start(pg_url, schema)
    try:
        wait_until(lambda: phases(db, schema, job_id) == ["start"], 30, message="started")
        app = pgjobs.App(pg_url, schema=schema)
        with psycopg.connect(pg_url) as conn:
            assert app.cancel(conn, job_id) == "cancelling"
            conn.commit()
        row = wait_until(lambda: dead_letter(db, schema, job_id), 30, message="cancelled")
        reason, attempts, error = row
        assert reason == "cancelled" and attempts == 1 and "CancelledError" in error
        assert phases(db, schema, job_id) == ["start", "cancelled at an await"]
        assert count(db, schema, "jobs") == 0
        info = app.get_job(job_id)
        assert info is not None and info.state == "cancelled"
    finally:
        stop(w)


def test_sigterm_drains_both_kinds_and_releases_the_rest_uncharged(
        pg_url, schema, db, tables):
    short = (enqueue(pg_url, async_app.nap, schema, priority=10, seconds=8.0)
             + enqueue(pg_url, async_app.nap_sync, schema, priority=10, seconds=8.0))
    long = (enqueue(pg_url, async_app.nap, schema, priority=10, seconds=120)
            + enqueue(pg_url, async_app.nap_sync, schema, priority=10, seconds=120))
    w = start(pg_url, schema, "--concurrency", "4", "--shutdown-timeout", "15")
    try:
        wait_until(lambda: phases(db, schema).count("start") == 4, 30, message="4 running")
        # Claimed while every slot is taken: waiting for a slot, never started.
        waiting = (enqueue(pg_url, async_app.nap, schema, 2, seconds=0)
                   + enqueue(pg_url, async_app.nap_sync, schema, 2, seconds=0))
        wait_until(lambda: count(db, schema, "jobs", "state = 'running'") == 8, 30,
                   message="the waiting jobs claimed")
        w.signal(signal.SIGTERM)
        assert w.wait(60) == 0, w.log
    finally:
        w.kill()
    for job_id in short:  # finished during the drain
        assert phases(db, schema, job_id) == ["start", "done"]
    rows = db.execute(sql.SQL("SELECT id, state, attempts, lease_token FROM {}").format(
        sql.Identifier(schema, "jobs"))).fetchall()
    assert sorted(r[0] for r in rows) == sorted(long + waiting)
    assert all(r[1] == "pending" and r[2] == 0 and r[3] is None for r in rows), rows
    for job_id in waiting:
        assert phases(db, schema, job_id) == []
    assert "returning 2 unfinished job(s) to pending" in w.log


def test_a_coroutine_blocking_the_loop_is_reported_by_name(pg_url, schema, db, tables):
    (job_id,) = enqueue(pg_url, async_app.blocker, schema, seconds=1.5)
    w = start(pg_url, schema)
    try:
        wait_until(lambda: count(db, schema, "jobs") == 0, 30, message="job done")
    finally:
        stop(w)
    warnings = [line for line in w.lines if "slow callback" in line]
    assert len(warnings) == 1, w.log  # one report per blocking episode
    assert "WARNING" in warnings[0]
    assert f"task 'a.blocker' (job {job_id}) has blocked the event loop" in warnings[0]
    assert "async_app.py" in warnings[0]  # where it blocks


def test_snooze_and_transactional_completion_from_coroutines(pg_url, schema, db, tables):
    (snoozed,) = enqueue(pg_url, async_app.snoozer, schema)
    (completed,) = enqueue(pg_url, async_app.effect, schema, key="k1")
    w = start(pg_url, schema)
    try:
        wait_until(lambda: count(db, schema, "jobs") == 0, 30, message="jobs done")
    finally:
        stop(w)
    assert phases(db, schema, snoozed) == ["run attempt=1", "run attempt=1"]  # uncharged
    assert dead_letter(db, schema, snoozed) is None
    rows = db.execute(sql.SQL("SELECT key, job_id FROM {}").format(
        sql.Identifier(schema, "effects"))).fetchall()
    assert rows == [("k1", completed)]
    assert dead_letter(db, schema, completed) is None


def test_span_per_attempt_and_trace_context_inside_the_coroutine(pg_url, schema):
    exporter = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    app = pgjobs.App(pg_url, schema=schema, tracer_provider=provider)
    seen: dict[str, Any] = {}
    done = threading.Event()

    @app.task(name="traced.async")
    async def traced() -> None:
        await asyncio.sleep(0)
        seen["span"] = trace.get_current_span().get_span_context()
        seen["child"] = await asyncio.create_task(_current_span())
        done.set()

    with psycopg.connect(pg_url) as conn:
        job_id = traced.enqueue(conn)
        conn.commit()
    worker = app.worker(concurrency=2, install_signal_handlers=False)
    thread = threading.Thread(target=worker.run)
    thread.start()
    try:
        assert done.wait(30)
        wait_until(lambda: worker.stats.succeeded == 1, 30, message="outcome written")
    finally:
        worker.stop()
        thread.join(60)
    process = [s for s in exporter.get_finished_spans() if s.name == "process default"]
    assert len(process) == 1
    span = process[0]
    assert span.attributes is not None
    assert span.attributes["messaging.message.id"] == str(job_id)
    assert span.attributes["pgjobs.outcome"] == "succeeded"
    assert seen["span"].span_id == span.context.span_id  # the coroutine ran inside it
    assert seen["child"].span_id == span.context.span_id  # and so did the task it spawned


async def _current_span() -> Any:
    return trace.get_current_span().get_span_context()


def test_pool_too_small_for_both_kinds_of_handlers_is_refused(pg_url, schema):
    # 5 own connections leave 1 for handlers: not enough for a sync and an async pool.
    w = WorkerProcess(pg_url, schema, "--concurrency", "1", "--pool-size", "6", app=APP)
    assert w.wait(60) == 2
    errors = [line for line in w.lines if line.strip()]
    assert len(errors) == 1, w.log  # one line, no traceback
    assert "sync and coroutine handlers" in errors[0] and "--pool-size 7" in errors[0]


def test_a_coroutine_only_app_starts_two_sync_threads_not_one_per_slot(pg_url, schema, db):
    # Sync threads serve only jobs of tasks the App does not know (they fail at once):
    # --concurrency 50 used to start 50 idle threads, 500 at the async bench's c500.
    app = pgjobs.App(pg_url, schema=schema)
    ran: list[int] = []

    @app.task(name="only.async")
    async def only_async(n: int) -> None:
        ran.append(n)

    stranger = pgjobs.App(pg_url, schema=schema).task(name="not.in.this.app")(lambda: None)
    with psycopg.connect(pg_url) as conn:
        ids = [only_async.enqueue(conn, n=1), stranger.enqueue(conn)]
        conn.commit()
    worker = app.worker(concurrency=50, install_signal_handlers=False)
    thread = threading.Thread(target=worker.run, daemon=True)
    thread.start()
    try:
        assert worker.started.wait(30)
        executors = [t.name for t in threading.enumerate()
                     if t.name.startswith("pgjobs-executor-")]
        assert len(executors) == 2, executors
        wait_until(lambda: count(db, schema, "jobs") == 0, 30, message="both jobs handled")
        assert ran == [1]
        letter = dead_letter(db, schema, ids[1])
        assert letter is not None and "unknown task 'not.in.this.app'" in letter[2], letter
    finally:
        worker.stop()
        thread.join(30)

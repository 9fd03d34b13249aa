"""Fail-fast backpressure: QueueFull before writing, shared limits, bounded overshoot."""

from __future__ import annotations

import subprocess
import sys
import threading

import psycopg
import pytest

import pgjobs
import pgjobs.sql as pgsql

from .conftest import ROOT, cli_env, count, run_cli


def _app(pg_url: str, schema: str, **kwargs) -> tuple[pgjobs.App, pgjobs.Task]:
    app = pgjobs.App(pg_url, schema=schema, **kwargs)

    @app.task(name="work", queue="q")
    def work(n: int) -> None: ...

    return app, work


def test_no_limit_by_default(pg_url, schema, conn, db):
    app, work = _app(pg_url, schema)
    app.enqueue_many(conn, [work.job(n=i) for i in range(500)])
    conn.commit()
    assert count(db, schema, "jobs") == 500


def test_queue_full_before_writing_and_transaction_stays_usable(pg_url, schema, conn, db):
    app, work = _app(pg_url, schema)
    app.set_queue_limit(conn, "q", 3)
    conn.commit()
    for i in range(3):
        work.enqueue(conn, n=i)
    conn.commit()
    conn.execute("CREATE TEMP TABLE app_rows (x int)")
    conn.execute("INSERT INTO app_rows VALUES (1)")
    with pytest.raises(pgjobs.QueueFull) as info:
        work.enqueue(conn, n=99)
    full = info.value
    assert full.queue == "q" and full.limit == 3 and full.pending >= 3
    assert isinstance(full.retry_after, float) and full.retry_after > 0
    assert "pgjobs queues limit" in str(full)
    # The caller's transaction is intact: its own work commits, no job was written.
    conn.execute("INSERT INTO app_rows VALUES (2)")
    assert conn.execute("SELECT count(*) FROM app_rows").fetchone() == (2,)
    conn.commit()
    assert count(db, schema, "jobs") == 3


def test_limit_counts_scheduled_but_not_running_jobs(pg_url, schema, conn, db):
    app, work = _app(pg_url, schema, limit_refresh_interval=0)
    app.set_queue_limit(conn, "q", 2)
    work.options(delay=3600).enqueue(conn, n=1)
    work.enqueue(conn, n=2)
    conn.commit()
    with pytest.raises(pgjobs.QueueFull):
        work.enqueue(conn, n=3)
    # A claimed (running) job no longer counts against the limit.
    db.execute(app.sql.of(pgsql.CLAIM_ANY_QUEUE),
               {"now": None, "limit": 1, "lease_seconds": 30, "worker_id": "t"})
    work.enqueue(conn, n=4)
    conn.commit()


def test_other_queues_are_unaffected(pg_url, schema, conn):
    app, work = _app(pg_url, schema)
    app.set_queue_limit(conn, "q", 0)
    conn.commit()
    with pytest.raises(pgjobs.QueueFull):
        work.enqueue(conn, n=1)
    assert isinstance(work.options(queue="other").enqueue(conn, n=1), int)


def test_limit_is_shared_through_the_database(pg_url, schema, conn):
    setter, _ = _app(pg_url, schema)
    _, work = _app(pg_url, schema, limit_refresh_interval=0)
    work.enqueue(conn, n=0)
    conn.commit()
    result = run_cli("queues", "limit", "q", "1", env=cli_env(pg_url, schema))
    assert result.returncode == 0, result.stderr
    with pytest.raises(pgjobs.QueueFull):
        work.enqueue(conn, n=1)
    setter.set_queue_limit(conn, "q", None)
    conn.commit()
    work.enqueue(conn, n=2)


def test_app_default_limit_applies_to_queues_without_a_setting(pg_url, schema, conn):
    app, work = _app(pg_url, schema, default_queue_limit=1, limit_refresh_interval=0)
    work.enqueue(conn, n=0)
    conn.commit()
    with pytest.raises(pgjobs.QueueFull):
        work.enqueue(conn, n=1)
    app.set_queue_limit(conn, "q", None)  # explicit row with NULL: unlimited
    conn.commit()
    work.enqueue(conn, n=1)


def test_enqueue_many_is_all_or_nothing(pg_url, schema, conn, db):
    app, work = _app(pg_url, schema)
    app.set_queue_limit(conn, "q", 10)
    conn.commit()
    app.enqueue_many(conn, [work.job(n=i) for i in range(8)])
    conn.commit()
    with pytest.raises(pgjobs.QueueFull) as info:
        app.enqueue_many(conn, [work.job(n=i) for i in range(3)])
    assert info.value.requested == 3 and info.value.pending == 8
    conn.commit()
    assert count(db, schema, "jobs") == 8


def test_full_queue_rejections_cost_no_queries(pg_url, schema, conn):
    app, work = _app(pg_url, schema, limit_refresh_interval=60)
    app.set_queue_limit(conn, "q", 1)
    work.enqueue(conn, n=0)
    conn.commit()
    conn.close()  # any database access now would fail
    for _ in range(100):
        with pytest.raises(pgjobs.QueueFull):
            work.enqueue(conn, n=1)


def test_concurrent_threads_in_one_process_respect_the_limit(pg_url, schema, db):
    """Within a process the count is shared: overshoot <= transactions in flight."""
    app, work = _app(pg_url, schema)
    limit, threads_n = 200, 8
    with psycopg.connect(pg_url) as c:
        app.set_queue_limit(c, "q", limit)
        c.commit()
    rejected = threading.Event()

    def enqueue_until_full() -> None:
        with psycopg.connect(pg_url) as c:
            while True:
                try:
                    work.enqueue(c, n=1)
                    c.commit()
                except pgjobs.QueueFull:
                    rejected.set()
                    return

    threads = [threading.Thread(target=enqueue_until_full) for _ in range(threads_n)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=60)
    assert rejected.is_set()
    total = count(db, schema, "jobs")
    assert limit <= total <= limit + threads_n


ENQUEUER = """
import sys, psycopg, pgjobs
url, schema, interval = sys.argv[1], sys.argv[2], float(sys.argv[3])
app = pgjobs.App(url, schema=schema, limit_refresh_interval=interval)
@app.task(name="work", queue="q")
def work(n): ...
sys.stdout.write("ready\\n"); sys.stdout.flush(); sys.stdin.readline()
with psycopg.connect(url) as c:
    while True:
        try:
            work.enqueue(c, n=1); c.commit()
        except pgjobs.QueueFull:
            break
"""


def test_concurrent_processes_overshoot_within_documented_bound(pg_url, schema, db):
    """Across processes, with refresh_interval=0 every enqueue re-counts committed jobs:
    the overshoot is bounded by the transactions in flight (one per process here)."""
    limit, procs_n = 300, 4
    with psycopg.connect(pg_url) as c:
        pgjobs.App(pg_url, schema=schema).set_queue_limit(c, "q", limit)
        c.commit()
    procs = [
        subprocess.Popen([sys.executable, "-c", ENQUEUER, pg_url, schema, "0"], cwd=ROOT,
                         stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
        for _ in range(procs_n)
    ]
    for p in procs:
        assert p.stdout is not None and p.stdout.readline().strip() == "ready"
    for p in procs:  # start together
        assert p.stdin is not None
        p.stdin.write("go\n")
        p.stdin.flush()
    for p in procs:
        assert p.wait(timeout=120) == 0
    total = count(db, schema, "jobs")
    assert limit <= total <= limit + procs_n


def test_unique_key_is_checked_before_the_limit(pg_url, schema, conn, db):
    """A re-delivered request whose key a live job holds gets that job's id, not
    QueueFull; anything that would add a job to the full queue is still refused."""
    app, work = _app(pg_url, schema, limit_refresh_interval=60)
    app.set_queue_limit(conn, "q", 2)
    conn.commit()
    first = work.options(unique_key="evt-1").enqueue(conn, n=1)
    work.enqueue(conn, n=2)
    conn.commit()
    assert work.options(unique_key="evt-1").enqueue(conn, n=1) == first
    assert app.enqueue_many(conn, [work.options(unique_key="evt-1").job(n=1)] * 3) == [
        first] * 3
    with pytest.raises(pgjobs.QueueFull):
        work.options(unique_key="evt-2").enqueue(conn, n=3)
    with pytest.raises(pgjobs.QueueFull) as info:  # all or nothing: one job is new
        app.enqueue_many(conn, [work.options(unique_key="evt-1").job(n=1), work.job(n=4)])
    assert info.value.requested == 1
    conn.commit()
    assert count(db, schema, "jobs") == 2


def test_unique_keys_absorbed_by_live_jobs_give_their_places_back(pg_url, schema, conn, db):
    app, work = _app(pg_url, schema, limit_refresh_interval=60)  # one count, then memory
    app.set_queue_limit(conn, "q", 4)
    conn.commit()
    held = work.options(unique_key="k").enqueue(conn, n=0)
    conn.commit()
    # Three places taken, one used: the two that the live key absorbed are free again.
    ids = app.enqueue_many(conn, [work.options(unique_key="k").job(n=0)] * 2 + [work.job(n=1)])
    assert ids[:2] == [held, held]
    work.enqueue(conn, n=2)
    work.enqueue(conn, n=3)  # the limit's 4th job
    conn.commit()
    with pytest.raises(pgjobs.QueueFull):
        work.enqueue(conn, n=4)
    assert count(db, schema, "jobs") == 4

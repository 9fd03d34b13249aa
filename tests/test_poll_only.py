"""`--poll-only` (PgBouncer in transaction mode): no LISTEN, no prepared statements."""

from __future__ import annotations

import threading

import psycopg

import pgjobs
from pgjobs.worker.settings import connection_roles

from .conftest import count
from .workers import wait_until


def test_poll_only_worker_processes_jobs_without_listen_or_prepared_claims(pg_url, schema, db):
    app = pgjobs.App(pg_url, schema=schema)
    done: list[int] = []

    @app.task(name="poll.job")
    def job(n: int) -> None:
        done.append(n)

    worker = app.worker(concurrency=2, install_signal_handlers=False, poll_only=True,
                        poll_interval=0.1)
    thread = threading.Thread(target=worker.run, daemon=True)
    thread.start()
    try:
        assert worker.started.wait(30)
        for batch in range(3):  # three rounds, each found by polling
            with psycopg.connect(pg_url) as conn:
                app.enqueue_many(conn, [job.job(n=batch * 10 + i) for i in range(10)])
                conn.commit()
            wait_until(lambda: count(db, schema, "jobs") == 0, 30, message="jobs done by polling")
        backends = db.execute(
            "SELECT backend_type, query FROM pg_stat_activity WHERE application_name = %s",
            [worker._application_name]).fetchall()
        # Its own connections only (the jobs borrow no pooled connection): no LISTEN one.
        assert len(backends) == len(connection_roles(poll_only=True)) == 4, backends
        assert not [q for _, q in backends if q.lstrip().upper().startswith("LISTEN")], backends
        assert not worker._fetch_conn.prepare_statements
        assert not worker._complete_conn.prepare_statements
    finally:
        worker.stop()
        thread.join(30)
    assert sorted(done) == list(range(30))

"""Leases held by a live worker: renewed often enough to survive a stall."""

from __future__ import annotations

import threading
import time

import psycopg
from psycopg import sql

import pgjobs

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
        window_end = time.monotonic() + 1.5
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
    # Every 0.25 s: about 6 renewals in 1.5 s; every 0.5 s (the old rate) only 3.
    assert len(seen) - 1 >= 4, sorted(seen)
    assert worker.stats.lost_leases == 0

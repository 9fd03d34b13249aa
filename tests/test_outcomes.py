"""Outcomes that cannot be lost: unstorable error texts, refused writes, timeouts.

Each test runs a real worker (in a thread) against the test schema. On the code before
these fixes, a refused flush dropped every outcome in it: the jobs stayed `running`
until their 30 s lease expired, so the waits below (20 s) would time out.
"""

from __future__ import annotations

import secrets
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import psycopg
from psycopg import sql

import pgjobs
from pgjobs.worker.errortext import MAX_ERROR_BYTES, REPLACEMENT, storable

from .conftest import count
from .workers import wait_until


@contextmanager
def running(worker: Any) -> Iterator[Any]:
    thread = threading.Thread(target=worker.run, daemon=True)
    thread.start()
    try:
        assert worker.started.wait(30), "worker did not start"
        yield worker
    finally:
        worker.stop()
        thread.join(30)


def _dead_errors(db: psycopg.Connection[Any], schema: str) -> dict[int, str]:
    rows = db.execute(sql.SQL("SELECT job_id, error FROM {}").format(
        sql.Identifier(schema, "dead_letters"))).fetchall()
    return {r[0]: r[1] for r in rows}


def _failing_app(pg_url: str, schema: str, message: str) -> tuple[pgjobs.App, Any, Any]:
    app = pgjobs.App(pg_url, schema=schema)

    @app.task(name="bad", max_attempts=1)
    def bad() -> None:
        raise ValueError(message)

    @app.task(name="good")
    def good(n: int) -> None:
        pass

    return app, bad, good


def _run_mixed(pg_url: str, schema: str, db: Any, message: str) -> str:
    """One failing job among many good ones; returns the stored error of the bad one."""
    app, bad, good = _failing_app(pg_url, schema, message)
    with psycopg.connect(pg_url) as conn:
        ids = app.enqueue_many(conn, [good.job(n=i) for i in range(20)])
        bad_id = bad.enqueue(conn)
        ids += app.enqueue_many(conn, [good.job(n=i) for i in range(20, 40)])
        conn.commit()
    worker = app.worker(concurrency=4, install_signal_handlers=False)
    with running(worker):
        wait_until(lambda: count(db, schema, "jobs") == 0, 20,
                   message="every outcome written (none lost with the bad one)")
    assert worker.stats.succeeded == 40
    errors = _dead_errors(db, schema)
    assert list(errors) == [bad_id]
    return errors[bad_id]


def test_an_error_text_with_a_nul_byte_is_stored_with_it_replaced(pg_url, schema, db):
    error = _run_mixed(pg_url, schema, db, "bad\x00byte")
    assert f"ValueError: bad{REPLACEMENT}byte" in error


def test_an_error_text_with_a_lone_surrogate_is_stored_with_it_replaced(pg_url, schema, db):
    name = b"report-\xff.csv".decode("utf-8", "surrogateescape")  # as os.listdir gives it
    error = _run_mixed(pg_url, schema, db, f"cannot open {name}")
    assert f"cannot open report-{REPLACEMENT}.csv" in error


def test_a_huge_error_text_is_capped_in_bytes(pg_url, schema, db):
    error = _run_mixed(pg_url, schema, db, "€" * 2_000_000)  # 6 MB of UTF-8
    assert len(error.encode()) <= MAX_ERROR_BYTES
    assert error.startswith("attempt 1 of 1 failed: ValueError: €€€")
    assert error.rstrip().endswith("€")  # the head and the tail are kept


def test_storable_text_is_unchanged_when_already_storable():
    text = "ValueError: ünïcode ✓\n\nTraceback…"
    assert storable(text) is text or storable(text) == text
    assert storable("a\x00b\ud800c") == f"a{REPLACEMENT}b{REPLACEMENT}c"


def test_an_outcome_for_a_row_changed_by_hand_under_the_worker_still_ends_the_job(
        pg_url, schema, db):
    # While the handler runs, an operator gives the row a queue name too large for the
    # pending-job indexes: the retry (back to `pending`) is refused by the server, and
    # so is a dead letter with that name. The job still ends, with a description.
    app = pgjobs.App(pg_url, schema=schema)
    entered, release = threading.Event(), threading.Event()

    @app.task(name="edited", max_attempts=3)
    def edited() -> None:
        entered.set()
        release.wait(30)
        raise RuntimeError("the handler's own failure")

    with psycopg.connect(pg_url) as conn:
        job_id = edited.enqueue(conn)
        conn.commit()
    huge = secrets.token_hex(4000)  # incompressible: over the index row size limit
    worker = app.worker(concurrency=1, install_signal_handlers=False)
    with running(worker):
        assert entered.wait(30)
        db.execute(sql.SQL("UPDATE {} SET queue = %s WHERE id = %s").format(
            sql.Identifier(schema, "jobs")), [huge, job_id])
        release.set()
        wait_until(lambda: count(db, schema, "jobs") == 0, 20, message="the job ended")
        assert worker.stats.dead_lettered == 1
    row = db.execute(sql.SQL("SELECT job_id, queue, error FROM {}").format(
        sql.Identifier(schema, "dead_letters"))).fetchone()
    assert row is not None and row[0] == job_id
    assert row[1] == huge[:200]
    assert "could not store this attempt's outcome (retried)" in row[2]
    assert "the handler's own failure" in row[2]


def test_job_timeout_cannot_be_swallowed_by_except_exception(pg_url, schema, db):
    app = pgjobs.App(pg_url, schema=schema)
    unwound = threading.Event()
    swallowed: list[BaseException] = []

    @app.task(name="stubborn", timeout=0.3, max_attempts=1)
    def stubborn() -> None:
        try:
            while True:  # Python code: the asynchronous JobTimeout reaches it
                try:
                    sum(range(1000))
                except Exception as exc:  # the usual "log and carry on" handler
                    swallowed.append(exc)
        finally:
            unwound.set()

    with psycopg.connect(pg_url) as conn:
        stubborn.enqueue(conn)
        conn.commit()
    worker = app.worker(concurrency=1, install_signal_handlers=False)
    with running(worker):
        assert unwound.wait(20), "the handler kept running past its timeout"
        wait_until(lambda: count(db, schema, "dead_letters") == 1, 20, message="dead letter")
    assert swallowed == []
    assert issubclass(pgjobs.JobTimeout, BaseException)
    assert not issubclass(pgjobs.JobTimeout, Exception)


def test_a_timed_out_handler_gives_its_pooled_connection_back(pg_url, schema, db):
    app = pgjobs.App(pg_url, schema=schema)
    borrowed = threading.Event()

    @app.task(name="holder", timeout=0.3, max_attempts=1)
    def holder() -> None:
        with pgjobs.current_job().connection() as conn:
            conn.execute("SELECT 1")
            borrowed.set()
            while True:
                try:
                    sum(range(1000))
                except Exception:
                    pass

    with psycopg.connect(pg_url) as conn:
        holder.enqueue(conn)
        conn.commit()
    worker = app.worker(concurrency=1, install_signal_handlers=False)
    with running(worker):
        assert borrowed.wait(20)
        pool = worker._handler_pool
        wait_until(lambda: count(db, schema, "dead_letters") == 1, 20, message="dead letter")

        def returned() -> bool:
            stats = pool.get_stats()
            return stats["pool_size"] >= 1 and stats["pool_available"] == stats["pool_size"]

        wait_until(returned, 20, message="the connection back in the pool")

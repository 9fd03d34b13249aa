"""Enqueue notifies only while a fetcher waits (migrations 0005, 0006), and never strands
a job.

Every worker here polls once a minute: a job found later than a few seconds after its
commit would have waited for the poll, i.e. it was stranded by a missed wake-up.
"""

from __future__ import annotations

import random
import threading
import time
from collections.abc import Iterator
from typing import Any

import psycopg
import pytest
from psycopg import sql

import pgjobs
from pgjobs.sql import Statements
from pgjobs.store import JobStore

from .workers import wait_until

LONG_POLL = 60.0
PROMPT = 10.0  # far below LONG_POLL, generous for a loaded CI machine


def _waiting(db: psycopg.Connection[Any], schema: str) -> list[str]:
    """Ids of the workers whose LISTEN connection holds a waiting lock."""
    store = JobStore(Statements(schema))
    return [name.removeprefix("pgjobs worker ") for name in store.waiting_listeners(db)]


def _pending_or_running(db: psycopg.Connection[Any], schema: str) -> int:
    row = db.execute(sql.SQL("SELECT count(*) FROM {}").format(
        sql.Identifier(schema, "jobs"))).fetchone()
    return int(row[0]) if row else 0


class _Running:
    def __init__(self, worker: Any) -> None:
        self.worker = worker
        self.thread = threading.Thread(target=worker.run, daemon=True)

    def __enter__(self) -> Any:
        self.thread.start()
        assert self.worker.wait_started(timeout=30)
        return self.worker

    def __exit__(self, *exc: object) -> None:
        self.worker.stop()
        self.thread.join(30)


@pytest.fixture
def app(pg_url: str, schema: str) -> Iterator[pgjobs.App]:
    yield pgjobs.App(pg_url, schema=schema)


def test_idle_worker_advertises_and_is_woken_by_notify(app, pg_url, schema, db):
    done: list[float] = []

    @app.task(name="wake.record")
    def record() -> None:
        done.append(time.monotonic())

    worker = app.worker(concurrency=2, install_signal_handlers=False, poll_interval=LONG_POLL)
    with _Running(worker):
        wait_until(lambda: _waiting(db, schema) == [worker.id], 30,
                   message="the idle fetcher's waiting lock")
        for i in range(5):
            with psycopg.connect(pg_url) as conn:
                record.enqueue(conn)
                conn.commit()
            committed = time.monotonic()
            wait_until(lambda i=i: len(done) > i, PROMPT, interval=0.005,
                       message="the job picked up by NOTIFY, not by the minute's poll")
            assert done[i] - committed < PROMPT
    assert _waiting(db, schema) == []  # a stopped worker's locks are gone


def test_busy_worker_is_not_notified_and_still_finds_every_job(app, pg_url, schema, db):
    # While the fetcher's claims come back full, no lock: enqueues skip the NOTIFY (and
    # its global lock), and the fetcher finds the jobs by claiming again.
    release = threading.Event()

    @app.task(name="wake.held")
    def held() -> None:
        release.wait(30)

    with psycopg.connect(pg_url) as conn:
        app.enqueue_many(conn, [held.job() for _ in range(20)])
        conn.commit()
    worker = app.worker(concurrency=2, prefetch=0, install_signal_handlers=False,
                        poll_interval=LONG_POLL)
    try:
        with _Running(worker):
            wait_until(lambda: _waiting(db, schema) == [] and worker.fetcher.claims > 0, 30,
                       message="a busy fetcher without a waiting lock")
            with psycopg.connect(pg_url, autocommit=True) as listener:
                listener.execute(app.sql.listen)
                with psycopg.connect(pg_url) as conn:
                    held.enqueue(conn)
                    conn.commit()
                listener.execute("SELECT pg_notify(%s, 'probe')", [app.sql.channel])
                heard = []
                for note in listener.notifies(timeout=10):
                    if note.payload == "probe":
                        break
                    heard.append(note.payload)
            assert heard == []  # nobody waits: no NOTIFY
            release.set()
            wait_until(lambda: _pending_or_running(db, schema) == 0, PROMPT * 3,
                       message="every job done without the minute's poll")
    finally:
        release.set()


def test_enqueue_committing_after_the_fetcher_looked_is_not_stranded(app, pg_url, schema, db):
    # The race: the enqueue reads "nobody waits" while the fetcher is busy, the fetcher
    # then finds nothing (the job is not committed yet) and goes to wait, and the
    # enqueue commits. The fetcher's try-lock of the wake-up key fails while that
    # transaction is open, so it claims again shortly instead of waiting for the poll.
    release = threading.Event()
    ran: list[str] = []

    @app.task(name="wake.step")
    def step(name: str) -> None:
        if name == "first":
            release.wait(30)
        ran.append(name)

    with psycopg.connect(pg_url) as conn:
        step.enqueue(conn, name="first")
        conn.commit()
    # One slot, no prefetch: claiming the first job fills it (a full claim: busy).
    worker = app.worker(concurrency=1, prefetch=0, install_signal_handlers=False,
                        poll_interval=LONG_POLL)
    with _Running(worker):
        wait_until(lambda: _waiting(db, schema) == [], 30, message="the fetcher busy")
        wait_until(lambda: worker.fetcher.outstanding == 1, 30, message="the first job held")
        with psycopg.connect(pg_url) as conn:
            step.enqueue(conn, name="second")  # reads: nobody waits (no NOTIFY)
            claims = worker.fetcher.claims
            release.set()  # the fetcher claims (finds nothing) and goes to wait
            wait_until(lambda: worker.fetcher.claims >= claims + 2 and _waiting(db, schema),
                       30, message="the fetcher marked waiting while our enqueue is open")
            assert ran == ["first"]
            conn.commit()
        committed = time.monotonic()
        wait_until(lambda: ran == ["first", "second"], PROMPT, interval=0.005,
                   message="the second job found without the minute's poll")
        assert time.monotonic() - committed < PROMPT


def test_no_job_stranded_by_concurrent_enqueues_and_a_flapping_fetcher(app, pg_url, schema, db):
    # Several producers commit single jobs and small batches in transactions of random
    # length while one small worker keeps going busy and waiting. Every job must run
    # within seconds of the last commit: one missed wake-up would wait for the poll.
    done = []
    done_lock = threading.Lock()

    @app.task(name="wake.tick")
    def tick(n: int) -> None:
        time.sleep(random.uniform(0, 0.003))
        with done_lock:
            done.append(n)

    producers, per_producer = 6, 60
    worker = app.worker(concurrency=2, install_signal_handlers=False, poll_interval=LONG_POLL)
    errors: list[BaseException] = []

    def produce(p: int) -> None:
        rng = random.Random(p)
        try:
            with psycopg.connect(pg_url) as conn:
                for i in range(per_producer):
                    n = p * 1000 + i
                    if i % 10 == 9:
                        app.enqueue_many(conn, [tick.job(n=n)])
                    else:
                        tick.enqueue(conn, n=n)
                    time.sleep(rng.choice((0, 0, 0.001, 0.005, 0.02)))  # open transaction
                    conn.commit()
                    time.sleep(rng.choice((0, 0.002, 0.03)))
        except BaseException as exc:  # reported by the assertion below
            errors.append(exc)

    with _Running(worker):
        threads = [threading.Thread(target=produce, args=(p,)) for p in range(producers)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(120)
        assert not errors, errors
        last_commit = time.monotonic()
        wait_until(lambda: len(done) == producers * per_producer, PROMPT * 2, interval=0.01,
                   message="every job done without the minute's poll")
        assert time.monotonic() - last_commit < PROMPT * 2
    assert sorted(done) == sorted(p * 1000 + i for p in range(producers)
                                  for i in range(per_producer))


def test_a_replaced_listen_connection_takes_the_waiting_locks_along(app, pg_url, schema, db):
    # The waiting locks live on the LISTEN connection: when it dies, enqueues stop
    # notifying the fetcher; the listener reconnects, the fetcher claims and waits
    # again with new locks, and a job enqueued then is picked up by NOTIFY.
    done: list[int] = []

    @app.task(name="wake.after_reconnect")
    def record(n: int) -> None:
        done.append(n)

    worker = app.worker(concurrency=2, install_signal_handlers=False, poll_interval=LONG_POLL)
    with _Running(worker):
        wait_until(lambda: _waiting(db, schema) == [worker.id], 30,
                   message="the idle fetcher's waiting lock")
        listener = worker.listener
        assert listener is not None
        first = listener.reconnects
        holder = listener.conn.info.backend_pid if listener.conn is not None else None
        assert holder is not None
        assert db.execute("SELECT pg_terminate_backend(%s)", [holder]).fetchone() == (True,)
        wait_until(lambda: listener.reconnects > first and _waiting(db, schema) == [worker.id],
                   30, message="the listener back, and the fetcher waiting again")
        with psycopg.connect(pg_url) as conn:
            record.enqueue(conn, n=1)
            conn.commit()
        wait_until(lambda: done == [1], PROMPT, interval=0.005,
                   message="the job picked up by NOTIFY, not by the minute's poll")


def test_enqueues_leave_no_advisory_lock_behind(app, pg_url, schema, db):
    # An enqueue probes the waiting locks with session try-locks and lets go at once;
    # a leaked one would make every later enqueue notify (and block nobody), so check
    # the producer's connection holds none after commit, waiter or not.
    @app.task(name="wake.probe")
    def probe(n: int) -> None: ...

    store = JobStore(app.sql)
    with psycopg.connect(pg_url, autocommit=True) as waiter, psycopg.connect(pg_url) as conn:
        pid = conn.info.backend_pid
        for waiting in (False, True, False):
            if waiting:
                assert store.hold_waiting_locks(waiter, queues=["default", "other"])
            else:
                store.release_waiting_locks(waiter)
            probe.enqueue(conn, n=1)
            app.enqueue_many(conn, [probe.job(n=2), probe.options(queue="other").job(n=3)])
            conn.commit()
            held = db.execute("SELECT count(*) FROM pg_locks WHERE pid = %s "
                              "AND locktype = 'advisory'", [pid]).fetchone()
            assert held == (0,), waiting
        assert store.waiting_listeners(db) == []

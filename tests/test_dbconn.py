"""ResilientConnection: replacing a worker's idle connection when a sibling went silent."""

from __future__ import annotations

import threading

import psycopg

from pgjobs.worker.dbconn import ResilientConnection
from tests.workers import wait_until


def _backend(conn: psycopg.Connection) -> int:
    row = conn.execute("SELECT pg_backend_pid()").fetchone()
    assert row is not None
    return int(row[0])


def test_renew_when_idle_replaces_the_connection_before_its_next_call(pg_url, db):
    resilient = ResilientConnection(pg_url, "complete", threading.Event(), "pgjobs test")
    try:
        first = resilient.run(_backend)
        assert resilient.run(_backend) == first  # kept between calls
        resilient.renew_when_idle()
        second = resilient.run(_backend)
        assert second != first
        wait_until(lambda: db.execute("SELECT count(*) FROM pg_stat_activity WHERE pid = %s",
                                      [first]).fetchone() == (0,), 10,
                   message="the replaced backend went away")
        assert resilient.run(_backend) == second  # once, not on every call
    finally:
        resilient.discard()


def test_renew_when_idle_never_interrupts_a_call_in_progress(pg_url):
    resilient = ResilientConnection(pg_url, "fetch", threading.Event(), "pgjobs test")
    inside, go_on = threading.Event(), threading.Event()

    def slow(conn: psycopg.Connection) -> tuple[int, int]:
        before = _backend(conn)
        inside.set()
        assert go_on.wait(10)
        return before, _backend(conn)  # the same connection, still usable

    try:
        result: list[tuple[int, int] | None] = []
        caller = threading.Thread(target=lambda: result.append(resilient.run(slow)))
        caller.start()
        assert inside.wait(10)
        resilient.renew_when_idle()
        go_on.set()
        caller.join(10)
        (pids,) = result
        assert pids is not None and pids[0] == pids[1]
        assert resilient.run(_backend) != pids[0]  # replaced after the call
    finally:
        resilient.discard()

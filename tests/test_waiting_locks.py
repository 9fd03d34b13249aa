"""The fetcher's waiting locks, served on the listener's thread (worker/waiting_locks.py)."""

from __future__ import annotations

import threading
import time
from typing import Any

import psycopg
import pytest

from pgjobs.sql import Statements
from pgjobs.store import JobStore
from pgjobs.worker.waiting_locks import WaitingLockService

from .workers import wait_until


class _Listener:
    """The listener's side, on a thread of its own: serve requests until stopped."""

    def __init__(self, service: WaitingLockService, conn: psycopg.Connection[Any]) -> None:
        self.service, self.conn = service, conn
        self.error: BaseException | None = None
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        self.service.connected()
        try:
            while not self.stop.is_set():
                self.service.serve(self.conn)
                self.service.wait_readable(self.conn, 0.05)
        except BaseException as exc:  # checked by the tests
            self.error = exc
        finally:
            self.service.disconnected()

    def __enter__(self) -> _Listener:
        self.thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop.set()
        self.thread.join(10)


def test_locks_are_held_for_the_fetcher_and_die_with_the_connection(pg_url, schema, db):
    store = JobStore(Statements(schema))
    service = WaitingLockService(store, ["a", "b"], time.monotonic)
    assert service.hold_waiting_locks(timeout=1) is None  # no connection yet: poll
    with psycopg.connect(pg_url, autocommit=True) as conn, _Listener(service, conn):
        wait_until(lambda: service.hold_waiting_locks(timeout=5) is not None, 10,
                   message="the locks held")
        generation = service.hold_waiting_locks(timeout=5)
        assert generation is not None and service.holds_waiting_locks(generation)
        assert len(store.waiting_listeners(db)) == 2  # one per queue
        service.release_waiting_locks()
        wait_until(lambda: store.waiting_listeners(db) == [], 10, message="released")
        assert service.hold_waiting_locks(timeout=5) == generation  # same connection
    # The listener's connection is gone: its locks, and its generation, with it.
    assert not service.holds_waiting_locks(generation)
    assert service.hold_waiting_locks(timeout=1) is None
    assert store.waiting_listeners(db) == []


def test_a_lock_statement_that_hangs_is_cut_off_from_another_thread(pg_url, schema):
    # A statement on a connection gone silent would hang the listener for good; the
    # maintenance thread's check shuts the socket down and the listener's wait fails.
    class SilentStore(JobStore):
        def hold_waiting_locks(self, conn: Any, *, queues: Any) -> bool:
            conn.execute("SELECT pg_sleep(10)")  # short: the server notices the cut only after it
            return True

    clock = [0.0]
    service = WaitingLockService(SilentStore(Statements(schema)), None, lambda: clock[0])
    with psycopg.connect(pg_url, autocommit=True) as conn, _Listener(service, conn) as listener, \
            psycopg.connect(pg_url, autocommit=True) as db:
        asked = threading.Thread(target=service.hold_waiting_locks, kwargs={"timeout": 30},
                                 daemon=True)
        asked.start()
        pid = conn.info.backend_pid
        wait_until(lambda: db.execute("SELECT query FROM pg_stat_activity WHERE pid = %s "
                                      "AND state = 'active'", [pid]).fetchone(), 10,
                   message="the lock statement running")
        clock[0] = 0.1
        service.check_stuck(limit=0.2)  # not that old yet: kept
        assert listener.error is None and listener.thread.is_alive()
        clock[0] = 1.0
        service.check_stuck(limit=0.2)
        listener.thread.join(10)
        assert isinstance(listener.error, psycopg.OperationalError), listener.error
        asked.join(10)
        assert not asked.is_alive()  # the fetcher's request was answered, not left waiting


@pytest.mark.parametrize("queues", [None, ["a"]])
def test_refused_lock_holds_nothing(pg_url, schema, db, queues):
    # An enqueue probing a key holds it exclusively for an instant: the hold is refused
    # and nothing stays held (the fetcher claims again shortly and retries).
    store = JobStore(Statements(schema))
    with psycopg.connect(pg_url, autocommit=True) as prober, \
            psycopg.connect(pg_url, autocommit=True) as conn:
        key1 = (store.sql.wake_key >> 32)
        key2 = 0 if queues is None else prober.execute("SELECT hashtext('a')").fetchone()[0]
        assert prober.execute("SELECT pg_try_advisory_lock(%s::int, %s::int)",
                              [key1, key2]).fetchone() == (True,)
        assert store.hold_waiting_locks(conn, queues=queues) is False
        assert store.waiting_listeners(db) == []
        prober.execute("SELECT pg_advisory_unlock(%s::int, %s::int)", [key1, key2])
        assert store.hold_waiting_locks(conn, queues=queues) is True
        assert len(store.waiting_listeners(db)) == 1

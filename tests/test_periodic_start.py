"""A worker's periodic hook when the server refuses a connection at start-up (a full
``max_connections``, a restart): the worker is not stopped by it."""

from __future__ import annotations

from typing import Any

import psycopg
import pytest

import pgjobs
from pgjobs import periodic_scheduler
from pgjobs.periodic_scheduler import start_for_worker

from .conftest import count
from .workers import wait_until


@pytest.fixture
def refused_first(monkeypatch: pytest.MonkeyPatch) -> list[int]:
    """The scheduler's first connection attempt is refused like a full server's."""
    real, calls = psycopg.connect, [0]

    def connect(*args: Any, **kwargs: Any) -> psycopg.Connection[Any]:
        calls[0] += 1
        if calls[0] == 1:
            raise psycopg.OperationalError("FATAL:  sorry, too many clients already")
        return real(*args, **kwargs)

    monkeypatch.setattr(periodic_scheduler.psycopg, "connect", connect)
    return calls


def test_without_schedules_a_refused_connection_is_no_reason_to_stop(pg_url, schema,
                                                                     refused_first, caplog):
    caplog.set_level("INFO", logger="pgjobs")
    assert start_for_worker(pgjobs.App(pg_url, schema=schema)) is None
    assert refused_first == [1]
    assert "could not mark old schedules inactive (FATAL:  sorry, too many clients" in (
        caplog.text)


def test_schedules_are_registered_by_the_thread_once_the_server_lets_it_in(
        pg_url, schema, db, refused_first, caplog):
    app = pgjobs.App(pg_url, schema=schema)

    @app.periodic(cron="0 0 1 1 *", name="yearly")
    @app.task(name="yearly")
    def yearly() -> None:
        """Never due during the test."""

    scheduler = start_for_worker(app)
    assert scheduler is not None
    try:
        assert "cannot register the schedules yet" in caplog.text
        wait_until(lambda: count(db, schema, "cron_schedules", "name = 'yearly' AND active") == 1,
                   30, message="the thread registered the schedule")
        assert scheduler.thread.is_alive()
    finally:
        scheduler.stop()
        assert scheduler.join(30)

"""Transactional enqueue through psycopg and SQLAlchemy: visibility, options, validation."""

from __future__ import annotations

import datetime as dt
import decimal
import json
import math
import threading

import psycopg
import pytest
from psycopg import sql
from sqlalchemy import create_engine, text
from sqlalchemy.orm import Session

import pgjobs
from pgjobs import admin

from .conftest import count


def _tasks(app: pgjobs.App):
    @app.task(queue="webhooks", max_attempts=7)
    def deliver(event_id: str, body: dict) -> None: ...

    @app.task(name="flaky")
    def flaky() -> None: ...

    return deliver, flaky


def _row(db, schema, job_id):
    cur = db.cursor(row_factory=psycopg.rows.dict_row)
    return cur.execute(
        sql.SQL("SELECT * FROM {} WHERE id = %s").format(sql.Identifier(schema, "jobs")),
        [job_id],
    ).fetchone()


def test_task_defaults_and_name(app):
    deliver, flaky = _tasks(app)
    assert deliver.name == f"{__name__}._tasks.<locals>.deliver"
    assert flaky.name == "flaky"
    assert app.tasks["flaky"] is flaky
    assert deliver.max_attempts == 7 and flaky.max_attempts == 5


def test_psycopg_enqueue_is_invisible_until_commit(app, conn, db, schema):
    deliver, _ = _tasks(app)
    job_id = deliver.enqueue(conn, event_id="e1", body={"a": 1})
    assert isinstance(job_id, int)
    assert count(db, schema, "jobs") == 0  # other sessions do not see it yet
    conn.commit()
    row = _row(db, schema, job_id)
    assert row["args"] == {"event_id": "e1", "body": {"a": 1}}  # exactly the kwargs
    assert row["queue"] == "webhooks" and row["state"] == "pending"
    assert row["attempts"] == 0 and row["max_attempts"] == 7 and row["priority"] == 0
    assert row["task"] == deliver.name


def test_rollback_discards_the_job(app, conn, db, schema):
    deliver, _ = _tasks(app)
    deliver.enqueue(conn, event_id="e1", body={})
    conn.rollback()
    assert count(db, schema, "jobs") == 0


def test_enqueue_never_commits_the_callers_transaction(app, conn, db, schema):
    deliver, _ = _tasks(app)
    conn.execute("CREATE TEMP TABLE app_rows (x int)")
    conn.execute("INSERT INTO app_rows VALUES (1)")
    deliver.enqueue(conn, event_id="e1", body={})
    assert conn.info.transaction_status == psycopg.pq.TransactionStatus.INTRANS
    conn.rollback()
    assert count(db, schema, "jobs") == 0


def test_options_delay_priority_queue_max_attempts(app, conn, db, schema):
    deliver, _ = _tasks(app)
    job_id = deliver.options(delay=60, priority=5, queue="other", max_attempts=2).enqueue(
        conn, event_id="e", body={})
    conn.commit()
    row = _row(db, schema, job_id)
    assert row["queue"] == "other" and row["priority"] == 5 and row["max_attempts"] == 2
    assert dt.timedelta(seconds=59) < row["next_run_at"] - row["created_at"] <= dt.timedelta(
        seconds=61)
    stats = {r["queue"]: r for r in admin.queue_stats(db, app.sql)}
    assert stats["other"]["scheduled"] == 1 and stats["other"]["pending"] == 0


def test_unique_key_returns_the_live_job(app, conn, db, schema):
    deliver, _ = _tasks(app)
    first = deliver.options(unique_key="e1").enqueue(conn, event_id="e1", body={})
    again = deliver.options(unique_key="e1").enqueue(conn, event_id="e1", body={"x": 2})
    assert again == first
    conn.commit()
    assert count(db, schema, "jobs") == 1
    # Once the job is gone (done), the key is free again.
    db.execute(sql.SQL("DELETE FROM {}").format(sql.Identifier(schema, "jobs")))
    third = deliver.options(unique_key="e1").enqueue(conn, event_id="e1", body={})
    assert third != first


def test_unique_key_concurrent_enqueuers_create_one_job(app, pg_url, db, schema):
    deliver, _ = _tasks(app)
    barrier = threading.Barrier(4)
    ids: list[int] = []

    def enqueue() -> None:
        with psycopg.connect(pg_url) as c:
            barrier.wait()
            ids.append(deliver.options(unique_key="k").enqueue(c, event_id="e", body={}))
            c.commit()

    threads = [threading.Thread(target=enqueue) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=30)
    assert len(set(ids)) == 1 and len(ids) == 4
    assert count(db, schema, "jobs") == 1


@pytest.mark.parametrize(
    ("value", "fragment"),
    [
        (object(), "not JSON-serialisable"),
        (decimal.Decimal("1.5"), "not JSON-serialisable"),
        (math.nan, "no JSON representation"),
        (math.inf, "no JSON representation"),
        ({1, 2}, "not JSON-serialisable"),
    ],
)
def test_non_json_argument_raises_typeerror_naming_it(app, conn, db, schema, value, fragment):
    deliver, _ = _tasks(app)
    conn.execute("SELECT 1")  # the caller's transaction is open
    with pytest.raises(TypeError) as info:
        deliver.enqueue(conn, event_id="e", body=value)
    assert "'body'" in str(info.value) and fragment in str(info.value)
    conn.execute("SELECT 1")  # still usable
    conn.commit()
    assert count(db, schema, "jobs") == 0


def test_nul_character_and_oversized_payload_rejected_before_writing(app, conn, db, schema):
    deliver, _ = _tasks(app)
    with pytest.raises(ValueError, match=r"'event_id'.*NUL"):
        deliver.enqueue(conn, event_id="a\x00b", body={})
    small = pgjobs.App(app.database_url, schema=schema, max_args_bytes=100)

    @small.task(name="big")
    def big(blob: str) -> None: ...

    with pytest.raises(ValueError, match="over the 100-byte limit"):
        big.enqueue(conn, blob="x" * 200)
    conn.commit()
    assert count(db, schema, "jobs") == 0


def test_positional_arguments_are_refused(app, conn):
    deliver, _ = _tasks(app)
    with pytest.raises(TypeError, match="keyword arguments only"):
        deliver.enqueue(conn, "e1", {})


def test_bad_options_are_refused(app):
    deliver, _ = _tasks(app)
    with pytest.raises(ValueError, match="priority"):
        deliver.options(priority=40000)
    with pytest.raises(ValueError, match="delay"):
        deliver.options(delay=-1)
    with pytest.raises(ValueError, match="queue name"):
        deliver.options(queue="")
    with pytest.raises(TypeError, match="psycopg 3 Connection"):
        deliver.enqueue(object(), event_id="e", body={})


def test_sqlalchemy_connection_and_session(app, pg_url, db, schema):
    deliver, _ = _tasks(app)
    engine = create_engine(pg_url.replace("postgresql://", "postgresql+psycopg://", 1))
    try:
        with engine.connect() as sa_conn:
            deliver.enqueue(sa_conn, event_id="c1", body={})
            assert count(db, schema, "jobs") == 0
            sa_conn.commit()
        assert count(db, schema, "jobs") == 1
        with engine.connect() as sa_conn:
            deliver.enqueue(sa_conn, event_id="c2", body={})
            sa_conn.rollback()
        with Session(engine) as session:
            session.execute(text("SELECT 1"))
            deliver.enqueue(session, event_id="s1", body={})
            session.commit()
        with Session(engine) as session:
            deliver.enqueue(session, event_id="s2", body={})
            session.rollback()
        with Session(engine) as session, session.begin():
            deliver.enqueue(session, event_id="s3", body={})
        args = {r[0]["event_id"] for r in db.execute(
            sql.SQL("SELECT args FROM {}").format(sql.Identifier(schema, "jobs"))).fetchall()}
        assert args == {"c1", "s1", "s3"}
    finally:
        engine.dispose()


def test_sqlalchemy_with_another_driver_is_refused(app, pg_url):
    deliver, _ = _tasks(app)
    pytest.importorskip("psycopg2")
    engine = create_engine(pg_url.replace("postgresql://", "postgresql+psycopg2://", 1))
    with engine.connect() as sa_conn, pytest.raises(TypeError, match="postgresql\\+psycopg"):
        deliver.enqueue(sa_conn, event_id="e", body={})


def test_enqueue_many_inserts_all_with_ids_in_order(app, conn, db, schema):
    deliver, flaky = _tasks(app)
    jobs = [deliver.job(event_id=str(i), body={"i": i}) for i in range(1000)]
    jobs.append(flaky.options(delay=30, priority=-3).job())
    ids = app.enqueue_many(conn, jobs)
    assert len(ids) == 1001 and len(set(ids)) == 1001
    assert count(db, schema, "jobs") == 0
    conn.commit()
    assert count(db, schema, "jobs") == 1001
    assert _row(db, schema, ids[10])["args"] == {"event_id": "10", "body": {"i": 10}}
    last = _row(db, schema, ids[-1])
    assert last["task"] == "flaky" and last["priority"] == -3
    assert last["next_run_at"] - last["created_at"] == dt.timedelta(seconds=30)


def test_enqueue_many_rollback_and_unique_keys(app, conn, db, schema):
    deliver, _ = _tasks(app)
    app.enqueue_many(conn, [deliver.job(event_id="x", body={})] * 10)
    conn.rollback()
    assert count(db, schema, "jobs") == 0
    existing = deliver.options(unique_key="k1").enqueue(conn, event_id="1", body={})
    ids = app.enqueue_many(conn, [
        deliver.options(unique_key="k1").job(event_id="1", body={}),
        deliver.options(unique_key="k2").job(event_id="2", body={}),
        deliver.options(unique_key="k2").job(event_id="2", body={}),
    ])
    conn.commit()
    assert ids[0] == existing and ids[1] == ids[2] != existing
    assert count(db, schema, "jobs") == 2


def test_enqueue_many_refuses_non_jobs(app, conn):
    with pytest.raises(TypeError, match=r"task.job"):
        app.enqueue_many(conn, [{"task": "x"}])
    assert app.enqueue_many(conn, []) == []


def test_notify_once_per_queue_per_transaction(app, pg_url, conn, schema):
    deliver, flaky = _tasks(app)
    with psycopg.connect(pg_url, autocommit=True) as listener:
        listener.execute(app.sql.listen)
        for i in range(5):
            deliver.enqueue(conn, event_id=str(i), body={})
        flaky.enqueue(conn)
        flaky.options(delay=100, queue="later").enqueue(conn)  # not due: no wake-up
        app.enqueue_many(conn, [deliver.job(event_id="m", body={})] * 3)
        conn.commit()
        # A probe after our commit: once it arrives, everything before it has too.
        listener.execute("SELECT pg_notify(%s, 'probe')", [app.sql.channel])
        got = []
        for note in listener.notifies(timeout=10):
            if note.payload == "probe":
                break
            got.append(note.payload)
    assert sorted(got) == ["default", "webhooks"]


def test_missing_schema_error_says_to_migrate(pg_url, conn):
    app = pgjobs.App(pg_url, schema="no_such_pgjobs_schema")

    @app.task(name="t")
    def t() -> None: ...

    with pytest.raises(pgjobs.ConfigurationError, match="pgjobs migrate"):
        t.enqueue(conn)


def test_task_stays_callable(app):
    @app.task(name="add")
    def add(a: int, b: int) -> int:
        return a + b

    assert add(a=1, b=2) == 3
    assert json.loads(add.job(a=1, b=2).args_json) == {"a": 1, "b": 2}


def test_enqueue_many_copy_round_trips_names_and_args_that_need_escaping(app, conn, db, schema):
    # enqueue_many writes COPY's text format itself: tabs, newlines, CRs and backslashes
    # in names, and backslashes in JSON, must arrive exactly as given.
    name = "t\tab\\slash\nnew\rline é"
    queue = "q\\\t\n\r ü"

    @app.task(name=name, queue=queue)
    def odd(s: str, n: list) -> None: ...

    args = {"s": 'back\\slash "quote" \t tab \n nl \\N é 😀', "n": [1, 2.5, None, "\\"]}
    ids = app.enqueue_many(conn, [odd.job(**args), odd.options(delay=60, priority=7).job(**args)])
    conn.commit()
    rows = db.execute(sql.SQL(
        "SELECT id, queue, task, args, priority, next_run_at - created_at > interval '59 s' "
        "FROM {} ORDER BY id").format(sql.Identifier(schema, "jobs"))).fetchall()
    assert rows == [(ids[0], queue, name, args, 0, False), (ids[1], queue, name, args, 7, True)]

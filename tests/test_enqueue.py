"""Transactional enqueue through psycopg and SQLAlchemy: visibility, options, validation."""

from __future__ import annotations

import datetime as dt
import decimal
import json
import math
import threading
import uuid

import psycopg
import pytest
from psycopg import sql
from psycopg.conninfo import make_conninfo
from sqlalchemy import create_engine, text
from sqlalchemy.orm import Session

import pgjobs
import pgjobs.sql as pgsql
from pgjobs import admin, migrate

from .conftest import count
from .workers import a_fetcher_waits


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


def test_enqueue_many_of_due_jobs_only_runs_them_at_the_transactions_time(app, conn, db,
                                                                          schema):
    # A batch without delays leaves next_run_at to its default (COPY without the column):
    # every other column still comes from the job, escaping included.
    deliver, flaky = _tasks(app)
    args = {"event_id": "tab\there \\N", "body": {"nl": "a\nb", "emoji": "😀"}}
    ids = app.enqueue_many(conn, [deliver.job(**args),
                                  flaky.options(priority=4, max_attempts=2).job()])
    started = conn.execute("SELECT now()").fetchone()[0]  # the enqueueing transaction's
    conn.commit()
    first, second = _row(db, schema, ids[0]), _row(db, schema, ids[1])
    assert (first["task"], first["queue"], first["args"], first["priority"],
            first["max_attempts"]) == (deliver.name, "webhooks", args, 0, 7)
    assert (second["task"], second["priority"], second["max_attempts"]) == ("flaky", 4, 2)
    assert first["next_run_at"] == second["next_run_at"] == started
    assert first["state"] == "pending" and first["trace_context"] is None


def test_enqueue_many_refuses_non_jobs(app, conn):
    with pytest.raises(TypeError, match=r"task.job"):
        app.enqueue_many(conn, [{"task": "x"}])
    assert app.enqueue_many(conn, []) == []


def _heard(listener, app):
    """Notifications on the workers' channel up to a probe sent now."""
    listener.execute("SELECT pg_notify(%s, 'probe')", [app.sql.channel])
    got = []
    for note in listener.notifies(timeout=10):
        if note.payload == "probe":
            break
        got.append(note.payload)
    return got


def test_no_notify_while_no_fetcher_waits(app, pg_url, conn, db, schema):
    # Busy workers (no waiting_fetchers row) are not woken: notifying commits take
    # PostgreSQL's global notify lock and cannot group-commit. A fetcher serving other
    # queues only is not woken either.
    deliver, _ = _tasks(app)
    with psycopg.connect(pg_url, autocommit=True) as listener:
        listener.execute(app.sql.listen)
        deliver.enqueue(conn, event_id="1", body={})
        app.enqueue_many(conn, [deliver.job(event_id="m", body={})] * 3)
        conn.commit()
        assert _heard(listener, app) == []
        with a_fetcher_waits(pg_url, app, ["elsewhere"]):
            deliver.enqueue(conn, event_id="2", body={})
            conn.commit()
            assert _heard(listener, app) == []
        with a_fetcher_waits(pg_url, app, ["elsewhere", "webhooks"]):
            deliver.enqueue(conn, event_id="3", body={})
            conn.commit()
            assert _heard(listener, app) == ["webhooks"]
        # Its locks end with its connection: nobody waits any more.
        deliver.enqueue(conn, event_id="4", body={})
        conn.commit()
        assert _heard(listener, app) == []


@pytest.mark.parametrize("statement", [pgsql.ENQUEUE_WAKE, pgsql.WAKE_QUEUES],
                         ids=["enqueue", "enqueue_many"])
def test_the_wake_up_is_inlined_into_the_enqueue_statement(app, conn, statement):
    # Migration 0006 made wake_waiting_fetchers one SQL expression so that PostgreSQL
    # inlines it: no function call, no PL/pgSQL, no snapshot per enqueue. Anything that
    # blocks inlining (plpgsql, SET, SECURITY DEFINER, STRICT...) brings that cost back.
    params = {"queue": "q", "task": "t", "args": "{}", "priority": 0, "max_attempts": 1,
              "unique_key": None, "trace": None, "channel": app.sql.channel,
              "wake_key": app.sql.wake_key, "queues": ["q"]}
    rows = conn.execute(sql.SQL("EXPLAIN (VERBOSE, FORMAT JSON) ") + app.sql.of(statement),
                        params).fetchone()
    conn.rollback()
    assert rows is not None
    plan = json.dumps(rows[0])
    assert "wake_waiting_fetchers" not in plan, plan
    assert "pg_try_advisory_xact_lock_shared" in plan and "pg_try_advisory_lock" in plan


def test_notify_once_per_queue_per_transaction(app, pg_url, conn, db, schema):
    deliver, flaky = _tasks(app)
    with a_fetcher_waits(pg_url, app), \
            psycopg.connect(pg_url, autocommit=True) as listener:
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


class RaceConnection(psycopg.Connection):
    """A psycopg connection that runs ``race()`` once, just before it executes
    ``statement``: the window between two statements of one enqueue, made reliable."""

    statement: object = None
    race: object = None

    def execute(self, query, params=None, **kwargs):
        race = self.race
        if race is not None and query == self.statement:
            self.race = None
            race()
        return super().execute(query, params, **kwargs)


def _delete_job(db, schema, job_id):
    db.execute(sql.SQL("DELETE FROM {} WHERE id = %s").format(sql.Identifier(schema, "jobs")),
               [job_id])


def test_enqueue_many_one_id_per_job_when_a_key_holder_finishes_meanwhile(app, pg_url, db,
                                                                          schema):
    deliver, _ = _tasks(app)
    with psycopg.connect(pg_url) as c:
        holder = deliver.options(unique_key="k").enqueue(c, event_id="holder", body={})
        c.commit()
    with RaceConnection.connect(pg_url) as conn:
        # The batch's insert conflicts with the holder; the holder finishes (leaves jobs)
        # before the look-up of the key's live job.
        conn.statement = app.sql.of(pgsql.JOB_IDS_BY_UNIQUE_KEYS)
        conn.race = lambda: _delete_job(db, schema, holder)
        ids = app.enqueue_many(conn, [
            deliver.job(event_id="plain", body={}),
            deliver.options(unique_key="k").job(event_id="k", body={}),
            deliver.options(unique_key="k").job(event_id="k-dup", body={}),
            deliver.options(unique_key="j").job(event_id="j", body={}),
        ])
        assert conn.race is None  # the race did happen
        conn.commit()
    assert len(ids) == 4 and ids[1] == ids[2] and holder not in ids
    assert len({ids[0], ids[1], ids[3]}) == 3
    rows = dict(db.execute(sql.SQL("SELECT id, unique_key FROM {}").format(
        sql.Identifier(schema, "jobs"))).fetchall())
    assert rows == {ids[0]: None, ids[1]: "k", ids[3]: "j"}


def test_unique_key_reinsert_notifies_traces_and_counts_like_the_first_insert(pg_url, db,
                                                                              schema):
    from opentelemetry.sdk.metrics import MeterProvider
    from opentelemetry.sdk.metrics.export import InMemoryMetricReader
    from opentelemetry.sdk.trace import TracerProvider

    reader = InMemoryMetricReader()
    app = pgjobs.App(pg_url, schema=schema, tracer_provider=TracerProvider(),
                     meter_provider=MeterProvider(metric_readers=[reader]))
    deliver, _ = _tasks(app)
    with psycopg.connect(pg_url) as c:
        holder = deliver.options(unique_key="k").enqueue(c, event_id="holder", body={})
        c.commit()
    with a_fetcher_waits(pg_url, app), \
            psycopg.connect(pg_url, autocommit=True) as listener, \
            RaceConnection.connect(pg_url) as conn:
        listener.execute(app.sql.listen)
        # Insert conflicts with the holder, which finishes before the look-up: the job
        # is inserted again.
        conn.statement = app.sql.of(pgsql.JOB_ID_BY_UNIQUE_KEY)
        conn.race = lambda: _delete_job(db, schema, holder)
        job_id = deliver.options(unique_key="k").enqueue(conn, event_id="again", body={})
        assert conn.race is None
        conn.commit()
        listener.execute("SELECT pg_notify(%s, 'probe')", [app.sql.channel])
        got = []
        for note in listener.notifies(timeout=10):
            if note.payload == "probe":
                break
            got.append(note.payload)
    assert job_id != holder
    assert got == ["webhooks"]  # the re-insert woke the queue's workers
    row = _row(db, schema, job_id)
    assert row["unique_key"] == "k" and row["trace_context"]  # the producer span's context
    data = reader.get_metrics_data()
    enqueued = sum(
        p.value
        for rm in data.resource_metrics for sm in rm.scope_metrics for m in sm.metrics
        if m.name == "pgjobs.jobs.enqueued" for p in m.data.data_points
    )
    assert enqueued == 2  # the holder, and the re-inserted job


def test_queue_depths_counts_pending_jobs_per_queue(app, conn, db, schema, pg_url):
    deliver, flaky = _tasks(app)
    app.enqueue_many(conn, [deliver.job(event_id=str(i), body={}) for i in range(5)])
    flaky.options(delay=3600).enqueue(conn)  # scheduled: pending, counted
    flaky.options(queue="ran").enqueue(conn)
    assert app.queue_depths(conn) == {"webhooks": 5, "default": 1, "ran": 1}  # own tx
    conn.commit()
    # A claimed (running) job is not pending.
    db.execute(app.sql.of(pgsql.CLAIM_QUEUES),
               {"now": None, "limit": 1, "lease_seconds": 30, "worker_id": "t", "queues": ["ran"]})
    assert app.queue_depths(conn) == {"webhooks": 5, "default": 1}
    assert app.queue_depths(conn, ["webhooks", "ran", "none"]) == {
        "webhooks": 5, "ran": 0, "none": 0}
    assert app.queue_depths(conn, ["webhooks"], at_most=3) == {"webhooks": 3}
    engine = create_engine(pg_url.replace("postgresql://", "postgresql+psycopg://", 1))
    try:
        with Session(engine) as session:
            assert app.queue_depths(session, ["default"]) == {"default": 1}
    finally:
        engine.dispose()
    with pytest.raises(TypeError, match="list of queue names"):
        app.queue_depths(conn, "webhooks")
    with pytest.raises(ValueError, match="at_most"):
        app.queue_depths(conn, at_most=-1)


def test_queue_depths_reads_the_queue_index_not_the_table(pg_url):
    """Unlike the queue_stats view, the count never scans jobs: many running jobs, a
    backlog in one queue and a few pending jobs in others, and the plan reads only the
    pending part of the queue index.

    In a database of its own: VACUUM can mark pages all-visible (as autovacuum keeps a
    queue table) only when no other session of the database holds an older snapshot, and
    other tests run beside this one."""
    database = f"pgjobs_depths_{uuid.uuid4().hex[:10]}"
    with psycopg.connect(pg_url, autocommit=True) as admin_conn:
        admin_conn.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(database)))
    url = make_conninfo(pg_url, dbname=database)
    try:
        migrate.upgrade(url, "pgjobs")
        app = pgjobs.App(url, schema="pgjobs")
        jobs = sql.Identifier("pgjobs", "jobs")
        with psycopg.connect(url, autocommit=True) as db:
            db.execute(sql.SQL(
                "INSERT INTO {} (queue, task, state, lease_token) SELECT 'busy' || (g % 3), "
                "'t', 'running', gen_random_uuid() FROM generate_series(1, 20000) AS g"
            ).format(jobs))
            db.execute(sql.SQL("INSERT INTO {} (queue, task) SELECT 'q' || (g % 4), 't' "
                               "FROM generate_series(1, 40) AS g").format(jobs))
            db.execute(sql.SQL("INSERT INTO {} (queue, task) SELECT 'backlog', 't' "
                               "FROM generate_series(1, 5000) AS g").format(jobs))
            db.execute(sql.SQL("VACUUM ANALYZE {}").format(jobs))
            assert app.queue_depths(db) == {
                "backlog": 5000, "q0": 10, "q1": 10, "q2": 10, "q3": 10}
            for statement, params in (
                    (app.sql.of(pgsql.QUEUE_DEPTHS_ALL), {"at_most": None}),
                    (app.sql.of(pgsql.QUEUE_DEPTHS_OF), {"at_most": None, "queues": ["q1"]})):
                row = db.execute(sql.SQL("EXPLAIN (FORMAT JSON) ") + statement,
                                 params).fetchone()
                assert row is not None
                plan = json.dumps(row[0])
                assert "jobs_queue_claim_idx" in plan and "Seq Scan" not in plan, plan
    finally:
        with psycopg.connect(pg_url, autocommit=True) as admin_conn:
            admin_conn.execute(sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(
                sql.Identifier(database)))

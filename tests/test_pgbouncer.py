"""pgjobs behind a real PgBouncer in transaction pooling mode (tests/pgbouncer_support.py).

In transaction mode consecutive transactions of one client may run on different server
connections, so nothing that lives in a session survives: prepared statements (psycopg
prepares a query after 5 runs by default) and LISTEN. What pgjobs needs there:
enqueue on the application's connection (``prepare_threshold=None``, as psycopg's docs
ask behind such a pooler); ``pgjobs work --poll-only``, whose own and handler connections
prepare nothing; or ``--listen-database-url`` for a LISTEN that goes direct while claims
go through PgBouncer.
"""

from __future__ import annotations

import asyncio
import re
import signal
from collections.abc import Iterator
from typing import Any

import psycopg
import pytest
from psycopg import errors as pg_errors
from psycopg import sql

import pgjobs
from pgjobs.retry import is_permanent

from .apps import sample
from .conftest import cli_env, count, run_cli
from .pgbouncer_support import PgBouncer, pgbouncer_binary, start_pgbouncer, stop_pgbouncer
from .workers import WorkerProcess, create_executions_table, wait_until


@pytest.fixture(scope="module")
def pgbouncer(pg_url: str) -> Iterator[PgBouncer]:
    """A PgBouncer (transaction pooling) in front of the test server, for this module."""
    binary = pgbouncer_binary()
    if binary is None:
        pytest.skip("pgbouncer is not installed here (Debian: apt-get install pgbouncer; "
                    ".ci/run installs it when run as root)")
    bouncer = start_pgbouncer(pg_url, binary)
    try:
        yield bouncer
    finally:
        stop_pgbouncer(bouncer)


@pytest.fixture
def pgbouncer_url(pgbouncer: PgBouncer) -> str:
    """URL of the PgBouncer in front of the test server (same user and database)."""
    return pgbouncer.url


def _ids(db: psycopg.Connection[Any], schema: str) -> list[int]:
    rows = db.execute(sql.SQL("SELECT id FROM {} ORDER BY id").format(
        sql.Identifier(schema, "jobs"))).fetchall()
    return [r[0] for r in rows]


# --- the retry policy: a pooler's lost prepared statement is not the job's fault ----------

@pytest.mark.parametrize("exc", [
    pg_errors.InvalidSqlStatementName('prepared statement "_pg3_7" does not exist'),
    pg_errors.DuplicatePreparedStatement('prepared statement "_pg3_0" already exists'),
])
def test_prepared_statements_lost_by_a_pooler_are_retried_not_dead_lettered(exc):
    assert isinstance(exc, psycopg.ProgrammingError)  # what made them permanent before
    assert not is_permanent(exc)
    sqlalchemy_exc = pytest.importorskip("sqlalchemy.exc")
    assert not is_permanent(sqlalchemy_exc.ProgrammingError("SELECT", {}, exc))
    # Other SQL errors stay permanent: the same statement cannot succeed on retry.
    assert is_permanent(pg_errors.UndefinedColumn("no such column"))


# --- enqueue through PgBouncer --------------------------------------------------------------

def test_enqueue_and_enqueue_many_through_pgbouncer(pgbouncer_url, pg_url, schema, db):
    app = pgjobs.App(pgbouncer_url, schema=schema)

    @app.task(name="bounced")
    def bounced(n: int) -> None: ...

    with psycopg.connect(pgbouncer_url, prepare_threshold=None) as conn:
        # Many single enqueues, one transaction each: each may run on another server
        # connection; the same statement again and again would be prepared by default.
        single = []
        for n in range(12):
            single.append(bounced.enqueue(conn, n=n))
            conn.commit()
        many = app.enqueue_many(conn, [bounced.job(n=100 + n) for n in range(500)])  # COPY
        conn.commit()
        bounced.enqueue(conn, n=-1)
        conn.rollback()  # discarded, as without a pooler
    assert len(set(single + many)) == 512
    assert _ids(db, schema) == sorted(single + many)
    rows = db.execute(sql.SQL("SELECT args->>'n' FROM {} WHERE id = ANY(%s)").format(
        sql.Identifier(schema, "jobs")), [many[:3]]).fetchall()
    assert [r[0] for r in rows] == ["100", "101", "102"]


def test_aenqueue_through_pgbouncer(pgbouncer_url, schema, db):
    app = pgjobs.App(pgbouncer_url, schema=schema)

    @app.task(name="bounced.async")
    def bounced(n: int) -> None: ...

    async def scenario() -> list[int]:
        ids = []
        async with await psycopg.AsyncConnection.connect(
                pgbouncer_url, prepare_threshold=None) as aconn:
            for n in range(12):
                ids.append(await bounced.aenqueue(aconn, n=n))
                await aconn.commit()
            ids += await app.aenqueue_many(aconn, [bounced.job(n=n) for n in range(200)])
            await aconn.commit()
            await bounced.aenqueue(aconn, n=-1)
            await aconn.rollback()
        return ids

    ids = asyncio.run(scenario())
    assert len(set(ids)) == 212
    assert _ids(db, schema) == sorted(ids)
    assert count(db, schema, "jobs", "args->>'n' = '-1'") == 0


# --- pgjobs work through PgBouncer ----------------------------------------------------------

@pytest.fixture
def sample_app(pgbouncer_url, schema, db) -> pgjobs.App:
    """The sample app's tasks (handlers write through ``current_job().connection()``),
    on this test's schema, enqueueing through PgBouncer."""
    create_executions_table(db, schema)
    app = pgjobs.App(pgbouncer_url, schema=schema)
    app.tasks.update(sample.app.tasks)
    return app


def _enqueue_through(app: pgjobs.App, url: str, batches: int, size: int) -> list[int]:
    ids: list[int] = []
    with psycopg.connect(url, prepare_threshold=None) as conn:
        for _ in range(batches):
            ids += app.enqueue_many(conn, [app.tasks["record"].job() for _ in range(size)])
            conn.commit()
    return ids


def _executions(db: psycopg.Connection[Any], schema: str) -> list[tuple[int, int]]:
    """(job_id, attempt) of every finished execution, by job id."""
    return db.execute(sql.SQL("SELECT job_id, attempt FROM {} WHERE phase = 'done' "
                              "ORDER BY job_id").format(sql.Identifier(schema, "executions"))
                      ).fetchall()


def _assert_each_done_once(db: psycopg.Connection[Any], schema: str, ids: list[int],
                           log: str) -> None:
    executions = _executions(db, schema)
    assert [job for job, _ in executions] == sorted(ids)  # every job, each exactly once
    # First attempt each: no attempt failed on a prepared statement the pooler lost.
    assert {attempt for _, attempt in executions} == {1}, log
    assert count(db, schema, "dead_letters") == 0, log
    assert "prepared statement" not in log


def test_poll_only_worker_through_pgbouncer_runs_every_job_once(
        pgbouncer, sample_app, schema, db):
    worker = WorkerProcess(pgbouncer.url, schema, "--poll-only", "--concurrency", "4",
                           "--poll-interval", "0.2")
    try:
        worker.wait_started(60)
        # Many jobs per handler connection: psycopg would prepare the handlers' INSERT
        # from its 6th run, and PgBouncer would then lose it (the bug this reproduces).
        ids = _enqueue_through(sample_app, pgbouncer.url, batches=5, size=60)
        wait_until(lambda: count(db, schema, "jobs") == 0, 120, message="every job done")
        worker.signal(signal.SIGTERM)
        assert worker.wait(60) == 0, worker.log
    finally:
        worker.kill()
    _assert_each_done_once(db, schema, ids, worker.log)


def test_listen_direct_while_claims_go_through_pgbouncer(pgbouncer, sample_app, pg_url,
                                                         schema, db):
    # A poll far beyond the waits below: the jobs are found through NOTIFY, which only
    # a LISTEN on a direct connection receives (PgBouncer in transaction mode drops it).
    worker = WorkerProcess(pgbouncer.url, schema, "--listen-database-url", pg_url,
                           "--concurrency", "4", "--poll-interval", "600")
    try:
        worker.wait_started(60)
        worker_id = wait_until(lambda: re.search(r"worker (\S+): \d+ executors", worker.log),
                               30, message="worker id").group(1)
        wait_until(lambda: db.execute(
            "SELECT 1 FROM pg_stat_activity WHERE application_name = %s "
            "AND (query LIKE 'LISTEN %%' OR query LIKE '/* pgjobs listener%%')",
            [f"pgjobs worker {worker_id}"[:63]]).fetchone(),
            30, message="the worker's LISTEN on a direct connection")
        ids: list[int] = []
        for _ in range(3):  # each round found by its NOTIFY, not by the poll
            ids += _enqueue_through(sample_app, pgbouncer.url, batches=2, size=50)
            wait_until(lambda: count(db, schema, "jobs") == 0, 60,
                       message="jobs done after their NOTIFY")
        worker.signal(signal.SIGTERM)
        assert worker.wait(60) == 0, worker.log
    finally:
        worker.kill()
    _assert_each_done_once(db, schema, ids, worker.log)


def test_listen_database_url_with_poll_only_is_refused(pgbouncer, pg_url, schema):
    result = run_cli("work", "tests.apps.sample:app", "--poll-only",
                     "--listen-database-url", pg_url, env=cli_env(pgbouncer.url, schema))
    assert result.returncode == 2
    assert result.stderr.strip().splitlines() == [
        "pgjobs: error: --listen-database-url has no use with --poll-only (no LISTEN): "
        "drop one of them"]

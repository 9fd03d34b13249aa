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
from collections.abc import Iterator
from typing import Any

import psycopg
import pytest
from psycopg import errors as pg_errors
from psycopg import sql

import pgjobs
from pgjobs.retry import is_permanent

from .conftest import count
from .pgbouncer_support import PgBouncer, pgbouncer_binary, start_pgbouncer, stop_pgbouncer


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

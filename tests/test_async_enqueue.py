"""Async enqueue (``aenqueue`` / ``aenqueue_many`` / ``aqueue_depths``) on each async
connection kind: psycopg ``AsyncConnection``, SQLAlchemy ``AsyncConnection`` and
``AsyncSession``. Same rules as the sync path, against the real database.

Each test is a plain function that runs its coroutine with ``asyncio.run``.
"""

from __future__ import annotations

import asyncio
import decimal
import threading
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass
from typing import Any

import psycopg
import pytest
from psycopg import sql
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncSession, create_async_engine

import pgjobs
from pgjobs import backpressure

from .conftest import count
from .workers import a_fetcher_waits

KINDS = ["psycopg", "sqlalchemy_connection", "sqlalchemy_session"]


@dataclass
class AsyncHandle:
    """One async connection kind, with what a test does to its transaction."""

    conn: Any
    commit: Callable[[], Awaitable[None]]
    rollback: Callable[[], Awaitable[None]]
    scalar: Callable[[str], Awaitable[Any]]  # run SQL in the same transaction


def _sa_url(pg_url: str, driver: str = "psycopg") -> str:
    return pg_url.replace("postgresql://", f"postgresql+{driver}://", 1)


@asynccontextmanager
async def connect(kind: str, pg_url: str) -> AsyncIterator[AsyncHandle]:
    """An open connection of ``kind`` (transaction not begun)."""
    if kind == "psycopg":
        async with await psycopg.AsyncConnection.connect(pg_url) as c:

            async def scalar(q: str) -> Any:
                cur = await c.execute(q)  # type: ignore[arg-type]
                row = await cur.fetchone() if cur.description else None
                return row[0] if row else None

            yield AsyncHandle(c, c.commit, c.rollback, scalar)
        return
    engine = create_async_engine(_sa_url(pg_url))
    try:
        if kind == "sqlalchemy_connection":
            async with engine.connect() as sa:

                async def sa_scalar(q: str) -> Any:
                    result = await sa.execute(text(q))
                    return result.scalar() if result.returns_rows else None

                yield AsyncHandle(sa, sa.commit, sa.rollback, sa_scalar)
        else:
            async with AsyncSession(engine) as session:

                async def session_scalar(q: str) -> Any:
                    result = await session.execute(text(q))
                    return result.scalar() if result.returns_rows else None

                yield AsyncHandle(session, session.commit, session.rollback, session_scalar)
    finally:
        await engine.dispose()


def _tasks(app: pgjobs.App) -> tuple[pgjobs.Task, pgjobs.Task]:
    @app.task(name="deliver", queue="webhooks", max_attempts=7)
    def deliver(event_id: str, body: dict) -> None: ...

    @app.task(name="flaky")
    def flaky() -> None: ...

    return deliver, flaky


def _jobs(db: psycopg.Connection, schema: str) -> dict[int, dict]:
    rows = db.execute(sql.SQL("SELECT id, args FROM {} ORDER BY id").format(
        sql.Identifier(schema, "jobs"))).fetchall()
    return dict(rows)


@pytest.mark.parametrize("kind", KINDS)
def test_commit_makes_the_job_visible_and_rollback_discards_it(kind, app, pg_url, db, schema):
    deliver, _ = _tasks(app)

    async def scenario() -> tuple[int, int]:
        async with connect(kind, pg_url) as h:
            kept = await deliver.aenqueue(h.conn, event_id="kept", body={"a": 1})
            assert count(db, schema, "jobs") == 0  # invisible until the caller commits
            assert await app.aqueue_depths(h.conn) == {"webhooks": 1}  # but in its own
            await h.commit()
            dropped = await deliver.aenqueue(h.conn, event_id="dropped", body={})
            await h.rollback()
            return kept, dropped

    kept, dropped = asyncio.run(scenario())
    assert _jobs(db, schema) == {kept: {"event_id": "kept", "body": {"a": 1}}}
    assert dropped != kept


@pytest.mark.parametrize("kind", KINDS)
def test_aenqueue_never_commits_and_options_apply(kind, app, pg_url, db, schema):
    deliver, _ = _tasks(app)

    async def scenario() -> int:
        async with connect(kind, pg_url) as h:
            job_id = await deliver.options(priority=5, queue="other", delay=60).aenqueue(
                h.conn, event_id="e", body={})
            await h.rollback()
            assert count(db, schema, "jobs") == 0
            job_id = await deliver.options(priority=5, queue="other", delay=60).aenqueue(
                h.conn, event_id="e", body={})
            await h.commit()
            return job_id

    job_id = asyncio.run(scenario())
    row = db.execute(sql.SQL(
        "SELECT queue, priority, max_attempts, next_run_at - created_at > interval '59 s' "
        "FROM {} WHERE id = %s").format(sql.Identifier(schema, "jobs")), [job_id]).fetchone()
    assert row == ("other", 5, 7, True)


@pytest.mark.parametrize("kind", KINDS)
def test_queue_full_leaves_the_async_transaction_usable(kind, app, pg_url, conn, db, schema):
    deliver, _ = _tasks(app)
    app.set_queue_limit(conn, "webhooks", 1)
    deliver.enqueue(conn, event_id="first", body={})
    conn.commit()

    async def scenario() -> pgjobs.QueueFull:
        async with connect(kind, pg_url) as h:
            await h.scalar("CREATE TEMP TABLE app_rows AS SELECT 1 AS x")
            with pytest.raises(pgjobs.QueueFull) as info:
                await deliver.aenqueue(h.conn, event_id="second", body={})
            with pytest.raises(pgjobs.QueueFull):
                await app.aenqueue_many(h.conn, [deliver.job(event_id="m", body={})])
            # The caller's own work goes on in the same transaction and commits.
            assert await h.scalar("INSERT INTO app_rows VALUES (2) RETURNING x") == 2
            assert await h.scalar("SELECT count(*) FROM app_rows") == 2
            await h.commit()
            return info.value

    full = asyncio.run(scenario())
    assert full.queue == "webhooks" and full.limit == 1 and full.pending >= 1
    assert count(db, schema, "jobs") == 1


@pytest.mark.parametrize("kind", KINDS)
def test_unique_key_returns_the_live_job_even_from_a_full_queue(kind, app, pg_url, conn, db,
                                                                schema):
    deliver, _ = _tasks(app)
    app.set_queue_limit(conn, "webhooks", 1)
    conn.commit()

    async def scenario() -> tuple[int, int, list[int]]:
        async with connect(kind, pg_url) as h:
            first = await deliver.options(unique_key="evt-1").aenqueue(
                h.conn, event_id="1", body={})
            await h.commit()
            # Re-delivered: the queue is full now, but the key's job exists.
            again = await deliver.options(unique_key="evt-1").aenqueue(
                h.conn, event_id="1", body={"x": 2})
            many = await app.aenqueue_many(h.conn, [
                deliver.options(unique_key="evt-1").job(event_id="1", body={})] * 2)
            with pytest.raises(pgjobs.QueueFull):  # a new key still needs a place
                await deliver.options(unique_key="evt-2").aenqueue(
                    h.conn, event_id="2", body={})
            await h.commit()
            return first, again, many

    first, again, many = asyncio.run(scenario())
    assert again == first and many == [first, first]
    assert list(_jobs(db, schema)) == [first]


@pytest.mark.parametrize("kind", KINDS)
def test_aenqueue_many_ids_in_order_with_duplicates_and_unique_keys(kind, app, pg_url, db,
                                                                    schema):
    deliver, flaky = _tasks(app)

    async def scenario() -> tuple[int, list[int], list[int]]:
        async with connect(kind, pg_url) as h:
            existing = await deliver.options(unique_key="k1").aenqueue(
                h.conn, event_id="existing", body={})
            keyed = await app.aenqueue_many(h.conn, [
                deliver.job(event_id="plain-0", body={}),
                deliver.options(unique_key="k1").job(event_id="k1-again", body={}),
                deliver.options(unique_key="k2").job(event_id="k2", body={}),
                deliver.options(unique_key="k2").job(event_id="k2-dup", body={}),
                flaky.options(delay=30).job(),
            ])
            # Without unique keys the batch goes through COPY.
            copied = await app.aenqueue_many(
                h.conn, [deliver.job(event_id=str(i), body={"i": i}) for i in range(500)])
            await h.commit()
            return existing, keyed, copied

    existing, keyed, copied = asyncio.run(scenario())
    assert len(keyed) == 5
    assert keyed[1] == existing and keyed[2] == keyed[3]
    assert len({keyed[0], existing, keyed[2], keyed[4]}) == 4
    jobs = _jobs(db, schema)
    assert jobs[keyed[0]]["event_id"] == "plain-0" and jobs[keyed[2]]["event_id"] == "k2"
    assert jobs[keyed[4]] == {}
    assert [jobs[i]["body"]["i"] for i in copied] == list(range(500))
    assert len(jobs) == 4 + 500


@pytest.mark.parametrize("kind", KINDS)
def test_notify_once_per_queue_per_transaction(kind, app, pg_url, schema):
    deliver, flaky = _tasks(app)

    async def scenario() -> None:
        async with connect(kind, pg_url) as h:
            for i in range(5):
                await deliver.aenqueue(h.conn, event_id=str(i), body={})
            await flaky.aenqueue(h.conn)
            await flaky.options(delay=100, queue="later").aenqueue(h.conn)  # not due
            await app.aenqueue_many(h.conn, [deliver.job(event_id="m", body={})] * 3)
            await h.commit()

    with a_fetcher_waits(pg_url, app), \
            psycopg.connect(pg_url, autocommit=True) as listener:
        listener.execute(app.sql.listen)
        asyncio.run(scenario())
        # A probe after the commit: once it arrives, everything before it has too.
        listener.execute("SELECT pg_notify(%s, 'probe')", [app.sql.channel])
        got = []
        for note in listener.notifies(timeout=10):
            if note.payload == "probe":
                break
            got.append(note.payload)
    assert sorted(got) == ["default", "webhooks"]


@pytest.mark.parametrize("kind", KINDS)
def test_non_json_argument_raises_typeerror_naming_it(kind, app, pg_url, db, schema):
    deliver, _ = _tasks(app)

    async def scenario() -> None:
        async with connect(kind, pg_url) as h:
            assert await h.scalar("SELECT 1") == 1
            with pytest.raises(TypeError, match=r"argument 'body' .*not JSON-serialisable"):
                await deliver.aenqueue(h.conn, event_id="e", body=decimal.Decimal("1.5"))
            with pytest.raises(TypeError, match=r"'body'"):
                await app.aenqueue_many(h.conn, [deliver.job(event_id="e", body={1, 2})])
            assert await h.scalar("SELECT 2") == 2  # still usable
            await h.commit()

    asyncio.run(scenario())
    assert count(db, schema, "jobs") == 0


@pytest.mark.parametrize("kind", KINDS)
def test_aqueue_depths(kind, app, pg_url, db, schema):
    deliver, flaky = _tasks(app)

    async def scenario() -> tuple[dict[str, int], dict[str, int]]:
        async with connect(kind, pg_url) as h:
            await app.aenqueue_many(h.conn, [deliver.job(event_id="e", body={})] * 3)
            await flaky.options(delay=60).aenqueue(h.conn)
            await h.commit()
            return (await app.aqueue_depths(h.conn),
                    await app.aqueue_depths(h.conn, ["webhooks", "empty"], at_most=2))

    every, some = asyncio.run(scenario())
    assert every == {"webhooks": 3, "default": 1}
    assert some == {"webhooks": 2, "empty": 0}


def test_other_drivers_and_sync_connections_are_refused(app, pg_url, conn):
    deliver, _ = _tasks(app)
    pytest.importorskip("asyncpg")

    async def scenario() -> None:
        engine = create_async_engine(_sa_url(pg_url, "asyncpg"))
        try:
            async with engine.connect() as sa:
                with pytest.raises(TypeError, match=r"'asyncpg' driver.*postgresql\+psycopg.*"
                                                    r"accepts a psycopg 3 AsyncConnection, a "
                                                    r"SQLAlchemy 2 AsyncConnection or a "
                                                    r"SQLAlchemy 2 AsyncSession"):
                    await deliver.aenqueue(sa, event_id="e", body={})
            async with AsyncSession(engine) as session:
                with pytest.raises(TypeError, match=r"'asyncpg' driver.*postgresql\+psycopg"):
                    await app.aenqueue_many(session, [deliver.job(event_id="e", body={})])
        finally:
            await engine.dispose()
        with pytest.raises(TypeError, match=r"is synchronous: use `task\.enqueue"):
            await deliver.aenqueue(conn, event_id="e", body={})
        with pytest.raises(TypeError, match="psycopg 3 AsyncConnection, a SQLAlchemy 2 "
                                            "AsyncConnection or a SQLAlchemy 2 AsyncSession"):
            await deliver.aenqueue(object(), event_id="e", body={})
        async with await psycopg.AsyncConnection.connect(pg_url) as aconn:
            with pytest.raises(TypeError, match=r"is asynchronous: use `await task.aenqueue"):
                deliver.enqueue(aconn, event_id="e", body={})

    asyncio.run(scenario())


def test_waiting_for_the_pending_count_does_not_block_the_event_loop(app, pg_url, db, schema,
                                                                    monkeypatch):
    """A sync thread's count is in flight (held up by a table lock); an aenqueue of the
    same queue must wait for it without blocking its event loop, then enqueue."""
    # A wait that blocked the loop would freeze the ticker below for this long.
    monkeypatch.setattr(backpressure, "COUNT_WAIT_SECONDS", 10.0)
    deliver, _ = _tasks(app)
    queues = sql.Identifier(schema, "queues")
    blocker = psycopg.connect(pg_url)
    blocker.execute(sql.SQL("LOCK TABLE {} IN ACCESS EXCLUSIVE MODE").format(queues))
    sync_ids: list[int] = []

    def sync_enqueue() -> None:
        with psycopg.connect(pg_url) as c:
            sync_ids.append(deliver.enqueue(c, event_id="sync", body={}))
            c.commit()

    thread = threading.Thread(target=sync_enqueue)
    thread.start()
    try:
        # Wait until the sync thread's count is queued behind the lock.
        waiting = sql.SQL("SELECT count(*) FROM pg_locks WHERE NOT granted "
                          "AND relation = {}::regclass").format(
            sql.Literal(f"{schema}.queues"))
        deadline = time.monotonic() + 30
        while db.execute(waiting).fetchone() != (1,):
            assert time.monotonic() < deadline, "the sync enqueue never started counting"
            time.sleep(0.01)

        async def scenario() -> tuple[int, int]:
            ticks, longest_gap = 0, 0.0

            async def ticker() -> None:
                nonlocal ticks, longest_gap
                last = time.monotonic()
                while True:
                    await asyncio.sleep(0.01)
                    ticks += 1
                    longest_gap = max(longest_gap, time.monotonic() - last)
                    last = time.monotonic()

            ticking = asyncio.create_task(ticker())
            async with await psycopg.AsyncConnection.connect(pg_url) as aconn:
                enqueue = asyncio.create_task(
                    deliver.aenqueue(aconn, event_id="async", body={}))
                while ticks < 20:  # the loop runs while aenqueue waits
                    await asyncio.sleep(0.01)
                assert not enqueue.done()
                gap_while_waiting = longest_gap
                blocker.commit()  # the count proceeds
                job_id = await asyncio.wait_for(enqueue, 30)
                await aconn.commit()
            ticking.cancel()
            return job_id, gap_while_waiting

        job_id, gap = asyncio.run(scenario())
    finally:
        blocker.rollback()
        blocker.close()
        thread.join(timeout=30)
    assert gap < 5.0  # never frozen for the 10 s a blocking wait would take
    assert set(_jobs(db, schema)) == {job_id, *sync_ids} and len(sync_ids) == 1


def test_a_cancelled_aenqueue_leaves_no_count_behind(app, pg_url, db, schema, monkeypatch):
    """Cancelled while its pending count waits for a lock: the next enqueue of the queue
    counts at once instead of waiting for the abandoned count (it would wait 300 s)."""
    monkeypatch.setattr(backpressure, "COUNT_WAIT_SECONDS", 300.0)
    deliver, _ = _tasks(app)
    waiting = sql.SQL("SELECT count(*) FROM pg_locks WHERE NOT granted "
                      "AND relation = {}::regclass").format(sql.Literal(f"{schema}.queues"))
    blocker = psycopg.connect(pg_url)
    blocker.execute(sql.SQL("LOCK TABLE {} IN ACCESS EXCLUSIVE MODE").format(
        sql.Identifier(schema, "queues")))

    async def scenario() -> int:
        async with await psycopg.AsyncConnection.connect(pg_url) as aconn:
            enqueue = asyncio.create_task(deliver.aenqueue(aconn, event_id="gone", body={}))
            deadline = time.monotonic() + 30
            while db.execute(waiting).fetchone() != (1,):
                assert time.monotonic() < deadline, "the count never reached the lock"
                await asyncio.sleep(0.01)
            enqueue.cancel()
            with pytest.raises(asyncio.CancelledError):
                await enqueue
            blocker.rollback()
            await aconn.rollback()  # the cancelled statement failed the transaction
            job_id = await asyncio.wait_for(
                deliver.aenqueue(aconn, event_id="next", body={}), 30)
            await aconn.commit()
            return job_id

    try:
        job_id = asyncio.run(scenario())
    finally:
        blocker.close()
    assert _jobs(db, schema) == {job_id: {"event_id": "next", "body": {}}}


@pytest.mark.parametrize("kind", KINDS)
def test_trace_context_and_metrics_like_the_sync_path(kind, pg_url, db, schema):
    from opentelemetry.sdk.metrics import MeterProvider
    from opentelemetry.sdk.metrics.export import InMemoryMetricReader
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import SimpleSpanProcessor
    from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

    reader, spans = InMemoryMetricReader(), InMemorySpanExporter()
    tracer_provider = TracerProvider()
    tracer_provider.add_span_processor(SimpleSpanProcessor(spans))
    app = pgjobs.App(pg_url, schema=schema, tracer_provider=tracer_provider,
                     meter_provider=MeterProvider(metric_readers=[reader]))
    deliver, _ = _tasks(app)

    async def scenario() -> tuple[int, list[int]]:
        async with connect(kind, pg_url) as h:
            app.set_queue_limit(db, "webhooks", 3)
            one = await deliver.aenqueue(h.conn, event_id="1", body={})
            many = await app.aenqueue_many(h.conn, [deliver.job(event_id="m", body={})] * 2)
            with pytest.raises(pgjobs.QueueFull):
                await deliver.aenqueue(h.conn, event_id="full", body={})
            await h.commit()
            return one, many

    one, many = asyncio.run(scenario())
    rows = dict(db.execute(sql.SQL("SELECT id, trace_context FROM {}").format(
        sql.Identifier(schema, "jobs"))).fetchall())
    assert set(rows) == {one, *many} and all(rows.values())  # a W3C context on each job
    sends = [s for s in spans.get_finished_spans() if s.name == "send webhooks"]
    assert len(sends) == 3  # one enqueue, one batch, one refused

    def total(name: str) -> float:
        data = reader.get_metrics_data()
        return sum(p.value for rm in data.resource_metrics for sm in rm.scope_metrics
                   for m in sm.metrics if m.name == name for p in m.data.data_points)

    assert total("pgjobs.jobs.enqueued") == 3
    assert total("pgjobs.queue_full.rejections") == 1


def test_sync_enqueue_on_the_loop_thread_does_not_deadlock_on_a_coroutine_count(
        app, pg_url, db, schema, monkeypatch):
    """A sync enqueue run inside a coroutine (blocking its loop) while another coroutine
    of that loop is counting: it cannot wait for that count to finish (the loop is
    blocked), so after COUNT_WAIT_SECONDS it counts for itself. Both jobs are written."""
    monkeypatch.setattr(backpressure, "COUNT_WAIT_SECONDS", 0.5)
    deliver, _ = _tasks(app)

    async def scenario() -> tuple[int, int]:
        async with await psycopg.AsyncConnection.connect(pg_url) as aconn:
            with psycopg.connect(pg_url) as conn:
                counting = asyncio.create_task(deliver.aenqueue(aconn, event_id="a", body={}))
                for _ in range(100):  # until its count is on the wire
                    if "webhooks" in app.limits._counting:
                        break
                    await asyncio.sleep(0)
                assert "webhooks" in app.limits._counting
                sync_id = deliver.enqueue(conn, event_id="s", body={})  # blocks the loop
                conn.commit()
                async_id = await asyncio.wait_for(counting, 30)
                await aconn.commit()
                return async_id, sync_id

    async_id, sync_id = asyncio.run(scenario())
    assert set(_jobs(db, schema)) == {async_id, sync_id}

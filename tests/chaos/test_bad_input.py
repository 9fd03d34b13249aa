"""Bad input everywhere a user can give it: clear errors or dead letters, never a crashed
worker, never SQL injection.

Names (task, queue, schema) full of quotes, semicolons, ``'); DROP TABLE x; --``, unicode
and emoji, through the Python API, the CLI and a real ``pgjobs work`` process; payloads at
and over the size limit; NaN/Infinity; rows written into ``jobs`` by hand.
"""

from __future__ import annotations

import json
import math
import os
import secrets
import subprocess
import sys
import threading
import uuid
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import psycopg
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from psycopg import sql

import pgjobs
from pgjobs import admin, migrate, roles
from pgjobs.errors import ConfigurationError
from pgjobs.payload import DEFAULT_MAX_ARGS_BYTES, dump_args
from pgjobs.store import ClaimedJob

from ..conftest import ROOT, cli_env, count, run_cli
from ..workers import APP, WorkerProcess, create_executions_table, wait_until
from . import store_support

pytestmark = pytest.mark.chaos

#: Every table and view a migrated pgjobs schema holds, and nothing else: the objects
#: `pgjobs roles grant` manages, which must be all of them (a migration that adds a table
#: without adding it there fails here too).
PGJOBS_RELATIONS = {*roles.TABLES, *roles.VIEWS}
assert "pgjobs_alembic_version" in PGJOBS_RELATIONS and "jobs" in PGJOBS_RELATIONS


# --- helpers ------------------------------------------------------------------------------


def _noop(**kwargs: Any) -> None:
    """A handler for tasks that are only enqueued and claimed at the SQL level."""


def _one_line_error(result: subprocess.CompletedProcess[str]) -> str:
    """The single stderr line of a CLI user error (exit 2, no traceback)."""
    assert result.returncode == 2, (result.returncode, result.stdout, result.stderr[-3000:])
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(lines) == 1, result.stderr[-3000:]
    assert "Traceback" not in result.stderr
    return lines[0]


def _relations(db: psycopg.Connection[Any], schema: str) -> set[str]:
    rows = db.execute(
        "SELECT c.relname FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace "
        "WHERE n.nspname = %s AND c.relkind IN ('r', 'v', 'p', 'm', 'f')", [schema]
    ).fetchall()
    return {r[0] for r in rows}


def _drop_schema(db: psycopg.Connection[Any], schema: str) -> None:
    db.execute(sql.SQL("DROP SCHEMA IF EXISTS {} CASCADE").format(sql.Identifier(schema)))


def _claim(db: psycopg.Connection[Any], app: pgjobs.App, queues: list[str] | None = None,
           limit: int = 1000, lease: float = 30.0) -> list[ClaimedJob]:
    return store_support.claim(db, app, queues=queues, limit=limit, lease_seconds=lease)


class _Worker(WorkerProcess):
    """``pgjobs [GLOBAL OPTIONS] work APP …``: like WorkerProcess, with global options."""

    def __init__(self, pg_url: str, schema: str, *args: str, global_args: tuple[str, ...] = (),
                 env_extra: dict[str, str] | None = None) -> None:
        env = cli_env(pg_url, schema, **(env_extra or {}))
        env["PYTHONPATH"] = os.pathsep.join([str(ROOT), env.get("PYTHONPATH", "")])
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "pgjobs", *global_args, "work", APP, *args],
            cwd=ROOT, env=env, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
            stderr=subprocess.PIPE, text=True,
        )
        self.lines: list[str] = []
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()


def _stop(worker: WorkerProcess) -> int:
    """SIGTERM and wait; the exit code."""
    worker.signal()
    return worker.wait(30)


def _sample_app(pg_url: str, schema: str) -> pgjobs.App:
    """An App on ``schema`` with the sample app's task names (handlers never run here)."""
    app = pgjobs.App(pg_url, schema=schema)
    for name in ("record", "always_fails", "permanent"):
        app.task(name=name)(_noop)
    return app


def _executions(db: psycopg.Connection[Any], schema: str) -> list[tuple[int, int]]:
    return db.execute(sql.SQL("SELECT job_id, attempt FROM {} WHERE phase = 'done' ORDER BY 1")
                      .format(sql.Identifier(schema, "executions"))).fetchall()


def _dead_errors(db: psycopg.Connection[Any], schema: str) -> dict[int, str]:
    rows = db.execute(sql.SQL("SELECT job_id, error FROM {}").format(
        sql.Identifier(schema, "dead_letters"))).fetchall()
    return dict(rows)


@pytest.fixture
def canary(db: psycopg.Connection[Any]) -> Iterator[str]:
    """A table in ``public`` (on every session's search_path) that injection would drop."""
    name = f"chaos_canary_{uuid.uuid4().hex[:8]}"
    table = sql.Identifier("public", name)
    db.execute(sql.SQL("CREATE TABLE {} (v text)").format(table))
    db.execute(sql.SQL("INSERT INTO {} VALUES ('alive')").format(table))
    try:
        yield name
    finally:
        db.execute(sql.SQL("DROP TABLE IF EXISTS {}").format(table))


def _assert_canary_alive(db: psycopg.Connection[Any], name: str) -> None:
    rows = db.execute(sql.SQL("SELECT v FROM {}").format(sql.Identifier("public", name)))
    assert rows.fetchall() == [("alive",)]


def hostile_names(canary: str) -> list[str]:
    """Names an attacker or a careless user might give (all valid queue names)."""
    return [
        f"'); DROP TABLE {canary}; --",
        "'); DROP TABLE x; --",
        f'"; DROP TABLE {canary}; --',
        "we\"ird 'quotes' `back` \\ slash",
        "semi;colon;; -- comment /* block */",
        "%s %(queue)s $1 :name {schema} %%",
        "émoji 🦄🔥 ünïcödé 中文 עברית",
        "\u202eoverride\u200b zero-width",
        "tab\tnew\nline\r\n",
        " padded ",
        "q" * 200,
        "🦄" * 200,
    ]


# --- names through the Python API ---------------------------------------------------------


def test_hostile_task_and_queue_names_through_the_python_api(app, conn, db, schema, canary):
    names = hostile_names(canary)
    tasks = {name: app.task(name=name, queue=name)(_noop) for name in names}
    single: dict[int, str] = {}
    for name, t in tasks.items():
        single[t.enqueue(conn, label=name)] = name
        held = t.options(unique_key=name).enqueue(conn, label=name)
        single[held] = name
        assert t.options(unique_key=name).enqueue(conn, label="again") == held
        single[t.options(delay=0.0, priority=3).enqueue(conn, label=name)] = name
    copied = app.enqueue_many(conn, [t.job(label=name) for name, t in tasks.items()])
    unnested = app.enqueue_many(
        conn, [t.options(unique_key="many:" + name).job(label=name) for name, t in tasks.items()])
    conn.commit()
    expected = {**single, **dict(zip(copied, names, strict=True)),
                **dict(zip(unnested, names, strict=True))}

    rows = db.execute(sql.SQL("SELECT id, queue, task, args FROM {}").format(
        sql.Identifier(schema, "jobs"))).fetchall()
    assert {r[0]: (r[1], r[2], _args(r[3])["label"]) for r in rows} == {
        i: (n, n, n) for i, n in expected.items()}

    # Claim by queue name: every job comes back under exactly its own names.
    claimed = _claim(db, app, queues=names)
    assert {j.id for j in claimed} == set(expected)
    for job in claimed:
        assert job.queue == job.task == expected[job.id]

    # Bury them with the name as the error text; filters find exactly their own rows.
    by_name = {n: [j for j in claimed if j.queue == n] for n in names}
    for name, jobs_of_name in by_name.items():
        written = store_support.complete(db, app, dead=[(j, name) for j in jobs_of_name])
        assert written.dead_lettered == len(jobs_of_name)
    for name in names:
        found = admin.list_dead_letters(db, app.sql, queue=name, task=name)
        assert len(found) == len(by_name[name]) and {d["error"] for d in found} == {name}
    pairs = admin.requeue_dead_letters(db, app.sql, task=names[0], queue=names[0])
    assert len(pairs) == len(by_name[names[0]])

    # Limits and stats on the same names.
    for name in names:
        app.set_queue_limit(db, name, 0)
    with pytest.raises(pgjobs.QueueFull) as full:
        tasks[names[0]].enqueue(conn)
    conn.rollback()
    assert repr(names[0]) in str(full.value)
    stats = {r["queue"]: r for r in admin.queue_stats(db, app.sql)}
    assert set(stats) == set(names) and all(stats[n]["limit"] == 0 for n in names)
    assert stats[names[0]]["pending"] == len(by_name[names[0]])

    _assert_canary_alive(db, canary)
    assert _relations(db, schema) == PGJOBS_RELATIONS


@pytest.mark.parametrize("kind", ["quote", "injection", "emoji", "dots", "backslash", "longest"])
def test_hostile_schema_names_through_the_python_api(pg_url, db, canary, kind):
    suffix = uuid.uuid4().hex[:6]
    schema = {
        "quote": f'we"ird_{suffix}',
        "injection": f"'); DROP TABLE {canary}; --",
        "emoji": f"🦄 émoji {suffix}",
        "dots": f"Mixed Case.dot;semi {suffix}",
        "backslash": f"back\\slash $1 'q' {suffix}",
        "longest": (f"{suffix}_" + "z" * 50)[:50],
    }[kind]
    assert len(schema.encode()) <= 50
    try:
        migrate.upgrade(pg_url, schema)
        assert _relations(db, schema) == PGJOBS_RELATIONS
        app = pgjobs.App(pg_url, schema=schema)
        t = app.task(name="t", queue="q")(_noop)
        with psycopg.connect(pg_url) as conn:
            first = t.enqueue(conn, n=1)
            later = t.options(delay=3600).enqueue(conn, n=2)
            copied = app.enqueue_many(conn, [t.job(n=i) for i in range(3)])
            unique = app.enqueue_many(conn, [t.options(unique_key="u").job(n=9)])
            conn.execute(app.sql.listen)  # the NOTIFY channel is derived from the schema
            conn.commit()
        assert count(db, schema, "jobs") == 6
        claimed = _claim(db, app, queues=["q"])
        assert {j.id for j in claimed} == {first, *copied, *unique}
        assert later not in {j.id for j in claimed}
        written = store_support.complete(db, app, ok=claimed[1:],
                                         dead=[(claimed[0], "fatal")])
        assert (written.succeeded, written.dead_lettered) == (len(claimed) - 1, 1)
        (pair,) = admin.requeue_dead_letters(db, app.sql)
        app.set_queue_limit(db, "q", 5)
        (stats,) = admin.queue_report(db, app.sql)
        assert (stats["queue"], stats["pending"], stats["scheduled"], stats["limit"]) == (
            "q", 1, 1, 5)
        assert pair[1] > later
        with psycopg.connect(pg_url, autocommit=True) as check:
            assert migrate.current_revision(check, schema) == migrate.head_revision()
        _assert_canary_alive(db, canary)
        assert _relations(db, schema) == PGJOBS_RELATIONS
    finally:
        _drop_schema(db, schema)


def test_schema_name_with_a_percent_sign_never_reaches_another_schema(pg_url, db):
    """BUG: runtime statements compose the schema into text that psycopg then scans for
    ``%`` placeholders, so ``p%%q`` is read as ``p%q``: jobs land in another schema."""
    suffix = uuid.uuid4().hex[:6]
    target, decoy = f"chaos%%pct_{suffix}", f"chaos%pct_{suffix}"
    try:
        try:
            migrate.upgrade(pg_url, target)
            migrate.upgrade(pg_url, decoy)
            app = pgjobs.App(pg_url, schema=target)
        except ConfigurationError as exc:  # rejecting such names up front is a fine fix
            assert "%" in str(exc)
            assert db.execute("SELECT count(*) FROM pg_namespace WHERE nspname IN (%s, %s)",
                              [target, decoy]).fetchone() == (0,)
            return
        t = app.task(name="t")(_noop)
        with psycopg.connect(pg_url) as conn:
            t.enqueue(conn)
            conn.commit()
        assert (count(db, target, "jobs"), count(db, decoy, "jobs")) == (1, 0), (
            f"enqueue on schema {target!r} wrote into schema {decoy!r}")
    finally:
        _drop_schema(db, target)
        _drop_schema(db, decoy)


@pytest.mark.parametrize("shape", ["a%sb", "b :x"])
def test_schema_names_that_look_like_placeholders_fail_clearly_or_work(pg_url, db, shape):
    """BUG: ``%s`` in a schema name crashes enqueue (psycopg placeholder parsing) and
    ``:x`` crashes migrate (SQLAlchemy bind parameter), both with a traceback."""
    schema = f"{shape}_{uuid.uuid4().hex[:6]}"
    env = cli_env(pg_url, "pgjobs")
    try:
        results = [run_cli("--schema", schema, *args, env=env) for args in (
            ("migrate",), ("enqueue", "t", "--queue", "q"), ("stats", "--json"))]
        for result in results:
            if result.returncode != 0:
                line = _one_line_error(result)
                assert repr(schema) in line or "schema" in line
        if all(r.returncode == 0 for r in results):
            assert count(db, schema, "jobs") == 1
    finally:
        _drop_schema(db, schema)


# --- names through the CLI and a real worker ---------------------------------------------


def test_cli_and_worker_serve_a_hostile_schema_and_queue(pg_url, db, canary):
    schema = f"we\"ird'); DROP TABLE {canary}; --"
    queue = f"q'); DROP TABLE {canary}; -- 🦄"
    assert len(schema.encode()) <= 50
    # The environment names another (valid, absent) schema: only --schema can make it work.
    env = cli_env(pg_url, f"pgjobs_chaos_absent_{uuid.uuid4().hex[:6]}")
    others = hostile_names(canary)[:4]
    worker = None
    try:
        migrated = run_cli("--schema", schema, "migrate", env=env)
        assert migrated.returncode == 0, migrated.stderr
        assert repr(schema) in migrated.stderr
        create_executions_table(db, schema)
        first = run_cli("--schema", schema, "enqueue", "record", "--queue", queue,
                        "--args", '{"n": 7}', env=env)
        assert first.returncode == 0, first.stderr
        job_id = int(first.stdout)
        with ThreadPoolExecutor(4) as pool:
            results = list(pool.map(lambda n: run_cli(
                "--schema", schema, "enqueue", n, "--queue", n,
                "--args", json.dumps({"label": n}), env=env), others))
        assert all(r.returncode == 0 for r in results), [r.stderr for r in results]
        other_ids = {int(r.stdout): n for r, n in zip(results, others, strict=True)}
        limited = run_cli("--schema", schema, "queues", "limit", queue, "10", env=env)
        assert limited.returncode == 0 and repr(queue) in limited.stdout, limited.stderr
        stats = run_cli("--schema", schema, "stats", "--json", env=env)
        assert stats.returncode == 0, stats.stderr
        by_queue = {q["queue"]: q for q in json.loads(stats.stdout)["queues"]}
        assert set(by_queue) == {queue, *others}
        assert (by_queue[queue]["pending"], by_queue[queue]["limit"]) == (1, 10)

        worker = _Worker(pg_url, env["PGJOBS_SCHEMA"], "--queues", queue, "--concurrency", "2",
                         global_args=("--schema", schema))
        worker.wait_started()
        wait_until(lambda: _executions(db, schema), 20, message="the job ran")
        assert _executions(db, schema) == [(job_id, 1)]
        wait_until(lambda: count(db, schema, "jobs", "queue = %s", [queue]) == 0, 10,
                   message="the job left jobs")
        listed = run_cli("--schema", schema, "dead-letters", "list", "--json", env=env)
        assert listed.returncode == 0 and json.loads(listed.stdout) == [], listed.stderr
        assert worker.proc.poll() is None
        assert _stop(worker) == 0, worker.log
        assert "Traceback" not in worker.log and repr(schema) in worker.log

        rows = db.execute(sql.SQL("SELECT id, queue, task, args, state FROM {}").format(
            sql.Identifier(schema, "jobs"))).fetchall()
        assert {r[0]: (r[1], r[2], r[3], r[4]) for r in rows} == {
            i: (n, n, {"label": n}, "pending") for i, n in other_ids.items()}
        _assert_canary_alive(db, canary)
        assert _relations(db, schema) == PGJOBS_RELATIONS | {"executions"}
    finally:
        if worker is not None:
            worker.kill()
        _drop_schema(db, schema)


# --- lengths ------------------------------------------------------------------------------


def test_too_long_queue_and_schema_names_are_rejected_before_writing(app, conn, db, schema,
                                                                     pg_url):
    t = app.task(name="t")(_noop)
    with pytest.raises(ValueError, match="at most 200"):
        t.options(queue="q" * 201)
    with pytest.raises(ValueError, match="at most 200"):
        app.task(name="long-queue", queue="q" * 201)(_noop)
    with pytest.raises(ValueError, match="queue name"):
        app.set_queue_limit(conn, "q" * 201, 1)
    with pytest.raises(ConfigurationError, match="too long"):
        pgjobs.App(pg_url, schema="é" * 26)  # 26 characters, 52 bytes
    emoji_queue = "🦄" * 200  # 200 characters, 800 bytes: fine
    job_id = t.options(queue=emoji_queue).enqueue(conn)
    conn.commit()
    assert [j.id for j in _claim(db, app, queues=[emoji_queue])] == [job_id]

    env = cli_env(pg_url, schema)
    with ThreadPoolExecutor(3) as pool:
        results = list(pool.map(lambda args: run_cli(*args, env=env), [
            ("enqueue", "t", "--queue", "q" * 201),
            ("queues", "limit", "q" * 201, "1"),
            ("--schema", "é" * 26, "stats"),
        ]))
    assert "at most 200" in _one_line_error(results[0])
    assert "at most 200" in _one_line_error(results[1])
    assert "too long" in _one_line_error(results[2])
    assert count(db, schema, "jobs") == 1 and count(db, schema, "queues") == 0


def test_very_long_task_name_is_rejected_or_dead_lettered_clearly(pg_url, schema, db):
    """BUG: task names are unbounded, but job_history's primary key (minute, queue, task)
    cannot index ~2.7 kB. The flush then fails with ProgramLimitExceeded, an
    OperationalError, which the completer's connection treats as a lost connection: it
    reconnects and replays the same flush forever, so this worker never writes another
    outcome, heartbeat or rescue."""
    name = "t" + secrets.token_hex(1500)  # 3001 incompressible characters
    app = pgjobs.App(pg_url, schema=schema)
    try:
        t = app.task(name=name, max_attempts=1)(_noop)
    except ValueError as exc:  # rejected up front: a fine fix
        assert "task name" in str(exc) and "at most" in str(exc)
        assert count(db, schema, "jobs") == 0
        return
    create_executions_table(db, schema)
    with psycopg.connect(pg_url) as conn:
        job_id = t.enqueue(conn)
        conn.commit()
    worker = WorkerProcess(pg_url, schema, "--concurrency", "2", "--lease-timeout", "1")
    try:
        worker.wait_started()
        try:
            wait_until(lambda: count(db, schema, "jobs") == 0, 4, message="the job left jobs")
        except AssertionError:
            replays = worker.log.count("complete connection failed")
            tail = worker.log.splitlines()[-1:]
            pytest.fail(f"job {job_id} never left `jobs`; the completer replayed its flush "
                        f"{replays} times: {tail}")
        error = _dead_errors(db, schema)[job_id]
        assert error.startswith(f"unknown task {name[:40]}") or "unknown task" in error, error
        assert "could not write" not in worker.log, worker.log[-2000:]
    finally:
        worker.kill()


def test_one_long_task_name_does_not_sink_the_other_outcomes_of_a_flush(app, conn, db):
    """BUG: one flush is one statement; a task name too long for job_history's index makes
    the whole statement fail, so every other outcome in the batch is lost too."""
    normal = app.task(name="normal")(_noop)
    normal.enqueue(conn)
    # Registration refuses such names now; a row written by hand can still carry one.
    conn.execute(sql.SQL("INSERT INTO {} (task) VALUES (%s)").format(
        sql.Identifier(app.schema, "jobs")), ["t" + secrets.token_hex(1500)])
    conn.commit()
    jobs = sorted(_claim(db, app), key=lambda j: j.id)
    try:
        store_support.complete(db, app, ok=jobs[:1], dead=[(jobs[1], "unknown task")],
                               durations=[(j.id, 0.1) for j in jobs])
    except psycopg.Error as exc:
        pytest.fail(f"the whole flush failed, losing the normal job's success too: {exc}")
    assert count(db, app.schema, "jobs") == 0


def test_long_unique_key_is_rejected_before_writing(app, conn, db, schema):
    """BUG: unique keys are unbounded but indexed (jobs_unique_key_idx); a long one fails
    inside the caller's transaction with a raw ProgramLimitExceeded, aborting it."""
    t = app.task(name="t")(_noop)
    kept = t.enqueue(conn)
    key = secrets.token_hex(1600)
    with pytest.raises(ValueError, match="unique_key"):
        t.options(unique_key=key).enqueue(conn)
    # Like every other validation error: raised before writing, the transaction lives on.
    conn.commit()
    assert count(db, schema, "jobs") == 1
    assert [j.id for j in _claim(db, app)] == [kept]


def test_long_unique_key_cli_error_is_one_clear_line(pg_url, schema, db):
    """BUG: the CLI reports any psycopg OperationalError (ProgramLimitExceeded is one) as
    "cannot connect to : … check PGJOBS_DATABASE_URL", with an empty URL."""
    result = run_cli("enqueue", "t", "--unique-key", secrets.token_hex(1600),
                     env=cli_env(pg_url, schema))
    line = _one_line_error(result)
    assert "cannot connect" not in line and "unique" in line.lower(), line
    assert count(db, schema, "jobs") == 0


# --- payloads -----------------------------------------------------------------------------


def test_payload_over_the_limit_is_rejected_and_nothing_is_written(app, conn, db, schema,
                                                                   pg_url):
    limit = app.max_args_bytes
    assert limit == DEFAULT_MAX_ARGS_BYTES == 1024 * 1024
    t = app.task(name="bulky")(_noop)
    overhead = len('{"blob":""}')
    with pytest.raises(ValueError) as ascii_error:
        t.enqueue(conn, blob="x" * (limit - overhead + 1))
    message = str(ascii_error.value)
    assert f"{limit + 1} bytes" in message and f"{limit}-byte limit" in message
    assert "'bulky'" in message and "max_args_bytes" in message
    # Bytes, not characters: half as many two-byte characters are just as big.
    with pytest.raises(ValueError, match=f"{limit + 1} bytes"):
        t.enqueue(conn, blob="é" * ((limit - overhead) // 2) + "xx")
    with pytest.raises(ValueError, match="byte limit"):
        app.enqueue_many(conn, [t.job(blob="small"), t.job(blob="x" * limit)])
    small = pgjobs.App(pg_url, schema=schema, max_args_bytes=64)
    with pytest.raises(ValueError, match="64-byte limit"):
        small.task(name="tiny")(_noop).enqueue(conn, blob="x" * 100)
    # Nothing reached the database, and the caller's transaction is still usable.
    job_id = t.enqueue(conn, blob="fine")
    conn.commit()
    assert count(db, schema, "jobs") == 1 and [j.id for j in _claim(db, app)] == [job_id]


def test_payload_exactly_at_the_limit_runs_end_to_end(pg_url, schema, db):
    app = _sample_app(pg_url, schema)
    limit = app.max_args_bytes
    body_bytes = limit - len('{"n":""}')
    big = "🦄" * (body_bytes // 4 - 1) + "x" * (body_bytes % 4 + 4)
    assert len(dump_args("record", {"n": big}, limit).encode()) == limit
    with pytest.raises(ValueError, match="byte limit"):
        app.tasks["record"].job(n=big + "x")
    create_executions_table(db, schema)
    with psycopg.connect(pg_url) as conn:
        (job_id,) = app.enqueue_many(conn, [app.tasks["record"].job(n=big)])
        conn.commit()
    stored = db.execute(sql.SQL("SELECT args->>'n' = %s FROM {}").format(
        sql.Identifier(schema, "jobs")), [big]).fetchone()
    assert stored == (True,)
    worker = WorkerProcess(pg_url, schema, "--concurrency", "2")
    try:
        worker.wait_started()
        wait_until(lambda: count(db, schema, "jobs") == 0, 20, message="the big job ran")
        assert _executions(db, schema) == [(job_id, 1)]
        assert count(db, schema, "dead_letters") == 0
        assert _stop(worker) == 0 and "Traceback" not in worker.log, worker.log[-2000:]
    finally:
        worker.kill()


def _circular() -> list[Any]:
    loop: list[Any] = []
    loop.append(loop)
    return loop


def _nested(depth: int) -> list[Any]:
    value: list[Any] = []
    for _ in range(depth):
        value = [value]
    return value


_NO_JSON = "has no JSON representation"


@pytest.mark.parametrize(("bad", "why"), [
    (math.nan, _NO_JSON), (math.inf, _NO_JSON), (-math.inf, _NO_JSON),
    ([1.0, math.nan], None), ({"deep": {"er": math.inf}}, None),
    # These two used to escape as a bare RecursionError (the second always, the first
    # with the reused encoder).
    (_circular(), "Circular reference"), (_nested(5000), "nested too deeply"),
], ids=["nan", "inf", "-inf", "list", "dict", "circular", "too-deep"])
def test_unencodable_args_raise_type_error_naming_the_argument(app, conn, db, schema, bad,
                                                               why):
    t = app.task(name="t")(_noop)
    for enqueue in (lambda: t.enqueue(conn, fine=1, bad=bad),
                    lambda: app.enqueue_many(conn, [t.job(fine=1, bad=bad)])):
        with pytest.raises(TypeError) as error:
            enqueue()
        message = str(error.value)
        assert "'bad'" in message and "'fine'" not in message and "'t'" in message
        assert why is None or why in message, message
    t.enqueue(conn, fine=1)
    conn.commit()
    assert count(db, schema, "jobs") == 1


def test_text_that_spells_a_nul_escape_is_not_a_nul(app, conn, db, schema):
    """BUG: the NUL check matched the JSON of the text \\u0000 (a backslash, then "u0000",
    as in a Windows path) and refused it as a NUL character."""
    t = app.task(name="t")(_noop)
    job_id = t.enqueue(conn, path="C:\\u0000\\x", backslash="\\")
    conn.commit()
    row = db.execute(sql.SQL("SELECT args FROM {} WHERE id = %s").format(
        sql.Identifier(schema, "jobs")), [job_id]).fetchone()
    assert row is not None and row[0] == {"path": "C:\\u0000\\x", "backslash": "\\"}
    with pytest.raises(ValueError, match=r"'nul'.*NUL character"):
        t.enqueue(conn, path="C:\\u0000", nul="\\\x00")


_JSON_TEXT = st.text(st.characters(exclude_characters="\x00", exclude_categories=("Cs",)),
                     max_size=8)
_JSON = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False, allow_infinity=False)
    | _JSON_TEXT,
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(_JSON_TEXT, inner, max_size=4),
    max_leaves=20)


@settings(max_examples=200, deadline=None)
@given(args=st.dictionaries(_JSON_TEXT, _JSON, max_size=5))
def test_args_are_encoded_exactly_as_the_json_module_does(args):
    """dump_args reuses one C encoder: its text must be json.dumps' own, byte for byte."""
    expected = json.dumps(args, ensure_ascii=False, separators=(",", ":"), allow_nan=False)
    assert dump_args("t", args, DEFAULT_MAX_ARGS_BYTES) == expected


def test_cli_rejects_nan_and_infinity_with_one_line(pg_url, schema, db):
    env = cli_env(pg_url, schema)
    variants = ['{"x": NaN}', '{"x": Infinity}', '{"x": -Infinity}',
                '{"x": [1, {"y": NaN}]}', '{"x": 1e999}']
    with ThreadPoolExecutor(4) as pool:
        results = list(pool.map(lambda a: run_cli("enqueue", "t", "--args", a, env=env),
                                variants))
    for variant, result in zip(variants, results, strict=True):
        line = _one_line_error(result)
        assert "NaN" in line or "Infinity" in line or "inf" in line, (variant, line)
    assert count(db, schema, "jobs") == 0


# --- rows written by hand -----------------------------------------------------------------


def test_malformed_rows_are_dead_lettered_and_the_worker_keeps_serving(pg_url, schema, db):
    create_executions_table(db, schema)
    jobs = sql.Identifier(schema, "jobs")
    with pytest.raises(psycopg.errors.NotNullViolation):
        db.execute(sql.SQL("INSERT INTO {} (task, args) VALUES ('record', NULL)").format(jobs))
    rows = {
        "array": ("record", "[1, 2]"),
        "string": ("record", '"a string"'),
        "number": ("record", "42"),
        "json null": ("record", "null"),
        "wrong arguments": ("record", '{"unexpected": 1}'),
        "unknown task": ("no.such.task", "{}"),
        "hostile task": ("'); DROP TABLE x; --", "{}"),
    }
    ids = {}
    for label, (task, args) in rows.items():
        ids[label] = db.execute(sql.SQL(
            "INSERT INTO {} (task, args, max_attempts) VALUES (%s, %s::jsonb, 1) RETURNING id"
        ).format(jobs), [task, args]).fetchone()[0]
    worker = WorkerProcess(pg_url, schema, "--concurrency", "2")
    try:
        worker.wait_started()
        wait_until(lambda: count(db, schema, "jobs") == 0, 20, message="malformed rows handled")
        errors = _dead_errors(db, schema)
        assert set(errors) == set(ids.values())
        expect = {
            "array": "args must be a JSON object of keyword arguments, got list",
            "string": "args must be a JSON object of keyword arguments, got str",
            "number": "args must be a JSON object of keyword arguments, got int",
            "json null": "args must be a JSON object of keyword arguments, got NoneType",
            "wrong arguments": "arguments do not match task 'record'",
            "unknown task": "unknown task 'no.such.task'",
            "hostile task": "unknown task \"'); DROP TABLE x; --\"",
        }
        for label, fragment in expect.items():
            assert fragment in errors[ids[label]], (label, errors[ids[label]])
        # Still serving.
        app = _sample_app(pg_url, schema)
        with psycopg.connect(pg_url) as conn:
            (good,) = app.enqueue_many(conn, [app.tasks["record"].job(n=1)])
            conn.commit()
        wait_until(lambda: _executions(db, schema), 15, message="a good job after bad ones")
        assert _executions(db, schema) == [(good, 1)]
        assert worker.proc.poll() is None
        assert _stop(worker) == 0
        assert "Traceback" not in worker.log, worker.log[-3000:]
    finally:
        worker.kill()


def test_malformed_trace_context_is_ignored_or_reported_clearly(pg_url, schema, db):
    """BUG: a trace_context OpenTelemetry cannot parse makes process_span raise before the
    handler runs. Until eea6519 the job then stayed 'running' forever (lease renewed by
    the heartbeat); now the executor reports it as a handler failure, so a job whose
    handler would succeed is retried and buried with an unrelated error such as
    "AttributeError: 'int' object has no attribute 'encode'". Tracing metadata should
    never decide a job's fate: ignore it (or say clearly that it is malformed)."""
    create_executions_table(db, schema)
    jobs = sql.Identifier(schema, "jobs")
    bad = [db.execute(sql.SQL(
        "INSERT INTO {} (task, args, trace_context, max_attempts) "
        "VALUES ('record', '{{}}', %s::jsonb, 1) RETURNING id").format(jobs), [ctx]
    ).fetchone()[0] for ctx in ('{"traceparent": 123}', '{"baggage": 5}', '"text"', '[1]')]
    worker = WorkerProcess(pg_url, schema, "--concurrency", "2", "--lease-timeout", "1")
    try:
        worker.wait_started()
        try:
            wait_until(lambda: count(db, schema, "jobs") == 0, 5,
                       message="malformed trace contexts handled")
        except AssertionError:
            left = db.execute(sql.SQL("SELECT id, state, attempts FROM {}").format(jobs))
            pytest.fail(f"jobs never left `jobs` (rows: {left.fetchall()}); "
                        f"worker log: {worker.log[-1500:]}")
        ran = {job_id for job_id, _ in _executions(db, schema)}
        errors = _dead_errors(db, schema)
        for job_id in bad:
            first_line = errors.get(job_id, "").split("\n")[0]
            assert job_id in ran or "trace" in first_line.lower(), (
                f"job {job_id} was buried for its trace context: {first_line!r}")
        assert worker.proc.poll() is None
    finally:
        worker.kill()


def test_deeply_nested_args_do_not_poison_the_claim(pg_url, schema, db):
    """BUG: args nested deeper than Python's json can decode make the claim's fetchall()
    raise after the UPDATE committed: every job of that claim batch is marked running
    but never run, its attempt charged, until leases expire; the deep one is buried as
    "lease expired" and innocent neighbours lose attempts (and can be buried too)."""
    create_executions_table(db, schema)
    jobs = sql.Identifier(schema, "jobs")
    deep = '{"n": ' + "[" * 5000 + "]" * 5000 + "}"
    ids = [db.execute(sql.SQL(
        "INSERT INTO {} (task, args, max_attempts) VALUES ('record', %s::jsonb, 2) RETURNING id"
    ).format(jobs), [args]).fetchone()[0] for args in ('{"n": 1}', deep, '{"n": 2}')]
    worker = WorkerProcess(pg_url, schema, "--concurrency", "4", "--lease-timeout", "1")
    try:
        worker.wait_started()
        wait_until(lambda: count(db, schema, "jobs") == 0, 12, message="all jobs handled")
        errors = _dead_errors(db, schema)
        assert _executions(db, schema) == [(ids[0], 1), (ids[2], 1)], (
            "innocent jobs claimed together with the deep one were charged extra attempts "
            "or buried", errors)
        assert not errors.get(ids[1], "").startswith("lease expired"), errors
    finally:
        worker.kill()


# --- property: names round-trip -----------------------------------------------------------

# Names must be valid Unicode (UTF-8 encodable): lone surrogates are rejected up front,
# see test_names_that_are_not_valid_unicode_are_rejected.
def _args(value: Any) -> Any:
    """Claimed rows carry args as JSON text; table reads as decoded JSON."""
    return json.loads(value) if isinstance(value, str) else value


_TEXT = st.characters(exclude_characters="\x00", exclude_categories=("Cs",))


@settings(max_examples=40, deadline=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])
@given(queue=st.text(_TEXT, min_size=1, max_size=200),
       task=st.text(_TEXT, min_size=1, max_size=300),
       label=st.text(_TEXT, max_size=50))
def test_arbitrary_queue_and_task_names_round_trip(pg_url, schema, db, queue, task, label):
    db.execute(sql.SQL("TRUNCATE {}").format(sql.Identifier(schema, "jobs")))
    app = pgjobs.App(pg_url, schema=schema)
    t = app.task(name=task, queue=queue)(_noop)
    with psycopg.connect(pg_url) as conn:
        one = t.enqueue(conn, label=label)
        (two,) = app.enqueue_many(conn, [t.job(label=label)])
        (three,) = app.enqueue_many(conn, [t.options(unique_key=queue + task).job(label=label)])
        conn.commit()
    jobs = _claim(db, app, queues=[queue], limit=10)
    assert sorted(j.id for j in jobs) == sorted([one, two, three])
    for job in jobs:
        assert (job.queue, job.task, _args(job.args)) == (queue, task, {"label": label})
    assert _claim(db, app) == []


@pytest.mark.parametrize("field", ["queue", "task"])
def test_names_that_are_not_valid_unicode_are_rejected(app, field):
    with pytest.raises(ValueError, match="invalid"):
        app.task(**{"name" if field == "task" else "queue": "bad\ud800name"})(_noop)

"""`pgjobs work` as production runs it: real processes, real signals, real faults."""

from __future__ import annotations

import itertools
import json
import signal
import time

import psycopg
import pytest
from psycopg import sql

import pgjobs
from pgjobs.worker.settings import CONNECTION_ROLES, internal_connections

from .apps import sample
from .conftest import cli_env, count, run_cli
from .workers import WorkerProcess, create_executions_table, wait_until

pytestmark = pytest.mark.slow


@pytest.fixture
def env(pg_url, schema, db):
    create_executions_table(db, schema)
    app = pgjobs.App(pg_url, schema=schema)
    # The sample app's tasks, enqueued on this test's schema (by name, via enqueue_many).
    app.tasks.update(sample.app.tasks)
    return app


def _enqueue(app: pgjobs.App, pg_url: str, name: str, n: int = 1, **kwargs) -> list[int]:
    task = app.tasks[name]
    with psycopg.connect(pg_url) as conn:
        ids = app.enqueue_many(conn, [task.job(**kwargs) for _ in range(n)])
        conn.commit()
    return ids


def _executions(db, schema, phase="done"):
    return db.execute(
        sql.SQL("SELECT job_id, attempt, pid, at FROM {} WHERE phase = %s ORDER BY at")
        .format(sql.Identifier(schema, "executions")), [phase]).fetchall()


def _jobs_left(db, schema) -> int:
    return count(db, schema, "jobs")


def test_all_jobs_processed_exactly_once_then_sigterm_exits_0(env, pg_url, schema, db):
    ids = _enqueue(env, pg_url, "record", 500)
    worker = WorkerProcess(pg_url, schema, "--concurrency", "8")
    try:
        worker.wait_started()
        wait_until(lambda: _jobs_left(db, schema) == 0, 60, message="queue drained")
        done = _executions(db, schema)
        assert sorted(r[0] for r in done) == sorted(ids)  # each once, none missing
        assert count(db, schema, "dead_letters") == 0
        worker.signal(signal.SIGTERM)
        assert worker.wait(30) == 0, worker.log
    finally:
        worker.kill()


def test_retries_follow_the_task_backoff(env, pg_url, schema, db):
    (job_id,) = _enqueue(env, pg_url, "flaky", fail_times=2)
    # A long poll interval: retries must start when due, not at the next poll.
    worker = WorkerProcess(pg_url, schema, "--concurrency", "2", "--poll-interval", "60")
    try:
        worker.wait_started()
        wait_until(lambda: _jobs_left(db, schema) == 0, 20, message="flaky job done")
        starts = _executions(db, schema, "start")
        assert [r[1] for r in starts] == [1, 2, 3]
        gaps = [(b[3] - a[3]).total_seconds() for a, b in itertools.pairwise(starts)]
        assert all(0.3 <= gap < 5 for gap in gaps), gaps  # backoff=lambda a: 0.3
        assert [r[0] for r in _executions(db, schema)] == [job_id]
    finally:
        worker.signal()
        worker.wait(30)


def test_dead_letters_for_every_kind_of_permanent_failure(env, pg_url, schema, db):
    for name in ("permanent", "integrity", "always_fails"):
        _enqueue(env, pg_url, name)
    unknown = run_cli("enqueue", "no.such.task", "--args", '{"x": 1}',
                      env=cli_env(pg_url, schema))
    assert unknown.returncode == 0
    worker = WorkerProcess(pg_url, schema, "--concurrency", "2")
    try:
        worker.wait_started()
        wait_until(lambda: count(db, schema, "dead_letters") == 4, 30, message="4 dead letters")
        rows = dict(db.execute(sql.SQL("SELECT task, error FROM {}").format(
            sql.Identifier(schema, "dead_letters"))).fetchall())
        assert "PermanentError" in rows["permanent"]
        assert "UniqueViolation" in rows["integrity"]
        assert "attempt 2 of 2" in rows["always_fails"] and "Traceback" in rows["always_fails"]
        assert "unknown task 'no.such.task'" in rows["no.such.task"]
        attempts = dict(db.execute(sql.SQL("SELECT task, attempts FROM {}").format(
            sql.Identifier(schema, "dead_letters"))).fetchall())
        assert attempts == {"permanent": 1, "integrity": 1, "always_fails": 2,
                            "no.such.task": 1}
        # The worker keeps serving after all that.
        (job_id,) = _enqueue(env, pg_url, "record")
        wait_until(lambda: any(r[0] == job_id for r in _executions(db, schema)), 30,
                   message="job after dead letters")
        # Requeue (CLI) puts a fresh job back; list --json shows the contract columns.
        listed = run_cli("dead-letters", "list", "--json", env=cli_env(pg_url, schema))
        import json

        letters = json.loads(listed.stdout)
        assert {"id", "job_id", "queue", "task", "args", "attempts", "error", "failed_at"} <= set(
            letters[0])
        unknown_letter = next(d for d in letters if d["task"] == "no.such.task")
        requeued = run_cli("dead-letters", "requeue", str(unknown_letter["id"]),
                           env=cli_env(pg_url, schema))
        assert requeued.returncode == 0, requeued.stderr
        new_id = int(requeued.stdout.strip())
        row = db.execute(sql.SQL("SELECT task, args, attempts, state FROM {} WHERE id = %s")
                         .format(sql.Identifier(schema, "jobs")), [new_id]).fetchone()
        # It may already be dead again (still unknown), but it was a fresh job.
        if row is not None:
            assert row[0] == "no.such.task" and row[1] == {"x": 1}
        assert count(db, schema, "dead_letters", "id = %s", [unknown_letter["id"]]) == 0
    finally:
        worker.signal()
        worker.wait(30)


def test_sigterm_lets_running_jobs_finish(env, pg_url, schema, db):
    _enqueue(env, pg_url, "sleepy", 4, seconds=1.5)
    worker = WorkerProcess(pg_url, schema, "--concurrency", "4", "--shutdown-timeout", "30")
    try:
        worker.wait_started()
        wait_until(lambda: len(_executions(db, schema, "start")) == 4, 30,
                   message="4 jobs running")
        worker.signal(signal.SIGTERM)
        assert worker.wait(30) == 0, worker.log
        assert len(_executions(db, schema, "done")) == 4
        assert _jobs_left(db, schema) == 0
    finally:
        worker.kill()


def test_queues_and_queue_select_what_the_worker_serves(env, pg_url, schema, db):
    record = env.tasks["record"]
    with psycopg.connect(pg_url) as conn:
        served = env.enqueue_many(conn, [record.options(queue=q).job(n=i)
                                         for i, q in enumerate(["a", "b,c", "a"])])
        left = env.enqueue_many(conn, [record.options(queue=q).job(n=9)
                                       for q in ["b", "c", "other"]])
        conn.commit()
    worker = WorkerProcess(pg_url, schema, "--queues", "a", "--queue", "b,c")
    try:
        worker.wait_started()
        wait_until(lambda: len(_executions(db, schema)) == 3, 30, message="a and 'b,c' done")
        assert sorted(r[0] for r in _executions(db, schema)) == sorted(served)
        worker.signal(signal.SIGTERM)
        assert worker.wait(30) == 0, worker.log
        assert sorted(r[0] for r in db.execute(sql.SQL("SELECT id FROM {}").format(
            sql.Identifier(schema, "jobs")))) == sorted(left)
    finally:
        worker.kill()


@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGINT])
def test_signal_during_start_up_exits_cleanly_without_claiming(pg_url, schema, db, tmp_path,
                                                                signum):
    # An orchestrator may stop a worker while it is still importing the application:
    # that must be a clean exit (0), not death by the signal's default action (143).
    app = pgjobs.App(pg_url, schema=schema)

    @app.task(name="slow_import.job")
    def job() -> None: ...

    _enqueue(app, pg_url, "slow_import.job", 3)
    release = tmp_path / "release"
    worker = WorkerProcess(pg_url, schema, app="tests.apps.slow_import:app",
                           env_extra={"SLOW_IMPORT_RELEASE": str(release)})
    try:
        wait_until(lambda: "slow_import: importing" in worker.log
                   or worker.proc.poll() is not None, 30, message="the App import to start")
        worker.signal(signum)
        release.touch()
        assert worker.wait(30) == 0, worker.log
        assert "during start-up" in worker.log and "before it started" in worker.log
        assert count(db, schema, "jobs", "state = 'pending' AND attempts = 0") == 3
    finally:
        worker.kill()


def test_shutdown_timeout_returns_unfinished_jobs_uncharged(env, pg_url, schema, db):
    ids = _enqueue(env, pg_url, "sleepy", 2, seconds=60)
    _enqueue(env, pg_url, "record", 5)  # claimed into the buffer, never started
    worker = WorkerProcess(pg_url, schema, "--concurrency", "2", "--shutdown-timeout", "1")
    try:
        worker.wait_started()
        wait_until(lambda: len(_executions(db, schema, "start")) == 2, 30,
                   message="2 long jobs running")
        started = time.monotonic()
        worker.signal(signal.SIGTERM)
        assert worker.wait(30) == 0, worker.log
        assert time.monotonic() - started < 15
        rows = db.execute(sql.SQL(
            "SELECT id, state, attempts, lease_token FROM {} WHERE id = ANY(%s)"
        ).format(sql.Identifier(schema, "jobs")), [ids]).fetchall()
        assert sorted(r[0] for r in rows) == sorted(ids)
        assert all(r[1] == "pending" and r[2] == 0 and r[3] is None for r in rows), rows
        assert count(db, schema, "jobs", "state = 'running'") == 0
    finally:
        worker.kill()


def test_second_signal_exits_at_once_with_nonzero_code(env, pg_url, schema, db):
    _enqueue(env, pg_url, "sleepy", 1, seconds=60)
    worker = WorkerProcess(pg_url, schema, "--concurrency", "1", "--shutdown-timeout", "60")
    try:
        worker.wait_started()
        wait_until(lambda: _executions(db, schema, "start"), 30, message="job running")
        worker.signal(signal.SIGTERM)
        wait_until(lambda: "draining" in worker.log, 10, message="drain log line")
        worker.signal(signal.SIGTERM)
        assert worker.wait(10) != 0
    finally:
        worker.kill()


def test_sigkill_loses_nothing_leases_rescue(env, pg_url, schema, db):
    ids = _enqueue(env, pg_url, "sleepy", 3, seconds=1.0)
    first = WorkerProcess(pg_url, schema, "--concurrency", "3", "--lease-timeout", "2")
    try:
        first.wait_started()
        wait_until(lambda: len(_executions(db, schema, "start")) == 3, 30, message="running")
        first.signal(signal.SIGKILL)
        first.wait(10)
    finally:
        first.kill()
    assert count(db, schema, "jobs", "state = 'running'") == 3  # orphaned, leases ticking
    second = WorkerProcess(pg_url, schema, "--concurrency", "3", "--lease-timeout", "2")
    try:
        second.wait_started()
        wait_until(lambda: _jobs_left(db, schema) == 0, 60, message="rescued jobs done")
        done = _executions(db, schema, "done")
        assert sorted(r[0] for r in done) == sorted(ids)
        assert all(r[1] == 2 for r in done)  # the killed attempt was charged
        assert "rescued 3 job(s)" in second.log
    finally:
        second.signal()
        second.wait(30)


def test_terminated_backends_do_not_kill_the_worker(env, pg_url, schema, db):
    worker = WorkerProcess(pg_url, schema, "--concurrency", "4", "--poll-interval", "0.5")
    try:
        worker.wait_started()
        ids: list[int] = []
        for _ in range(3):
            before = len(_executions(db, schema))
            ids += _enqueue(env, pg_url, "record", 100)
            # Terminate mid-stream: once this batch has started being processed.
            wait_until(lambda before=before: len(_executions(db, schema)) > before, 30,
                       interval=0.005, message="batch started")
            # Whatever connections the worker has right now (some may be reconnecting).
            wait_until(lambda: _terminate_worker_backends(db, worker.proc.pid) > 0, 30,
                       interval=0.01, message="worker backends to terminate")
        wait_until(lambda: _jobs_left(db, schema) == 0, 60, message="all jobs done")
        assert worker.proc.poll() is None, worker.log
        done = {r[0] for r in _executions(db, schema)}
        assert done == set(ids)
        assert "connection" in worker.log and "re-established" in worker.log
    finally:
        worker.signal()
        assert worker.wait(30) == 0
        worker.kill()


def _terminate_worker_backends(db, pid: int) -> int:
    row = db.execute(
        "SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity "
        "WHERE application_name LIKE %s AND pid <> pg_backend_pid()",
        [f"pgjobs worker %:{pid}:%"]).fetchone()
    return row[0] if row else 0


def test_pool_size_refusal_states_the_numbers(pg_url, schema):
    result = run_cli("work", "tests.apps.sample:app", "--concurrency", "10", "--pool-size", "5",
                     env=cli_env(pg_url, schema))
    assert result.returncode == 2
    line = result.stderr.strip()
    assert "\n" not in line and "Traceback" not in line
    smallest = 10 + internal_connections(poll_only=False)
    assert "pool size 5" in line and "concurrency 10" in line
    assert f"--pool-size {smallest} " in line
    assert ", ".join(CONNECTION_ROLES) in line  # the same roles `pgjobs work --help` names


def test_unknown_app_is_a_one_line_error(pg_url, schema):
    for spec, fragment in (("nomodule:app", "no such module"),
                           ("tests.apps.sample:nope", "no attribute"),
                           ("tests.apps.sample:record", "not a pgjobs.App"),
                           ("justamodule", "module:attribute")):
        result = run_cli("work", spec, env=cli_env(pg_url, schema))
        assert result.returncode == 2, result.stderr
        assert fragment in result.stderr and "Traceback" not in result.stderr


def test_idle_worker_wakes_on_notify_long_before_the_poll(env, pg_url, schema, db):
    worker = WorkerProcess(pg_url, schema, "--concurrency", "2", "--poll-interval", "60")
    try:
        worker.wait_started()
        _enqueue(env, pg_url, "record")  # proves the worker is up and idle
        wait_until(lambda: _executions(db, schema), 30, message="first job")
        latencies = []
        for _ in range(3):
            before = len(_executions(db, schema))
            _enqueue(env, pg_url, "record")
            committed = time.monotonic()
            wait_until(lambda before=before: len(_executions(db, schema)) > before, 10,
                       interval=0.005, message="NOTIFY wake-up")
            latencies.append(time.monotonic() - committed)
        assert max(latencies) < 5.0, latencies  # the poll would take 60 s
    finally:
        worker.signal()
        worker.wait(30)


def test_timeout_fails_the_attempt_and_keeps_the_slot(env, pg_url, schema, db):
    _enqueue(env, pg_url, "hangs")
    worker = WorkerProcess(pg_url, schema, "--concurrency", "1")
    try:
        worker.wait_started()
        wait_until(lambda: count(db, schema, "dead_letters") == 1, 30, message="timed out job")
        error = db.execute(sql.SQL("SELECT error FROM {}").format(
            sql.Identifier(schema, "dead_letters"))).fetchone()
        assert error is not None and "exceeded its timeout of 0.5s" in error[0]
        (job_id,) = _enqueue(env, pg_url, "record")  # the only slot still works
        wait_until(lambda: any(r[0] == job_id for r in _executions(db, schema)), 30,
                   message="job after timeout")
    finally:
        worker.signal()
        assert worker.wait(30) == 0


def test_log_format_json_logs_each_retry_and_dead_letter_with_the_job_fields(
        env, pg_url, schema, db):
    (job_id,) = _enqueue(env, pg_url, "always_fails")  # max_attempts 2: a retry, then dead
    worker = WorkerProcess(pg_url, schema, "--log-format", "json", "--log-level", "info")
    try:
        worker.wait_started()
        wait_until(lambda: count(db, schema, "dead_letters") == 1, 30, message="dead letter")

        def outcome_lines() -> list[dict]:
            lines = [json.loads(line) for line in worker.lines if line.startswith("{")]
            return [r for r in lines if r.get("job_id") == job_id]

        wait_until(lambda: len(outcome_lines()) == 2, 10, message="the two outcome lines")
        retry, dead = outcome_lines()
        assert (retry["level"], retry["task"], retry["attempt"]) == ("INFO", "always_fails", 1)
        assert retry["error"] == "ValueError: this never works"
        assert f"job {job_id} (always_fails) attempt 1/2 failed" in retry["message"]
        assert (dead["level"], dead["attempt"]) == ("WARNING", 2)
        assert "moved to dead_letters" in dead["message"]
        assert "attempt 2 of 2 failed: ValueError: this never works" in dead["error"]
        # Every line is JSON, the start-up line included.
        assert all(line.startswith("{") for line in worker.lines if line.strip()), worker.log
        worker.signal(signal.SIGTERM)
        assert worker.wait(30) == 0
    finally:
        worker.kill()


def test_wait_for_database_then_one_clear_line_and_exit_2(schema):
    env = cli_env("postgresql://postgres@127.0.0.1:1/nowhere", schema)
    started = time.monotonic()
    result = run_cli("work", "tests.apps.sample:app", "--wait-for-database", "1", env=env)
    assert result.returncode == 2, result.stderr
    lines = [line for line in result.stderr.splitlines() if line.strip()
             and " INFO " not in line]  # the log line saying it is waiting
    assert len(lines) == 1 and "Traceback" not in result.stderr, result.stderr
    assert "cannot connect" in lines[0] and "waited 1s" in lines[0], lines[0]
    assert time.monotonic() - started >= 1.0

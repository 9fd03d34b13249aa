"""An App for the job-lifecycle process tests (cancel, snooze, transactional completion,
results). Handlers record what they do in the test schema's ``executions`` table and
write their effects to ``effects`` (both created by the tests)."""

from __future__ import annotations

import os
import time
from typing import Any

from psycopg import sql

import pgjobs

app = pgjobs.App()


def _record(phase: str) -> None:
    job = pgjobs.current_job()
    with job.connection() as conn:
        conn.execute(
            sql.SQL("INSERT INTO {} (job_id, attempt, phase, pid) VALUES (%s, %s, %s, %s)")
            .format(sql.Identifier(app.schema, "executions")),
            [job.id, job.attempt, phase, os.getpid()],
        )


def _wait_for_cancel(seconds: float) -> bool:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if pgjobs.current_job().cancel_requested:
            return True
        time.sleep(0.01)
    return False


@app.task(name="cooperative", max_attempts=3)
def cooperative(seconds: float) -> None:
    """Stops at the first check after a cancel request."""
    _record("start")
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        pgjobs.current_job().raise_if_cancelled()
        time.sleep(0.01)
    _record("done")


@app.task(name="ignores_cancel", max_attempts=3)
def ignores_cancel(seconds: float) -> None:
    """Notices the request and finishes anyway: the job has succeeded."""
    _record("start")
    if _wait_for_cancel(seconds):
        _record("saw_cancel")
    _record("done")


@app.task(name="fails_after_cancel", max_attempts=3)
def fails_after_cancel(seconds: float) -> None:
    """Fails (an ordinary error) once asked to stop: the job ends cancelled, no retry."""
    _record("start")
    if _wait_for_cancel(seconds):
        raise RuntimeError("stopping half-way")


@app.task(name="snoozer", max_attempts=1)
def snoozer(times: int, seconds: float) -> None:
    """Snoozes ``times`` times, then succeeds (max_attempts=1: a charged snooze would
    send it to dead_letters)."""
    job = pgjobs.current_job()
    with job.connection() as conn:
        row = conn.execute(sql.SQL("SELECT count(*) FROM {} WHERE job_id = %s").format(
            sql.Identifier(app.schema, "executions")), [job.id]).fetchone()
    _record(f"run attempt={job.attempt}")
    if row is not None and row[0] < times:
        raise pgjobs.Snooze(seconds)


@app.task(name="effect", max_attempts=5)
def effect(key: str, hold: float = 0.0, sleep_after: float = 0.0) -> None:
    """Writes its effect and completes the job in one transaction (exactly once), held
    open ``hold`` seconds; then sleeps ``sleep_after`` seconds after the commit."""
    job = pgjobs.current_job()
    with job.connection() as conn:
        with conn.transaction():
            conn.execute(sql.SQL("INSERT INTO {} (key, job_id, attempt) VALUES (%s, %s, %s)")
                         .format(sql.Identifier(app.schema, "effects")),
                         [key, job.id, job.attempt])
            job.complete(conn)
            time.sleep(hold)
    _record("committed")
    time.sleep(sleep_after)


@app.task(name="answer", result_ttl=3600)
def answer(x: int) -> dict[str, Any]:
    return {"double": 2 * x}


@app.task(name="bad_result", result_ttl=3600, max_attempts=1)
def bad_result() -> Any:
    return {1, 2, 3}  # a set is not JSON


@app.task(name="plain")
def plain(n: int = 0) -> int:
    return n


@app.task(name="stubborn", max_attempts=3)
def stubborn(seconds: float) -> None:
    """Never looks at the cancel flag."""
    _record("start")
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        time.sleep(0.02)
    _record("done")

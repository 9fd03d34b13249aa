"""An App for process-level tests: every handler records its executions in the database.

Configured from the environment like any pgjobs app (PGJOBS_DATABASE_URL, PGJOBS_SCHEMA).
The test schema holds an ``executions`` table created by the tests.
"""

from __future__ import annotations

import os
import time

import psycopg
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


@app.task(name="record")
def record(n: int = 0) -> None:
    _record("done")


@app.task(name="sleepy")
def sleepy(seconds: float) -> None:
    _record("start")
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        time.sleep(0.02)
    _record("done")


@app.task(name="flaky", backoff=lambda attempt: 0.3, max_attempts=5)
def flaky(fail_times: int) -> None:
    _record("start")
    if pgjobs.current_job().attempt <= fail_times:
        raise RuntimeError(f"failing on purpose, attempt {pgjobs.current_job().attempt}")
    _record("done")


@app.task(name="always_fails", backoff=lambda attempt: 0.05, max_attempts=2)
def always_fails() -> None:
    raise ValueError("this never works")


@app.task(name="permanent")
def permanent() -> None:
    raise pgjobs.PermanentError("the payload is wrong; retrying cannot help")


@app.task(name="integrity")
def integrity() -> None:
    raise psycopg.errors.UniqueViolation("duplicate key value violates unique constraint")


@app.task(name="hangs", timeout=0.5, max_attempts=1)
def hangs() -> None:
    while True:  # ignores everything but the timeout's injected exception
        time.sleep(0.01)

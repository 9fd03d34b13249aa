"""An App with a `* * * * *` schedule, for the periodic process and CLI tests.

Configured from the environment (PGJOBS_DATABASE_URL, PGJOBS_SCHEMA). The periodic task
records each run in the test schema's ``executions`` table; ``hold`` keeps an executor
busy until the test ends it (so the test can show ticks do not need a free executor).
"""

from __future__ import annotations

import os
import time

from psycopg import sql

import pgjobs

app = pgjobs.App()


@app.periodic(cron="* * * * *", name="every-minute", args={"label": "minute"})
@app.task(name="periodic.record", queue="periodic")
def record(label: str) -> None:
    job = pgjobs.current_job()
    with job.connection() as conn:
        conn.execute(
            sql.SQL("INSERT INTO {} (job_id, attempt, phase, pid) VALUES (%s, %s, %s, %s)")
            .format(sql.Identifier(app.schema, "executions")),
            [job.id, job.attempt, label, os.getpid()],
        )


@app.task(name="periodic.hold", queue="busy")
def hold(seconds: float) -> None:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        time.sleep(0.05)

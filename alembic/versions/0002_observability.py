"""Observability: workers registry, per-minute job history, operator views.

Revision ID: 0002
Revises: 0001
Create Date: 2026-11-28
"""

from __future__ import annotations

from pgjobs.migrate import run_ddl

revision = "0002"
down_revision = "0001"
branch_labels = None
depends_on = None

UPGRADE = [
    # One row per running worker, refreshed with its heartbeat, removed on clean exit.
    """
    CREATE TABLE {schema}.workers (
        id                text PRIMARY KEY,
        hostname          text        NOT NULL,
        pid               integer     NOT NULL,
        queues            text[],
        concurrency       integer     NOT NULL,
        lease_seconds     float8      NOT NULL,
        started_at        timestamptz NOT NULL DEFAULT now(),
        last_heartbeat_at timestamptz NOT NULL DEFAULT now(),
        jobs_in_hand      integer     NOT NULL DEFAULT 0,
        executors_busy    integer     NOT NULL DEFAULT 0
    )
    """,
    # Finished attempts per minute, queue and task: written with each completion flush,
    # pruned by age. Small (one row per minute per task), so charting it is cheap.
    """
    CREATE TABLE {schema}.job_history (
        minute           timestamptz NOT NULL,
        queue            text        NOT NULL,
        task             text        NOT NULL,
        succeeded        bigint      NOT NULL DEFAULT 0,
        retried          bigint      NOT NULL DEFAULT 0,
        dead             bigint      NOT NULL DEFAULT 0,
        duration_seconds float8      NOT NULL DEFAULT 0,
        max_duration_seconds float8  NOT NULL DEFAULT 0,
        PRIMARY KEY (minute, queue, task)
    )
    """,
    """
    CREATE VIEW {schema}.worker_status AS
    SELECT id, hostname, pid, queues, concurrency, started_at, last_heartbeat_at,
           jobs_in_hand, executors_busy,
           last_heartbeat_at > now() - make_interval(secs => lease_seconds) AS alive,
           now() - last_heartbeat_at AS since_heartbeat
    FROM {schema}.workers
    """,
    """
    CREATE VIEW {schema}.throughput AS
    SELECT minute, queue,
           sum(succeeded) AS succeeded, sum(retried) AS retried, sum(dead) AS dead,
           sum(duration_seconds) / nullif(sum(succeeded + retried + dead), 0)
               AS avg_duration_seconds
    FROM {schema}.job_history
    GROUP BY minute, queue
    """,
]

DOWNGRADE = [
    "DROP VIEW {schema}.throughput",
    "DROP VIEW {schema}.worker_status",
    "DROP TABLE {schema}.job_history",
    "DROP TABLE {schema}.workers",
]


def upgrade() -> None:
    run_ddl(UPGRADE)


def downgrade() -> None:
    run_ddl(DOWNGRADE)

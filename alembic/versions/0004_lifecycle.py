"""Job lifecycle: cancellation, paused queues, kept results.

Revision ID: 0004
Revises: 0003
Create Date: 2026-12-03
"""

from __future__ import annotations

from pgjobs.migrate import run_ddl

revision = "0004"
down_revision = "0003"
branch_labels = None
depends_on = None

UPGRADE = [
    # Why a job ended without success: 'failed' (every existing row) or 'cancelled'
    # (app.cancel), so one table holds both and `requeue` serves both.
    """
    ALTER TABLE {schema}.dead_letters
        ADD COLUMN reason text NOT NULL DEFAULT 'failed'
        CHECK (reason IN ('failed', 'cancelled'))
    """,
    # app.get_job looks dead and cancelled jobs up by their job id.
    "CREATE INDEX dead_letters_job_id_idx ON {schema}.dead_letters (job_id)",
    # A running job someone asked to cancel. The partial index holds only those rows
    # (rare), so the worker's once-a-second check for its own is one tiny index probe.
    "ALTER TABLE {schema}.jobs ADD COLUMN cancel_requested_at timestamptz",
    """
    CREATE INDEX jobs_cancel_requested_idx ON {schema}.jobs (worker_id)
    WHERE cancel_requested_at IS NOT NULL
    """,
    # Paused queues: no worker claims from them (the claim reads this column), enqueue
    # still works. `pending_limit_set` tells a row written by `queues limit` (its NULL
    # limit means "unlimited") from one written only to pause (the App's default applies).
    "ALTER TABLE {schema}.queues ADD COLUMN paused boolean NOT NULL DEFAULT false",
    "ALTER TABLE {schema}.queues ADD COLUMN pending_limit_set boolean NOT NULL DEFAULT true",
    # Outcomes of succeeded jobs whose task has result_ttl (nothing else is written here),
    # until expires_at; pruned by the worker's retention.
    """
    CREATE TABLE {schema}.job_results (
        job_id       bigint PRIMARY KEY,
        queue        text        NOT NULL,
        task         text        NOT NULL,
        args         jsonb       NOT NULL,
        attempts     integer     NOT NULL,
        max_attempts integer     NOT NULL,
        result       jsonb,
        created_at   timestamptz NOT NULL,
        finished_at  timestamptz NOT NULL,
        expires_at   timestamptz NOT NULL
    )
    """,
    "CREATE INDEX job_results_expires_at_idx ON {schema}.job_results (expires_at)",
    # queue_stats gains `paused` (a new last column: CREATE OR REPLACE keeps the others).
    """
    CREATE OR REPLACE VIEW {schema}.queue_stats AS
    WITH live AS (
        SELECT queue,
               count(*) FILTER (WHERE state = 'pending' AND next_run_at <= now()) AS pending,
               count(*) FILTER (WHERE state = 'running') AS running,
               count(*) FILTER (WHERE state = 'pending' AND next_run_at > now()) AS scheduled,
               now() - min(next_run_at)
                   FILTER (WHERE state = 'pending' AND next_run_at <= now())
                   AS oldest_pending_age
        FROM {schema}.jobs
        GROUP BY queue
    ), dead AS (
        SELECT queue, count(*) AS dead FROM {schema}.dead_letters GROUP BY queue
    ), names AS (
        SELECT queue FROM live
        UNION SELECT queue FROM dead
        UNION SELECT name FROM {schema}.queues
    )
    SELECT names.queue,
           coalesce(live.pending, 0)   AS pending,
           coalesce(live.running, 0)   AS running,
           coalesce(live.scheduled, 0) AS scheduled,
           coalesce(dead.dead, 0)      AS dead,
           live.oldest_pending_age,
           CASE WHEN queues.pending_limit_set THEN queues.pending_limit END AS pending_limit,
           coalesce(queues.paused, false) AS paused
    FROM names
    LEFT JOIN live USING (queue)
    LEFT JOIN dead USING (queue)
    LEFT JOIN {schema}.queues AS queues ON queues.name = names.queue
    """,
]

DOWNGRADE = [
    "DROP VIEW {schema}.queue_stats",
    """
    CREATE VIEW {schema}.queue_stats AS
    WITH live AS (
        SELECT queue,
               count(*) FILTER (WHERE state = 'pending' AND next_run_at <= now()) AS pending,
               count(*) FILTER (WHERE state = 'running') AS running,
               count(*) FILTER (WHERE state = 'pending' AND next_run_at > now()) AS scheduled,
               now() - min(next_run_at)
                   FILTER (WHERE state = 'pending' AND next_run_at <= now())
                   AS oldest_pending_age
        FROM {schema}.jobs
        GROUP BY queue
    ), dead AS (
        SELECT queue, count(*) AS dead FROM {schema}.dead_letters GROUP BY queue
    ), names AS (
        SELECT queue FROM live
        UNION SELECT queue FROM dead
        UNION SELECT name FROM {schema}.queues
    )
    SELECT names.queue,
           coalesce(live.pending, 0)   AS pending,
           coalesce(live.running, 0)   AS running,
           coalesce(live.scheduled, 0) AS scheduled,
           coalesce(dead.dead, 0)      AS dead,
           live.oldest_pending_age,
           queues.pending_limit
    FROM names
    LEFT JOIN live USING (queue)
    LEFT JOIN dead USING (queue)
    LEFT JOIN {schema}.queues AS queues ON queues.name = names.queue
    """,
    "DROP TABLE {schema}.job_results",
    "ALTER TABLE {schema}.queues DROP COLUMN pending_limit_set",
    "ALTER TABLE {schema}.queues DROP COLUMN paused",
    "DROP INDEX {schema}.jobs_cancel_requested_idx",
    "ALTER TABLE {schema}.jobs DROP COLUMN cancel_requested_at",
    "DROP INDEX {schema}.dead_letters_job_id_idx",
    "ALTER TABLE {schema}.dead_letters DROP COLUMN reason",
]


def upgrade() -> None:
    run_ddl(UPGRADE)


def downgrade() -> None:
    run_ddl(DOWNGRADE)

"""Periodic jobs: one row per cron schedule, its high-water mark, and an operator view.

Revision ID: 0003
Revises: 0002
Create Date: 2026-12-03
"""

from __future__ import annotations

from pgjobs.migrate import run_ddl

revision = "0003"
down_revision = "0002"
branch_labels = None
depends_on = None

UPGRADE = [
    # Registered by every worker when it starts (what its App defines), so the CLI, the
    # views and the dashboard can show schedules without importing the App. `last_tick`
    # is the high-water mark: a worker enqueues a tick only by advancing it with a
    # compare-and-set in the same transaction as the job insert, which is what makes
    # each tick run exactly once across every worker (successful jobs leave `jobs`, so
    # uniqueness cannot rest on the job row). Rows of schedules removed from the code are
    # kept with `active = false`.
    """
    CREATE TABLE {schema}.cron_schedules (
        name              text PRIMARY KEY,
        cron              text        NOT NULL,
        timezone          text        NOT NULL DEFAULT 'UTC',
        args              jsonb       NOT NULL DEFAULT '{{}}'::jsonb,
        task              text        NOT NULL,
        queue             text        NOT NULL,
        priority          smallint    NOT NULL DEFAULT 0,
        max_attempts      integer     NOT NULL DEFAULT 5 CHECK (max_attempts >= 1),
        max_delay_seconds float8      NOT NULL DEFAULT 600 CHECK (max_delay_seconds > 0),
        active            boolean     NOT NULL DEFAULT true,
        last_tick         timestamptz,
        last_outcome      text        CHECK (last_outcome IN ('enqueued', 'skipped', 'missed')),
        last_job_id       bigint,
        next_tick         timestamptz,
        ticks_enqueued    bigint      NOT NULL DEFAULT 0,
        ticks_skipped     bigint      NOT NULL DEFAULT 0,
        ticks_missed      bigint      NOT NULL DEFAULT 0,
        registered_at     timestamptz NOT NULL DEFAULT now(),
        updated_at        timestamptz NOT NULL DEFAULT now()
    )
    """,
    """
    CREATE VIEW {schema}.periodic_schedules AS
    SELECT name, cron, timezone, args, task, queue, priority, max_attempts,
           max_delay_seconds, active, last_tick, last_outcome, last_job_id, next_tick,
           ticks_enqueued, ticks_skipped, ticks_missed, registered_at, updated_at,
           now() - last_tick AS since_last_tick
    FROM {schema}.cron_schedules
    """,
]

DOWNGRADE = [
    "DROP VIEW {schema}.periodic_schedules",
    "DROP TABLE {schema}.cron_schedules",
]


def upgrade() -> None:
    run_ddl(UPGRADE)


def downgrade() -> None:
    run_ddl(DOWNGRADE)

"""Throughput: enqueue notifies only when a worker may be waiting for a NOTIFY.

Every committing transaction with a pending NOTIFY takes PostgreSQL's global notify lock
through its commit, so notifying enqueues cannot group-commit. Fetchers now advertise
when they wait for a wake-up (a row in ``waiting_fetchers``), and enqueue notifies only
if some fetcher serving the queue is waiting. ``wake_waiting_fetchers`` closes the race
with a fetcher that is just going to wait (see docs/architecture.md, "NOTIFY only when a
fetcher waits").

Revision ID: 0005
Revises: 0004
Create Date: 2026-12-03
"""

from __future__ import annotations

from pgjobs.migrate import run_ddl

revision = "0005"
down_revision = "0004"
branch_labels = None
depends_on = None

UPGRADE = [
    # One row per fetcher waiting for a NOTIFY (queues NULL: it serves every queue).
    # Present while it waits, deleted when a full claim shows it is busy. A row left by
    # a killed worker only costs needless NOTIFYs until retention prunes it.
    """
    CREATE TABLE {schema}.waiting_fetchers (
        worker_id text PRIMARY KEY,
        queues    text[],
        since     timestamptz NOT NULL DEFAULT now()
    )
    """,
    # Called by enqueue for each queue it made due jobs in. The shared advisory lock is
    # held until the caller's transaction ends; a fetcher that starts waiting takes the
    # same key exclusively (try-lock, never waiting) after writing its row, so either
    # this transaction commits before the fetcher's last claim (which then sees its job)
    # or this function reads the fetcher's row (and notifies). VOLATILE: the read below
    # takes a fresh snapshot, after the lock is granted.
    """
    CREATE FUNCTION {schema}.wake_waiting_fetchers(channel text, queue text, wake_key bigint)
    RETURNS boolean LANGUAGE plpgsql VOLATILE AS $$
    BEGIN
        PERFORM pg_advisory_xact_lock_shared(wake_key);
        IF EXISTS (SELECT 1 FROM {schema}.waiting_fetchers AS w
                   WHERE w.queues IS NULL OR queue = ANY(w.queues)) THEN
            PERFORM pg_notify(channel, queue);
            RETURN true;
        END IF;
        RETURN false;
    END
    $$
    """,
]

DOWNGRADE = [
    "DROP FUNCTION {schema}.wake_waiting_fetchers(text, text, bigint)",
    "DROP TABLE {schema}.waiting_fetchers",
]


def upgrade() -> None:
    run_ddl(UPGRADE)


def downgrade() -> None:
    run_ddl(DOWNGRADE)

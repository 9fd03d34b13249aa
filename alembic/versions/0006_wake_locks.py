"""Wake-ups: "is a fetcher waiting?" is read from advisory locks, not from a table.

0005's ``wake_waiting_fetchers`` was a PL/pgSQL function that read ``waiting_fetchers``
with a fresh snapshot: about 5 µs of server CPU on every enqueue, a tenth of what a
single-row enqueue costs the server. A waiting fetcher now holds a shared session
advisory lock on its LISTEN connection instead (one per queue it serves, or one for
all queues), and the function becomes one SQL expression that PostgreSQL inlines into
the enqueue statement: it tries each of those keys exclusively and lets go at once;
refused means somebody holds it shared, i.e. a fetcher waits. Lock state needs no
snapshot, and a waiting fetcher whose LISTEN connection dies stops being "waiting"
with it, while its worker reconnects and claims again (docs/architecture.md, "NOTIFY
only when a fetcher waits").

``waiting_fetchers`` stays, unread, for workers of the previous version that still write
their rows until they are restarted; a later migration drops it.

Revision ID: 0006
Revises: 0005
Create Date: 2026-12-04
"""

from __future__ import annotations

from pgjobs.migrate import run_ddl

revision = "0006"
down_revision = "0005"
branch_labels = None
depends_on = None

# The waiting keys are two-int advisory keys (a space apart from the bigint wake_key):
# the wake key's high 32 bits, then hashtext(queue) for a fetcher of named queues or 0
# for one serving every queue. A hash collision only sends a needless NOTIFY.
#
# Order matters, and CASE guarantees it. First the shared transaction lock on the wake
# key, held until our commit: a fetcher about to wait tries that key exclusively after
# taking its waiting locks, so an enqueue that found nobody waiting has either committed
# before the fetcher's last claim (which sees its job) or makes the fetcher claim again.
# Refused means a fetcher is confirming its wait right now: notify. Then each waiting
# key: the exclusive try is refused while a fetcher holds it shared; granted, it is
# released at once. Two enqueues probing the same key at the same instant make one of
# them notify needlessly, which is always safe.
UPGRADE = [
    """
    CREATE OR REPLACE FUNCTION {schema}.wake_waiting_fetchers(
        channel text, queue text, wake_key bigint)
    RETURNS boolean LANGUAGE sql VOLATILE AS $$
    SELECT CASE
        WHEN CASE
            WHEN NOT pg_try_advisory_xact_lock_shared(wake_key) THEN true
            WHEN NOT pg_try_advisory_lock((wake_key >> 32)::int, 0) THEN true
            WHEN NOT pg_advisory_unlock((wake_key >> 32)::int, 0) THEN true
            WHEN NOT pg_try_advisory_lock((wake_key >> 32)::int, hashtext(queue)) THEN true
            WHEN NOT pg_advisory_unlock((wake_key >> 32)::int, hashtext(queue)) THEN true
            ELSE false
        END
        THEN pg_notify(channel, queue)::text = ''
        ELSE false
    END
    $$
    """,
]

DOWNGRADE = [
    """
    CREATE OR REPLACE FUNCTION {schema}.wake_waiting_fetchers(
        channel text, queue text, wake_key bigint)
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


def upgrade() -> None:
    run_ddl(UPGRADE)


def downgrade() -> None:
    run_ddl(DOWNGRADE)

"""Every SQL statement pgjobs runs at runtime, in one place.

Statements are templates over the schema name, which is always quoted with
``psycopg.sql.Identifier``; values are always bound parameters (``%(name)s``), never
formatted into the text. Time-dependent statements take a ``now`` parameter
(``COALESCE(%(now)s, now())``): ``None`` means the server's clock, a timestamp lets tests
move the clock without sleeping.

Migrations (the DDL) live in ``alembic/versions``.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from functools import lru_cache

from psycopg import sql

# --- enqueue ------------------------------------------------------------------------------

# One round trip: insert, and wake listeners of the queue. NOTIFY is folded by
# PostgreSQL when the same (channel, payload) repeats inside a transaction, so a burst
# of enqueues in one transaction sends one notification per queue.
ENQUEUE_NOTIFY = """
WITH inserted AS (
    INSERT INTO {schema}.jobs
        (queue, task, args, priority, max_attempts, next_run_at, unique_key, trace_context)
    VALUES (%(queue)s, %(task)s, %(args)s::jsonb, %(priority)s, %(max_attempts)s,
            now(), %(unique_key)s, %(trace)s::jsonb)
    ON CONFLICT (unique_key) WHERE unique_key IS NOT NULL DO NOTHING
    RETURNING id
)
SELECT id, pg_notify(%(channel)s, %(queue)s) FROM inserted
"""

# The same insert, waking only fetchers that wait for a NOTIFY (migrations 0005, 0006): a
# pending NOTIFY takes PostgreSQL's global notify lock through commit, so notifying
# commits cannot group-commit; while every fetcher is busy, none is sent. The function
# (inlined by PostgreSQL: one expression over advisory locks) takes the wake-up key
# shared until our commit, then looks for a waiting fetcher's lock; that closes the race
# with a fetcher that is just going to wait (see TRY_WAKE_KEY).
ENQUEUE_WAKE = """
WITH inserted AS (
    INSERT INTO {schema}.jobs
        (queue, task, args, priority, max_attempts, next_run_at, unique_key, trace_context)
    VALUES (%(queue)s, %(task)s, %(args)s::jsonb, %(priority)s, %(max_attempts)s,
            now(), %(unique_key)s, %(trace)s::jsonb)
    ON CONFLICT (unique_key) WHERE unique_key IS NOT NULL DO NOTHING
    RETURNING id
)
SELECT id, {schema}.wake_waiting_fetchers(%(channel)s, %(queue)s, %(wake_key)s)
FROM inserted
"""

# A delayed job is not claimable yet: waking workers now would be wasted work.
ENQUEUE_DELAYED = """
INSERT INTO {schema}.jobs
    (queue, task, args, priority, max_attempts, next_run_at, unique_key, trace_context)
VALUES (%(queue)s, %(task)s, %(args)s::jsonb, %(priority)s, %(max_attempts)s,
        now() + %(delay)s * interval '1 second', %(unique_key)s, %(trace)s::jsonb)
ON CONFLICT (unique_key) WHERE unique_key IS NOT NULL DO NOTHING
RETURNING id
"""

# The live job holding a unique key (after ON CONFLICT DO NOTHING inserted nothing).
JOB_ID_BY_UNIQUE_KEY = """
SELECT id FROM {schema}.jobs WHERE unique_key = %(unique_key)s
"""

# Bulk enqueue, step 1: the server's clock and a block of ids, so COPY can write
# explicit ids and next_run_at and enqueue_many can still return the ids. The sequence
# is looked up once, in a scalar subquery (an InitPlan): called per row, the catalog
# lookup made this 120 ms of a 50,000-job enqueue_many instead of 13.
RESERVE_JOB_IDS = """
SELECT now(), array(
    SELECT nextval((SELECT pg_get_serial_sequence(%(jobs_table)s, 'id')::regclass))
    FROM generate_series(1, %(count)s)
)
"""

COPY_JOBS = """
COPY {schema}.jobs (id, queue, task, args, priority, max_attempts, next_run_at, trace_context)
FROM STDIN
"""

# A batch without delays: next_run_at takes its default, now(), which is the same
# transaction's timestamp enqueue_many read with the ids. Not sending it saves formatting
# and parsing a timestamp per row: COPY of 50,000 rows went from 166k to 264k rows/s.
COPY_DUE_JOBS = """
COPY {schema}.jobs (id, queue, task, args, priority, max_attempts, trace_context)
FROM STDIN
"""

# Bulk enqueue with unique keys: COPY cannot skip conflicts, an INSERT can.
ENQUEUE_MANY_UNIQUE = """
INSERT INTO {schema}.jobs
    (id, queue, task, args, priority, max_attempts, next_run_at, unique_key, trace_context)
SELECT * FROM unnest(
    %(ids)s::bigint[], %(queues)s::text[], %(tasks)s::text[], %(args)s::jsonb[],
    %(priorities)s::smallint[], %(max_attempts)s::int[], %(next_run_ats)s::timestamptz[],
    %(unique_keys)s::text[], %(traces)s::jsonb[]
)
ON CONFLICT (unique_key) WHERE unique_key IS NOT NULL DO NOTHING
RETURNING id
"""

JOB_IDS_BY_UNIQUE_KEYS = """
SELECT unique_key, id FROM {schema}.jobs WHERE unique_key = ANY(%(unique_keys)s::text[])
"""

NOTIFY_QUEUES = """
SELECT pg_notify(%(channel)s, q) FROM unnest(%(queues)s::text[]) AS q
"""

# enqueue_many's wake-up: one call per queue that got due jobs (see ENQUEUE_WAKE).
WAKE_QUEUES = """
SELECT {schema}.wake_waiting_fetchers(%(channel)s, q, %(wake_key)s)
FROM unnest(%(queues)s::text[]) AS q
"""

# --- backpressure -------------------------------------------------------------------------

# The queue's limit and its pending count, counted no further than the limit: the cost
# is bounded by the limit, never by the backlog. A queue without a row in `queues`
# takes the App's default limit; a row with a NULL limit means "unlimited".
PENDING_LIMIT_AND_COUNT = """
WITH lim AS (
    SELECT CASE WHEN q.name IS NULL OR NOT q.pending_limit_set THEN %(default_limit)s::int
                ELSE q.pending_limit END AS value
    FROM (SELECT 1) AS one
    LEFT JOIN {schema}.queues AS q ON q.name = %(queue)s
)
SELECT lim.value,
       CASE WHEN lim.value IS NULL THEN NULL ELSE (
           SELECT count(*) FROM (
               SELECT 1 FROM {schema}.jobs
               WHERE queue = %(queue)s AND state = 'pending'
               LIMIT lim.value
           ) AS bounded
       ) END
FROM lim
"""

SET_QUEUE_LIMIT = """
INSERT INTO {schema}.queues (name, pending_limit, pending_limit_set, updated_at)
VALUES (%(queue)s, %(limit)s, true, now())
ON CONFLICT (name) DO UPDATE SET pending_limit = EXCLUDED.pending_limit,
    pending_limit_set = true, updated_at = now()
"""

# --- inspection ---------------------------------------------------------------------------

# Pending jobs (due or scheduled: what the pending limit counts) per queue, for
# App.queue_depths. Both read only jobs_queue_claim_idx: every queue that has pending
# jobs is found by skipping from one queue to the next in the index (a recursive "loose
# index scan": one probe per queue, whatever the backlog), and each count is that queue's
# range of the index, stopped at %(at_most)s when given (LIMIT NULL counts all).
QUEUE_DEPTHS_ALL = """
WITH RECURSIVE queues AS (
    (SELECT queue FROM {schema}.jobs WHERE state = 'pending' ORDER BY queue LIMIT 1)
    UNION ALL
    SELECT (SELECT j.queue FROM {schema}.jobs AS j
            WHERE j.state = 'pending' AND j.queue > queues.queue
            ORDER BY j.queue LIMIT 1)
    FROM queues WHERE queues.queue IS NOT NULL
)
SELECT q.queue, (
    SELECT count(*) FROM (
        SELECT 1 FROM {schema}.jobs AS j
        WHERE j.queue = q.queue AND j.state = 'pending'
        LIMIT %(at_most)s
    ) AS bounded
)
FROM queues AS q WHERE q.queue IS NOT NULL
"""

QUEUE_DEPTHS_OF = """
SELECT q.queue, (
    SELECT count(*) FROM (
        SELECT 1 FROM {schema}.jobs AS j
        WHERE j.queue = q.queue AND j.state = 'pending'
        LIMIT %(at_most)s
    ) AS bounded
)
FROM unnest(%(queues)s::text[]) AS q(queue)
"""

QUEUE_STATS = """
SELECT queue, pending, scheduled, running, dead,
       extract(epoch FROM oldest_pending_age)::float8 AS oldest_pending_age_seconds,
       pending_limit, paused
FROM {schema}.queue_stats
ORDER BY queue
"""

SCHEMA_EXISTS = """
SELECT to_regclass(%(jobs_table)s) IS NOT NULL
"""

# --- worker: claim ------------------------------------------------------------------------

# The claim itself, written once: each picker below ends in a CTE `picked` of the ids to
# take (locked FOR UPDATE SKIP LOCKED); this charges the attempt, issues the lease and
# returns the columns of pgjobs.store.ClaimedJob, in its field order.
_CLAIM_PICKED = """
UPDATE {schema}.jobs AS j
SET state = 'running',
    attempts = j.attempts + 1,
    lease_token = gen_random_uuid(),
    lease_expires_at = COALESCE(%(now)s::timestamptz, now()) + %(lease_seconds)s * interval '1 second',
    worker_id = %(worker_id)s,
    started_at = COALESCE(%(now)s::timestamptz, now())
WHERE j.id = ANY(ARRAY(SELECT id FROM picked))
RETURNING j.id, j.queue, j.task, j.args::text, j.priority, j.attempts, j.max_attempts,
          extract(epoch FROM j.next_run_at)::float8, j.created_at, j.lease_token::text,
          j.trace_context::text
"""

# Claim a batch of due jobs from every queue. The ORDER BY matches the partial index
# jobs_claim_idx exactly, so the cost does not grow with the backlog. args and
# trace_context come back as text: each executor decodes its own job, so one malformed
# row cannot fail the decoding of the whole batch after the claim has committed.
# `j.id = ANY(ARRAY(SELECT id FROM picked))` rather than a join with `picked`: the
# worker prepares its claims, and PostgreSQL's generic plan for the join hash-joined a
# sequential scan of the whole table (36 ms to claim one job of 100,000); this form
# plans as primary-key lookups whatever the batch size.
# Paused queues (`queues.paused`) are skipped by a filter the planner cannot misjudge:
# `queue <> ALL(paused)` on a table with one queue is estimated to match nothing (its
# only value might be in the array), and the planner then sorts every due job instead
# of reading jobs_claim_idx; behind a CASE the filter is opaque (and free when nothing is
# paused). A paused queue's due jobs at the head of the index are stepped over.
CLAIM_ANY_QUEUE = """
WITH picked AS (
    SELECT id FROM {schema}.jobs,
         (SELECT ARRAY(SELECT name FROM {schema}.queues WHERE paused) AS names) AS paused
    WHERE state = 'pending' AND next_run_at <= COALESCE(%(now)s::timestamptz, now())
      AND CASE WHEN paused.names = '{{}}' THEN true
               ELSE queue <> ALL(paused.names) END
    ORDER BY priority DESC, next_run_at, id
    LIMIT %(limit)s
    FOR UPDATE SKIP LOCKED
)
""" + _CLAIM_PICKED  # noqa: S608 (two constant texts; no value is formatted in)

# The claim of the queues in `wanted(queue)`: one ordered range of jobs_queue_claim_idx
# per queue, merged, so each queue's scan stops after `limit` rows whatever its
# backlog. The queue is matched as a one-value range (`>=` and `<=`, which for text is
# byte equality) and leads the ORDER BY, for the planner's sake: with `queue = x`, x is
# a constant to it, the two claim indexes give the same order, and it often picked
# jobs_claim_idx and filtered on the queue, stepping over every due job of other queues
# ahead (10 ms instead of 1.6 ms per claim of 100 with 100,000 of them; custom and
# generic plans alike).
_CLAIM_BY_QUEUE = """
    CROSS JOIN LATERAL (
        SELECT id, priority, next_run_at FROM {schema}.jobs
        WHERE queue >= wanted.queue AND queue <= wanted.queue AND state = 'pending'
          AND next_run_at <= COALESCE(%(now)s::timestamptz, now())
        ORDER BY queue, priority DESC, next_run_at, id
        LIMIT %(limit)s
        FOR UPDATE SKIP LOCKED
    ) AS c
    ORDER BY c.priority DESC, c.next_run_at, c.id
    LIMIT %(limit)s
)
""" + _CLAIM_PICKED  # noqa: S608 (two constant texts; no value is formatted in)

# The same claim while paused queues hold a backlog (the fetcher checks once a second,
# see PAUSED_BACKLOG): every queue that has pending jobs and is not paused, range by
# range (_CLAIM_BY_QUEUE). The queues come from a skip scan of jobs_queue_claim_idx
# (one descent per queue), so a paused backlog at the head of jobs_claim_idx is
# jumped over instead of stepped over by every claim: 15 ms -> 1 ms per claim of 50
# with 100,000 paused due jobs ahead. Not the everyday statement: initialising its
# larger plan costs ~0.3 ms per claim more than CLAIM_ANY_QUEUE, about what stepping
# over a thousand entries does.
CLAIM_ANY_QUEUE_PAUSED_BACKLOG = """
WITH RECURSIVE pending_queues AS (
    (SELECT j.queue FROM {schema}.jobs AS j WHERE j.state = 'pending'
     ORDER BY j.queue LIMIT 1)
    UNION ALL
    SELECT (SELECT j.queue FROM {schema}.jobs AS j
            WHERE j.state = 'pending' AND j.queue > p.queue
            ORDER BY j.queue LIMIT 1)
    FROM pending_queues AS p WHERE p.queue IS NOT NULL
), picked AS (
    SELECT c.id, c.priority, c.next_run_at
    FROM (SELECT queue FROM pending_queues
          WHERE queue IS NOT NULL
            AND queue <> ALL(ARRAY(SELECT name FROM {schema}.queues WHERE paused))
         ) AS wanted
""" + _CLAIM_BY_QUEUE  # noqa: S608 (constant texts; no value is formatted in)

# Whether paused queues hold at least %(enough)s due jobs, that the everyday all-queue
# claim would step over: then the fetcher uses CLAIM_ANY_QUEUE_PAUSED_BACKLOG. Counted
# no further than that, one index range per paused queue (the same one-value ranges).
PAUSED_BACKLOG = """
SELECT count(*) >= %(enough)s FROM (
    SELECT 1
    FROM (SELECT name FROM {schema}.queues WHERE paused) AS p
    CROSS JOIN LATERAL (
        SELECT 1 FROM {schema}.jobs
        WHERE queue >= p.name AND queue <= p.name AND state = 'pending'
          AND next_run_at <= now()
        ORDER BY queue
        LIMIT %(enough)s
    ) AS due
    LIMIT %(enough)s
) AS counted
"""

# Claim from named queues (those not paused), range by range (_CLAIM_BY_QUEUE).
CLAIM_QUEUES = """
WITH picked AS (
    SELECT c.id, c.priority, c.next_run_at
    FROM (SELECT q FROM unnest(%(queues)s::text[]) AS q
          WHERE q <> ALL(ARRAY(SELECT name FROM {schema}.queues WHERE paused))) AS wanted(queue)
""" + _CLAIM_BY_QUEUE  # noqa: S608 (constant texts; no value is formatted in)

# A fetcher about to wait for a NOTIFY: its listener holds the waiting locks (below),
# then the fetcher tries the wake-up key exclusively. Granted, no enqueue transaction
# that found nobody waiting is still open (each holds the key shared until it ends), so
# the fetcher's next claim sees all their jobs, and every later enqueue sees the locks
# and notifies. Refused (an enqueue is in flight), the fetcher claims again shortly and
# tries again. A try-lock in its own transaction, so it never queues enqueues behind it.
TRY_WAKE_KEY = """
SELECT pg_try_advisory_xact_lock(%(wake_key)s)
"""

# The waiting locks, held shared on the LISTEN connection while its fetcher waits (see
# wake_waiting_fetchers, migration 0006): one per queue served, or key 0 for all queues.
# Try-locks: an enqueue probing a key holds it exclusively for an instant; refused, the
# fetcher claims again shortly. DISTINCT: two queues whose hashes collide share a key.
# Both statements start with a comment: in pg_stat_activity the LISTEN connection shows
# either "LISTEN …" or "/* pgjobs listener … */ …" as its last query.
HOLD_WAITING_LOCKS = """/* pgjobs listener: a fetcher waits */
SELECT bool_and(pg_try_advisory_lock_shared((%(wake_key)s::bigint >> 32)::int, k))
FROM unnest(CASE WHEN %(queues)s::text[] IS NULL THEN ARRAY[0]
            ELSE ARRAY(SELECT DISTINCT hashtext(q) FROM unnest(%(queues)s::text[]) AS q)
            END) AS k
"""

# The fetcher is busy again (or some waiting lock was refused): enqueues need not wake
# it. The LISTEN connection holds no other session advisory locks.
RELEASE_WAITING_LOCKS = """/* pgjobs listener: the fetcher is busy */
SELECT pg_advisory_unlock_all()
"""

# Who waits for a NOTIFY now: the application names of the connections holding waiting
# locks of this schema (in lock tags, the first key is an unsigned oid).
WAITING_LISTENERS = """
SELECT a.application_name
FROM pg_locks AS l JOIN pg_stat_activity AS a ON a.pid = l.pid
WHERE l.locktype = 'advisory' AND l.objsubid = 2 AND l.mode = 'ShareLock' AND l.granted
  AND l.database = (SELECT oid FROM pg_database WHERE datname = current_database())
  AND l.classid::bigint = (%(wake_key)s::bigint >> 32) & 4294967295
ORDER BY 1
"""

# When the next scheduled job becomes due, so an idle fetcher sleeps exactly that long.
NEXT_DUE_ANY_QUEUE = """
SELECT min(next_run_at) - COALESCE(%(now)s::timestamptz, now())
FROM {schema}.jobs, (SELECT ARRAY(SELECT name FROM {schema}.queues WHERE paused) AS names) AS paused
WHERE state = 'pending'
  AND CASE WHEN paused.names = '{{}}' THEN true ELSE queue <> ALL(paused.names) END
"""

NEXT_DUE_QUEUES = """
SELECT min(next_run_at) - COALESCE(%(now)s::timestamptz, now()) FROM {schema}.jobs
WHERE state = 'pending'
  AND queue = ANY(ARRAY(SELECT q FROM unnest(%(queues)s::text[]) AS q
                        WHERE q <> ALL(ARRAY(SELECT name FROM {schema}.queues WHERE paused))))
"""

# --- worker: complete ---------------------------------------------------------------------

# One statement per flush. Every write is guarded by state = 'running' and the claim's
# lease token: a worker that lost its lease (and whose job was re-claimed) changes
# nothing. `cardinality(...) > 0` is a one-time filter that skips empty branches, and
# `id = ANY(...)` steers each branch to primary-key lookups: with stale statistics the
# planner otherwise scans every running job's lease index entry, three times. Successes leave the table; failures are rescheduled; permanent failures move
# to dead_letters in the same statement, hence the same transaction.
# The completion statement is assembled from the pieces below into four variants (with or
# without `kept`, with or without `retry_cancelled`): a flush of more than 32 outcomes is
# planned at every execution (see store.py), and each branch costs planning time, so a
# flush uses only the branches its outcomes need. A flush of plain successes (the drain
# of tasks without result_ttl) runs the statement it ran before the job lifecycle, plus
# the reason column and the finish notifications.
_COMPLETE_SUCCEEDED = """
WITH succeeded AS (
    DELETE FROM {schema}.jobs AS j
    USING unnest(%(ok_ids)s::bigint[], %(ok_tokens)s::uuid[]) AS d(id, token)
    WHERE cardinality(%(ok_ids)s::bigint[]) > 0
      AND j.id = ANY(%(ok_ids)s::bigint[]) AND j.id = d.id
      AND j.state = 'running' AND j.lease_token = d.token
    RETURNING j.id, j.queue, j.task
)"""

# Results of tasks with result_ttl, for the jobs actually deleted above, and for jobs
# whose handler completed them in its own committed transaction (current_job().complete:
# gone from `jobs` before this statement began).
_COMPLETE_KEPT = """, kept AS (
    INSERT INTO {schema}.job_results AS k
        (job_id, queue, task, args, attempts, max_attempts, result, created_at,
         finished_at, expires_at)
    SELECT r.id, r.queue, r.task, r.args::jsonb, r.attempts, r.max_attempts, r.value::jsonb,
           r.created_at, COALESCE(%(now)s::timestamptz, now()),
           COALESCE(%(now)s::timestamptz, now()) + r.ttl * interval '1 second'
    FROM unnest(%(res_ids)s::bigint[], %(res_values)s::text[], %(res_ttls)s::float8[],
                %(res_args)s::text[], %(res_attempts)s::int[], %(res_max_attempts)s::int[],
                %(res_created)s::timestamptz[], %(res_queues)s::text[], %(res_tasks)s::text[],
                %(res_self_completed)s::bool[])
         AS r(id, value, ttl, args, attempts, max_attempts, created_at, queue, task,
              self_completed)
    WHERE cardinality(%(res_ids)s::bigint[]) > 0
      AND (r.id IN (SELECT id FROM succeeded)
           OR (r.self_completed
               AND NOT EXISTS (SELECT 1 FROM {schema}.jobs AS j WHERE j.id = r.id)))
    ON CONFLICT (job_id) DO UPDATE SET result = EXCLUDED.result,
        finished_at = EXCLUDED.finished_at, expires_at = EXCLUDED.expires_at
    RETURNING 1
)"""

# A snooze (uncharged) gives back the attempt the claim charged. A job someone asked to
# cancel is not retried: `retry_cancelled` ends it (only in variants for flushes with
# retries; without them both branches are empty).
_COMPLETE_RETRIED = """, retried AS (
    UPDATE {schema}.jobs AS j
    SET state = 'pending',
        next_run_at = COALESCE(%(now)s::timestamptz, now()) + r.delay * interval '1 second',
        attempts = j.attempts - r.uncharged::int,
        last_error = COALESCE(r.error, j.last_error),
        lease_token = NULL, lease_expires_at = NULL, worker_id = NULL
    FROM unnest(%(retry_ids)s::bigint[], %(retry_tokens)s::uuid[],
                %(retry_delays)s::float8[], %(retry_errors)s::text[],
                %(retry_uncharged)s::bool[]) AS r(id, token, delay, error, uncharged)
    WHERE cardinality(%(retry_ids)s::bigint[]) > 0
      AND j.id = ANY(%(retry_ids)s::bigint[]) AND j.id = r.id
      AND j.state = 'running' AND j.lease_token = r.token
      AND j.cancel_requested_at IS NULL
    RETURNING j.id, j.queue, j.task, r.uncharged
)"""

_COMPLETE_RETRY_CANCELLED = """, retry_cancelled AS (
    DELETE FROM {schema}.jobs AS j
    USING unnest(%(retry_ids)s::bigint[], %(retry_tokens)s::uuid[], %(retry_errors)s::text[])
          AS x(id, token, error)
    WHERE cardinality(%(retry_ids)s::bigint[]) > 0
      AND j.id = ANY(%(retry_ids)s::bigint[]) AND j.id = x.id
      AND j.state = 'running' AND j.lease_token = x.token
      AND j.cancel_requested_at IS NOT NULL
    RETURNING j.id, j.queue, j.task, j.args, j.priority, j.attempts, j.max_attempts,
              j.created_at, j.trace_context,
              'cancelled: ' || COALESCE(x.error, 'snoozed') AS error, 'cancelled' AS reason
)"""

_COMPLETE_DEAD = """, dead AS (
    DELETE FROM {schema}.jobs AS j
    USING unnest(%(dead_ids)s::bigint[], %(dead_tokens)s::uuid[], %(dead_errors)s::text[],
                 %(dead_reasons)s::text[])
          AS x(id, token, error, reason)
    WHERE cardinality(%(dead_ids)s::bigint[]) > 0
      AND j.id = ANY(%(dead_ids)s::bigint[]) AND j.id = x.id
      AND j.state = 'running' AND j.lease_token = x.token
    RETURNING j.id, j.queue, j.task, j.args, j.priority, j.attempts, j.max_attempts,
              j.created_at, j.trace_context, x.error, x.reason
), buried AS (
    INSERT INTO {schema}.dead_letters
        (job_id, queue, task, args, priority, attempts, max_attempts, error,
         created_at, failed_at, trace_context, reason)
    SELECT id, queue, task, args, priority, attempts, max_attempts, error,
           created_at, COALESCE(%(now)s::timestamptz, now()), trace_context, reason
    FROM (SELECT * FROM dead{also_ended}) AS ended
    RETURNING job_id, reason
), outcomes AS (
    SELECT id, queue, task, 1 AS ok, 0 AS retry, 0 AS failed FROM succeeded
    UNION ALL SELECT id, queue, task, 0, CASE WHEN uncharged THEN 0 ELSE 1 END, 0
              FROM retried
    UNION ALL SELECT id, queue, task, 0, 0, 1 FROM dead{also_outcomes}
), history AS (
    -- Per-minute counts for charts and `pgjobs stats`, from the rows actually written
    -- (a replayed flush counts nothing twice); sorted so concurrent flushes lock the
    -- history rows in the same order.
    INSERT INTO {schema}.job_history AS h
        (minute, queue, task, succeeded, retried, dead, duration_seconds, max_duration_seconds)
    SELECT date_trunc('minute', COALESCE(%(now)s::timestamptz, now())),
           -- bounded so a hand-written row with a huge name cannot fail the flush
           left(o.queue, 200), left(o.task, 500),
           sum(o.ok), sum(o.retry), sum(o.failed),
           coalesce(sum(t.duration), 0), coalesce(max(t.duration), 0)
    FROM outcomes AS o
    LEFT JOIN unnest(%(all_ids)s::bigint[], %(all_durations)s::float8[]) AS t(id, duration)
           USING (id)
    GROUP BY left(o.queue, 200), left(o.task, 500)
    ORDER BY left(o.queue, 200), left(o.task, 500)
    ON CONFLICT (minute, queue, task) DO UPDATE SET
        succeeded = h.succeeded + EXCLUDED.succeeded,
        retried = h.retried + EXCLUDED.retried,
        dead = h.dead + EXCLUDED.dead,
        duration_seconds = h.duration_seconds + EXCLUDED.duration_seconds,
        max_duration_seconds = greatest(h.max_duration_seconds, EXCLUDED.max_duration_seconds)
    RETURNING 1
), finished_notify AS (
    -- app.wait_for: the ids of the jobs this flush finished, a few hundred per payload
    -- (made by the store), so one or a few notifications per flush, never one per job.
    SELECT pg_notify(%(finished_channel)s, p)
    FROM unnest(%(finished_payloads)s::text[]) AS p
)
SELECT (SELECT count(*) FROM succeeded),
       (SELECT count(*) FROM retried WHERE NOT uncharged),
       (SELECT count(*) FROM buried WHERE reason = 'failed'),
       (SELECT count(*) FROM history),
       (SELECT count(*) FROM retried WHERE uncharged),
       (SELECT count(*) FROM buried WHERE reason = 'cancelled'),
       (SELECT count(*) FROM finished_notify),
       {kept_count}
"""


def _complete_batch(kept: bool, retries: bool) -> str:
    """One variant of the completion statement (constant texts only; no value)."""
    return (_COMPLETE_SUCCEEDED  # noqa: S608 (constant texts; no value is formatted in)
            + (_COMPLETE_KEPT if kept else "") + _COMPLETE_RETRIED
            + (_COMPLETE_RETRY_CANCELLED if retries else "")
            + _COMPLETE_DEAD.replace(
                "{also_ended}", " UNION ALL SELECT * FROM retry_cancelled" if retries else ""
            ).replace(
                "{also_outcomes}",
                "\n    UNION ALL SELECT id, queue, task, 0, 0, 1 FROM retry_cancelled"
                if retries else ""
            ).replace("{kept_count}", "(SELECT count(*) FROM kept)" if kept else "0"))


COMPLETE_BATCH = _complete_batch(kept=True, retries=True)
COMPLETE_BATCH_NO_RESULTS = _complete_batch(kept=False, retries=True)
COMPLETE_BATCH_NO_RETRIES = _complete_batch(kept=True, retries=False)
COMPLETE_BATCH_PLAIN = _complete_batch(kept=False, retries=False)

# Shutdown: hand unfinished jobs back without charging the attempt they were on.
RELEASE_JOBS = """
UPDATE {schema}.jobs AS j
SET state = 'pending',
    attempts = greatest(j.attempts - 1, 0),
    lease_token = NULL, lease_expires_at = NULL, worker_id = NULL
FROM unnest(%(ids)s::bigint[], %(tokens)s::uuid[]) AS r(id, token)
WHERE j.id = r.id AND j.state = 'running' AND j.lease_token = r.token
RETURNING j.id
"""

# The last resort for one outcome the database refused even as a plain failure (e.g. a
# row changed by hand so that it can no longer be pending): bury it, its names bounded
# so the dead_letters indexes take them, guarded like every other outcome.
BURY_UNWRITABLE = """
WITH gone AS (
    DELETE FROM {schema}.jobs
    WHERE id = %(id)s AND state = 'running' AND lease_token = %(token)s::uuid
    RETURNING id, queue, task, args, priority, attempts, max_attempts, created_at,
              trace_context
)
INSERT INTO {schema}.dead_letters
    (job_id, queue, task, args, priority, attempts, max_attempts, error,
     created_at, failed_at, trace_context)
SELECT id, left(queue, 200), left(task, 500), args, priority, attempts, max_attempts,
       %(error)s, created_at, COALESCE(%(now)s::timestamptz, now()), trace_context
FROM gone
RETURNING job_id
"""

# --- worker: leases -----------------------------------------------------------------------

# Renew the leases of every job in hand; returns the ids still ours.
HEARTBEAT = """
UPDATE {schema}.jobs AS j
SET lease_expires_at = COALESCE(%(now)s::timestamptz, now()) + %(lease_seconds)s * interval '1 second'
FROM unnest(%(ids)s::bigint[], %(tokens)s::uuid[]) AS h(id, token)
WHERE j.id = h.id AND j.state = 'running' AND j.lease_token = h.token
RETURNING j.id
"""

# Rescue jobs whose worker stopped renewing its lease (killed, partitioned, hung).
# The attempt was charged at claim; a job out of attempts goes to dead_letters. Any
# worker may run this: SKIP LOCKED keeps two rescuers from touching the same row.
RESCUE_EXPIRED = """
WITH expired AS (
    SELECT id FROM {schema}.jobs
    WHERE state = 'running' AND lease_expires_at < COALESCE(%(now)s::timestamptz, now())
    ORDER BY lease_expires_at
    LIMIT %(limit)s
    FOR UPDATE SKIP LOCKED
), dead AS (
    DELETE FROM {schema}.jobs AS j
    USING expired
    WHERE j.id = expired.id
      AND (j.attempts >= j.max_attempts OR j.cancel_requested_at IS NOT NULL)
    RETURNING j.id, j.queue, j.task, j.args, j.priority, j.attempts, j.max_attempts,
              j.created_at, j.trace_context, j.worker_id,
              j.cancel_requested_at IS NOT NULL AS cancelled
), buried AS (
    INSERT INTO {schema}.dead_letters
        (job_id, queue, task, args, priority, attempts, max_attempts, error,
         created_at, failed_at, trace_context, reason)
    SELECT id, queue, task, args, priority, attempts, max_attempts,
           CASE WHEN cancelled THEN 'cancelled: worker ' || coalesce(worker_id, '?')
                    || ' stopped (killed or hung) after the cancel request'
                ELSE 'lease expired: worker ' || coalesce(worker_id, '?')
                    || ' stopped renewing it (killed or hung) on attempt '
                    || attempts || ' of ' || max_attempts END,
           created_at, COALESCE(%(now)s::timestamptz, now()), trace_context,
           CASE WHEN cancelled THEN 'cancelled' ELSE 'failed' END
    FROM dead
    RETURNING job_id, queue, task
), revived AS (
    UPDATE {schema}.jobs AS j
    SET state = 'pending',
        next_run_at = COALESCE(%(now)s::timestamptz, now()),
        last_error = 'lease expired: worker ' || coalesce(j.worker_id, '?')
             || ' stopped renewing it (killed or hung) on attempt ' || j.attempts,
        lease_token = NULL, lease_expires_at = NULL, worker_id = NULL
    FROM expired
    WHERE j.id = expired.id AND j.attempts < j.max_attempts
      AND j.cancel_requested_at IS NULL
    RETURNING j.id, j.queue, j.task
)
SELECT 'rescued' AS outcome, id, queue, task FROM revived
UNION ALL
SELECT 'dead', job_id, queue, task FROM buried
"""

# Rescue's last resort, when RESCUE_EXPIRED itself is refused: the oldest expired job
# (the one a rescue of LIMIT 1 failed on, e.g. a row changed by hand so it can no longer
# be pending) goes to dead_letters with its names bounded, so it cannot block every
# later rescue.
BURY_OLDEST_EXPIRED = """
WITH expired AS (
    SELECT id FROM {schema}.jobs
    WHERE state = 'running' AND lease_expires_at < COALESCE(%(now)s::timestamptz, now())
    ORDER BY lease_expires_at
    LIMIT 1
    FOR UPDATE SKIP LOCKED
), gone AS (
    DELETE FROM {schema}.jobs AS j
    USING expired
    WHERE j.id = expired.id
    RETURNING j.id, j.queue, j.task, j.args, j.priority, j.attempts, j.max_attempts,
              j.created_at, j.trace_context, j.worker_id
)
INSERT INTO {schema}.dead_letters
    (job_id, queue, task, args, priority, attempts, max_attempts, error,
     created_at, failed_at, trace_context)
SELECT id, left(queue, 200), left(task, 500), args, priority, attempts, max_attempts,
       'lease expired: worker ' || coalesce(left(worker_id, 200), '?')
         || ' stopped renewing it on attempt ' || attempts
         || ', and the job could not go back to pending: ' || %(error)s,
       created_at, COALESCE(%(now)s::timestamptz, now()), trace_context
FROM gone
RETURNING job_id, queue, task
"""

# Renew the leases of every job in hand that is still ours, never waiting on a row that
# another transaction has locked (an operator's UPDATE, a cancel in flight): such a row
# is skipped this round and renewed at the next. Returns (id, renewed) for every job
# still ours; a job in hand that is missing was lost (rescued and claimed elsewhere).
RENEW_LEASES = """
WITH held AS (
    SELECT j.id
    FROM unnest(%(ids)s::bigint[], %(tokens)s::uuid[]) AS h(id, token)
    JOIN {schema}.jobs AS j ON j.id = h.id
    WHERE j.state = 'running' AND j.lease_token = h.token
), lockable AS (
    SELECT j.id FROM {schema}.jobs AS j
    WHERE j.id = ANY(ARRAY(SELECT id FROM held))
    FOR UPDATE SKIP LOCKED
), renewed AS (
    UPDATE {schema}.jobs AS j
    SET lease_expires_at = COALESCE(%(now)s::timestamptz, now())
                           + %(lease_seconds)s * interval '1 second'
    FROM unnest(%(ids)s::bigint[], %(tokens)s::uuid[]) AS h(id, token)
    WHERE j.id = ANY(ARRAY(SELECT id FROM lockable)) AND j.id = h.id
      AND j.state = 'running' AND j.lease_token = h.token
    RETURNING j.id
)
SELECT held.id, held.id IN (SELECT id FROM renewed) FROM held
"""

# --- workers registry and retention ------------------------------------------------------

UPSERT_WORKER = """
INSERT INTO {schema}.workers AS w
    (id, hostname, pid, queues, concurrency, lease_seconds, jobs_in_hand, executors_busy)
VALUES (%(id)s, %(hostname)s, %(pid)s, %(queues)s, %(concurrency)s, %(lease_seconds)s,
        %(jobs_in_hand)s, %(executors_busy)s)
ON CONFLICT (id) DO UPDATE SET
    last_heartbeat_at = now(),
    jobs_in_hand = EXCLUDED.jobs_in_hand,
    executors_busy = EXCLUDED.executors_busy
"""

DELETE_WORKER = """
DELETE FROM {schema}.workers WHERE id = %(id)s
"""

# Age-based pruning of history, dead letters and stale worker rows. Never touches jobs;
# dead letters go in bounded chunks so a large purge holds no long locks.
PRUNE_HISTORY = """
WITH history AS (
    DELETE FROM {schema}.job_history
    WHERE %(history_seconds)s::float8 IS NOT NULL
      AND minute < now() - %(history_seconds)s::float8 * interval '1 second'
    RETURNING 1
), dead AS (
    DELETE FROM {schema}.dead_letters
    WHERE id IN (
        SELECT id FROM {schema}.dead_letters
        WHERE %(dead_letter_seconds)s::float8 IS NOT NULL
          AND failed_at < now() - %(dead_letter_seconds)s::float8 * interval '1 second'
        LIMIT 10000
    )
    RETURNING 1
), gone AS (
    DELETE FROM {schema}.workers
    WHERE last_heartbeat_at < now() - interval '1 day'
    RETURNING 1
)
SELECT (SELECT count(*) FROM history), (SELECT count(*) FROM dead), (SELECT count(*) FROM gone)
"""

# Finished in the last 60 seconds, per queue (`pgjobs stats` ok/min, fail/min). History
# is kept per minute, so the window is this minute's count plus the share of the previous
# minute still inside it: exact for a steady rate, and never 0 while jobs finish.
RECENT_THROUGHPUT = """
WITH window_start AS (
    SELECT date_trunc('minute', now()) AS this_minute,
           1.0 - extract(epoch FROM now() - date_trunc('minute', now()))::numeric / 60
               AS previous_share
)
SELECT queue,
       round(sum(succeeded * CASE WHEN minute >= this_minute THEN 1 ELSE previous_share END))::bigint,
       round(sum((retried + dead) * CASE WHEN minute >= this_minute THEN 1 ELSE previous_share END))::bigint
FROM {schema}.job_history, window_start
WHERE minute >= this_minute - interval '1 minute'
GROUP BY queue
"""

WORKER_STATUS = """
SELECT id, hostname, pid, queues, concurrency, started_at, last_heartbeat_at,
       jobs_in_hand, executors_busy, alive
FROM {schema}.worker_status
ORDER BY started_at
"""

# This worker's row: inserted at start (so it shows at once, with its start time) and
# refreshed with each heartbeat.
REGISTER_WORKER = """
INSERT INTO {schema}.workers AS w
    (id, hostname, pid, queues, concurrency, lease_seconds, jobs_in_hand, executors_busy,
     started_at, last_heartbeat_at)
VALUES (%(id)s, %(hostname)s, %(pid)s, %(queues)s, %(concurrency)s, %(lease_seconds)s,
        %(jobs_in_hand)s, %(executors_busy)s,
        COALESCE(%(now)s::timestamptz, now()), COALESCE(%(now)s::timestamptz, now()))
ON CONFLICT (id) DO UPDATE SET
    last_heartbeat_at = EXCLUDED.last_heartbeat_at,
    jobs_in_hand = EXCLUDED.jobs_in_hand,
    executors_busy = EXCLUDED.executors_busy
"""

# Retention, one bounded batch per statement (the maintenance service loops while a
# batch comes back full). SKIP LOCKED: workers pruning at the same time share the rows
# instead of queueing behind each other. Never touches jobs.
PRUNE_HISTORY_BATCH = """
WITH gone AS (
    DELETE FROM {schema}.job_history
    WHERE (minute, queue, task) IN (
        SELECT minute, queue, task FROM {schema}.job_history
        WHERE minute < COALESCE(%(now)s::timestamptz, now())
                       - %(seconds)s::float8 * interval '1 second'
        LIMIT %(limit)s
        FOR UPDATE SKIP LOCKED
    )
    RETURNING 1
)
SELECT count(*) FROM gone
"""

# No SKIP LOCKED here: row locks need UPDATE, which the least-privilege worker role has
# on no column of dead_letters (see roles.py); the statement_timeout bounds any wait.
PRUNE_DEAD_LETTERS_BATCH = """
WITH gone AS (
    DELETE FROM {schema}.dead_letters
    WHERE id IN (
        SELECT id FROM {schema}.dead_letters
        WHERE failed_at < COALESCE(%(now)s::timestamptz, now())
                          - %(seconds)s::float8 * interval '1 second'
        ORDER BY failed_at
        LIMIT %(limit)s
    )
    RETURNING 1
)
SELECT count(*) FROM gone
"""

PRUNE_WORKERS_BATCH = """
WITH gone AS (
    DELETE FROM {schema}.workers
    WHERE id IN (
        SELECT id FROM {schema}.workers
        WHERE last_heartbeat_at < COALESCE(%(now)s::timestamptz, now())
                                  - %(seconds)s::float8 * interval '1 second'
        LIMIT %(limit)s
        FOR UPDATE SKIP LOCKED
    )
    RETURNING 1
), stale_waiting AS (
    -- Waiting marks of killed workers (no heartbeat for a minute, or twice their lease):
    -- they only cost NOTIFYs, so they go at retention's pace.
    DELETE FROM {schema}.waiting_fetchers AS f
    WHERE f.since < now() - interval '1 minute'
      AND NOT EXISTS (
          SELECT 1 FROM {schema}.workers AS w
          WHERE w.id = f.worker_id
            AND w.last_heartbeat_at > now() - greatest(60, 2 * w.lease_seconds)
                                              * interval '1 second')
)
SELECT count(*) FROM gone
"""

# Bounds every statement of the current transaction (maintenance runs each batch in a
# transaction of its own); transaction-local, so safe behind PgBouncer.
SET_LOCAL_STATEMENT_TIMEOUT = """
SELECT set_config('statement_timeout', %(ms)s, true)
"""

# The listener's self-ping (and any other notification on the schema's channel).
NOTIFY_CHANNEL = """
SELECT pg_notify(%(channel)s, %(payload)s)
"""

# --- dead letters -------------------------------------------------------------------------

LIST_DEAD_LETTERS = """
SELECT id, job_id, queue, task, args, priority, attempts, max_attempts, error,
       created_at, failed_at, reason
FROM {schema}.dead_letters
WHERE (%(queue)s::text IS NULL OR queue = %(queue)s)
  AND (%(task)s::text IS NULL OR task = %(task)s)
ORDER BY id
LIMIT %(limit)s
"""

SHOW_DEAD_LETTER = """
SELECT id, job_id, queue, task, args, priority, attempts, max_attempts, error,
       created_at, failed_at, reason
FROM {schema}.dead_letters WHERE id = %(id)s
"""

# Requeue: a fresh pending job (attempts 0) and the dead letter gone, in one statement.
REQUEUE_DEAD_LETTERS = """
WITH taken AS (
    DELETE FROM {schema}.dead_letters
    WHERE (%(ids)s::bigint[] IS NULL OR id = ANY(%(ids)s::bigint[]))
      AND (%(task)s::text IS NULL OR task = %(task)s)
      AND (%(queue)s::text IS NULL OR queue = %(queue)s)
    RETURNING id, queue, task, args, priority, max_attempts, trace_context
), requeued AS (
    INSERT INTO {schema}.jobs (queue, task, args, priority, max_attempts, trace_context)
    SELECT queue, task, args, priority, max_attempts, trace_context FROM taken ORDER BY id
    RETURNING id, queue
)
SELECT t.id AS dead_letter_id, r.id AS job_id
FROM (SELECT id, row_number() OVER (ORDER BY id) AS n FROM taken) AS t
JOIN (SELECT id, row_number() OVER (ORDER BY id) AS n FROM requeued) AS r USING (n)
ORDER BY t.id
"""

NOTIFY_JOB_QUEUES = """
SELECT pg_notify(%(channel)s, queue)
FROM (SELECT DISTINCT queue FROM {schema}.jobs WHERE id = ANY(%(ids)s::bigint[])) AS q
"""

COUNT_DEAD_LETTERS = """
SELECT count(*) FROM {schema}.dead_letters
WHERE (%(older_than)s::float8 IS NULL
       OR failed_at < now() - %(older_than)s::float8 * interval '1 second')
  AND (%(queue)s::text IS NULL OR queue = %(queue)s)
  AND (%(task)s::text IS NULL OR task = %(task)s)
"""

PURGE_DEAD_LETTERS = """
DELETE FROM {schema}.dead_letters
WHERE (%(older_than)s::float8 IS NULL
       OR failed_at < now() - %(older_than)s::float8 * interval '1 second')
  AND (%(queue)s::text IS NULL OR queue = %(queue)s)
  AND (%(task)s::text IS NULL OR task = %(task)s)
"""

# --- job lifecycle: cancel, pause, transactional completion, status --------------------

# app.cancel, step 1: a pending job leaves `jobs` for dead_letters (reason 'cancelled')
# at the caller's commit. Guarded by state: a job a worker claimed meanwhile is not
# touched (the DELETE waits for the claim's row lock, then re-checks the state).
CANCEL_PENDING = """
WITH gone AS (
    DELETE FROM {schema}.jobs
    WHERE id = %(id)s AND state = 'pending'
    RETURNING id, queue, task, args, priority, attempts, max_attempts, created_at,
              trace_context, last_error
), buried AS (
    INSERT INTO {schema}.dead_letters
        (job_id, queue, task, args, priority, attempts, max_attempts, error,
         created_at, failed_at, trace_context, reason)
    SELECT id, queue, task, args, priority, attempts, max_attempts,
           'cancelled while pending'
             || COALESCE(' (last error: ' || left(last_error, 2000) || ')', ''),
           created_at, now(), trace_context, 'cancelled'
    FROM gone
    RETURNING job_id
)
SELECT job_id, pg_notify(%(finished_channel)s, job_id::text) FROM buried
"""

# app.cancel, step 2: a running job is flagged, and its worker told at the caller's
# commit (NOTIFY on the workers' channel; the worker also reads the flag every second).
CANCEL_RUNNING = """
WITH flagged AS (
    UPDATE {schema}.jobs
    SET cancel_requested_at = COALESCE(cancel_requested_at, now())
    WHERE id = %(id)s AND state = 'running'
    RETURNING id
)
SELECT id, pg_notify(%(channel)s, %(cancel_prefix)s || id::text) FROM flagged
"""

# The worker's fallback: its running jobs someone asked to cancel (a plain read of the
# tiny partial index jobs_cancel_requested_idx: never waits on a lock).
CANCEL_REQUESTS_OF_WORKER = """
SELECT id FROM {schema}.jobs
WHERE worker_id = %(worker_id)s AND cancel_requested_at IS NOT NULL AND state = 'running'
"""

# current_job().complete(conn): the job leaves `jobs` in the handler's own transaction,
# guarded by the lease token (no row: this worker no longer holds the job).
COMPLETE_IN_TRANSACTION = """
WITH gone AS (
    DELETE FROM {schema}.jobs
    WHERE id = %(id)s AND state = 'running' AND lease_token = %(token)s::uuid
    RETURNING id
)
SELECT id, pg_notify(%(finished_channel)s, id::text) FROM gone
"""

# app.get_job: live (pending / scheduled / running), then a kept result (succeeded),
# then the latest dead letter (dead / cancelled). Columns in JobInfo's order.
GET_JOB = """
SELECT id, queue, task, args, state, attempts, max_attempts, result, error, created_at,
       finished_at
FROM (
    SELECT id, queue, task, args,
           CASE WHEN state = 'running' THEN 'running'
                WHEN next_run_at > COALESCE(%(now)s::timestamptz, now()) THEN 'scheduled'
                ELSE 'pending' END AS state,
           attempts, max_attempts, NULL::jsonb AS result, last_error AS error, created_at,
           NULL::timestamptz AS finished_at, 1 AS rank
    FROM {schema}.jobs WHERE id = %(id)s
    UNION ALL
    SELECT job_id, queue, task, args, 'succeeded', attempts, max_attempts, result, NULL,
           created_at, finished_at, 2
    FROM {schema}.job_results
    WHERE job_id = %(id)s AND expires_at > COALESCE(%(now)s::timestamptz, now())
    UNION ALL
    (SELECT job_id, queue, task, args,
            CASE WHEN reason = 'cancelled' THEN 'cancelled' ELSE 'dead' END, attempts,
            max_attempts, NULL, error, created_at, failed_at, 3
     FROM {schema}.dead_letters WHERE job_id = %(id)s ORDER BY id DESC LIMIT 1)
) AS found
ORDER BY rank LIMIT 1
"""

# `pgjobs jobs list`: newest first, keyset on the job id (rows below %(before)s), each
# source read through at most %(window)s rows of its index, so a rare filter costs a
# bounded scan. state: NULL (all) or one of JobInfo's states.
LIST_JOBS = """
SELECT id, queue, task, args, state, attempts, max_attempts, result, error, created_at,
       finished_at
FROM (
    SELECT id, queue, task, args,
           CASE WHEN state = 'running' THEN 'running'
                WHEN next_run_at > now() THEN 'scheduled' ELSE 'pending' END AS state,
           attempts, max_attempts, NULL::jsonb AS result, last_error AS error, created_at,
           NULL::timestamptz AS finished_at
    FROM (SELECT * FROM {schema}.jobs
          WHERE (%(before)s::bigint IS NULL OR id < %(before)s)
            AND (%(state)s::text IS NULL OR %(state)s IN ('pending', 'scheduled', 'running'))
          ORDER BY id DESC LIMIT %(window)s) AS w
    UNION ALL
    SELECT job_id, queue, task, args, 'succeeded', attempts, max_attempts, result, NULL,
           created_at, finished_at
    FROM (SELECT * FROM {schema}.job_results
          WHERE (%(before)s::bigint IS NULL OR job_id < %(before)s)
            AND (%(state)s::text IS NULL OR %(state)s = 'succeeded')
            AND expires_at > now()
          ORDER BY job_id DESC LIMIT %(window)s) AS w
    UNION ALL
    SELECT job_id, queue, task, args,
           CASE WHEN reason = 'cancelled' THEN 'cancelled' ELSE 'dead' END, attempts,
           max_attempts, NULL, error, created_at, failed_at
    FROM (SELECT * FROM {schema}.dead_letters
          WHERE (%(before)s::bigint IS NULL OR job_id < %(before)s)
            AND (%(state)s::text IS NULL OR %(state)s IN ('dead', 'cancelled'))
          ORDER BY job_id DESC LIMIT %(window)s) AS w
) AS found
WHERE (%(queue)s::text IS NULL OR queue = %(queue)s)
  AND (%(task)s::text IS NULL OR task = %(task)s)
  AND (%(state)s::text IS NULL OR state = %(state)s)
ORDER BY id DESC
LIMIT %(limit)s
"""

# `pgjobs queues pause|resume`: stored in `queues` (a row written only for this keeps the
# App's default limit: pending_limit_set false). Resuming wakes the workers.
SET_QUEUE_PAUSED = """
WITH upsert AS (
    INSERT INTO {schema}.queues (name, pending_limit, pending_limit_set, paused, updated_at)
    VALUES (%(queue)s, NULL, false, %(paused)s, now())
    ON CONFLICT (name) DO UPDATE SET paused = EXCLUDED.paused, updated_at = now()
    RETURNING name
)
SELECT name, CASE WHEN %(paused)s THEN NULL ELSE pg_notify(%(channel)s, name) END
FROM upsert
"""

# `pgjobs queues list`: name, limit, paused, pending (due), running.
QUEUE_LIST = """
SELECT queue, pending_limit, paused, pending, running
FROM {schema}.queue_stats
ORDER BY queue
"""

# Retention of kept results, one bounded batch per statement (like the others).
PRUNE_RESULTS_BATCH = """
WITH gone AS (
    DELETE FROM {schema}.job_results
    WHERE job_id IN (
        SELECT job_id FROM {schema}.job_results
        WHERE expires_at < COALESCE(%(now)s::timestamptz, now())
        ORDER BY expires_at
        LIMIT %(limit)s
        FOR UPDATE SKIP LOCKED
    )
    RETURNING 1
)
SELECT count(*) FROM gone
"""

# --- periodic jobs (pgjobs.periodic_*) ---------------------------------------------------

PERIODIC_NOW = """
SELECT COALESCE(%(now)s::timestamptz, now())
"""

# Worker start: upsert one schedule of the App. registered_at is kept from the first
# registration: ticks before it are not "missed", they predate the schedule.
PERIODIC_REGISTER = """
INSERT INTO {schema}.cron_schedules AS s
    (name, cron, timezone, args, task, queue, priority, max_attempts, max_delay_seconds,
     active, next_tick, registered_at, updated_at)
VALUES (%(name)s, %(cron)s, %(timezone)s, %(args)s::jsonb, %(task)s, %(queue)s,
        %(priority)s, %(max_attempts)s, %(max_delay)s, true, %(next_tick)s,
        COALESCE(%(now)s::timestamptz, now()), COALESCE(%(now)s::timestamptz, now()))
ON CONFLICT (name) DO UPDATE SET
    cron = EXCLUDED.cron, timezone = EXCLUDED.timezone, args = EXCLUDED.args,
    task = EXCLUDED.task, queue = EXCLUDED.queue, priority = EXCLUDED.priority,
    max_attempts = EXCLUDED.max_attempts, max_delay_seconds = EXCLUDED.max_delay_seconds,
    active = true, next_tick = EXCLUDED.next_tick, updated_at = EXCLUDED.updated_at
"""

# Worker start: schedules the App no longer defines are kept, marked inactive.
PERIODIC_DEACTIVATE_OTHERS = """
UPDATE {schema}.cron_schedules
SET active = false, next_tick = NULL, updated_at = COALESCE(%(now)s::timestamptz, now())
WHERE active AND NOT (name = ANY(%(names)s::text[]))
RETURNING name
"""

# The compare-and-set that makes a tick happen once across every worker: only the
# transaction that moves the high-water mark forward to this tick gets a row back (a
# concurrent one waits for the row lock, re-checks `last_tick < tick` and gets nothing).
# The job is inserted by PERIODIC_ENQUEUE_TICK in the same transaction.
PERIODIC_CLAIM_TICK = """
UPDATE {schema}.cron_schedules
SET last_tick = %(tick)s,
    last_outcome = %(outcome)s,
    last_job_id = NULL,
    next_tick = %(next_tick)s,
    ticks_missed = ticks_missed + CASE WHEN %(outcome)s = 'missed' THEN 1 ELSE 0 END,
    updated_at = COALESCE(%(now)s::timestamptz, now())
WHERE name = %(name)s
  AND (last_tick IS NULL OR last_tick < %(tick)s)
  AND registered_at < %(tick)s
RETURNING task, queue, args::text, priority, max_attempts
"""

# Insert the tick's job (due at the tick time) unless its queue is at its pending limit
# (same bounded count as enqueue), and record which it was on the schedule row. Either
# way the high-water mark already moved: a skipped tick is never retried.
PERIODIC_ENQUEUE_TICK = """
WITH lim AS (
    SELECT CASE WHEN q.name IS NULL OR NOT q.pending_limit_set THEN %(default_limit)s::int
                ELSE q.pending_limit END AS value
    FROM (SELECT 1) AS one
    LEFT JOIN {schema}.queues AS q ON q.name = %(queue)s
), pending AS (
    SELECT CASE WHEN lim.value IS NULL THEN NULL ELSE (
        SELECT count(*) FROM (
            SELECT 1 FROM {schema}.jobs
            WHERE queue = %(queue)s AND state = 'pending'
            LIMIT lim.value
        ) AS bounded
    ) END AS n
    FROM lim
), inserted AS (
    INSERT INTO {schema}.jobs (queue, task, args, priority, max_attempts, next_run_at)
    SELECT %(queue)s, %(task)s, %(args)s::jsonb, %(priority)s, %(max_attempts)s, %(tick)s
    FROM lim, pending
    WHERE lim.value IS NULL OR pending.n < lim.value
    RETURNING id
), noted AS (
    UPDATE {schema}.cron_schedules AS s
    SET last_job_id = (SELECT id FROM inserted),
        last_outcome = CASE WHEN EXISTS (SELECT 1 FROM inserted) THEN 'enqueued'
                            ELSE 'skipped' END,
        ticks_enqueued = s.ticks_enqueued + (SELECT count(*) FROM inserted),
        ticks_skipped = s.ticks_skipped + 1 - (SELECT count(*) FROM inserted)
    WHERE s.name = %(name)s
    RETURNING s.name
)
SELECT (SELECT id FROM inserted), (SELECT n FROM pending), (SELECT value FROM lim),
       (SELECT count(*) FROM noted),
       (SELECT count(pg_notify(%(channel)s, %(queue)s)) FROM inserted)
"""

PERIODIC_LIST = """
SELECT name, cron, timezone, args, task, queue, priority, max_attempts, max_delay_seconds,
       active, last_tick, last_outcome, last_job_id, ticks_enqueued, ticks_skipped,
       ticks_missed, registered_at
FROM {schema}.cron_schedules
ORDER BY name
"""

PERIODIC_GET = """
SELECT name, cron, timezone, args::text, task, queue, priority, max_attempts, active
FROM {schema}.cron_schedules
WHERE name = %(name)s
"""


# --- pgjobs work --processes: the server's free connections ------------------------------
# max_connections, what is reserved (superusers; PostgreSQL 16+ also reserved_connections,
# NULL before), and the client connections open now other than this one (background
# processes do not count against max_connections). No schema: a server-wide question.
SERVER_CONNECTIONS = """
SELECT current_setting('max_connections')::int,
       current_setting('superuser_reserved_connections')::int
           + COALESCE(NULLIF(current_setting('reserved_connections', true), '')::int, 0),
       (SELECT count(*) FROM pg_stat_activity
        WHERE backend_type = 'client backend' AND pid <> pg_backend_pid())::int
"""


@lru_cache(maxsize=64)
def channel_for(schema: str) -> str:
    """The LISTEN/NOTIFY channel of a schema (payload: the queue name).

    Channel names are identifiers (at most 63 bytes), so long schema names are hashed.
    """
    name = f"{schema}_jobs"
    if len(name.encode()) <= 63:
        return name
    return "pgjobs_" + hashlib.sha256(schema.encode()).hexdigest()[:32]


@lru_cache(maxsize=64)
def wake_key_for(schema: str) -> int:
    """A signed 64-bit advisory lock key for a schema's wake-ups (stable across runs)."""
    digest = hashlib.sha256(b"pgjobs-wake:" + schema.encode()).digest()
    return int.from_bytes(digest[:8], "big", signed=True)


#: Payload prefix of a cancel request on the workers' channel (then the job id).
CANCEL_PREFIX = "pgjobs:cancel:"


def finished_channel_for(schema: str) -> str:
    """The channel on which finished job ids are announced (``app.wait_for``)."""
    name = f"{schema}_finished"
    if len(name.encode()) <= 63:
        return name
    return "pgjobs_fin_" + hashlib.sha256(schema.encode()).hexdigest()[:32]


@dataclass(frozen=True)
class Statements:
    """The statements above, composed for one schema."""

    schema: str

    def of(self, template: str) -> sql.Composed:
        """One of the constants above, passed by reference (``app.sql.of(sql.QUEUE_STATS)``,
        so a misspelt name is a type error, not a runtime ``AttributeError``), composed for
        this schema (cached)."""
        return _compose(self.schema, template)

    @property
    def channel(self) -> str:
        """The NOTIFY channel workers of this schema listen on."""
        return channel_for(self.schema)

    @property
    def finished_channel(self) -> str:
        """The channel announcing finished job ids (``app.wait_for``)."""
        return finished_channel_for(self.schema)

    @property
    def wake_key(self) -> int:
        """The advisory lock key of this schema's wake-ups (see TRY_WAKE_KEY)."""
        return wake_key_for(self.schema)

    @property
    def listen(self) -> sql.Composed:
        """``LISTEN <channel>``, the channel quoted as an identifier."""
        return sql.SQL("LISTEN {}").format(sql.Identifier(self.channel))

    @property
    def jobs_table(self) -> str:
        """``schema.jobs`` as a quoted, qualified name (for regclass parameters)."""
        return sql.Identifier(self.schema, "jobs").as_string(None)


@lru_cache(maxsize=256)
def _compose(schema: str, template: str) -> sql.Composed:
    composed = sql.SQL(template).format(schema=sql.Identifier(schema))  # type: ignore[arg-type]
    # Rendered once: psycopg re-joins a Composed's parts (and re-quotes the identifier
    # through libpq) on every execute, ~2.5 µs of each enqueue's ~16 µs of Python. The
    # quoting does not depend on the connection (identifiers are only double-quoted).
    return sql.Composed([sql.SQL(composed.as_string(None))])  # type: ignore[arg-type]


def compose(schema: str, template: str) -> sql.Composed:
    """One of the constants above (passed by reference, e.g. ``sql.CLAIM_ANY_QUEUE``)
    composed for ``schema`` (cached). Typed code should prefer this, or the methods of
    :class:`pgjobs.store.JobStore`, to looking statements up by name."""
    return _compose(schema, template)


@lru_cache(maxsize=64)
def statements(schema: str) -> Statements:
    """The statements for ``schema`` (cached)."""
    return Statements(schema)


# --- web dashboard (pgjobs.dashboard) -----------------------------------------------------
# Every statement here is bounded whatever the table sizes: counts stop at %(cap)s rows,
# lists read at most %(window)s rows of the primary key, and queue names come from
# index skip scans. The dashboard binds every value; filters that are NULL match all.

# Queue names: pending (skip scan of jobs_queue_claim_idx), dead (skip scan of
# dead_letters_queue_idx), running, configured, and those with history in the last hour.
DASHBOARD_QUEUE_NAMES = """
WITH RECURSIVE pending_queues AS (
    (SELECT queue FROM {schema}.jobs WHERE state = 'pending' ORDER BY queue LIMIT 1)
    UNION ALL
    SELECT (SELECT j.queue FROM {schema}.jobs AS j
            WHERE j.state = 'pending' AND j.queue > p.queue ORDER BY j.queue LIMIT 1)
    FROM pending_queues AS p WHERE p.queue IS NOT NULL
), dead_queues AS (
    (SELECT queue FROM {schema}.dead_letters ORDER BY queue LIMIT 1)
    UNION ALL
    SELECT (SELECT d.queue FROM {schema}.dead_letters AS d
            WHERE d.queue > q.queue ORDER BY d.queue LIMIT 1)
    FROM dead_queues AS q WHERE q.queue IS NOT NULL
)
SELECT queue FROM pending_queues WHERE queue IS NOT NULL
UNION SELECT queue FROM dead_queues WHERE queue IS NOT NULL
UNION SELECT queue FROM {schema}.jobs WHERE state = 'running'
UNION SELECT name FROM {schema}.queues
UNION SELECT queue FROM {schema}.job_history WHERE minute >= now() - interval '1 hour'
ORDER BY 1
LIMIT %(max_queues)s
"""

# Pending jobs per queue: the queue's priorities come from a skip scan (at most
# %(max_priorities)s), then each count walks one jobs_queue_claim_idx range per priority
# and stops at %(cap)s rows in all (the outer LIMIT ends the nested loop), so a queue
# costs at most 2 x %(cap)s index entries whatever its backlog. earliest: the smallest
# next_run_at (oldest due job, or the next to become due).
DASHBOARD_PENDING_BY_QUEUE = """
WITH RECURSIVE prios AS (
    SELECT n.queue,
           (SELECT j.priority FROM {schema}.jobs AS j
            WHERE j.queue = n.queue AND j.state = 'pending'
            ORDER BY j.priority DESC LIMIT 1) AS priority,
           1 AS depth
    FROM unnest(%(queues)s::text[]) AS n(queue)
    UNION ALL
    SELECT p.queue,
           (SELECT j.priority FROM {schema}.jobs AS j
            WHERE j.queue = p.queue AND j.state = 'pending' AND j.priority < p.priority
            ORDER BY j.priority DESC LIMIT 1),
           p.depth + 1
    FROM prios AS p
    WHERE p.priority IS NOT NULL AND p.depth <= %(max_priorities)s
), per_queue AS (
    SELECT queue, array_agg(priority ORDER BY priority DESC) AS priorities,
           max(depth) AS depth
    FROM prios WHERE priority IS NOT NULL GROUP BY queue
)
SELECT q.queue, q.depth,
       (SELECT count(*) FROM (
            SELECT 1 FROM unnest(q.priorities) AS p(priority)
            CROSS JOIN LATERAL (
                SELECT 1 FROM {schema}.jobs AS j
                WHERE j.queue = q.queue AND j.state = 'pending' AND j.priority = p.priority
                  AND j.next_run_at <= now()
                LIMIT %(cap)s) AS one
            LIMIT %(cap)s) AS due) AS due,
       (SELECT count(*) FROM (
            SELECT 1 FROM unnest(q.priorities) AS p(priority)
            CROSS JOIN LATERAL (
                SELECT 1 FROM {schema}.jobs AS j
                WHERE j.queue = q.queue AND j.state = 'pending' AND j.priority = p.priority
                  AND j.next_run_at > now()
                LIMIT %(cap)s) AS one
            LIMIT %(cap)s) AS later) AS scheduled,
       (SELECT min(f.next_run_at) FROM unnest(q.priorities) AS p(priority)
        CROSS JOIN LATERAL (
            SELECT j.next_run_at FROM {schema}.jobs AS j
            WHERE j.queue = q.queue AND j.state = 'pending' AND j.priority = p.priority
            ORDER BY j.next_run_at LIMIT 1) AS f) AS earliest
FROM per_queue AS q
"""

# Running jobs are few (bounded by the workers' concurrency): jobs_lease_idx.
DASHBOARD_RUNNING_BY_QUEUE = """
SELECT queue, count(*) FROM {schema}.jobs WHERE state = 'running' GROUP BY queue
"""

DASHBOARD_DEAD_BY_QUEUE = """
SELECT n.queue,
       (SELECT count(*) FROM (
            SELECT 1 FROM {schema}.dead_letters AS d WHERE d.queue = n.queue LIMIT %(cap)s
        ) AS capped)
FROM unnest(%(queues)s::text[]) AS n(queue)
"""

# Past the cap, a queue's backlog and dead letters are estimated from the planner's
# statistics (the queue value's share of the table): planning only, nothing is read.
DASHBOARD_ESTIMATE_PENDING = """
EXPLAIN (FORMAT JSON) SELECT 1 FROM {schema}.jobs WHERE queue = %(queue)s::text AND state = 'pending'
"""

DASHBOARD_ESTIMATE_DEAD = """
EXPLAIN (FORMAT JSON) SELECT 1 FROM {schema}.dead_letters WHERE queue = %(queue)s::text
"""

# A row written only to pause a queue keeps the App's default limit (pending_limit_set).
DASHBOARD_QUEUE_LIMITS = """
SELECT name, CASE WHEN pending_limit_set THEN pending_limit END, paused
FROM {schema}.queues WHERE name = ANY(%(queues)s::text[])
"""

# Finished attempts per queue and minute over the last hour (job_history's primary key
# starts with the minute).
DASHBOARD_THROUGHPUT = """
SELECT queue, minute, sum(succeeded)::bigint, sum(retried)::bigint, sum(dead)::bigint
FROM {schema}.job_history
WHERE minute >= date_trunc('minute', now()) - interval '59 minutes'
GROUP BY queue, minute
ORDER BY queue, minute
"""

DASHBOARD_NOW = """
SELECT now()
"""

# Every dashboard connection: no statement runs longer than the dashboard's timeout; a
# read-only dashboard's sessions cannot write.
DASHBOARD_SESSION_SETUP = """
SELECT set_config('statement_timeout', %(statement_timeout_ms)s::text, false),
       set_config('default_transaction_read_only', %(read_only)s, false)
"""

# Bounds the next statement of the transaction (capped counts over unindexed filters).
DASHBOARD_LOCAL_TIMEOUT = """
SELECT set_config('statement_timeout', %(milliseconds)s::text, true)
"""

# Jobs, newest first, keyset on id (never OFFSET): rows older than %(before)s. Filters apply
# within the next %(window)s ids of the primary key, so a rare filter costs a bounded scan,
# never the whole table; the page then offers to search further. state: 'pending' (due),
# 'scheduled', 'running'. search: a case-insensitive substring of the JSON arguments.
DASHBOARD_JOBS_OLDER = """
SELECT id, queue, task, left(args::text, 300) AS args, state, priority, attempts,
       max_attempts, next_run_at, created_at, started_at, left(last_error, 300) AS last_error,
       worker_id, state = 'pending' AND next_run_at > now() AS is_scheduled
FROM (
    SELECT * FROM {schema}.jobs
    WHERE (%(before)s::bigint IS NULL OR id < %(before)s)
    ORDER BY id DESC LIMIT %(window)s
) AS w
WHERE (%(queue)s::text IS NULL OR queue = %(queue)s)
  AND (%(task)s::text IS NULL OR task = %(task)s)
  AND (%(state)s::text IS NULL
       OR (%(state)s = 'running' AND state = 'running')
       OR (%(state)s = 'pending' AND state = 'pending' AND next_run_at <= now())
       OR (%(state)s = 'scheduled' AND state = 'pending' AND next_run_at > now()))
  AND (%(search)s::text IS NULL OR strpos(lower(args::text), lower(%(search)s)) > 0)
ORDER BY id DESC LIMIT %(limit)s
"""

# Where a filtered page's bounded scan ended: the lowest id it read, and how many it read
# (fewer than %(window)s: it reached the oldest job).
DASHBOARD_JOBS_WINDOW_END = """
SELECT min(id), count(*) FROM (
    SELECT id FROM {schema}.jobs
    WHERE (%(before)s::bigint IS NULL OR id < %(before)s)
    ORDER BY id DESC LIMIT %(window)s
) AS w
"""

# Matching jobs, counted no further than %(cap)s (the caller also bounds its time).
DASHBOARD_JOBS_COUNT = """
SELECT count(*) FROM (SELECT 1 FROM {schema}.jobs
WHERE (%(queue)s::text IS NULL OR queue = %(queue)s)
  AND (%(task)s::text IS NULL OR task = %(task)s)
  AND (%(state)s::text IS NULL
       OR (%(state)s = 'running' AND state = 'running')
       OR (%(state)s = 'pending' AND state = 'pending' AND next_run_at <= now())
       OR (%(state)s = 'scheduled' AND state = 'pending' AND next_run_at > now()))
  AND (%(search)s::text IS NULL OR strpos(lower(args::text), lower(%(search)s)) > 0)
LIMIT %(cap)s) AS capped
"""

# Bulk actions over "all matching": the next batch of ids, oldest first, after %(after)s.
DASHBOARD_JOB_IDS_MATCHING = """
SELECT id FROM {schema}.jobs
WHERE (%(queue)s::text IS NULL OR queue = %(queue)s)
  AND (%(task)s::text IS NULL OR task = %(task)s)
  AND (%(state)s::text IS NULL
       OR (%(state)s = 'running' AND state = 'running')
       OR (%(state)s = 'pending' AND state = 'pending' AND next_run_at <= now())
       OR (%(state)s = 'scheduled' AND state = 'pending' AND next_run_at > now()))
  AND (%(search)s::text IS NULL OR strpos(lower(args::text), lower(%(search)s)) > 0)
  AND id > %(after)s
ORDER BY id LIMIT %(limit)s
"""

DASHBOARD_JOB = """
SELECT id, queue, task, args, state, priority, attempts, max_attempts, next_run_at,
       created_at, started_at, last_error, worker_id, lease_expires_at, unique_key,
       trace_context, state = 'pending' AND next_run_at > now() AS is_scheduled,
       cancel_requested_at
FROM {schema}.jobs WHERE id = %(id)s
"""

# "Retry now": a scheduled or retrying pending job becomes due at once (a running job,
# or one already due, is left alone). Returns the queues to wake.
DASHBOARD_RETRY_NOW = """
UPDATE {schema}.jobs SET next_run_at = now()
WHERE id = ANY(%(ids)s::bigint[]) AND state = 'pending' AND next_run_at > now()
RETURNING id, queue
"""

# Dead letters, newest first, same keyset and bounded-scan rules as the jobs list.
# search: a case-insensitive substring of the error or the JSON arguments.
DASHBOARD_DEAD_LETTERS_OLDER = """
SELECT id, job_id, queue, task, left(args::text, 300) AS args, attempts, max_attempts,
       left(error, 500) AS error, created_at, failed_at, reason
FROM (
    SELECT * FROM {schema}.dead_letters
    WHERE (%(before)s::bigint IS NULL OR id < %(before)s)
    ORDER BY id DESC LIMIT %(window)s
) AS w
WHERE (%(queue)s::text IS NULL OR queue = %(queue)s)
  AND (%(task)s::text IS NULL OR task = %(task)s)
  AND (%(search)s::text IS NULL
       OR strpos(lower(error), lower(%(search)s)) > 0
       OR strpos(lower(args::text), lower(%(search)s)) > 0)
ORDER BY id DESC LIMIT %(limit)s
"""

DASHBOARD_DEAD_LETTERS_WINDOW_END = """
SELECT min(id), count(*) FROM (
    SELECT id FROM {schema}.dead_letters
    WHERE (%(before)s::bigint IS NULL OR id < %(before)s)
    ORDER BY id DESC LIMIT %(window)s
) AS w
"""

DASHBOARD_DEAD_LETTERS_COUNT = """
SELECT count(*) FROM (SELECT 1 FROM {schema}.dead_letters
WHERE (%(queue)s::text IS NULL OR queue = %(queue)s)
  AND (%(task)s::text IS NULL OR task = %(task)s)
  AND (%(search)s::text IS NULL
       OR strpos(lower(error), lower(%(search)s)) > 0
       OR strpos(lower(args::text), lower(%(search)s)) > 0)
LIMIT %(cap)s) AS capped
"""

DASHBOARD_DEAD_LETTER_IDS_MATCHING = """
SELECT id FROM {schema}.dead_letters
WHERE (%(queue)s::text IS NULL OR queue = %(queue)s)
  AND (%(task)s::text IS NULL OR task = %(task)s)
  AND (%(search)s::text IS NULL
       OR strpos(lower(error), lower(%(search)s)) > 0
       OR strpos(lower(args::text), lower(%(search)s)) > 0)
  AND id > %(after)s
ORDER BY id LIMIT %(limit)s
"""

DASHBOARD_DEAD_LETTER = """
SELECT id, job_id, queue, task, args, priority, attempts, max_attempts, error, created_at,
       failed_at, trace_context, reason
FROM {schema}.dead_letters WHERE id = %(id)s
"""

DASHBOARD_PURGE_DEAD_LETTERS = """
DELETE FROM {schema}.dead_letters WHERE id = ANY(%(ids)s::bigint[])
"""

"""The worker's statements with an injected clock: claims, guards, leases, rescue."""

from __future__ import annotations

import datetime as dt
import re
import uuid

import psycopg
import pytest
from psycopg import sql

import pgjobs.admin
import pgjobs.sql as pgsql
from pgjobs.store import JobStore

from .conftest import count


@pytest.fixture
def q(app, db):
    """Run one of :mod:`pgjobs.sql`'s constants (by reference) in the App's schema."""

    def run(statement: str, **params):
        params.setdefault("now", None)
        return db.execute(app.sql.of(statement), params).fetchall()

    return run


def _task(app):
    @app.task(name="t")
    def t(n: int = 0) -> None: ...

    return t


def _claim(q, limit=10, now=None, lease=30.0, queues=None):
    params = dict(limit=limit, lease_seconds=lease, worker_id="w1", now=now)
    if queues is None:
        return q(pgsql.CLAIM_ANY_QUEUE, **params)
    return q(pgsql.CLAIM_QUEUES, queues=queues, **params)


def test_claim_orders_by_priority_then_due_time_then_id(app, conn, q):
    t = _task(app)
    low = t.options(priority=-1).enqueue(conn, n=1)
    first_default = t.enqueue(conn, n=2)
    second_default = t.enqueue(conn, n=3)
    high = t.options(priority=10).enqueue(conn, n=4)
    conn.commit()
    rows = _claim(q, limit=10)
    by_id = {r[0]: r for r in rows}
    assert set(by_id) == {low, first_default, second_default, high}
    # One claim takes them all; the fetcher sorts them the same way before running.
    order = sorted(rows, key=lambda r: (-r[4], r[7], r[0]))
    assert [r[0] for r in order] == [high, first_default, second_default, low]
    assert [r[0] for r in _claim(q)] == []  # nothing left to claim


def test_claim_takes_only_due_jobs_and_charges_the_attempt(app, conn, q, db, schema):
    t = _task(app)
    later = t.options(delay=60).enqueue(conn)
    now_job = t.enqueue(conn)
    conn.commit()
    rows = _claim(q)
    assert [r[0] for r in rows] == [now_job]
    assert rows[0][5] == 1  # attempts incremented at claim
    future = dt.datetime.now(dt.UTC) + dt.timedelta(seconds=120)
    assert [r[0] for r in _claim(q, now=future)] == [later]


def test_claim_respects_batch_size_and_queues(app, conn, q):
    t = _task(app)
    app.enqueue_many(conn, [t.options(queue="a").job(n=i) for i in range(5)]
                     + [t.options(queue="b").job(n=i) for i in range(5)]
                     + [t.options(queue="c", priority=9).job(n=i) for i in range(5)])
    conn.commit()
    assert len(_claim(q, limit=3, queues=["a", "b"])) == 3
    rows = _claim(q, limit=100, queues=["a", "b"])
    assert len(rows) == 7 and {r[1] for r in rows} == {"a", "b"}
    assert {r[1] for r in _claim(q, limit=100)} == {"c"}


def test_skip_locked_two_claimers_never_share_a_job(app, conn, pg_url):
    t = _task(app)
    app.enqueue_many(conn, [t.job(n=i) for i in range(50)])
    conn.commit()
    with psycopg.connect(pg_url) as a, psycopg.connect(pg_url) as b:
        params = dict(limit=30, lease_seconds=30, worker_id="w", now=None)
        got_a = {r[0] for r in a.execute(app.sql.of(pgsql.CLAIM_ANY_QUEUE), params).fetchall()}
        got_b = {r[0] for r in b.execute(app.sql.of(pgsql.CLAIM_ANY_QUEUE), params).fetchall()}
        a.commit()
        b.commit()
    assert len(got_a) == 30 and len(got_b) == 20 and not got_a & got_b


def _complete(q, ok=(), retry=(), dead=(), now=None):
    return q(
        pgsql.COMPLETE_BATCH, now=now,
        ok_ids=[i for i, _ in ok], ok_tokens=[tok for _, tok in ok],
        retry_ids=[i for i, _, _ in retry], retry_tokens=[tok for _, tok, _ in retry],
        retry_delays=[d for _, _, d in retry], retry_errors=["boom"] * len(retry),
        dead_ids=[i for i, _ in dead], dead_tokens=[tok for _, tok in dead],
        dead_errors=["fatal"] * len(dead),
        all_ids=[], all_durations=[],
        # job lifecycle (0004): no snoozes, failures only, no kept results
        retry_uncharged=[False] * len(retry), dead_reasons=["failed"] * len(dead),
        finished_channel="test_finished", finished_payloads=[], res_ids=[], res_values=[],
        res_ttls=[],
        res_args=[], res_attempts=[], res_max_attempts=[], res_created=[], res_queues=[],
        res_tasks=[], res_self_completed=[],
    )[0][:3]


def test_completion_batch_guards_on_state_and_lease_token(app, conn, q, db, schema):
    t = _task(app)
    app.enqueue_many(conn, [t.job(n=i) for i in range(3)])
    conn.commit()
    (a, b, c) = [(r[0], r[9]) for r in sorted(_claim(q), key=lambda r: r[0])]
    wrong = uuid.uuid4()
    assert _complete(q, ok=[(a[0], wrong)], retry=[(b[0], wrong, 1.0)],
                     dead=[(c[0], wrong)]) == (0, 0, 0)
    assert count(db, schema, "jobs", "state = 'running'") == 3
    assert _complete(q, ok=[a], retry=[(b[0], b[1], 5.0)], dead=[c]) == (1, 1, 1)
    assert count(db, schema, "jobs") == 1
    row = db.execute(sql.SQL("SELECT state, last_error, next_run_at > now() + interval '4s', "
                             "lease_token FROM {}").format(sql.Identifier(schema, "jobs"))
                     ).fetchone()
    assert row == ("pending", "boom", True, None)
    dead = db.execute(sql.SQL("SELECT job_id, task, attempts, error FROM {}").format(
        sql.Identifier(schema, "dead_letters"))).fetchall()
    assert dead == [(c[0], "t", 1, "fatal")]
    # Replaying the same flush (e.g. after a lost connection) changes nothing.
    assert _complete(q, ok=[a], dead=[c]) == (0, 0, 0)


def test_late_write_after_lost_lease_changes_nothing(app, conn, q, db, schema):
    t = _task(app)
    job = t.enqueue(conn)
    conn.commit()
    ((job_id, token_a),) = [(r[0], r[9]) for r in _claim(q, lease=10)]
    later = dt.datetime.now(dt.UTC) + dt.timedelta(seconds=11)
    assert q(pgsql.RESCUE_EXPIRED, now=later, limit=100) == [("rescued", job_id, "default", "t")]
    ((_, token_b),) = [(r[0], r[9]) for r in _claim(q, now=later)]
    assert token_b != token_a
    # The first worker wakes up and reports success: nothing happens.
    assert _complete(q, ok=[(job_id, token_a)]) == (0, 0, 0)
    assert q(pgsql.HEARTBEAT, ids=[job_id], tokens=[token_a], lease_seconds=30) == []
    assert q(pgsql.RELEASE_JOBS, ids=[job_id], tokens=[token_a]) == []
    row = db.execute(sql.SQL("SELECT state, attempts, lease_token FROM {}").format(
        sql.Identifier(schema, "jobs"))).fetchone()
    assert row == ("running", 2, uuid.UUID(token_b))  # the claim returns tokens as text
    assert job == job_id


def test_rescue_buries_jobs_out_of_attempts(app, conn, q, db, schema):
    t = _task(app)
    t.options(max_attempts=1).enqueue(conn)
    conn.commit()
    _claim(q, lease=5)
    assert q(pgsql.RESCUE_EXPIRED, limit=100) == []  # lease still valid
    later = dt.datetime.now(dt.UTC) + dt.timedelta(seconds=6)
    (row,) = q(pgsql.RESCUE_EXPIRED, now=later, limit=100)
    assert row[0] == "dead"
    error = db.execute(sql.SQL("SELECT error FROM {}").format(
        sql.Identifier(schema, "dead_letters"))).fetchone()
    assert error is not None and "lease expired" in error[0] and "attempt 1 of 1" in error[0]


def test_heartbeat_extends_the_lease(app, conn, q, db, schema):
    t = _task(app)
    t.enqueue(conn)
    conn.commit()
    ((job_id, token),) = [(r[0], r[9]) for r in _claim(q, lease=5)]
    assert q(pgsql.HEARTBEAT, ids=[job_id], tokens=[token], lease_seconds=60) == [(job_id,)]
    later = dt.datetime.now(dt.UTC) + dt.timedelta(seconds=30)
    assert q(pgsql.RESCUE_EXPIRED, now=later, limit=100) == []


def test_release_returns_the_attempt(app, conn, q, db, schema):
    t = _task(app)
    t.enqueue(conn)
    conn.commit()
    ((job_id, token),) = [(r[0], r[9]) for r in _claim(q)]
    assert q(pgsql.RELEASE_JOBS, ids=[job_id], tokens=[token]) == [(job_id,)]
    row = db.execute(sql.SQL("SELECT state, attempts FROM {}").format(
        sql.Identifier(schema, "jobs"))).fetchone()
    assert row == ("pending", 0)


def test_requeue_dead_letter_makes_a_fresh_job(app, conn, q, db, schema):
    t = _task(app)
    t.options(priority=4, queue="x").enqueue(conn, n=7)
    conn.commit()
    ((job_id, token),) = [(r[0], r[9]) for r in _claim(q)]
    _complete(q, dead=[(job_id, token)])
    (dead_id,) = db.execute(sql.SQL("SELECT id FROM {}").format(
        sql.Identifier(schema, "dead_letters"))).fetchone()
    pairs = pgjobs.admin.requeue_dead_letters(db, app.sql, ids=[dead_id])
    assert len(pairs) == 1 and pairs[0][0] == dead_id
    row = db.execute(sql.SQL("SELECT task, queue, args, priority, attempts, state FROM {} "
                             "WHERE id = %s").format(sql.Identifier(schema, "jobs")),
                     [pairs[0][1]]).fetchone()
    assert row == ("t", "x", {"n": 7}, 4, 0, "pending")
    assert count(db, schema, "dead_letters") == 0


def _seed_paused_backlog(db, schema, paused_jobs: int, priorities: int = 3) -> None:
    """A paused queue whose due jobs come before two open queues' of the same priority
    in jobs_claim_idx (the open queues' jobs spread over ``priorities`` priorities)."""
    jobs = sql.Identifier(schema, "jobs")
    db.execute(sql.SQL(
        "INSERT INTO {} (queue, task, args, next_run_at) SELECT 'paused', 't', '{{}}', "
        "now() - interval '1 day' + i * interval '1 ms' FROM generate_series(1, %s) AS i"
    ).format(jobs), [paused_jobs])
    db.execute(sql.SQL(
        "INSERT INTO {} (queue, task, args, priority, next_run_at) "
        "SELECT CASE WHEN i %% 2 = 0 THEN 'a' ELSE 'b' END, 't', '{{}}', -(i %% %s), "
        "now() - interval '1 hour' + i * interval '1 s' FROM generate_series(1, 300) AS i"
    ).format(jobs), [priorities])
    db.execute(sql.SQL("INSERT INTO {} (name, paused) VALUES ('paused', true)").format(
        sql.Identifier(schema, "queues")))
    db.execute(sql.SQL("ANALYZE {}").format(jobs))


def _picks(db, app, statement: str, limit: int) -> list[int]:
    """The ids a claim would take, in claim order (rolled back)."""
    params = dict(limit=limit, lease_seconds=30.0, worker_id="w1", now=None)
    try:
        rows = db.execute(app.sql.of(statement), params).fetchall()
    finally:
        db.rollback()
    return [r[0] for r in sorted(rows, key=lambda r: (-r[4], r[7], r[0]))]


def test_the_claim_for_paused_times_takes_what_the_everyday_claim_takes(app, db, schema):
    db.autocommit = False
    _seed_paused_backlog(db, schema, 2000)
    db.commit()
    for limit in (1, 7, 50, 400):
        everyday = _picks(db, app, pgsql.CLAIM_ANY_QUEUE, limit)
        jumping = _picks(db, app, pgsql.CLAIM_ANY_QUEUE_PAUSED_BACKLOG, limit)
        assert jumping == everyday and len(everyday) == min(limit, 300)
    queues = db.execute(sql.SQL("SELECT DISTINCT queue FROM {} WHERE id = ANY(%s)").format(
        sql.Identifier(schema, "jobs")), [_picks(db, app, pgsql.CLAIM_ANY_QUEUE_PAUSED_BACKLOG,
                                                 400)]).fetchall()
    assert sorted(q for (q,) in queues) == ["a", "b"]  # nothing of the paused queue
    db.rollback()
    store = JobStore(app.sql)
    assert (store.paused_backlog(db, enough=1000) is True
            and store.paused_backlog(db, enough=2001) is False)


@pytest.mark.parametrize("plan_cache_mode", ["force_custom_plan", "force_generic_plan"])
@pytest.mark.parametrize("claim", ["CLAIM_ANY_QUEUE_PAUSED_BACKLOG", "CLAIM_QUEUES"])
def test_claims_by_queue_jump_over_other_queues_backlogs(app, db, schema, plan_cache_mode,
                                                          claim):
    # 50,000 due jobs of another queue (paused here) come first in jobs_claim_idx. The
    # everyday all-queue claim steps over them; a claim that reads one index range per
    # queue (the one for paused times, and named-queue workers') must not.
    db.autocommit = False
    jobs = sql.Identifier(schema, "jobs")
    db.execute(sql.SQL(
        "INSERT INTO {} (queue, task, args, next_run_at) SELECT 'paused', 't', '{{}}', "
        "now() - interval '1 day' + i * interval '1 ms' FROM generate_series(1, 50000) AS i"
    ).format(jobs))
    db.execute(sql.SQL("INSERT INTO {} (queue, task, args) "
                       "SELECT 'open', 't', '{{}}' FROM generate_series(1, 20000)").format(jobs))
    db.execute(sql.SQL("INSERT INTO {} (name, paused) VALUES ('paused', true)").format(
        sql.Identifier(schema, "queues")))
    db.execute(sql.SQL("ANALYZE {}").format(jobs))
    db.commit()
    params = dict(limit=50, lease_seconds=30.0, worker_id="w1", now=None,
                  queues=["open", "paused"])

    def buffers(statement: str) -> int:
        # As the worker runs it: a server-side prepared statement (plan_cache_mode then
        # decides between the generic plan and one planned for these values).
        names: list[str] = []

        def numbered(match: re.Match[str]) -> str:
            if match.group(1) not in names:
                names.append(match.group(1))
            return f"${names.index(match.group(1)) + 1}"

        text = re.sub(r"%\((\w+)\)s", numbered, app.sql.of(statement).as_string(db))
        try:
            db.execute(sql.SQL("SET LOCAL plan_cache_mode = {}").format(
                sql.Identifier(plan_cache_mode)))
            db.execute("PREPARE claim_under_test AS " + text)
            plan = db.execute(sql.SQL(
                "EXPLAIN (ANALYZE, BUFFERS, FORMAT JSON) EXECUTE claim_under_test ({})"
            ).format(sql.SQL(", ").join(sql.Literal(params[name]) for name in names))
            ).fetchone()[0][0]["Plan"]
        finally:
            db.rollback()
            db.execute("DEALLOCATE ALL")  # PREPARE is not undone by the rollback
            db.rollback()
        # The picking (CTE `picked`), not the UPDATE both statements share.
        picked = next(p for p in plan["Plans"] if p.get("Subplan Name") == "CTE picked")
        return picked["Shared Hit Blocks"] + picked["Shared Read Blocks"]

    everyday, jumping = buffers(pgsql.CLAIM_ANY_QUEUE), buffers(getattr(pgsql, claim))
    # The everyday claim steps over the 50,000 paused entries; this one reads what the
    # 50 jobs it takes need (their rows, index pages, a skip scan's descents).
    assert jumping * 5 < everyday, (jumping, everyday)

"""The job lifecycle as a state machine, model-checked against the real SQL.

Hypothesis drives the worker's statements (claim, complete, heartbeat, release, rescue,
requeue) with an injected clock, in random orders, with right and stale lease tokens.
A Python model predicts every statement's result and the whole contents of ``jobs`` and
``dead_letters``; after every step the database must match the model, and every job id
ever enqueued must be in exactly one place: ``jobs`` (pending or running),
``dead_letters``, completed, or requeued (as a new job id).
"""

from __future__ import annotations

import datetime as dt
import uuid
from collections import Counter
from dataclasses import dataclass
from typing import Any

import psycopg
import pytest
from hypothesis import HealthCheck, event, settings
from hypothesis import strategies as st
from hypothesis.stateful import (
    RuleBasedStateMachine,
    invariant,
    precondition,
    rule,
    run_state_machine_as_test,
)
from psycopg import sql

import pgjobs
import pgjobs.sql as pgsql
from pgjobs import admin

from ..conftest import count
from . import store_support

pytestmark = pytest.mark.chaos

QUEUES = ("a", "b")
LEASES = (5.0, 30.0)
SECOND = dt.timedelta(seconds=1)


@dataclass
class ModelJob:
    """What the model expects one row of ``jobs`` to hold."""

    id: int
    queue: str
    task: str
    priority: int
    max_attempts: int
    next_run_at: dt.datetime
    attempts: int = 0
    token: uuid.UUID | None = None
    lease_expires_at: dt.datetime | None = None
    worker_id: str | None = None
    last_error: str | None = None

    @property
    def state(self) -> str:
        return "pending" if self.token is None else "running"

    def row(self) -> tuple[Any, ...]:
        return (self.queue, self.task, self.priority, self.state, self.attempts,
                self.max_attempts, self.next_run_at, self.token, self.lease_expires_at,
                self.worker_id, self.last_error)


@dataclass
class ModelDead:
    """What the model expects one row of ``dead_letters`` to hold."""

    job_id: int
    queue: str
    task: str
    priority: int
    attempts: int
    max_attempts: int
    error: str
    dead_letter_id: int | None = None

    def row(self) -> tuple[Any, ...]:
        return (self.queue, self.task, self.priority, self.attempts, self.max_attempts,
                self.error)


class JobsMachine(RuleBasedStateMachine):
    """Model of one pgjobs schema, compared with the real tables after every step."""

    def __init__(self, app: pgjobs.App, task: Any, db: psycopg.Connection[Any],
                 conn: psycopg.Connection[Any]) -> None:
        super().__init__()
        self.app, self.task, self.db, self.conn = app, task, db, conn
        schema = app.schema
        self.db.execute(sql.SQL("TRUNCATE {}, {}, {} RESTART IDENTITY").format(
            sql.Identifier(schema, "jobs"), sql.Identifier(schema, "dead_letters"),
            sql.Identifier(schema, "job_history")))
        (server_now,) = self.db.execute("SELECT now()").fetchone()
        self.now: dt.datetime = server_now + 0.5 * SECOND
        self.jobs: dict[int, ModelJob] = {}
        self.dead: dict[int, ModelDead] = {}
        self.completed: set[int] = set()
        self.requeued: dict[int, int] = {}  # old job id -> the new job id
        self.ever: set[int] = set()
        self.names: dict[int, tuple[str, str]] = {}  # job id -> (queue, task), forever
        self.tokens: dict[int, list[uuid.UUID]] = {}  # every token a job was ever given
        self.claims = 0

    # --- helpers -------------------------------------------------------------------------

    def _run(self, statement: str, **params: Any) -> list[tuple[Any, ...]]:
        """Run one of :mod:`pgjobs.sql`'s constants (by reference) in the App's schema."""
        return self.db.execute(self.app.sql.of(statement), params).fetchall()

    def _read_next_run_at(self, ids: list[int]) -> dict[int, dt.datetime]:
        rows = self.db.execute(sql.SQL("SELECT id, next_run_at FROM {} WHERE id = ANY(%s)")
                               .format(sql.Identifier(self.app.schema, "jobs")), [ids])
        return dict(rows.fetchall())

    def _add(self, job: ModelJob) -> None:
        assert job.id not in self.ever, f"job id {job.id} was handed out twice"
        self.jobs[job.id] = job
        self.ever.add(job.id)
        self.names[job.id] = (job.queue, job.task)

    def _snapshot(self) -> tuple[list[tuple[Any, ...]], list[tuple[Any, ...]]]:
        jobs = self.db.execute(sql.SQL("SELECT * FROM {} ORDER BY id").format(
            sql.Identifier(self.app.schema, "jobs"))).fetchall()
        dead = self.db.execute(sql.SQL("SELECT * FROM {} ORDER BY id").format(
            sql.Identifier(self.app.schema, "dead_letters"))).fetchall()
        return jobs, dead

    def _pick(self, data: st.DataObject) -> list[tuple[int, uuid.UUID]]:
        """Jobs that were claimed at some point, each with its current or a stale token."""
        ids = data.draw(st.lists(st.sampled_from(sorted(self.tokens)), min_size=1,
                                 max_size=3, unique=True), label="jobs")
        picked = []
        for job_id in ids:
            job = self.jobs.get(job_id)
            current = job.token if job is not None else None
            if current is not None and data.draw(st.sampled_from([True, True, False]),
                                                 label=f"current token for {job_id}"):
                picked.append((job_id, current))
                continue
            old = [t for t in self.tokens[job_id] if t != current]
            if old and data.draw(st.booleans(), label=f"an old token for {job_id}"):
                picked.append((job_id, data.draw(st.sampled_from(old))))
            else:
                picked.append((job_id, uuid.uuid4()))
        return picked

    def _holds(self, job_id: int, token: uuid.UUID) -> bool:
        job = self.jobs.get(job_id)
        return job is not None and job.token == token

    def _bury(self, job: ModelJob, error: str) -> None:
        del self.jobs[job.id]
        self.dead[job.id] = ModelDead(job.id, job.queue, job.task, job.priority, job.attempts,
                                      job.max_attempts, error)

    # --- rules ---------------------------------------------------------------------------

    @rule(queue=st.sampled_from(QUEUES), priority=st.integers(-1, 1),
          delay=st.sampled_from([0.0, 0.0, 2.0, 60.0]), max_attempts=st.integers(1, 3),
          bulk=st.integers(0, 3))
    def enqueue(self, queue: str, priority: int, delay: float, max_attempts: int,
                bulk: int) -> None:
        """One job (INSERT … NOTIFY or delayed INSERT), or a COPY batch."""
        task = self.task.options(queue=queue, priority=priority, delay=delay,
                                 max_attempts=max_attempts)
        if bulk == 0:
            ids = [task.enqueue(self.conn, n=0)]
        else:
            ids = self.app.enqueue_many(self.conn, [task.job(n=i) for i in range(bulk)])
        self.conn.commit()
        due = self._read_next_run_at(ids)
        for job_id in ids:
            self._add(ModelJob(job_id, queue, "t", priority, max_attempts, due[job_id]))

    @rule(limit=st.integers(1, 4), queues=st.sampled_from([None, ["a"], ["b"], ["a", "b"]]),
          lease=st.sampled_from(LEASES))
    def claim(self, limit: int, queues: list[str] | None, lease: float) -> None:
        """Claim a batch; exactly the model's top ``limit`` due jobs must come back."""
        self.claims += 1
        worker = f"w{self.claims}"
        due = sorted((j for j in self.jobs.values()
                      if j.token is None and j.next_run_at <= self.now
                      and (queues is None or j.queue in queues)),
                     key=lambda j: (-j.priority, j.next_run_at, j.id))
        params = dict(now=self.now, limit=limit, lease_seconds=lease, worker_id=worker)
        if queues is None:
            rows = self._run(pgsql.CLAIM_ANY_QUEUE, **params)
        else:
            rows = self._run(pgsql.CLAIM_QUEUES, queues=queues, **params)
        assert sorted(r[0] for r in rows) == sorted(j.id for j in due[:limit])
        event(f"claim: {len(rows)} claimed")
        for row in rows:
            row = (*row[:9], uuid.UUID(row[9]), *row[10:])  # the claim returns tokens as text
            job = self.jobs[row[0]]
            assert (row[1], row[2], row[5], row[6]) == (
                job.queue, job.task, job.attempts + 1, job.max_attempts)
            assert row[9] not in self.tokens.get(job.id, [])
            job.attempts += 1
            job.token = row[9]
            job.lease_expires_at = self.now + lease * SECOND
            job.worker_id = worker
            self.tokens.setdefault(job.id, []).append(row[9])

    @precondition(lambda self: self.tokens)
    @rule(data=st.data())
    def complete(self, data: st.DataObject) -> None:
        """One completion flush mixing successes, retries and dead letters."""
        picked = self._pick(data)
        kinds = [data.draw(st.sampled_from(["ok", "retry", "dead"]), label="outcome")
                 for _ in picked]
        delays = [data.draw(st.sampled_from([0.0, 0.5, 3.0]), label="retry delay")
                  for _ in picked]
        by_kind: dict[str, list[int]] = {"ok": [], "retry": [], "dead": []}
        for index, kind in enumerate(kinds):
            by_kind[kind].append(index)

        def pick(kind: str) -> list[tuple[int, uuid.UUID]]:
            return [picked[i] for i in by_kind[kind]]

        stale_only = not any(self._holds(*p) for p in picked)
        before = self._snapshot() if stale_only else None
        written = store_support.complete(
            self.db, self.app, now=self.now, ok=pick("ok"),
            retry=[(picked[i], delays[i], f"retry of {picked[i][0]}") for i in by_kind["retry"]],
            dead=[(picked[i], f"dead: {picked[i][0]}") for i in by_kind["dead"]])
        counts = (written.succeeded, written.retried, written.dead_lettered)
        expected = tuple(sum(1 for p in pick(kind) if self._holds(*p))
                         for kind in ("ok", "retry", "dead"))
        assert counts == expected
        for index, ((job_id, token), kind) in enumerate(zip(picked, kinds, strict=True)):
            if not self._holds(job_id, token):
                continue
            job = self.jobs[job_id]
            if kind == "ok":
                del self.jobs[job_id]
                self.completed.add(job_id)
            elif kind == "retry":
                job.token = job.lease_expires_at = job.worker_id = None
                job.next_run_at = self.now + delays[index] * SECOND
                job.last_error = f"retry of {job_id}"
            else:
                self._bury(job, f"dead: {job_id}")
        event(f"complete: {sum(expected)} of {len(picked)} outcomes written")
        if before is not None:
            assert self._snapshot() == before, "a stale-token flush changed jobs/dead_letters"

    @precondition(lambda self: self.tokens)
    @rule(data=st.data(), lease=st.sampled_from(LEASES))
    def heartbeat(self, data: st.DataObject, lease: float) -> None:
        """Renew leases; only the jobs still held with that token are renewed."""
        picked = self._pick(data)
        stale_only = not any(self._holds(*p) for p in picked)
        before = self._snapshot() if stale_only else None
        rows = self._run(pgsql.HEARTBEAT, now=self.now, lease_seconds=lease,
                         ids=[i for i, _ in picked], tokens=[t for _, t in picked])
        assert sorted(r[0] for r in rows) == sorted(i for i, t in picked if self._holds(i, t))
        event(f"heartbeat: {len(rows)} of {len(picked)} renewed")
        for (job_id,) in rows:
            self.jobs[job_id].lease_expires_at = self.now + lease * SECOND
        if before is not None:
            assert self._snapshot() == before, "a stale-token heartbeat changed something"

    @precondition(lambda self: self.tokens)
    @rule(data=st.data())
    def release(self, data: st.DataObject) -> None:
        """Shutdown hand-back: pending again, the attempt returned."""
        picked = self._pick(data)
        stale_only = not any(self._holds(*p) for p in picked)
        before = self._snapshot() if stale_only else None
        rows = self._run(pgsql.RELEASE_JOBS, ids=[i for i, _ in picked],
                         tokens=[t for _, t in picked])
        assert sorted(r[0] for r in rows) == sorted(i for i, t in picked if self._holds(i, t))
        event(f"release: {len(rows)} of {len(picked)} released")
        for (job_id,) in rows:
            job = self.jobs[job_id]
            job.attempts = max(job.attempts - 1, 0)
            job.token = job.lease_expires_at = job.worker_id = None
        if before is not None:
            assert self._snapshot() == before, "a stale-token release changed something"

    @rule(seconds=st.sampled_from([0.5, 1.0, 3.0, 6.0, 31.0, 61.0]))
    def advance_clock(self, seconds: float) -> None:
        """Time passes (only for the statements: nothing sleeps)."""
        self.now += seconds * SECOND

    @rule(limit=st.sampled_from([1, 2, 1000]))
    def rescue(self, limit: int) -> None:
        """Expired leases: back to pending, or to dead_letters when out of attempts."""
        expired = {j.id: j for j in self.jobs.values()
                   if j.token is not None and j.lease_expires_at < self.now}
        rows = self._run(pgsql.RESCUE_EXPIRED, now=self.now, limit=limit)
        got = {r[1]: r[0] for r in rows}
        assert len(got) == len(rows) == min(limit, len(expired))
        assert set(got) <= set(expired)
        if len(got) < len(expired):  # oldest leases first
            chosen = max(expired[i].lease_expires_at for i in got)
            assert all(j.lease_expires_at >= chosen for i, j in expired.items() if i not in got)
        for job_id, outcome in got.items():
            job = expired[job_id]
            assert (job.queue, job.task) == next((r[2], r[3]) for r in rows if r[1] == job_id)
            stopped = f"lease expired: worker {job.worker_id} stopped renewing it (killed or hung)"
            event(f"rescue: {outcome}")
            if job.attempts >= job.max_attempts:
                assert outcome == "dead"
                self._bury(job, f"{stopped} on attempt {job.attempts} of {job.max_attempts}")
            else:
                assert outcome == "rescued"
                job.last_error = f"{stopped} on attempt {job.attempts}"
                job.token = job.lease_expires_at = job.worker_id = None
                job.next_run_at = self.now

    @precondition(lambda self: self.dead)
    @rule(data=st.data())
    def requeue(self, data: st.DataObject) -> None:
        """Dead letters back to jobs as fresh pending jobs with new ids."""
        self._learn_dead_letter_ids()
        mode = data.draw(st.sampled_from(["ids", "all", "queue"]), label="requeue mode")
        if mode == "ids":
            chosen = data.draw(st.lists(st.sampled_from(sorted(self.dead)), min_size=1,
                                        max_size=3, unique=True), label="dead jobs")
            ids: list[int] | None = [self.dead[j].dead_letter_id for j in chosen]
            queue = None
        elif mode == "all":
            chosen, ids, queue = sorted(self.dead), None, None
        else:
            queue = data.draw(st.sampled_from(QUEUES), label="queue")
            chosen = [j for j, d in self.dead.items() if d.queue == queue]
            ids = None
        pairs = admin.requeue_dead_letters(self.db, self.app.sql, ids=ids, queue=queue)
        by_letter = {self.dead[j].dead_letter_id: j for j in chosen}
        assert sorted(p[0] for p in pairs) == sorted(by_letter)
        event(f"requeue: {mode}, {len(pairs)} requeued")
        due = self._read_next_run_at([p[1] for p in pairs])
        for letter_id, new_id in pairs:
            old = self.dead.pop(by_letter[letter_id])
            self.requeued[old.job_id] = new_id
            self._add(ModelJob(new_id, old.queue, old.task, old.priority, old.max_attempts,
                               due[new_id]))

    # --- the invariant -------------------------------------------------------------------

    def _learn_dead_letter_ids(self) -> None:
        rows = self.db.execute(sql.SQL("SELECT id, job_id FROM {}").format(
            sql.Identifier(self.app.schema, "dead_letters"))).fetchall()
        for letter_id, job_id in rows:
            if job_id in self.dead:
                self.dead[job_id].dead_letter_id = letter_id

    @invariant()
    def database_matches_the_model(self) -> None:
        """Same rows as the model; every job id in exactly one place."""
        schema = self.app.schema
        rows = self.db.execute(sql.SQL(
            "SELECT id, queue, task, priority, state, attempts, max_attempts, next_run_at, "
            "lease_token, lease_expires_at, worker_id, last_error FROM {}"
        ).format(sql.Identifier(schema, "jobs"))).fetchall()
        assert {r[0]: tuple(r[1:]) for r in rows} == {
            i: j.row() for i, j in self.jobs.items()}
        for r in rows:  # running <=> token and lease; pending <=> neither
            assert (r[4] == "running") == (r[8] is not None) == (r[9] is not None)
        dead_rows = self.db.execute(sql.SQL(
            "SELECT job_id, queue, task, priority, attempts, max_attempts, error FROM {}"
        ).format(sql.Identifier(schema, "dead_letters"))).fetchall()
        assert len(dead_rows) == len({r[0] for r in dead_rows}), "a job buried twice"
        assert {r[0]: tuple(r[1:]) for r in dead_rows} == {
            i: d.row() for i, d in self.dead.items()}

        places = Counter([*self.jobs, *self.dead, *self.completed, *self.requeued])
        assert set(places) == self.ever, "a job id vanished or appeared from nowhere"
        assert all(n == 1 for n in places.values()), [i for i, n in places.items() if n > 1]
        assert set(self.requeued.values()) <= self.ever


def test_job_lifecycle_state_machine(app, db, pg_url):
    """Random sequences of every statement keep the database equal to the model."""
    task = app.task(name="t")(lambda **kwargs: None)
    with psycopg.connect(pg_url) as conn:
        run_state_machine_as_test(
            lambda: JobsMachine(app, task, db, conn),
            settings=settings(max_examples=50, stateful_step_count=40, deadline=None,
                              suppress_health_check=[HealthCheck.function_scoped_fixture,
                                                     HealthCheck.too_slow]),
        )


def test_replayed_flush_does_not_count_twice_in_job_history(app, conn, db, schema):
    """BUG: COMPLETE_BATCH upserts job_history from the batch it is given, whether or not
    the guarded writes matched; a flush replayed after a lost connection (or a late
    outcome whose lease was lost) counts again in job_history and `pgjobs stats`."""
    task = app.task(name="t")(lambda **kwargs: None)
    task.enqueue(conn)
    conn.commit()
    (job,) = store_support.claim(db, app, limit=1, worker_id="w")

    def flush() -> tuple[int, int, int]:
        written = store_support.complete(db, app, ok=[job], durations=[(job.id, 0.25)])
        return (written.succeeded, written.retried, written.dead_lettered)

    assert flush() == (1, 0, 0)
    # The same flush again, as ResilientConnection.run does after a connection error.
    assert flush() == (0, 0, 0)
    (succeeded,) = db.execute(sql.SQL("SELECT sum(succeeded) FROM {}").format(
        sql.Identifier(schema, "job_history"))).fetchone()
    assert succeeded == 1, f"one job succeeded once, job_history says {succeeded}"


def test_empty_history_arrays_are_accepted(app, db):
    """A flush whose outcomes were all stale writes nothing at all (no history given)."""
    written = store_support.complete(db, app, ok=[(1, uuid.uuid4())])
    assert written.total == 0
    assert count(db, app.schema, "job_history") == 0

"""Transactional enqueue: single jobs, bulk COPY, unique keys, backpressure, NOTIFY.

The rules are written once, as plans (:mod:`pgjobs.plan`): ``enqueue_one`` /
``enqueue_many`` run them on a psycopg ``Connection``, ``aenqueue_one`` /
``aenqueue_many`` on a psycopg ``AsyncConnection``. Nothing else differs.
"""

from __future__ import annotations

import datetime as dt
import json
from collections import Counter
from collections.abc import Iterable, Iterator, Sequence
from typing import Any

from psycopg import errors as pg_errors

from . import sql as S
from .backpressure import PendingLimits, Reservation
from .connection import async_raw_connection, raw_connection
from .errors import QueueFull, SchemaMissingError
from .metrics import EnqueueInstruments
from .plan import Copy, Execute, Plan, arun, run
from .sql import Statements
from .task import JobSpec
from .tracing import TracingSwitch, get_tracer, send_span

# COPY runs in text format, so args and trace_context (jsonb columns) go as the JSON
# text Task.job() made and validated: a Jsonb wrapper per row would only pass the same
# text through a Python dumper (~1 µs a job, a tenth of enqueue_many's client time).
_COPY_TYPES = ["int8", "text", "text", "text", "int2", "int4", "timestamptz", "text"]
_COPY_DUE_TYPES = ["int8", "text", "text", "text", "int2", "int4", "text"]

#: A unique key whose holder keeps finishing between our insert and our look-up is
#: inserted again; this many rounds, then the caller is told to retry.
_UNIQUE_ROUNDS = 3


class Enqueuer:
    """Writes jobs on the caller's connection; never commits, never opens a connection."""

    def __init__(self, statements: Statements, limits: PendingLimits,
                 instruments: EnqueueInstruments, tracer_provider: Any | None) -> None:
        self._sql = statements
        self._limits = limits
        self._instruments = instruments
        self._tracer = get_tracer(tracer_provider)
        self._tracing = TracingSwitch(tracer_provider)

    # --- the two faces ------------------------------------------------------------------

    def enqueue_one(self, conn: Any, spec: JobSpec) -> int:
        """Insert one job (see ``Task.enqueue``)."""
        return run(raw_connection(conn), self._one(spec))

    async def aenqueue_one(self, aconn: Any, spec: JobSpec) -> int:
        """Insert one job on an async connection (see ``Task.aenqueue``)."""
        return await arun(await async_raw_connection(aconn), self._one(spec))

    def enqueue_many(self, conn: Any, specs: Iterable[JobSpec]) -> list[int]:
        """Insert many jobs in the caller's transaction; returns one id per job, in order.

        All or nothing for backpressure: if any queue would pass its limit, QueueFull is
        raised before anything is written. Jobs without a unique key go through COPY.
        """
        jobs = _checked_jobs(specs)
        if not jobs:
            return []
        return run(raw_connection(conn), self._many(jobs))

    async def aenqueue_many(self, aconn: Any, specs: Iterable[JobSpec]) -> list[int]:
        """``enqueue_many`` on an async connection."""
        jobs = _checked_jobs(specs)
        if not jobs:
            return []
        return await arun(await async_raw_connection(aconn), self._many(jobs))

    # --- the rules ----------------------------------------------------------------------

    def _one(self, spec: JobSpec) -> Plan[int]:
        with send_span(self._tracer, spec.queue, spec.task,
                       switch=self._tracing) as (span, carrier), \
                _schema_errors(self._sql.schema):
            try:
                reservation = yield from self._limits.reserve(spec.queue, 1)
            except QueueFull:
                # A unique key is checked before the limit: a key a live job holds adds
                # nothing, so it gets that job's id even from a full queue. Looked up
                # only when the limit refuses, so the common path stays one round trip.
                holder = yield from self._holder(spec.unique_key)
                if holder is not None:
                    span.set_attribute("messaging.message.id", str(holder))
                    return holder
                self._instruments.rejections.add(1, {"queue": spec.queue})
                raise
            try:
                job_id = yield from self._insert_one(spec, carrier, reservation)
            except BaseException:
                reservation.give_back()
                raise
            span.set_attribute("messaging.message.id", str(job_id))
            return job_id

    def _holder(self, unique_key: str | None) -> Plan[int | None]:
        if unique_key is None:
            return None
        rows = yield Execute(self._sql.of(S.JOB_ID_BY_UNIQUE_KEY), {"unique_key": unique_key})
        return int(rows[0][0]) if rows else None

    def _insert_one(self, spec: JobSpec, carrier: dict[str, str] | None,
                    reservation: Reservation) -> Plan[int]:
        params: dict[str, Any] = {
            "queue": spec.queue, "task": spec.task, "args": spec.args_json,
            "priority": spec.priority, "max_attempts": spec.max_attempts,
            "unique_key": spec.unique_key,
            "trace": json.dumps(carrier) if carrier else None,
        }
        if spec.delay > 0:
            params["delay"] = spec.delay
            statement = self._sql.of(S.ENQUEUE_DELAYED)
        else:
            params["channel"] = self._sql.channel
            params["wake_key"] = self._sql.wake_key
            statement = self._sql.of(S.ENQUEUE_WAKE)
        for _ in range(_UNIQUE_ROUNDS):
            rows = yield Execute(statement, params)
            if rows:
                self._instruments.enqueued.add(1, {"queue": spec.queue, "task": spec.task})
                return int(rows[0][0])
            # ON CONFLICT DO NOTHING: a live job holds the key...
            holder = yield from self._holder(spec.unique_key)
            if holder is not None:
                reservation.give_back()  # nothing new was added to the queue
                return holder
            # ...and finished before the look-up: insert again, by the same statement
            # (NOTIFY, trace context and the enqueued count like any first insert).
        raise _key_kept_changing(spec.unique_key)

    def _many(self, jobs: list[JobSpec]) -> Plan[list[int]]:
        per_queue = Counter(job.queue for job in jobs)
        queue_name = jobs[0].queue if len(per_queue) == 1 else "(several queues)"
        with send_span(self._tracer, queue_name, jobs[0].task, len(jobs),
                       switch=self._tracing) as (_, carrier), \
                _schema_errors(self._sql.schema):
            try:
                reservations = yield from self._reserve_all(per_queue)
            except QueueFull as full:
                keys = sorted({j.unique_key for j in jobs if j.unique_key is not None})
                if not keys:
                    self._instruments.rejections.add(full.requested, {"queue": full.queue})
                    raise
                # Keys held by live jobs add nothing: ask again for the jobs that would.
                rows = yield Execute(self._sql.of(S.JOB_IDS_BY_UNIQUE_KEYS), {"unique_keys": keys})
                try:
                    reservations = yield from self._reserve_all(
                        _new_jobs_per_queue(jobs, {key for key, _ in rows}))
                except QueueFull as still_full:
                    self._instruments.rejections.add(
                        still_full.requested, {"queue": still_full.queue})
                    raise
            try:
                ids, inserted = yield from self._insert_many(jobs, carrier)
            except BaseException:
                for reservation in reservations:
                    reservation.give_back()
                raise
        added = Counter(jobs[i].queue for i in inserted)
        for reservation in reservations:  # places of jobs a live key absorbed
            reservation.give_back(reservation.count - added[reservation.queue])
        for (queue, task), count in Counter(
                (jobs[i].queue, jobs[i].task) for i in inserted).items():
            self._instruments.enqueued.add(count, {"queue": queue, "task": task})
        return ids

    def _reserve_all(self, per_queue: Counter[str]) -> Plan[list[Reservation]]:
        """Places in every queue, or none (QueueFull for the first that refuses)."""
        taken: list[Reservation] = []
        try:
            for queue, count in per_queue.items():
                if count > 0:
                    taken.append((yield from self._limits.reserve(queue, count)))
        except BaseException:
            for reservation in taken:
                reservation.give_back()
            raise
        return taken

    def _insert_many(self, jobs: list[JobSpec], carrier: dict[str, str] | None
                     ) -> Plan[tuple[list[int], list[int]]]:
        """Returns one id per job, and the indexes of the jobs actually inserted."""
        rows = yield Execute(
            self._sql.of(S.RESERVE_JOB_IDS),
            {"jobs_table": self._sql.jobs_table, "count": len(jobs)},
        )
        server_now: dt.datetime = rows[0][0]
        ids: list[int] = rows[0][1]
        trace = json.dumps(carrier) if carrier else None
        if any(job.unique_key is not None for job in jobs):
            result, inserted = yield from self._insert_unique(jobs, ids, server_now, trace)
        else:
            if any(job.delay > 0 for job in jobs):
                yield Copy(self._sql.of(S.COPY_JOBS), _COPY_TYPES,
                           _copy_rows(jobs, ids, server_now, trace))
            else:
                yield Copy(self._sql.of(S.COPY_DUE_JOBS), _COPY_DUE_TYPES,
                           _copy_due_rows(jobs, ids, trace))
            result, inserted = list(ids), list(range(len(jobs)))
        due = sorted({jobs[i].queue for i in inserted if jobs[i].delay <= 0})
        if due:
            yield Execute(self._sql.of(S.WAKE_QUEUES), {"channel": self._sql.channel, "queues": due,
                                                  "wake_key": self._sql.wake_key})
        return result, inserted

    def _insert_unique(self, jobs: list[JobSpec], ids: list[int], server_now: dt.datetime,
                       trace: str | None) -> Plan[tuple[list[int], list[int]]]:
        """INSERT … ON CONFLICT DO NOTHING; a conflicting job yields the live job's id.

        A holder that finishes between the insert and the look-up leaves its key free:
        those jobs are inserted again (with the ids reserved for them, still unused), so
        every job gets exactly one id.
        """
        second = dt.timedelta(seconds=1)
        result: list[int | None] = [None] * len(jobs)
        inserted: list[int] = []
        todo = list(range(len(jobs)))
        for _ in range(_UNIQUE_ROUNDS):
            batch = [jobs[i] for i in todo]
            rows = yield Execute(self._sql.of(S.ENQUEUE_MANY_UNIQUE), {
                "ids": [ids[i] for i in todo],
                "queues": [j.queue for j in batch],
                "tasks": [j.task for j in batch],
                "args": [j.args_json for j in batch],
                "priorities": [j.priority for j in batch],
                "max_attempts": [j.max_attempts for j in batch],
                "next_run_ats": [server_now + j.delay * second for j in batch],
                "unique_keys": [j.unique_key for j in batch],
                "traces": [trace] * len(batch),
            })
            written = {r[0] for r in rows}
            conflicted = []
            for i in todo:
                if ids[i] in written:
                    result[i] = ids[i]
                    inserted.append(i)
                else:
                    conflicted.append(i)
            if not conflicted:
                break
            keys = sorted({key for i in conflicted if (key := jobs[i].unique_key) is not None})
            holders: dict[str, int] = {}
            if keys:
                holders = dict((yield Execute(
                    self._sql.of(S.JOB_IDS_BY_UNIQUE_KEYS), {"unique_keys": keys})))
            todo = []
            for i in conflicted:
                holder = holders.get(jobs[i].unique_key or "")
                if holder is None:
                    todo.append(i)  # the holder finished meanwhile: insert it again
                else:
                    result[i] = holder
            if not todo:
                break
        else:
            raise _key_kept_changing(jobs[todo[0]].unique_key)
        return [int(i) for i in result if i is not None], sorted(inserted)


def _checked_jobs(specs: Iterable[JobSpec]) -> list[JobSpec]:
    jobs = list(specs)
    for job in jobs:
        if not isinstance(job, JobSpec):
            raise TypeError(
                f"enqueue_many takes jobs built with task.job(...), got {type(job).__name__}"
            )
    return jobs


def _new_jobs_per_queue(jobs: list[JobSpec], held: set[str]) -> Counter[str]:
    """How many jobs each queue would really gain: a job whose key a live job holds (or
    an earlier job of the batch takes) adds nothing."""
    counts: Counter[str] = Counter()
    taken: set[str] = set()
    for job in jobs:
        if job.unique_key is None:
            counts[job.queue] += 1
        elif job.unique_key not in held and job.unique_key not in taken:
            taken.add(job.unique_key)
            counts[job.queue] += 1
    return counts


def _copy_rows(jobs: list[JobSpec], ids: list[int], server_now: dt.datetime,
               trace: str | None) -> Iterator[Sequence[Any]]:
    second = dt.timedelta(seconds=1)
    for job_id, job in zip(ids, jobs, strict=True):
        yield (
            job_id, job.queue, job.task, job.args_json, job.priority, job.max_attempts,
            server_now + job.delay * second if job.delay else server_now, trace,
        )


def _copy_due_rows(jobs: list[JobSpec], ids: list[int], trace: str | None
                   ) -> Iterator[Sequence[Any]]:
    for job_id, job in zip(ids, jobs, strict=True):
        yield job_id, job.queue, job.task, job.args_json, job.priority, job.max_attempts, trace


def _key_kept_changing(unique_key: str | None) -> RuntimeError:
    return RuntimeError(
        f"unique_key {unique_key!r} kept changing hands while enqueueing; retry the enqueue"
    )


class _schema_errors:
    """Turn "relation does not exist" into an error that says to run `pgjobs migrate`."""

    def __init__(self, schema: str) -> None:
        self._schema = schema

    def __enter__(self) -> None:
        return None

    def __exit__(self, exc_type: Any, exc: BaseException | None, tb: Any) -> None:
        # UndefinedFunction: a schema older than migration 0005 (wake_waiting_fetchers).
        if isinstance(exc, pg_errors.UndefinedTable | pg_errors.InvalidSchemaName
                      | pg_errors.UndefinedFunction):
            raise SchemaMissingError(self._schema) from exc

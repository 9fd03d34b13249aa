"""Transactional enqueue: single jobs, bulk COPY, unique keys, backpressure, NOTIFY."""

from __future__ import annotations

import datetime as dt
import json
from collections import Counter
from collections.abc import Iterable
from typing import Any

import psycopg
from psycopg import errors as pg_errors
from psycopg.types.json import Jsonb

from .backpressure import PendingLimits, Reservation
from .connection import raw_connection
from .errors import QueueFull, SchemaMissingError
from .metrics import EnqueueInstruments
from .sql import Statements
from .task import JobSpec
from .tracing import send_span

_COPY_TYPES = ["int8", "text", "text", "jsonb", "int2", "int4", "timestamptz", "jsonb"]


def _identity(text: str) -> str:
    # args are serialised (and validated) once, by Task.job(); COPY must not redo it.
    return text


class Enqueuer:
    """Writes jobs on the caller's connection; never commits, never opens a connection."""

    def __init__(self, statements: Statements, limits: PendingLimits,
                 instruments: EnqueueInstruments, tracer: Any) -> None:
        self._sql = statements
        self._limits = limits
        self._instruments = instruments
        self._tracer = tracer

    def _reserve(self, pgconn: psycopg.Connection[Any], queue: str, adding: int
                 ) -> Reservation:
        try:
            return self._limits.reserve(pgconn, queue, adding)
        except QueueFull:
            self._instruments.rejections.add(adding, {"queue": queue})
            raise

    def enqueue_one(self, conn: Any, spec: JobSpec) -> int:
        """Insert one job (see ``Task.enqueue``)."""
        pgconn = raw_connection(conn)
        with send_span(self._tracer, spec.queue, spec.task) as (span, carrier), \
                _schema_errors(self._sql.schema):
            reservation = self._reserve(pgconn, spec.queue, 1)
            try:
                job_id = self._insert_one(pgconn, spec, carrier, reservation)
            except BaseException:
                reservation.give_back()
                raise
            span.set_attribute("messaging.message.id", str(job_id))
            return job_id

    def _insert_one(self, pgconn: psycopg.Connection[Any], spec: JobSpec,
                    carrier: dict[str, str] | None, reservation: Reservation) -> int:
        params = {
            "queue": spec.queue, "task": spec.task, "args": spec.args_json,
            "priority": spec.priority, "max_attempts": spec.max_attempts,
            "unique_key": spec.unique_key,
            "trace": json.dumps(carrier) if carrier else None,
        }
        if spec.delay > 0:
            params["delay"] = spec.delay
            row = pgconn.execute(self._sql.ENQUEUE_DELAYED, params).fetchone()
        else:
            params["channel"] = self._sql.channel
            row = pgconn.execute(self._sql.ENQUEUE_NOTIFY, params).fetchone()
        if row is not None:
            self._instruments.enqueued.add(1, {"queue": spec.queue, "task": spec.task})
            return int(row[0])
        return self._existing_unique(pgconn, spec, reservation)

    def _existing_unique(self, pgconn: psycopg.Connection[Any], spec: JobSpec,
                         reservation: Reservation) -> int:
        # ON CONFLICT DO NOTHING: a live job holds the key. It may finish between the two
        # statements, in which case inserting again is right.
        for _ in range(3):
            row = pgconn.execute(
                self._sql.JOB_ID_BY_UNIQUE_KEY, {"unique_key": spec.unique_key}
            ).fetchone()
            if row is not None:
                reservation.give_back()  # nothing new was added to the queue
                return int(row[0])
            ids = self._insert_unique(pgconn, [spec])
            if ids[0] is not None:
                return ids[0]
        raise RuntimeError(f"unique_key {spec.unique_key!r} kept changing hands; retry")

    def enqueue_many(self, conn: Any, specs: Iterable[JobSpec]) -> list[int]:
        """Insert many jobs in the caller's transaction; returns their ids in order.

        All or nothing for backpressure: if any queue would pass its limit, QueueFull is
        raised before anything is written. Jobs without a unique key go through COPY.
        """
        jobs = list(specs)
        for job in jobs:
            if not isinstance(job, JobSpec):
                raise TypeError(
                    f"enqueue_many takes jobs built with task.job(...), got {type(job).__name__}"
                )
        if not jobs:
            return []
        pgconn = raw_connection(conn)
        per_queue = Counter(job.queue for job in jobs)
        queue_name = jobs[0].queue if len(per_queue) == 1 else "(several queues)"
        with send_span(self._tracer, queue_name, jobs[0].task, len(jobs)) as (_, carrier), \
                _schema_errors(self._sql.schema):
            reservations = []
            try:
                for queue, count in per_queue.items():
                    reservations.append(self._reserve(pgconn, queue, count))
                result = self._insert_many(pgconn, jobs, carrier)
            except BaseException:
                for reservation in reservations:
                    reservation.give_back()
                raise
        for (queue, task), count in Counter((j.queue, j.task) for j in jobs).items():
            self._instruments.enqueued.add(count, {"queue": queue, "task": task})
        return [int(i) for i in result if i is not None]

    def _insert_many(self, pgconn: psycopg.Connection[Any], jobs: list[JobSpec],
                     carrier: dict[str, str] | None) -> list[int | None]:
        row = pgconn.execute(
            self._sql.RESERVE_JOB_IDS,
            {"jobs_table": self._sql.jobs_table, "count": len(jobs)},
        ).fetchone()
        assert row is not None
        server_now: dt.datetime = row[0]
        ids: list[int] = row[1]
        trace = json.dumps(carrier) if carrier else None
        if any(job.unique_key is not None for job in jobs):
            result = self._insert_unique(pgconn, jobs, ids, server_now, trace)
        else:
            self._copy(pgconn, jobs, ids, server_now, trace)
            result = list(ids)
        due = sorted({job.queue for job in jobs if job.delay <= 0})
        if due:
            pgconn.execute(
                self._sql.NOTIFY_QUEUES, {"channel": self._sql.channel, "queues": due}
            )
        return list(result)

    def _copy(
        self,
        pgconn: psycopg.Connection[Any],
        jobs: list[JobSpec],
        ids: list[int],
        server_now: dt.datetime,
        trace: str | None,
    ) -> None:
        second = dt.timedelta(seconds=1)
        trace_value = Jsonb(trace, dumps=_identity) if trace else None
        with pgconn.cursor() as cur, cur.copy(self._sql.COPY_JOBS) as copy:
            copy.set_types(_COPY_TYPES)
            write = copy.write_row
            for job_id, job in zip(ids, jobs, strict=True):
                write((
                    job_id, job.queue, job.task, Jsonb(job.args_json, dumps=_identity),
                    job.priority, job.max_attempts,
                    server_now + job.delay * second if job.delay else server_now,
                    trace_value,
                ))

    def _insert_unique(
        self,
        pgconn: psycopg.Connection[Any],
        jobs: list[JobSpec],
        ids: list[int] | None = None,
        server_now: dt.datetime | None = None,
        trace: str | None = None,
    ) -> list[int | None]:
        """INSERT … ON CONFLICT DO NOTHING; a conflicting job yields the live job's id."""
        if ids is None or server_now is None:
            row = pgconn.execute(
                self._sql.RESERVE_JOB_IDS,
                {"jobs_table": self._sql.jobs_table, "count": len(jobs)},
            ).fetchone()
            assert row is not None
            server_now, ids = row[0], row[1]
        second = dt.timedelta(seconds=1)
        inserted = {
            r[0]
            for r in pgconn.execute(
                self._sql.ENQUEUE_MANY_UNIQUE,
                {
                    "ids": ids,
                    "queues": [j.queue for j in jobs],
                    "tasks": [j.task for j in jobs],
                    "args": [j.args_json for j in jobs],
                    "priorities": [j.priority for j in jobs],
                    "max_attempts": [j.max_attempts for j in jobs],
                    "next_run_ats": [server_now + j.delay * second for j in jobs],
                    "unique_keys": [j.unique_key for j in jobs],
                    "traces": [trace] * len(jobs),
                },
            ).fetchall()
        }
        missing = [j.unique_key for i, j in zip(ids, jobs, strict=True) if i not in inserted]
        holders: dict[str, int] = {}
        if missing:
            holders = dict(
                pgconn.execute(
                    self._sql.JOB_IDS_BY_UNIQUE_KEYS, {"unique_keys": missing}
                ).fetchall()
            )
        result: list[int | None] = []
        for job_id, job in zip(ids, jobs, strict=True):
            if job_id in inserted:
                result.append(job_id)
            else:
                result.append(holders.get(job.unique_key) if job.unique_key else None)
        return result


class _schema_errors:
    """Turn "relation does not exist" into an error that says to run `pgjobs migrate`."""

    def __init__(self, schema: str) -> None:
        self._schema = schema

    def __enter__(self) -> None:
        return None

    def __exit__(self, exc_type: Any, exc: BaseException | None, tb: Any) -> None:
        if isinstance(exc, pg_errors.UndefinedTable | pg_errors.InvalidSchemaName):
            raise SchemaMissingError(self._schema) from exc

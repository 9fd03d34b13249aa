"""The typed job store: every statement the worker and the admin commands run, as a
method with typed parameters and typed rows.

The statement texts live in :mod:`pgjobs.sql` (one home, composed with the schema);
this module is how they are *called*: which parameters, which row type, and whether the
statement is prepared. The prepared-statement rules are all here:

- claims and the next-due probe are prepared (planning is most of an idle pickup's
  round trip; their text is written so the generic plan is primary-key lookups);
- completion flushes are prepared only when small (``PREPARED_FLUSH_MAX``): the generic
  plan of a large one joins its id arrays pairwise, O(n²);
- statements taking id arrays of any size (lease renewal, release) are never prepared;
- maintenance statements are never prepared (rare; planned for their arguments);
- ``prepare=False`` (``--poll-only``, PgBouncer in transaction mode) prepares nothing.

Every time-dependent method takes ``now``: ``None`` means the server's clock, a
timestamp is a test's fake clock (see :mod:`pgjobs.worker.clock`).
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any

import psycopg
from psycopg.rows import args_row
from psycopg.sql import Composed

from . import sql as S
from .jobinfo import JobInfo
from .sql import Statements, compose, statements

#: Flushes of at most this many outcomes use a prepared statement (see the module doc).
PREPARED_FLUSH_MAX = 32

Conn = psycopg.Connection[Any]


def array_literal(values: Iterable[int | float | str]) -> str:
    """A PostgreSQL array literal of job ids, lease tokens or seconds, sent as one
    parameter (the statements cast it, e.g. ``%(ok_ids)s::bigint[]``).

    Adapting lists element by element was the largest cost in the completer's profile.
    Numbers and UUID text never contain commas, quotes, braces or spaces, so joining
    their ``str()`` is an exact literal; never use this for arbitrary text.
    """
    return "{" + ",".join(map(str, values)) + "}"


#: Finished job ids per finish notification (NOTIFY payloads stop at 8,000 bytes).
FINISHED_IDS_PER_PAYLOAD = 400

# The completion statement's variant for (any kept results, any retries or snoozes).
_COMPLETE_VARIANTS = {
    (True, True): S.COMPLETE_BATCH, (False, True): S.COMPLETE_BATCH_NO_RESULTS,
    (True, False): S.COMPLETE_BATCH_NO_RETRIES, (False, False): S.COMPLETE_BATCH_PLAIN,
}


def finished_payloads(ids: Sequence[int]) -> list[str]:
    """Comma-separated job ids, a few hundred per NOTIFY payload (``app.wait_for``)."""
    step = FINISHED_IDS_PER_PAYLOAD
    return [",".join(map(str, ids[i:i + step])) for i in range(0, len(ids), step)]


# --- rows ---------------------------------------------------------------------------------


@dataclass(slots=True)
class ClaimedJob:
    """A job this worker holds a lease on (one row returned by the claim)."""

    id: int
    queue: str
    task: str
    args: Any  # JSON text as claimed; the executor decodes it
    priority: int
    attempt: int
    max_attempts: int
    due_epoch: float  # next_run_at as Unix time: cheaper to load than a datetime
    created_at: dt.datetime
    token: str  # the lease token (a UUID) as text: loaded and sent back without parsing
    trace_context: Any  # JSON text or None

    @classmethod
    def from_row(cls, row: Sequence[Any]) -> ClaimedJob:
        return cls(*row)


@dataclass(frozen=True, slots=True)
class Written:
    """How many outcomes of a flush were written (the rest had lost their lease)."""

    succeeded: int
    retried: int
    dead_lettered: int
    snoozed: int = 0
    cancelled: int = 0

    @property
    def total(self) -> int:
        return (self.succeeded + self.retried + self.dead_lettered + self.snoozed
                + self.cancelled)


@dataclass(frozen=True, slots=True)
class KeptResult:
    """A succeeded job's JSON return value, kept ``ttl`` seconds (``result_ttl``)."""

    job: ClaimedJob
    value: str  # JSON text
    ttl: float
    self_completed: bool = False  # its handler called current_job().complete(conn)


@dataclass(frozen=True, slots=True)
class Renewal:
    """One job in hand after a lease renewal: still ours, and renewed now or not
    (a row locked by another transaction is skipped this round, never waited for)."""

    id: int
    renewed: bool


@dataclass(frozen=True, slots=True)
class RescuedJob:
    """A job whose lease expired: back to pending (``rescued``) or buried (``dead``)."""

    outcome: str
    id: int
    queue: str
    task: str


@dataclass(frozen=True, slots=True)
class WorkerRow:
    """This worker's row in ``workers`` (written at start and with each heartbeat)."""

    id: str
    hostname: str
    pid: int
    queues: list[str] | None
    concurrency: int
    lease_seconds: float
    jobs_in_hand: int
    executors_busy: int


@dataclass(frozen=True, slots=True)
class QueueStats:
    """One row of ``queue_stats`` (the layout of ``pgjobs stats --json``)."""

    queue: str
    pending: int
    scheduled: int
    running: int
    dead: int
    oldest_pending_age_seconds: float | None
    limit: int | None
    paused: bool


@dataclass(frozen=True, slots=True)
class QueueRow:
    """One row of ``pgjobs queues list`` (its ``--json`` keys)."""

    name: str
    limit: int | None
    paused: bool
    pending: int
    running: int


@dataclass(frozen=True, slots=True)
class WorkerStatus:
    """One row of the ``worker_status`` view."""

    id: str
    hostname: str
    pid: int
    queues: list[str] | None
    concurrency: int
    started_at: dt.datetime
    last_heartbeat_at: dt.datetime
    jobs_in_hand: int
    executors_busy: int
    alive: bool


@dataclass(frozen=True, slots=True)
class DeadLetter:
    """One row of ``dead_letters``."""

    id: int
    job_id: int
    queue: str
    task: str
    args: Any
    priority: int
    attempts: int
    max_attempts: int
    error: str
    created_at: dt.datetime
    failed_at: dt.datetime
    reason: str = "failed"


# --- the store ----------------------------------------------------------------------------


class JobStore:
    """The statements of one schema, called with typed arguments on a given connection."""

    def __init__(self, schema_or_statements: str | Statements, *, prepare: bool = True) -> None:
        self.sql = (statements(schema_or_statements)
                    if isinstance(schema_or_statements, str) else schema_or_statements)
        self.prepare = prepare

    def _q(self, template: str) -> Composed:
        """A statement text of :mod:`pgjobs.sql`, composed for this schema (cached)."""
        return compose(self.sql.schema, template)

    @property
    def schema(self) -> str:
        return self.sql.schema

    # --- start-up ------------------------------------------------------------------------

    def schema_exists(self, conn: Conn) -> bool:
        row = conn.execute(self._q(S.SCHEMA_EXISTS), {"jobs_table": self.sql.jobs_table},
                           prepare=False).fetchone()
        return bool(row and row[0])

    # --- claims --------------------------------------------------------------------------

    def claim(self, conn: Conn, *, limit: int, lease_seconds: float, worker_id: str,
              queues: Sequence[str] | None, now: dt.datetime | None,
              jump_paused: bool = False) -> list[ClaimedJob]:
        """Claim up to ``limit`` due jobs (all queues when ``queues`` is None).

        ``jump_paused`` (see :meth:`paused_backlog`) picks the all-queue claim that jumps
        over paused queues' backlogs; either statement is correct whatever is paused.
        """
        params: dict[str, Any] = {"now": now, "limit": limit, "lease_seconds": lease_seconds,
                                  "worker_id": worker_id}
        if queues is None:
            statement = self._q(S.CLAIM_ANY_QUEUE_PAUSED_BACKLOG if jump_paused
                                else S.CLAIM_ANY_QUEUE)
        else:
            statement = self._q(S.CLAIM_QUEUES)
            params["queues"] = list(queues)
        cur = conn.cursor(row_factory=args_row(ClaimedJob))
        return cur.execute(statement, params, prepare=self.prepare).fetchall()

    def paused_backlog(self, conn: Conn, *, enough: int) -> bool:
        """Whether paused queues hold at least ``enough`` due jobs (read in bounded time)."""
        row = conn.execute(self._q(S.PAUSED_BACKLOG), {"enough": enough},
                           prepare=self.prepare).fetchone()
        return bool(row and row[0])

    def seconds_until_next_due(self, conn: Conn, *, queues: Sequence[str] | None,
                               now: dt.datetime | None) -> float | None:
        """Seconds until the earliest pending job is due (negative: overdue); None: none."""
        params: dict[str, Any] = {"now": now}
        if queues is None:
            statement = self._q(S.NEXT_DUE_ANY_QUEUE)
        else:
            statement = self._q(S.NEXT_DUE_QUEUES)
            params["queues"] = list(queues)
        row = conn.execute(statement, params, prepare=self.prepare).fetchone()
        if row is None or not isinstance(row[0], dt.timedelta):
            return None
        return float(row[0].total_seconds())

    def try_wake_key(self, conn: Conn) -> bool:
        """The last step before a fetcher waits for a NOTIFY (autocommit connection).

        True when the wake-up key was granted: every enqueue that did not see this
        fetcher's waiting locks has committed, so one more claim finds its jobs. False:
        claim again shortly and try again (see ``sql.TRY_WAKE_KEY``)."""
        row = conn.execute(self._q(S.TRY_WAKE_KEY), {"wake_key": self.sql.wake_key},
                           prepare=self.prepare).fetchone()
        return bool(row and row[0])

    def hold_waiting_locks(self, conn: Conn, *, queues: Sequence[str] | None) -> bool:
        """Take the session locks that make enqueues to ``queues`` (None: all) notify.

        On the LISTEN connection, so they end with it. False when one was refused (an
        enqueue probing it at that instant): none is held then."""
        row = conn.execute(self._q(S.HOLD_WAITING_LOCKS),
                           {"wake_key": self.sql.wake_key,
                            "queues": list(queues) if queues is not None else None},
                           prepare=False).fetchone()
        if row and row[0]:
            return True
        self.release_waiting_locks(conn)
        return False

    def waiting_listeners(self, conn: Conn) -> list[str]:
        """Application names of the LISTEN connections whose fetchers wait for a NOTIFY
        (``pgjobs worker <id>``), one per waiting lock."""
        rows = conn.execute(self._q(S.WAITING_LISTENERS), {"wake_key": self.sql.wake_key},
                            prepare=False).fetchall()
        return [str(r[0]) for r in rows]

    def release_waiting_locks(self, conn: Conn) -> None:
        """Enqueues need not notify this connection's fetcher any more."""
        conn.execute(self._q(S.RELEASE_WAITING_LOCKS), prepare=False)

    # --- outcomes ------------------------------------------------------------------------

    def complete(
        self, conn: Conn, *,
        succeeded: Sequence[ClaimedJob],
        retried: Sequence[tuple[ClaimedJob, float, str]],
        dead: Sequence[tuple[ClaimedJob, str]],
        durations: Sequence[tuple[int, float]],
        now: dt.datetime | None,
        cancelled: Sequence[tuple[ClaimedJob, str]] = (),
        snoozed: Sequence[tuple[ClaimedJob, float]] = (),
        results: Sequence[KeptResult] = (),
    ) -> Written:
        """One statement: successes leave ``jobs`` (keeping ``results`` of tasks with
        ``result_ttl``), retries go back to pending after their delay, snoozes too with
        their attempt given back, dead letters and cancelled jobs move to
        ``dead_letters``; every write guarded by the lease token; finished ids are
        announced on the finish channel. Error texts must already be storable."""
        retries: list[tuple[ClaimedJob, float, str | None, str]] = [
            (j, delay, error, "f") for j, delay, error in retried]
        retries += [(j, delay, None, "t") for j, delay in snoozed]
        ended = [(j, error, "failed") for j, error in dead]
        ended += [(j, error, "cancelled") for j, error in cancelled]
        params = {
            "now": now,
            "ok_ids": array_literal(j.id for j in succeeded),
            "ok_tokens": array_literal(j.token for j in succeeded),
            "retry_ids": array_literal(j.id for j, _, _, _ in retries),
            "retry_tokens": array_literal(j.token for j, _, _, _ in retries),
            "retry_delays": array_literal(delay for _, delay, _, _ in retries),
            "retry_errors": [error for _, _, error, _ in retries],
            "retry_uncharged": array_literal(flag for _, _, _, flag in retries),
            "dead_ids": array_literal(j.id for j, _, _ in ended),
            "dead_tokens": array_literal(j.token for j, _, _ in ended),
            "dead_errors": [error for _, error, _ in ended],
            "dead_reasons": array_literal(reason for _, _, reason in ended),
            "all_ids": array_literal(i for i, _ in durations),
            "all_durations": array_literal(d for _, d in durations),
            "finished_channel": self.sql.finished_channel,
            "finished_payloads": finished_payloads(
                [j.id for j in succeeded] + [j.id for j, _, _ in ended]),
            # Tasks with result_ttl only: empty arrays (and a skipped branch) otherwise.
            "res_ids": array_literal(r.job.id for r in results),
            "res_values": [r.value for r in results],
            "res_ttls": array_literal(r.ttl for r in results),
            "res_args": [r.job.args if isinstance(r.job.args, str) else None
                         for r in results],
            "res_attempts": array_literal(r.job.attempt for r in results),
            "res_max_attempts": array_literal(r.job.max_attempts for r in results),
            "res_created": [r.job.created_at for r in results],
            "res_queues": [r.job.queue for r in results],
            "res_tasks": [r.job.task for r in results],
            "res_self_completed": array_literal("t" if r.self_completed else "f"
                                                for r in results),
        }
        total = len(succeeded) + len(retries) + len(ended)
        prepare = self.prepare and total <= PREPARED_FLUSH_MAX
        statement = _COMPLETE_VARIANTS[bool(results), bool(retries)]
        row = conn.execute(self._q(statement), params, prepare=prepare).fetchone()
        assert row is not None
        return Written(int(row[0]), int(row[1]), int(row[2]), int(row[4]), int(row[5]))

    def release(self, conn: Conn, jobs: Sequence[ClaimedJob]) -> int:
        """Shutdown: back to pending without charging the attempt; returns how many."""
        params = {"ids": array_literal(j.id for j in jobs),
                  "tokens": array_literal(j.token for j in jobs)}
        return len(conn.execute(self._q(S.RELEASE_JOBS), params, prepare=False).fetchall())

    def bury_unwritable(self, conn: Conn, job: ClaimedJob, error: str,
                        now: dt.datetime | None) -> bool:
        """Last resort for an outcome the server refused: dead letter, names bounded."""
        params = {"now": now, "id": job.id, "token": job.token, "error": error}
        return bool(conn.execute(self._q(S.BURY_UNWRITABLE), params, prepare=False).fetchall())

    # --- leases --------------------------------------------------------------------------

    def renew_leases(self, conn: Conn, ids: Sequence[int], tokens: Sequence[str], *,
                     lease_seconds: float, now: dt.datetime | None) -> list[Renewal]:
        """Renew every lease still ours without waiting on rows locked by others."""
        params = {"now": now, "ids": array_literal(ids), "tokens": array_literal(tokens),
                  "lease_seconds": lease_seconds}
        cur = conn.cursor(row_factory=args_row(Renewal))
        return cur.execute(self._q(S.RENEW_LEASES), params, prepare=False).fetchall()

    def cancel_requests(self, conn: Conn, *, worker_id: str) -> list[int]:
        """This worker's running jobs someone asked to cancel (a plain read)."""
        rows = conn.execute(self._q(S.CANCEL_REQUESTS_OF_WORKER), {"worker_id": worker_id},
                            prepare=self.prepare).fetchall()
        return [int(r[0]) for r in rows]

    def rescue_expired(self, conn: Conn, *, limit: int,
                       now: dt.datetime | None) -> list[RescuedJob]:
        """Jobs whose lease expired: back to pending, or to dead_letters if out of attempts."""
        cur = conn.cursor(row_factory=args_row(RescuedJob))
        return cur.execute(self._q(S.RESCUE_EXPIRED), {"now": now, "limit": limit},
                           prepare=False).fetchall()

    def bury_oldest_expired(self, conn: Conn, *, error: str,
                            now: dt.datetime | None) -> list[RescuedJob]:
        """Rescue's last resort: the oldest expired job to dead_letters, names bounded."""
        rows = conn.execute(self._q(S.BURY_OLDEST_EXPIRED), {"now": now, "error": error},
                            prepare=False).fetchall()
        return [RescuedJob("dead", r[0], r[1], r[2]) for r in rows]

    # --- workers registry ----------------------------------------------------------------

    def register_worker(self, conn: Conn, row: WorkerRow, now: dt.datetime | None) -> None:
        params = {"now": now, "id": row.id, "hostname": row.hostname, "pid": row.pid,
                  "queues": row.queues, "concurrency": row.concurrency,
                  "lease_seconds": row.lease_seconds, "jobs_in_hand": row.jobs_in_hand,
                  "executors_busy": row.executors_busy}
        conn.execute(self._q(S.REGISTER_WORKER), params, prepare=False)

    def delete_worker(self, conn: Conn, worker_id: str) -> None:
        conn.execute(self._q(S.DELETE_WORKER), {"id": worker_id}, prepare=False)

    # --- maintenance ---------------------------------------------------------------------

    def set_local_statement_timeout(self, conn: Conn, seconds: float) -> None:
        """Bound the statements of the current transaction (PgBouncer-safe: local)."""
        conn.execute(self._q(S.SET_LOCAL_STATEMENT_TIMEOUT),
                     {"ms": str(max(1, int(seconds * 1000)))}, prepare=False)

    def prune_history(self, conn: Conn, *, older_than: float, limit: int,
                      now: dt.datetime | None) -> int:
        return self._count(conn, self._q(S.PRUNE_HISTORY_BATCH),
                           {"now": now, "seconds": older_than, "limit": limit})

    def prune_dead_letters(self, conn: Conn, *, older_than: float, limit: int,
                           now: dt.datetime | None) -> int:
        return self._count(conn, self._q(S.PRUNE_DEAD_LETTERS_BATCH),
                           {"now": now, "seconds": older_than, "limit": limit})

    def prune_results(self, conn: Conn, *, limit: int, now: dt.datetime | None) -> int:
        """Kept results past their ``result_ttl``."""
        return self._count(conn, self._q(S.PRUNE_RESULTS_BATCH), {"now": now, "limit": limit})

    def prune_workers(self, conn: Conn, *, older_than: float, limit: int,
                      now: dt.datetime | None) -> int:
        return self._count(conn, self._q(S.PRUNE_WORKERS_BATCH),
                           {"now": now, "seconds": older_than, "limit": limit})

    def notify(self, conn: Conn, payload: str) -> None:
        """A NOTIFY on the schema's channel (the listener's self-ping)."""
        conn.execute(self._q(S.NOTIFY_CHANNEL), {"channel": self.sql.channel,
                                               "payload": payload}, prepare=False)

    @staticmethod
    def _count(conn: Conn, statement: Any, params: dict[str, Any]) -> int:
        row = conn.execute(statement, params, prepare=False).fetchone()
        return int(row[0]) if row else 0

    # --- inspection (admin) --------------------------------------------------------------

    def queue_stats(self, conn: Conn) -> list[QueueStats]:
        cur = conn.cursor(row_factory=args_row(QueueStats))
        return cur.execute(self._q(S.QUEUE_STATS)).fetchall()

    def queue_list(self, conn: Conn) -> list[QueueRow]:
        cur = conn.cursor(row_factory=args_row(QueueRow))
        return cur.execute(self._q(S.QUEUE_LIST)).fetchall()

    def set_queue_paused(self, conn: Conn, queue: str, paused: bool) -> None:
        conn.execute(self._q(S.SET_QUEUE_PAUSED),
                     {"queue": queue, "paused": paused, "channel": self.sql.channel})

    # --- lifecycle (the caller's transaction) --------------------------------------------

    def cancel(self, conn: Conn, job_id: int) -> str | None:
        """``"cancelled"`` (pending), ``"cancelling"`` (running), None (no live job)."""
        params = {"id": job_id, "finished_channel": self.sql.finished_channel}
        if conn.execute(self._q(S.CANCEL_PENDING), params).fetchall():
            return "cancelled"
        params = {"id": job_id, "channel": self.sql.channel, "cancel_prefix": S.CANCEL_PREFIX}
        if conn.execute(self._q(S.CANCEL_RUNNING), params).fetchall():
            return "cancelling"
        return None

    def complete_in_transaction(self, conn: Conn, job_id: int, token: str) -> bool:
        """Delete the running job if ``token`` still holds its lease."""
        params = {"id": job_id, "token": token, "finished_channel": self.sql.finished_channel}
        return bool(conn.execute(self._q(S.COMPLETE_IN_TRANSACTION), params).fetchall())

    def get_job(self, conn: Conn, job_id: int, *,
                now: dt.datetime | None = None) -> JobInfo | None:
        cur = conn.cursor(row_factory=args_row(JobInfo))
        return cur.execute(self._q(S.GET_JOB), {"id": job_id, "now": now}).fetchone()

    def list_jobs(self, conn: Conn, *, queue: str | None, task: str | None,
                  state: str | None, before: int | None, limit: int,
                  window: int = 10_000) -> list[JobInfo]:
        cur = conn.cursor(row_factory=args_row(JobInfo))
        return cur.execute(self._q(S.LIST_JOBS), {
            "queue": queue, "task": task, "state": state, "before": before,
            "limit": limit, "window": window}).fetchall()

    def recent_throughput(self, conn: Conn) -> dict[str, tuple[int, int]]:
        """Per queue: (succeeded, failed) in the last complete minute."""
        rows = conn.execute(self._q(S.RECENT_THROUGHPUT)).fetchall()
        return {r[0]: (int(r[1]), int(r[2])) for r in rows}

    def worker_status(self, conn: Conn) -> list[WorkerStatus]:
        cur = conn.cursor(row_factory=args_row(WorkerStatus))
        return cur.execute(self._q(S.WORKER_STATUS)).fetchall()

    def list_dead_letters(self, conn: Conn, *, queue: str | None, task: str | None,
                          limit: int) -> list[DeadLetter]:
        cur = conn.cursor(row_factory=args_row(DeadLetter))
        return cur.execute(self._q(S.LIST_DEAD_LETTERS),
                           {"queue": queue, "task": task, "limit": limit}).fetchall()

    def get_dead_letter(self, conn: Conn, dead_letter_id: int) -> DeadLetter | None:
        cur = conn.cursor(row_factory=args_row(DeadLetter))
        return cur.execute(self._q(S.SHOW_DEAD_LETTER), {"id": dead_letter_id}).fetchone()

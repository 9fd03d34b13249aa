"""What each dashboard page reads: bounded, index-backed reads over one connection.

Every function takes ``(conn, sql, …)`` and returns plain data for a template. Nothing
here grows with the size of the tables: counts stop at :data:`COUNT_CAP`, lists read at
most :data:`SCAN_WINDOW` rows of a primary key, queue names come from index skip scans.
"""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass, field
from typing import Any

import psycopg
from psycopg.rows import dict_row

from .. import admin, periodic_store
from .. import sql as S
from ..jobinfo import JobInfo
from ..sql import Statements
from ..store import JobStore

#: Queue counts stop here and show as "1,000+" (counting a queue reads at most about
#: three times this many index entries); past it, totals are estimated from statistics.
COUNT_CAP = 1_000
#: List counts ("N matching") stop here: their filters may have no index.
LIST_COUNT_CAP = 1_000
#: A filtered list reads at most this many rows per page before offering to search further.
SCAN_WINDOW = 20_000
#: Counting matches of an unindexed filter gives up after this long ("many").
COUNT_TIMEOUT_MS = 50
PAGE_SIZE = 50
MAX_QUEUES = 200
MAX_PRIORITIES = 64
JOB_STATES = ("pending", "scheduled", "running")


@dataclass(frozen=True)
class Bounded:
    """A count that stopped at a cap (``at_least``), is an ``estimate`` from the planner's
    statistics, or could not be taken (``None``)."""

    value: int | None
    at_least: bool = False
    estimate: bool = False

    @classmethod
    def capped(cls, value: int, cap: int) -> Bounded:
        return cls(min(value, cap), value >= cap)

    def __add__(self, other: Bounded) -> Bounded:
        if self.value is None or other.value is None:
            return Bounded(None)
        return Bounded(self.value + other.value, self.at_least or other.at_least,
                       self.estimate or other.estimate)

    def __str__(self) -> str:
        if self.value is None:
            return "many"
        if self.estimate:
            return f"≈ {self.value:,}"
        return f"{self.value:,}+" if self.at_least else f"{self.value:,}"


# --- queues -------------------------------------------------------------------------------


@dataclass
class QueueRow:
    """One queue on the queues page."""

    name: str
    pending: Bounded = field(default_factory=lambda: Bounded(0))
    scheduled: Bounded = field(default_factory=lambda: Bounded(0))
    running: int = 0
    dead: Bounded = field(default_factory=lambda: Bounded(0))
    oldest_pending_age: float | None = None
    limit: int | None = None
    # None when unknown (shown as "—").
    paused: bool | None = None
    # (minute, succeeded, failed) for each of the last 60 minutes, oldest first.
    throughput: list[tuple[dt.datetime, int, int]] = field(default_factory=list)
    #: Pending jobs in all (due and scheduled), estimated when the counts were capped.
    backlog_estimate: int | None = None

    def as_mapping(self) -> dict[str, Any]:
        """The row's fields, for :attr:`~pgjobs.dashboard.actions.Action.offered_for`."""
        return {"name": self.name, "paused": self.paused, "limit": self.limit}

    @property
    def held(self) -> Bounded:
        """Pending jobs counted against the limit (due and scheduled): exact below the
        cap, else the statistics' estimate (never below what was counted)."""
        counted = self.pending + self.scheduled
        # Statistics that do not exceed what was counted say nothing (never analyzed,
        # or stale): then the honest answer is "at least".
        if (counted.at_least and self.backlog_estimate is not None
                and self.backlog_estimate > (counted.value or 0)):
            return Bounded(self.backlog_estimate, estimate=True)
        return counted

    @property
    def fullness(self) -> float | None:
        """Share of the pending limit in use (at least this much when counts are capped)."""
        held = self.held.value
        if self.limit is None or held is None:
            return None
        if self.limit == 0:
            return 1.0
        return held / self.limit

    @property
    def finished_last_hour(self) -> tuple[int, int]:
        """(succeeded, failed) over the chart's hour."""
        return (sum(m[1] for m in self.throughput), sum(m[2] for m in self.throughput))


def queues_overview(conn: psycopg.Connection[Any], sql: Statements,
                    cap: int | None = None) -> dict[str, Any]:
    """The queues page: one :class:`QueueRow` per known queue, with a last-hour chart."""
    cap = COUNT_CAP if cap is None else cap
    now_row = conn.execute(sql.of(S.DASHBOARD_NOW)).fetchone()
    assert now_row is not None
    now: dt.datetime = now_row[0]
    names = [r[0] for r in conn.execute(sql.of(S.DASHBOARD_QUEUE_NAMES),
                                        {"max_queues": MAX_QUEUES}).fetchall()]
    rows = {name: QueueRow(name) for name in names}
    for queue, depth, due, scheduled, first in conn.execute(
        sql.of(S.DASHBOARD_PENDING_BY_QUEUE),
        {"queues": names, "cap": cap, "max_priorities": MAX_PRIORITIES},
    ).fetchall():
        row = rows[queue]
        # Past the last priority read, more may exist: the counts become lower bounds.
        more = depth > MAX_PRIORITIES
        row.pending = Bounded(min(due, cap), due >= cap or more)
        row.scheduled = Bounded(min(scheduled, cap), scheduled >= cap or more)
        if first is not None and first <= now and due:
            row.oldest_pending_age = (now - first).total_seconds()
    for queue, running in conn.execute(sql.of(S.DASHBOARD_RUNNING_BY_QUEUE)).fetchall():
        if queue in rows:
            rows[queue].running = int(running)
    for queue, dead in conn.execute(sql.of(S.DASHBOARD_DEAD_BY_QUEUE),
                                    {"queues": names, "cap": cap}).fetchall():
        rows[queue].dead = Bounded.capped(int(dead), cap)
    for row in rows.values():
        if row.pending.at_least or row.scheduled.at_least:
            row.backlog_estimate = _estimate(conn, sql.of(S.DASHBOARD_ESTIMATE_PENDING), row.name)
        if row.dead.at_least:
            estimate = _estimate(conn, sql.of(S.DASHBOARD_ESTIMATE_DEAD), row.name)
            if estimate is not None and estimate > cap:
                row.dead = Bounded(estimate, estimate=True)
    for row in rows.values():
        row.paused = False
    for queue, limit, paused in conn.execute(sql.of(S.DASHBOARD_QUEUE_LIMITS),
                                             {"queues": names}).fetchall():
        rows[queue].limit = limit
        rows[queue].paused = bool(paused)
    minutes = [_minute(now) - dt.timedelta(minutes=59 - i) for i in range(60)]
    per_queue: dict[str, dict[dt.datetime, tuple[int, int]]] = {}
    for queue, minute, succeeded, retried, dead in conn.execute(
        sql.of(S.DASHBOARD_THROUGHPUT)
    ).fetchall():
        per_queue.setdefault(queue, {})[minute] = (int(succeeded), int(retried) + int(dead))
    for row in rows.values():
        seen = per_queue.get(row.name, {})
        row.throughput = [(m, *seen.get(m, (0, 0))) for m in minutes]
    queues = list(rows.values())
    workers = admin.worker_status(conn, sql)
    totals = {
        "backlog": sum((q.held for q in queues), Bounded(0)),
        "running": sum(q.running for q in queues),
        "dead": sum((q.dead for q in queues), Bounded(0)),
        "succeeded": sum(q.finished_last_hour[0] for q in queues),
        "failed": sum(q.finished_last_hour[1] for q in queues),
        "workers_alive": sum(1 for w in workers if w["alive"]),
        "executors_busy": sum(w["executors_busy"] for w in workers if w["alive"]),
        "executors": sum(w["concurrency"] for w in workers if w["alive"]),
    }
    return {"now": now, "queues": queues, "cap": cap, "totals": totals,
            "truncated": len(names) >= MAX_QUEUES}


def _estimate(conn: psycopg.Connection[Any], statement: Any, queue: str) -> int | None:
    """The planner's row estimate for one queue (statistics only; nothing is read)."""
    row = conn.execute(statement, {"queue": queue}).fetchone()
    try:
        return int(row[0][0]["Plan"]["Plan Rows"]) if row else None
    except (KeyError, IndexError, TypeError, ValueError):
        return None


def _minute(moment: dt.datetime) -> dt.datetime:
    return moment.replace(second=0, microsecond=0)


# --- lists with filters -------------------------------------------------------------------


@dataclass(frozen=True)
class Filters:
    """The filters of a list page (``None``: not filtered)."""

    queue: str | None = None
    task: str | None = None
    state: str | None = None
    search: str | None = None

    @property
    def active(self) -> bool:
        return any(v is not None for v in (self.queue, self.task, self.state, self.search))

    def params(self) -> dict[str, Any]:
        return {"queue": self.queue, "task": self.task, "state": self.state,
                "search": self.search}

    def query(self) -> dict[str, str]:
        """The filters as query-string fields (only those set)."""
        return {k: v for k, v in self.params().items() if v is not None}


@dataclass
class Page:
    """One page of a newest-first list."""

    rows: list[dict[str, Any]]
    #: ``before=`` cursor of the next (older) page; None at the end.
    older: int | None
    #: The page read a whole scan window without filling up: ``older`` continues the search.
    searched_to: int | None
    count: Bounded
    first_page: bool
    #: Rows a filtered page reads at most.
    window: int = SCAN_WINDOW


def _page(conn: psycopg.Connection[Any], sql: Statements, *, rows_statement: str,
          window_statement: str, count_statement: str, filters: Filters,
          before: int | None, limit: int | None, window: int | None,
          cap: int | None) -> Page:
    # Module settings are read per call, so tests (and embedders) can change them.
    limit = PAGE_SIZE if limit is None else limit
    window = SCAN_WINDOW if window is None else window
    cap = LIST_COUNT_CAP if cap is None else cap
    params = {**filters.params(), "before": before, "window": window, "limit": limit + 1}
    with conn.cursor(row_factory=dict_row) as cur:
        rows = cur.execute(sql.of(rows_statement), params).fetchall()
    older: int | None = None
    searched_to: int | None = None
    if len(rows) > limit:
        rows = rows[:limit]
        older = int(rows[-1]["id"])
    elif filters.active:
        end = conn.execute(sql.of(window_statement),
                           {"before": before, "window": window}).fetchone()
        if end is not None and end[0] is not None and int(end[1]) >= window:
            older = searched_to = int(end[0])
    # A page that read a whole window without filling up means sparse matches: counting
    # them would read the whole table, so the count is left unknown.
    counted = (Bounded(None) if searched_to is not None
               else count_matching(conn, sql, count_statement, filters, cap))
    return Page(rows=rows, older=older, searched_to=searched_to, count=counted,
                first_page=before is None, window=window)


def count_matching(conn: psycopg.Connection[Any], sql: Statements, statement: str,
                   filters: Filters, cap: int) -> Bounded:
    """Rows matching ``filters`` (``statement``: a :mod:`pgjobs.sql` counting constant, e.g.
    ``sql.DASHBOARD_JOBS_COUNT``), counted up to ``cap`` and for at most a moment."""
    try:
        with conn.transaction():
            conn.execute(sql.of(S.DASHBOARD_LOCAL_TIMEOUT), {"milliseconds": COUNT_TIMEOUT_MS})
            row = conn.execute(sql.of(statement), {**filters.params(), "cap": cap}
                               ).fetchone()
    except psycopg.errors.QueryCanceled:
        return Bounded(None)
    return Bounded.capped(int(row[0]) if row else 0, cap)


def jobs_page(conn: psycopg.Connection[Any], sql: Statements, filters: Filters,
              before: int | None = None, *, limit: int | None = None,
              window: int | None = None, cap: int | None = None) -> Page:
    """Live jobs, newest first, ``limit`` per page after the ``before`` cursor."""
    page = _page(conn, sql, rows_statement=S.DASHBOARD_JOBS_OLDER,
                 window_statement=S.DASHBOARD_JOBS_WINDOW_END,
                 count_statement=S.DASHBOARD_JOBS_COUNT, filters=filters, before=before,
                 limit=limit, window=window, cap=cap)
    for row in page.rows:
        row["display_state"] = display_state(row)
    return page


def dead_letters_page(conn: psycopg.Connection[Any], sql: Statements, filters: Filters,
                      before: int | None = None, *, limit: int | None = None,
                      window: int | None = None, cap: int | None = None) -> Page:
    """Dead letters, newest first (filters: queue, task, search in error and args)."""
    return _page(conn, sql, rows_statement=S.DASHBOARD_DEAD_LETTERS_OLDER,
                 window_statement=S.DASHBOARD_DEAD_LETTERS_WINDOW_END,
                 count_statement=S.DASHBOARD_DEAD_LETTERS_COUNT, filters=filters,
                 before=before, limit=limit, window=window, cap=cap)


def display_state(row: dict[str, Any]) -> str:
    """``pending`` (due), ``scheduled`` (pending, not yet due) or ``running``."""
    if row["state"] == "pending" and row.get("is_scheduled"):
        return "scheduled"
    return str(row["state"])


# --- single rows --------------------------------------------------------------------------


def job(conn: psycopg.Connection[Any], sql: Statements, job_id: int) -> dict[str, Any] | None:
    """One live job (pending, scheduled or running), or None once it has left ``jobs``."""
    with conn.cursor(row_factory=dict_row) as cur:
        row = cur.execute(sql.of(S.DASHBOARD_JOB), {"id": job_id}).fetchone()
    if row is not None:
        row["display_state"] = display_state(row)
    return row


def finished_job(conn: psycopg.Connection[Any], sql: Statements,
                 job_id: int) -> JobInfo | None:
    """What became of a job that left ``jobs``: succeeded (while its result is kept),
    dead or cancelled (while its dead letter is kept); None when nothing is known."""
    return JobStore(sql).get_job(conn, job_id)


def dead_letter(conn: psycopg.Connection[Any], sql: Statements,
                dead_letter_id: int) -> dict[str, Any] | None:
    """One dead letter by ``dead_letters.id``."""
    with conn.cursor(row_factory=dict_row) as cur:
        return cur.execute(sql.of(S.DASHBOARD_DEAD_LETTER), {"id": dead_letter_id}).fetchone()


def periodic_schedules(conn: psycopg.Connection[Any],
                       sql: Statements) -> list[dict[str, Any]]:
    """Registered cron schedules with their next tick (one row per schedule: small)."""
    return periodic_store.list_schedules(conn, sql)


def workers(conn: psycopg.Connection[Any], sql: Statements) -> list[dict[str, Any]]:
    """Registered workers, oldest first (the ``worker_status`` view)."""
    return admin.worker_status(conn, sql)

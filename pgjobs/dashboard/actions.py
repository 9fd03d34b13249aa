"""The dashboard's actions: one registry, run on a selection or on everything matching.

An :class:`Action` changes one batch of rows inside a transaction and says how many it
changed. The web layer finds it by ``(target, name)`` (the URL
``POST /actions/<target>/<name>``) and runs it with :func:`run_on_ids` (the ticked rows)
or :func:`run_on_matching` (every row matching the page's filters), always in bounded
batches, one transaction each, so no action holds locks on many rows or runs unbounded.

Adding an action is registering one :class:`Action` (see :func:`register`); pages show
the buttons of the actions registered for their target.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import psycopg

from .. import admin, lifecycle, periodic_store
from .. import sql as S
from ..app import App
from ..sql import Statements

#: Rows per transaction.
BATCH_SIZE = 500
#: An "all matching" action stops after this long and says so (run it again for the rest).
TIME_BUDGET_SECONDS = 10.0

Apply = Callable[[psycopg.Connection[Any], Statements, list[Any]], int]


def _always(row: Mapping[str, Any]) -> bool:
    return True


@dataclass(frozen=True)
class Action:
    """One thing an operator can do to rows of a target (``jobs``, ``dead-letters``…)."""

    target: str
    name: str
    #: Button text.
    label: str
    #: Changes one batch (ids, or names for queues) inside the caller's transaction;
    #: returns how many rows it changed.
    apply: Apply
    #: What was done, for the flash message: formatted with ``n``.
    done: str
    #: Destructive: needs a ticked "confirm" (and a JavaScript confirm when available).
    danger: bool = False
    #: Whether a row's page offers it (e.g. "retry now" only for a scheduled job).
    offered_for: Callable[[Mapping[str, Any]], bool] = _always


@dataclass(frozen=True)
class Target:
    """Rows actions can apply to: how their ids parse, and how to list "all matching"."""

    name: str
    id_type: type
    #: Statement template (a :mod:`pgjobs.sql` constant, by reference) returning the next
    #: batch of matching ids, ordered, after ``%(after)s``; None when "all matching" does
    #: not apply.
    matching_statement: str | None
    first_after: Any = 0


TARGETS: dict[str, Target] = {}
ACTIONS: dict[tuple[str, str], Action] = {}


def register_target(target: Target) -> Target:
    """Make a kind of row actionable (``/actions/<target.name>/…``)."""
    TARGETS[target.name] = target
    return target


def register(action: Action) -> Action:
    """Make ``action`` available at ``POST /actions/<target>/<name>`` and on its pages."""
    if action.target not in TARGETS:
        raise ValueError(f"unknown action target {action.target!r}")
    ACTIONS[(action.target, action.name)] = action
    return action


def actions_for(target: str, row: Mapping[str, Any] | None = None) -> list[Action]:
    """The actions offered for ``target`` (for one ``row``, those it qualifies for)."""
    return [a for (t, _), a in ACTIONS.items()
            if t == target and (row is None or a.offered_for(row))]


@dataclass
class Outcome:
    """What a run did: rows changed, batches, and whether it covered everything."""

    changed: int = 0
    batches: int = 0
    complete: bool = True


def _chunks(items: Sequence[Any], size: int) -> Iterator[list[Any]]:
    for start in range(0, len(items), size):
        yield list(items[start:start + size])


def run_on_ids(conn: psycopg.Connection[Any], sql: Statements, action: Action,
               ids: Sequence[Any], *, batch_size: int | None = None) -> Outcome:
    """Apply ``action`` to the given rows, ``batch_size`` per transaction."""
    outcome = Outcome()
    for chunk in _chunks(list(dict.fromkeys(ids)), batch_size or BATCH_SIZE):
        with conn.transaction():
            outcome.changed += action.apply(conn, sql, chunk)
        outcome.batches += 1
    return outcome


def run_on_matching(conn: psycopg.Connection[Any], sql: Statements, action: Action,
                    filters: Mapping[str, Any], *, batch_size: int | None = None,
                    time_budget: float | None = None) -> Outcome:
    """Apply ``action`` to every row matching ``filters``, batch by batch (keyset on id).

    Stops after ``time_budget`` seconds with ``complete=False``: the rest is left for
    another run, and no transaction ever covers more than one batch.
    """
    target = TARGETS[action.target]
    if target.matching_statement is None:
        raise ValueError(f"{action.target} has no 'all matching' selection")
    statement = sql.of(target.matching_statement)
    # Module settings are read per call, so tests (and embedders) can change them.
    batch_size = batch_size or BATCH_SIZE
    time_budget = TIME_BUDGET_SECONDS if time_budget is None else time_budget
    outcome = Outcome()
    after = target.first_after
    deadline = time.monotonic() + time_budget
    while True:
        with conn.transaction():
            ids = [r[0] for r in conn.execute(
                statement, {**filters, "after": after, "limit": batch_size}).fetchall()]
            if ids:
                outcome.changed += action.apply(conn, sql, ids)
        if not ids:
            return outcome
        outcome.batches += 1
        after = ids[-1]
        if len(ids) < batch_size:
            return outcome
        if time.monotonic() >= deadline:
            outcome.complete = False
            return outcome


# --- the actions that exist today ---------------------------------------------------------


def retry_now(conn: psycopg.Connection[Any], sql: Statements, ids: list[int]) -> int:
    """Make scheduled or retrying pending jobs due now, and wake their queues' workers."""
    rows = conn.execute(sql.of(S.DASHBOARD_RETRY_NOW), {"ids": ids}).fetchall()
    queues = sorted({r[1] for r in rows})
    if queues:
        conn.execute(sql.of(S.NOTIFY_QUEUES), {"channel": sql.channel, "queues": queues})
    return len(rows)


def requeue(conn: psycopg.Connection[Any], sql: Statements, ids: list[int]) -> int:
    """Dead letters back to ``jobs`` as fresh pending jobs (what ``dead-letters requeue`` does)."""
    return len(admin.requeue_dead_letters(conn, sql, ids=ids))


def run_periodic_now(conn: psycopg.Connection[Any], sql: Statements, names: list[str]) -> int:
    """Enqueue one job of each named schedule now (what ``pgjobs periodic run`` does)."""
    # A fresh App each time, so the queue limits it checks are read now, never cached.
    # Only its enqueue path runs, on the dashboard's connection: it opens no connection
    # of its own, so its database URL is never resolved.
    app = App(schema=sql.schema)
    for name in names:
        periodic_store.run_now(conn, app, name)
    return len(names)


def cancel(conn: psycopg.Connection[Any], sql: Statements, ids: list[int]) -> int:
    """``app.cancel`` each job: a pending one ends cancelled now, a running one is asked
    to stop. Returns how many were live."""
    return sum(1 for job_id in ids if lifecycle.cancel(conn, sql, job_id) is not None)


def pause(conn: psycopg.Connection[Any], sql: Statements, names: list[str]) -> int:
    """Pause queues: no worker claims from them; enqueue still works."""
    for name in names:
        admin.set_queue_paused(conn, sql, name, True)
    return len(names)


def resume(conn: psycopg.Connection[Any], sql: Statements, names: list[str]) -> int:
    """Resume queues (their workers are woken)."""
    for name in names:
        admin.set_queue_paused(conn, sql, name, False)
    return len(names)


def purge(conn: psycopg.Connection[Any], sql: Statements, ids: list[int]) -> int:
    """Delete dead letters."""
    return conn.execute(sql.of(S.DASHBOARD_PURGE_DEAD_LETTERS), {"ids": ids}).rowcount


JOBS = register_target(Target("jobs", int, S.DASHBOARD_JOB_IDS_MATCHING))
DEAD_LETTERS = register_target(
    Target("dead-letters", int, S.DASHBOARD_DEAD_LETTER_IDS_MATCHING))
# Queue actions (pause/resume) take queue names; there is no "all matching".
QUEUES = register_target(Target("queues", str, None, first_after=""))
PERIODIC = register_target(Target("periodic", str, None, first_after=""))

register(Action("jobs", "retry-now", "Retry now", retry_now, "{n} job(s) made due now",
                offered_for=lambda row: bool(row.get("is_scheduled"))))
register(Action("jobs", "cancel", "Cancel", cancel,
                "{n} job(s) cancelled (pending) or asked to stop (running)", danger=True,
                offered_for=lambda row: row.get("cancel_requested_at") is None))
register(Action("queues", "pause", "Pause", pause, "{n} queue(s) paused",
                offered_for=lambda row: row.get("paused") is False))
register(Action("queues", "resume", "Resume", resume, "{n} queue(s) resumed",
                offered_for=lambda row: row.get("paused") is True))
register(Action("dead-letters", "requeue", "Requeue", requeue,
                "{n} dead letter(s) requeued as new pending jobs"))
register(Action("periodic", "run-now", "Run now", run_periodic_now,
                "{n} periodic job(s) enqueued now"))
register(Action("dead-letters", "purge", "Purge", purge, "{n} dead letter(s) purged",
                danger=True))

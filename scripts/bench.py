"""Benchmarks for pgjobs: enqueue cost and worker throughput, reported as ratios.

Run from the repository root::

    .venv/bin/python scripts/bench.py enqueue            # ~1 min
    .venv/bin/python scripts/bench.py work               # ~1-3 min
    .venv/bin/python scripts/bench.py async-work         # coroutine handlers only, ~2 min
    .venv/bin/python scripts/bench.py all --json bench-$(date +%F).json
    .venv/bin/python scripts/bench.py all --quick        # smoke test, < 30 s
    .venv/bin/python scripts/bench.py work --drain-n 20000 --concurrency 50 --no-settle

(Those times hold while the worker keeps up. A drain or backlog run that does not finish
is cut at ``--drain-timeout`` and reported as incomplete, and a worker that then takes
long to stop is waited for, so a regression costs minutes, not hours.)

``--database-url`` defaults to ``$PGJOBS_BENCH_DATABASE_URL``, else
``postgresql://postgres@127.0.0.1:5432/pgjobs_bench``. A database that does not exist is
created (through the server's ``postgres`` database) and dropped again at the end. Every
benchmark migrates a fresh schema with ``pgjobs.migrate.upgrade`` and drops it afterwards.
Sizes are flags (see ``--help``); ``--quick`` shrinks every size not given explicitly.

The settings block comes first: server version, ``fsync``, ``synchronous_commit`` and
``wal_sync_method`` as the server reports them (SHOW), Python, CPU count, load and every
parameter. It says "durability on" only when fsync is on and synchronous_commit is on,
local or remote_*: with durability off, commits are nearly free and enqueue numbers
are not comparable with a production server. Nothing is refused, only reported.

This is meant for a small, shared, noisy machine: absolute numbers drift from one run to
the next, so the figures to compare with targets are RATIOS measured within ONE run, and
runs that are compared are interleaved (alternating order, medians) so that noise falls
on them equally.

What each number means (``name``: unit):

enqueue
  ``enqueue.single.baseline_insert``: tx/s, median over rounds. Bare psycopg autocommit
      ``INSERT INTO <schema>.jobs (queue, task, args)``, one row per transaction, into the
      same table pgjobs uses: the floor cost of a durable single-row commit here.
  ``enqueue.single.nolimit``: jobs/s. ``task.enqueue(conn, ...)`` + ``conn.commit()``
      with no pending limit on the queue. ``..._vs_baseline`` is its ratio to the above.
  ``enqueue.single.limit``: jobs/s. Same, with a pending limit (1,000,000) on the queue.
      ``..._vs_baseline`` (target >= 0.90) and ``..._vs_nolimit`` (target >= 0.80) are
      the cost of backpressure. Every single-row variant starts from the same table
      state: ``--pending`` (10,000) jobs already pending in the queue, so the only
      difference between the pgjobs variants is the limit check.
  ``enqueue.single.async``: jobs/s. ``await task.aenqueue(aconn, ...)`` + ``await
      aconn.commit()`` on a psycopg ``AsyncConnection`` (one event loop, one coroutine),
      same pending limit and table state as ``limit``; ``enqueue.single.async_vs_sync``
      is its ratio to ``limit`` (target >= 0.90). ``single.diag.async_tx_insert`` is the
      ``tx_insert`` diagnostic on that AsyncConnection: ``..._vs_tx_insert`` is what
      psycopg's asyncio I/O costs by itself, ``diag.async_vs_async_tx_insert`` pgjobs'
      share of the async path (compare with ``diag.limit_vs_tx_insert``).
  ``enqueue.bulk.{nolimit,limit}.{best,median}``: jobs/s of ``app.enqueue_many(conn,
      [task.job(...) ...])`` + commit of ``--bulk-n`` (50,000) jobs, building the job
      specs included (target >= 150,000/s); ``..._excl_specs`` times only enqueue_many +
      commit. ``enqueue.bulk.limit_vs_nolimit`` compares the medians.
      ``enqueue.bulk.async.*``: the same with ``await app.aenqueue_many(aconn, ...)`` on
      the limited queue; ``enqueue.bulk.async_vs_sync`` compares its median with ``limit``.
  ``enqueue.*.diag.*``: diagnostics without targets, to tell where a gap comes from.
      ``single.diag.tx_insert`` is the baseline INSERT in an explicit psycopg
      transaction + ``commit()`` (BEGIN and COMMIT are round trips of their own: the
      shape every transactional enqueue has); ``single.diag.limit_vs_tx_insert`` is
      pgjobs' own share of the gap. ``bulk.diag.server_insert_select`` inserts the same
      rows with ``INSERT ... SELECT generate_series`` (no client at all): the ceiling
      this server puts on any bulk enqueue into this table and its indexes;
      ``..._no_indexes`` is the same into a copy of the table without indexes.

work (handlers are no-ops unless said otherwise; the worker runs in this process, in a
thread, with ``install_signal_handlers=False``)
  ``work.drain.cN``: jobs/s draining ``--drain-n`` (100,000) pre-inserted jobs at
      concurrency N, from the worker's start until ``SELECT EXISTS (SELECT 1 FROM jobs)``
      (polled every 20 ms) says the table is empty. ``params.rate_to_last_flush`` is
      the same measured to the completer's last write (exact); ``params.claims``,
      ``stop_seconds`` and ``completer_outlived_run`` describe the worker's behaviour.
  ``work.drain.c100.peak_rss``: MiB, ``getrusage(RUSAGE_SELF).ru_maxrss`` after that run:
      the high-water mark of the WHOLE benchmark process so far (earlier benchmarks
      included), not of the worker alone; ``..._rss_during_run`` samples VmRSS during
      the run and ``params.rss_before_mib`` is the level before the worker started.
  ``work.sleep10ms.c50``: jobs/s of ``--sleep-n`` (20,000) jobs that each
      ``time.sleep(0.01)``, concurrency 50 (target >= 4,000; the ideal is 5,000).
      ``..._vs_ideal`` is the fraction of concurrency / 10 ms reached.
  ``work.pickup_latency.{p50,p95,p99,max}``: ms from ``commit()`` returning in the
      enqueueing thread to the handler starting, on an idle worker (concurrency 10), one
      job at a time with a random 1-5 ms pause between jobs (targets p50 <= 2 ms, p99 <=
      10 ms). Both ends read ``time.perf_counter()`` in this process, so they compare.
  ``work.backlog.{small,large}``: jobs/s of the first jobs drained from a queue holding
      ``--backlog-small`` (10,000) and ``--backlog-large`` (1,000,000) pending jobs,
      measured between the flush that passes ``--backlog-warmup`` completions and the
      one that passes ``min(--backlog-m, 90% of the backlog)``, from the completer's own
      flush callbacks (exact, no polling). The small case runs before and after the
      large one and is averaged. ``work.backlog.large_vs_small``: target >= 0.80.

async-work (also run by ``work`` and ``all``): coroutine (``async def``) handlers, the
worker in this process as above
  ``work.async.noop_{sync,async}.c50``: jobs/s draining ``--async-noop-n`` (50,000) no-op
      jobs, sync handlers vs coroutine handlers, run sync, async, async, sync (medians;
      ``params.runs`` has both); ``work.async.noop.c50_vs_sync`` is their ratio (target
      >= 0.80: a coroutine job within 20 % of a sync one).
  ``work.async.sleep10ms.cN``: jobs/s of ``--async-sleep-n`` (50,000) coroutine jobs that
      each ``await asyncio.sleep(0.01)``, at each ``--async-concurrency`` (50, 500);
      target at 500: >= 8,000. ``..._vs_ideal`` is the fraction of N / 10 ms reached.
  ``pgjobs.worker.aexecutor``'s loop is one thread: at 500 the GIL, not the sleeps, is the
  bound (~45 µs of Python per job in the loop, asyncio's own ~25 µs of it).

Before each timed run the jobs table is settled the same way for every variant
(``VACUUM (ANALYZE)`` and a ``CHECKPOINT``), because a checkpoint or a vacuum landing
inside one run and not another would dwarf the differences being measured. The ANALYZE
is also what autoanalyze does in production (the migration asks for it every 5,000
rows), so the worker runs with the plans it would really get; ``--no-settle`` skips it
to compare (see ``--help`` for every flag).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import math
import os
import platform
import random
import resource
import secrets
import statistics
import sys
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass, field
from typing import Any

import psycopg
from psycopg import sql
from psycopg.conninfo import conninfo_to_dict, make_conninfo

import pgjobs
from pgjobs import migrate
from pgjobs.config import redact_url

DEFAULT_URL = "postgresql://postgres@127.0.0.1:5432/pgjobs_bench"
QUEUE = "bench"
perf = time.perf_counter

# Sizes: (full run, --quick). An explicit flag always wins.
SIZES: dict[str, tuple[Any, Any]] = {
    "single_n": (3000, 300),
    "rounds": (3, 3),
    "warmup": (200, 30),
    "pending": (10_000, 10_000),
    "limit": (1_000_000, 1_000_000),
    "bulk_n": (50_000, 5_000),
    "bulk_reps": (3, 2),
    "drain_n": (100_000, 5_000),
    "concurrency": ("10,50,100", "10,50,100"),
    "sleep_n": (20_000, 1_000),
    "sleep_concurrency": (50, 50),
    "latency_samples": (500, 50),
    "latency_warmup": (20, 5),
    "latency_concurrency": (10, 10),
    "backlog_large": (1_000_000, 200_000),
    "backlog_small": (10_000, 10_000),
    "backlog_m": (50_000, 10_000),
    "backlog_warmup": (1_000, 500),
    "backlog_concurrency": (50, 50),
    "async_noop_n": (50_000, 5_000),
    "async_sleep_n": (50_000, 5_000),
    "async_concurrency": ("50,500", "50,500"),
    "dashboard_pending": (1_000_000, 100_000),
    "dashboard_dead": (100_000, 10_000),
    "dashboard_requests": (30, 10),
}

SEED_CHUNK = 50_000  # jobs per enqueue_many when pre-inserting (bounds memory)
DURABLE_SYNC_COMMIT = {"on", "local", "remote_write", "remote_apply"}


# --- results ------------------------------------------------------------------------------


@dataclass
class Result:
    name: str
    value: float
    unit: str
    params: dict[str, Any] = field(default_factory=dict)


@dataclass
class Report:
    settings: dict[str, Any]
    results: list[Result] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)

    def add(self, name: str, value: float, unit: str, *, target_min: float | None = None,
            target_max: float | None = None, **params: Any) -> float:
        if target_min is not None:
            params["target_min"] = target_min
        if target_max is not None:
            params["target_max"] = target_max
        self.results.append(Result(name, value, unit, params))
        print(f"  {name}: {_fmt(value, unit)} {unit}", flush=True)
        return value

    def note(self, text: str) -> None:
        self.notes.append(text)
        print(f"  note: {text}", flush=True)


def _fmt(value: float, unit: str) -> str:
    if isinstance(value, float) and math.isnan(value):
        return "n/a"
    if unit == "ratio":
        return f"{value:.3f}"
    if unit in ("ms", "MiB", "s"):
        return f"{value:,.2f}"
    return f"{value:,.0f}"


def _target(r: Result) -> tuple[str, str]:
    """The target column (">= 0.90") and whether the value meets it."""
    if "target_min" in r.params:
        t = r.params["target_min"]
        return f">= {_fmt(t, r.unit)}", "ok" if r.value >= t else "BELOW"
    if "target_max" in r.params:
        t = r.params["target_max"]
        return f"<= {_fmt(t, r.unit)}", "ok" if r.value <= t else "ABOVE"
    return "", ""


def print_table(report: Report) -> None:
    rows = []
    for r in report.results:
        target, status = _target(r)
        rows.append((r.name, _fmt(r.value, r.unit), r.unit, target, status))
    header = ("benchmark", "value", "unit", "target", "status")
    widths = [max(len(row[i]) for row in [header, *rows]) for i in range(len(header))]
    line = "  ".join("-" * w for w in widths)
    print()
    print("  ".join(h.ljust(w) if i != 1 else h.rjust(w)
                    for i, (h, w) in enumerate(zip(header, widths, strict=True))))
    print(line)
    for row in rows:
        print("  ".join(c.ljust(w) if i != 1 else c.rjust(w)
                        for i, (c, w) in enumerate(zip(row, widths, strict=True))).rstrip())
    if report.notes:
        print("\nnotes:")
        for n in report.notes:
            print(f"  - {n}")


def write_json(report: Report, path: str) -> None:
    data = {
        "settings": report.settings,
        "results": [
            {"name": r.name, "value": None if math.isnan(r.value) else r.value,
             "unit": r.unit, "params": r.params}
            for r in report.results
        ],
        "notes": report.notes,
    }
    with open(path, "w", encoding="utf-8") as fh:
        json.dump(data, fh, indent=2, default=str)
        fh.write("\n")
    print(f"\nwrote {path}")


# --- database helpers ---------------------------------------------------------------------


def ensure_database(url: str) -> bool:
    """Create the benchmark database if missing; True if this run created it."""
    try:
        psycopg.connect(url, connect_timeout=10).close()
        return False
    except psycopg.OperationalError as exc:
        if "does not exist" not in str(exc):
            raise
    dbname = str(conninfo_to_dict(url).get("dbname") or "")
    if not dbname:
        raise SystemExit(f"cannot tell which database to create from {redact_url(url)}")
    with psycopg.connect(make_conninfo(url, dbname="postgres"), autocommit=True) as conn:
        conn.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(dbname)))
    print(f"created database {dbname!r} (dropped again at the end)")
    return True


def drop_database(url: str) -> None:
    dbname = str(conninfo_to_dict(url)["dbname"])
    with psycopg.connect(make_conninfo(url, dbname="postgres"), autocommit=True) as conn:
        conn.execute(sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)")
                     .format(sql.Identifier(dbname)))
    print(f"dropped database {dbname!r}")


@contextmanager
def fresh_schema(url: str, label: str) -> Iterator[str]:
    """A newly migrated pgjobs schema, dropped on exit (even on error)."""
    name = f"bench_{label}_{secrets.token_hex(3)}"
    migrate.upgrade(url, name)
    try:
        yield name
    finally:
        with psycopg.connect(url, autocommit=True) as conn:
            conn.execute(sql.SQL("DROP SCHEMA IF EXISTS {} CASCADE")
                         .format(sql.Identifier(name)))


def jobs_table(schema: str) -> sql.Identifier:
    return sql.Identifier(schema, "jobs")


class Settler:
    """Puts a jobs table in the same state before every timed run (see module doc)."""

    def __init__(self, url: str, checkpoint: bool, analyze: bool) -> None:
        self.conn = psycopg.connect(url, autocommit=True)
        self.checkpoint = checkpoint
        self.analyze = analyze

    def truncate(self, schema: str) -> None:
        self.conn.execute(sql.SQL("TRUNCATE {}").format(jobs_table(schema)))

    def settle(self, schema: str) -> None:
        if self.analyze:
            # What autovacuum/autoanalyze would have done to a table that filled up over
            # time (the migration asks for it after 5,000 inserts).
            self.conn.execute(sql.SQL("VACUUM (ANALYZE) {}").format(jobs_table(schema)))
        if self.checkpoint:
            try:
                self.conn.execute("CHECKPOINT")
            except psycopg.errors.InsufficientPrivilege:
                self.checkpoint = False
                print("  (CHECKPOINT not permitted for this role; skipping it)")

    def close(self) -> None:
        self.conn.close()


def seed(url: str, app: pgjobs.App, task: pgjobs.Task[Any, Any], count: int) -> None:
    """Pre-insert ``count`` pending jobs with enqueue_many, in chunks."""
    with psycopg.connect(url) as conn:
        done = 0
        while done < count:
            n = min(SEED_CHUNK, count - done)
            app.enqueue_many(conn, [task.job(i=done + i) for i in range(n)])
            conn.commit()
            done += n
    # Timed runs start with a cold backpressure cache, as a fresh process would.
    app.limits.forget()


def server_settings(url: str) -> dict[str, str]:
    names = ["server_version", "fsync", "synchronous_commit", "wal_sync_method",
             "full_page_writes", "autovacuum", "shared_buffers", "max_connections",
             "commit_delay"]
    out = {}
    with psycopg.connect(url, autocommit=True) as conn:
        for name in names:
            row = conn.execute(sql.SQL("SHOW {}").format(sql.Identifier(name))).fetchone()
            out[name] = str(row[0]) if row else "?"
        row = conn.execute("SELECT version()").fetchone()
        out["version"] = str(row[0]) if row else "?"
    return out


def current_rss_bytes() -> int:
    try:
        with open("/proc/self/statm", encoding="ascii") as fh:
            return int(fh.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
    except OSError:
        return 0


def maxrss_mib() -> float:
    kb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    # Linux reports KiB, macOS bytes.
    return kb / (1024 * 1024) if sys.platform == "darwin" else kb / 1024


def percentile(sorted_values: list[float], q: float) -> float:
    """Linear-interpolated percentile (q in 0..100) of an already sorted list."""
    if not sorted_values:
        return float("nan")
    k = (len(sorted_values) - 1) * q / 100
    lo = math.floor(k)
    hi = min(lo + 1, len(sorted_values) - 1)
    return sorted_values[lo] + (sorted_values[hi] - sorted_values[lo]) * (k - lo)


# --- the worker in a thread ---------------------------------------------------------------


class WorkerThread:
    """Runs ``worker.run()`` in a thread; the benchmark polls it and stops it."""

    def __init__(self, worker: Any, timeout: float) -> None:
        self.worker = worker
        self.timeout = timeout
        self.error: BaseException | None = None
        self.started_at = 0.0
        self.stop_seconds = float("nan")
        self.lingering = False
        self.thread = threading.Thread(target=self._run, name="bench-worker", daemon=True)

    def _run(self) -> None:
        try:
            self.worker.run()
        except BaseException as exc:
            self.error = exc

    def start(self) -> float:
        self.started_at = perf()
        self.thread.start()
        return self.started_at

    def check(self) -> None:
        """Raise if the worker died or the benchmark overran ``--timeout``."""
        if self.error is not None:
            raise RuntimeError(f"the worker failed: {self.error!r}") from self.error
        if not self.thread.is_alive():
            raise RuntimeError("the worker thread exited on its own")
        if perf() - self.started_at > self.timeout:
            raise TimeoutError(f"benchmark did not finish within --timeout {self.timeout:g}s")

    def wait_until(self, condition: Callable[[], bool], interval: float = 0.005,
                   deadline: float | None = None) -> bool:
        """Wait for ``condition``; False if ``deadline`` (perf_counter) passed first."""
        while not condition():
            self.check()
            if deadline is not None and perf() >= deadline:
                return False
            time.sleep(interval)
        return True

    def stop(self) -> None:
        t0 = perf()
        self.worker.stop()
        self.thread.join(timeout=120)
        # run() may return while its completer thread still writes outcomes (it stops
        # waiting for it after a while). Give it a moment; if it is still busy, dropping
        # the schema makes its remaining writes fail fast, and reap_lingering() waits for
        # it before the next benchmark starts so it cannot skew that one.
        completer = getattr(self.worker, "completer", None)
        if completer is not None and completer.thread.is_alive():
            self.lingering = True
            completer.thread.join(timeout=5)
            if completer.thread.is_alive():
                _LINGERING.append(completer.thread)
        self.stop_seconds = perf() - t0
        if self.thread.is_alive():
            print("  warning: worker did not stop within 120 s", file=sys.stderr)

    def params(self) -> dict[str, Any]:
        """Worker-side facts worth keeping next to a rate."""
        stats = self.worker.stats
        fetcher = self.worker.fetcher
        return {
            "claims": fetcher.claims if fetcher is not None else None,
            "retried": stats.retried, "dead_lettered": stats.dead_lettered,
            "released_at_stop": stats.released, "lost_leases": stats.lost_leases,
            "stop_seconds": round(self.stop_seconds, 2),
            "completer_outlived_run": self.lingering,
        }


_LINGERING: list[threading.Thread] = []


def reap_lingering(report: Report) -> None:
    """Wait for completer threads that outlived their worker (see WorkerThread.stop)."""
    while _LINGERING:
        thread = _LINGERING.pop()
        t0 = perf()
        thread.join(timeout=60)
        report.note(f"a stopped worker's completer thread was still writing outcomes after "
                    f"run() returned; waited {perf() - t0:.1f} s more for it"
                    + ("" if not thread.is_alive() else " and gave up"))


@contextmanager
def running_worker(app: pgjobs.App, concurrency: int, timeout: float,
                   on_flush: Callable[[float, int], None] | None = None) -> Iterator[WorkerThread]:
    worker = app.worker(concurrency=concurrency, install_signal_handlers=False)
    if on_flush is not None:
        stats = worker.stats
        # Called by the completer after each outcome batch is written and counted.
        worker.on_outcomes = lambda batch: on_flush(perf(), stats.succeeded)
    runner = WorkerThread(worker, timeout)
    try:
        yield runner
    finally:
        if runner.thread.ident is not None:
            runner.stop()


# --- enqueue ------------------------------------------------------------------------------


def _single_task(app: pgjobs.App) -> pgjobs.Task[Any, Any]:
    def noop(i: int) -> None:
        return None

    return app.task(name="bench.enqueue.noop", queue=QUEUE)(noop)


async def _async_single(aconn: psycopg.AsyncConnection[Any], task: pgjobs.Task[Any, Any],
                        n: int, offset: int) -> float:
    """Seconds for ``n`` x (aenqueue + commit), timed inside the event loop."""
    t0 = perf()
    for i in range(offset, offset + n):
        await task.aenqueue(aconn, i=i)
        await aconn.commit()
    return perf() - t0


async def _async_insert(aconn: psycopg.AsyncConnection[Any], insert: str,
                        names: tuple[str, str], n: int, offset: int) -> float:
    """The bare INSERT + commit on the AsyncConnection: psycopg's own async cost."""
    t0 = perf()
    for i in range(offset, offset + n):
        await aconn.execute(insert, (*names, f'{{"i":{i}}}'))  # type: ignore[arg-type]
        await aconn.commit()
    return perf() - t0


async def _async_bulk(aconn: psycopg.AsyncConnection[Any], app: pgjobs.App,
                      specs: list[pgjobs.JobSpec]) -> None:
    await app.aenqueue_many(aconn, specs)
    await aconn.commit()


def _ratios(a: list[float], b: list[float]) -> list[float]:
    return [round(x / y, 3) for x, y in zip(a, b, strict=True)]


def _rounded(values: list[float]) -> list[float]:
    return [round(v, 1) for v in values]


def bench_enqueue(cfg: argparse.Namespace, report: Report) -> None:
    url = cfg.database_url
    print("\n== enqueue", flush=True)
    settler = Settler(url, cfg.checkpoint, cfg.settle)
    with ExitStack() as stack:
        stack.callback(settler.close)
        # tx_insert is a diagnostic: the bare INSERT again, but in an explicit psycopg
        # transaction + commit() (the shape of every pgjobs enqueue), so the report can
        # tell the cost of the transaction protocol from the cost of pgjobs.
        variants = ("baseline", "tx_insert", "nolimit", "limit", "async", "async_tx_insert")
        schemas = {v: stack.enter_context(fresh_schema(url, f"enq_{v}")) for v in variants}
        apps = {v: pgjobs.App(url, schema=schemas[v]) for v in variants}
        tasks = {v: _single_task(apps[v]) for v in variants}
        with psycopg.connect(url) as conn:
            apps["limit"].set_queue_limit(conn, QUEUE, cfg.limit)
            apps["async"].set_queue_limit(conn, QUEUE, cfg.limit)
            conn.commit()
        # One connection per variant for the whole benchmark: prepared statements and
        # caches stay warm for every round alike.
        base_conn = stack.enter_context(psycopg.connect(url, autocommit=True))
        tx_conns = {v: stack.enter_context(psycopg.connect(url))
                    for v in variants[1:] if not v.startswith("async")}
        # The async variant: one event loop and one AsyncConnection for the whole run.
        loop = asyncio.new_event_loop()
        stack.callback(loop.close)
        aconn = loop.run_until_complete(psycopg.AsyncConnection.connect(url))
        stack.callback(lambda: loop.run_until_complete(aconn.close()))
        inserts = {
            v: sql.SQL("INSERT INTO {} (queue, task, args) VALUES (%s, %s, %s::jsonb)")
            .format(jobs_table(schemas[v])).as_string(base_conn)
            for v in ("baseline", "tx_insert", "async_tx_insert")
        }
        task_name = tasks["baseline"].name

        def run_single(variant: str, n: int, offset: int = 0) -> float:
            if variant == "async_tx_insert":
                return loop.run_until_complete(_async_insert(
                    aconn, inserts[variant], (QUEUE, task_name), n, offset))
            if variant in inserts:
                conn = base_conn if variant == "baseline" else tx_conns[variant]
                cur, insert = conn.cursor(), inserts[variant]
                commit = None if variant == "baseline" else conn.commit
                t0 = perf()
                for i in range(offset, offset + n):
                    cur.execute(insert, (QUEUE, task_name, f'{{"i":{i}}}'))
                    if commit is not None:
                        commit()
                return perf() - t0
            if variant == "async":
                return loop.run_until_complete(_async_single(aconn, tasks[variant], n, offset))
            conn, task = tx_conns[variant], tasks[variant]
            t0 = perf()
            for i in range(offset, offset + n):
                task.enqueue(conn, i=i)
                conn.commit()
            return perf() - t0

        def reset(variant: str) -> None:
            settler.truncate(schemas[variant])
            seed(url, apps[variant], tasks[variant], cfg.pending)
            settler.settle(schemas[variant])

        # Warm-up (untimed): connections, prepared statements, first-use imports.
        for v in variants:
            run_single(v, cfg.warmup, offset=10_000_000)

        print(f"  single-row: {cfg.rounds} rounds x {cfg.single_n} transactions per variant, "
              f"{cfg.pending:,} jobs pending in every table at the start", flush=True)
        rates: dict[str, list[float]] = {v: [] for v in variants}
        for r in range(cfg.rounds):
            # Rotate the order each round so drift does not always hit the same variant.
            k = r % len(variants)
            for v in variants[k:] + variants[:k]:
                reset(v)
                elapsed = run_single(v, cfg.single_n)
                rates[v].append(cfg.single_n / elapsed)
            done = ", ".join(f"{v} {rates[v][-1]:,.0f}/s" for v in variants)
            print(f"  round {r + 1}: {done}", flush=True)
        med = {v: statistics.median(rates[v]) for v in variants}
        common = {"n": cfg.single_n, "rounds": cfg.rounds, "pending_at_start": cfg.pending}
        report.add("enqueue.single.baseline_insert", med["baseline"], "tx/s",
                   per_round=_rounded(rates["baseline"]), **common)
        report.add("enqueue.single.nolimit", med["nolimit"], "jobs/s",
                   per_round=_rounded(rates["nolimit"]), **common)
        report.add("enqueue.single.nolimit_vs_baseline", med["nolimit"] / med["baseline"],
                   "ratio", per_round=_ratios(rates["nolimit"], rates["baseline"]))
        report.add("enqueue.single.limit", med["limit"], "jobs/s",
                   per_round=_rounded(rates["limit"]), queue_limit=cfg.limit, **common)
        report.add("enqueue.single.limit_vs_baseline", med["limit"] / med["baseline"], "ratio",
                   target_min=0.90, per_round=_ratios(rates["limit"], rates["baseline"]))
        report.add("enqueue.single.limit_vs_nolimit", med["limit"] / med["nolimit"], "ratio",
                   target_min=0.80, per_round=_ratios(rates["limit"], rates["nolimit"]))
        report.add("enqueue.single.async", med["async"], "jobs/s",
                   per_round=_rounded(rates["async"]), queue_limit=cfg.limit, **common)
        report.add("enqueue.single.async_vs_sync", med["async"] / med["limit"], "ratio",
                   target_min=0.90, per_round=_ratios(rates["async"], rates["limit"]))
        report.add("enqueue.single.diag.async_tx_insert", med["async_tx_insert"], "tx/s",
                   per_round=_rounded(rates["async_tx_insert"]),
                   what="bare INSERT in a psycopg AsyncConnection transaction + commit()",
                   **common)
        report.add("enqueue.single.diag.async_tx_insert_vs_tx_insert",
                   med["async_tx_insert"] / med["tx_insert"], "ratio",
                   per_round=_ratios(rates["async_tx_insert"], rates["tx_insert"]))
        report.add("enqueue.single.diag.async_vs_async_tx_insert",
                   med["async"] / med["async_tx_insert"], "ratio",
                   per_round=_ratios(rates["async"], rates["async_tx_insert"]))
        report.add("enqueue.single.diag.tx_insert", med["tx_insert"], "tx/s",
                   per_round=_rounded(rates["tx_insert"]),
                   what="bare INSERT in a psycopg transaction + commit()", **common)
        report.add("enqueue.single.diag.tx_insert_vs_baseline",
                   med["tx_insert"] / med["baseline"], "ratio",
                   per_round=_ratios(rates["tx_insert"], rates["baseline"]))
        report.add("enqueue.single.diag.limit_vs_tx_insert", med["limit"] / med["tx_insert"],
                   "ratio", per_round=_ratios(rates["limit"], rates["tx_insert"]))

        # --- bulk
        print(f"  bulk: {cfg.bulk_reps} x enqueue_many of {cfg.bulk_n:,} jobs per variant, "
              "alternating, plus the server-side INSERT ... SELECT ceiling", flush=True)
        bulk: dict[str, list[tuple[float, float]]] = {"nolimit": [], "limit": [], "async": []}
        server_rates: list[float] = []
        bare_rates: list[float] = []
        bare = sql.Identifier(schemas["baseline"], "jobs_without_indexes")
        bare_table = (sql.SQL("DROP TABLE IF EXISTS {bare}; CREATE TABLE {bare} (LIKE {jobs} "
                              "INCLUDING DEFAULTS INCLUDING CONSTRAINTS INCLUDING IDENTITY)")
                      .format(bare=bare, jobs=jobs_table(schemas["baseline"]))
                      .as_string(base_conn))

        def insert_select(table: sql.Identifier) -> str:
            return (sql.SQL("INSERT INTO {} (queue, task, args) SELECT %s, %s, "
                            "jsonb_build_object('i', g) FROM generate_series(1, %s) AS g")
                    .format(table).as_string(base_conn))

        ceiling = insert_select(jobs_table(schemas["baseline"]))
        ceiling_bare = insert_select(bare)
        for rep in range(cfg.bulk_reps):
            order = ("nolimit", "limit", "async", "server") if rep % 2 == 0 else (
                "server", "async", "limit", "nolimit")
            for v in order:
                if v == "server":
                    # Same rows, no client at all: what the server alone can insert here.
                    reset("baseline")
                    with psycopg.connect(url) as conn:
                        t0 = perf()
                        conn.execute(ceiling, (QUEUE, task_name, cfg.bulk_n))
                        conn.commit()
                        server_rates.append(cfg.bulk_n / (perf() - t0))
                    # The same into a copy of the table without its indexes: how much of
                    # the ceiling is the claim indexes' maintenance.
                    with psycopg.connect(url) as conn:
                        conn.execute(bare_table)
                        t0 = perf()
                        conn.execute(ceiling_bare, (QUEUE, task_name, cfg.bulk_n))
                        conn.commit()
                        bare_rates.append(cfg.bulk_n / (perf() - t0))
                    continue
                reset(v)
                task, app = tasks[v], apps[v]
                t0 = perf()
                specs = [task.job(i=i) for i in range(cfg.bulk_n)]
                t1 = perf()
                if v == "async":
                    loop.run_until_complete(_async_bulk(aconn, app, specs))
                else:
                    app.enqueue_many(tx_conns[v], specs)
                    tx_conns[v].commit()
                t2 = perf()
                del specs
                bulk[v].append((cfg.bulk_n / (t2 - t0), cfg.bulk_n / (t2 - t1)))
                print(f"  bulk {v}: {bulk[v][-1][0]:,.0f}/s "
                      f"({bulk[v][-1][1]:,.0f}/s excluding spec building)", flush=True)
            print(f"  bulk server-side INSERT ... SELECT: {server_rates[-1]:,.0f}/s", flush=True)
        for v in ("nolimit", "limit", "async"):
            incl = [b[0] for b in bulk[v]]
            excl = [b[1] for b in bulk[v]]
            p: dict[str, Any] = {"n": cfg.bulk_n, "reps": cfg.bulk_reps,
                                 "pending_at_start": cfg.pending}
            if v in ("limit", "async"):
                p["queue_limit"] = cfg.limit
            report.add(f"enqueue.bulk.{v}.best", max(incl), "jobs/s", target_min=150_000,
                       per_rep=_rounded(incl), **p)
            report.add(f"enqueue.bulk.{v}.median", statistics.median(incl), "jobs/s",
                       target_min=150_000, per_rep=_rounded(incl), **p)
            report.add(f"enqueue.bulk.{v}.best_excl_specs", max(excl), "jobs/s",
                       per_rep=_rounded(excl), **p)
            report.add(f"enqueue.bulk.{v}.median_excl_specs", statistics.median(excl),
                       "jobs/s", per_rep=_rounded(excl), **p)
        nolimit_median = statistics.median(b[0] for b in bulk["nolimit"])
        report.add("enqueue.bulk.limit_vs_nolimit",
                   statistics.median(b[0] for b in bulk["limit"]) / nolimit_median, "ratio")
        report.add("enqueue.bulk.async_vs_sync",
                   statistics.median(b[0] for b in bulk["async"])
                   / statistics.median(b[0] for b in bulk["limit"]), "ratio")
        server_median = statistics.median(server_rates)
        report.add("enqueue.bulk.diag.server_insert_select", server_median, "jobs/s",
                   per_rep=_rounded(server_rates), n=cfg.bulk_n,
                   what="INSERT ... SELECT generate_series of the same rows, no client")
        report.add("enqueue.bulk.diag.nolimit_vs_server", nolimit_median / server_median,
                   "ratio")
        report.add("enqueue.bulk.diag.server_insert_select_no_indexes",
                   statistics.median(bare_rates), "jobs/s", per_rep=_rounded(bare_rates),
                   n=cfg.bulk_n, what="the same INSERT ... SELECT into a copy of jobs "
                   "without indexes (the claim indexes' share of the ceiling)")


# --- work ---------------------------------------------------------------------------------


def _noop_task(app: pgjobs.App) -> pgjobs.Task[Any, Any]:
    def noop(i: int) -> None:
        return None

    return app.task(name="bench.work.noop", queue=QUEUE)(noop)


def _prepare(cfg: argparse.Namespace, app: pgjobs.App, task: pgjobs.Task[Any, Any],
             count: int) -> None:
    seed(cfg.database_url, app, task, count)
    settler = Settler(cfg.database_url, cfg.checkpoint, cfg.settle)
    try:
        settler.settle(app.schema)
    finally:
        settler.close()


def drain(cfg: argparse.Namespace, label: str, concurrency: int, n: int,
          make_task: Callable[[pgjobs.App], pgjobs.Task[Any, Any]],
          sample_rss: bool = False) -> dict[str, Any]:
    """Pre-insert n jobs, start a worker, time until the jobs table is empty.

    Gives up after ``--drain-timeout`` seconds and then reports the outcomes written so
    far per second, marked incomplete (a far-too-slow worker should not stall the run).
    """
    url = cfg.database_url
    with fresh_schema(url, label) as schema:
        app = pgjobs.App(url, schema=schema)
        task = make_task(app)
        _prepare(cfg, app, task, n)
        flushes: list[tuple[float, int]] = []
        with psycopg.connect(url, autocommit=True) as mon:
            empty = (sql.SQL("SELECT NOT EXISTS (SELECT 1 FROM {})")
                     .format(jobs_table(schema)).as_string(mon))
            rss_before = current_rss_bytes()
            rss_peak = rss_before
            with running_worker(app, concurrency, cfg.timeout,
                                on_flush=lambda t, s: flushes.append((t, s))) as runner:
                t0 = runner.start()
                next_poll = t0
                complete = False
                while True:
                    next_poll += cfg.poll_interval
                    time.sleep(max(0.0, next_poll - perf()))
                    if sample_rss:
                        rss_peak = max(rss_peak, current_rss_bytes())
                    row = mon.execute(empty).fetchone()
                    t_end = perf()
                    if row and row[0]:
                        complete = True
                        break
                    runner.check()
                    if t_end - t0 > cfg.drain_timeout:
                        break
                succeeded = runner.worker.stats.succeeded
            worker_params = runner.params()
    if complete:
        rate = n / (t_end - t0)
        # The completer's last flush is the exact moment the last row was deleted.
        last = next((t for t, s in flushes if s >= n), float("nan"))
        exact = n / (last - t0)
    else:
        done_at, done = flushes[-1] if flushes else (t_end, 0)
        rate = exact = done / (done_at - t0)
    return {
        "rate": rate, "exact_rate": exact, "seconds": t_end - t0, "complete": complete,
        "succeeded": succeeded, "flushes": len(flushes), "rss_before": rss_before,
        "rss_peak": rss_peak, "worker": worker_params,
    }


def _report_drain(report: Report, cfg: argparse.Namespace, name: str, out: dict[str, Any],
                  n: int, concurrency: int, **extra: Any) -> None:
    report.add(name, out["rate"], "jobs/s", n=n, concurrency=concurrency,
               seconds=round(out["seconds"], 3), complete=out["complete"],
               rate_to_last_flush=round(out["exact_rate"], 1),
               poll_interval=cfg.poll_interval, flushes=out["flushes"], **out["worker"],
               **extra)
    if not out["complete"]:
        report.note(f"{name}: the table was not empty after --drain-timeout "
                    f"{cfg.drain_timeout:g}s ({out['succeeded']:,} of {n:,} jobs done); "
                    "the rate is the outcomes written per second until then")


def bench_work(cfg: argparse.Namespace, report: Report) -> None:
    print("\n== work", flush=True)
    concurrencies = [int(c) for c in str(cfg.concurrency).split(",") if c.strip()]

    # 1. drain throughput of no-op jobs
    for c in concurrencies:
        reap_lingering(report)
        print(f"  drain {cfg.drain_n:,} no-op jobs at concurrency {c}", flush=True)
        out = drain(cfg, f"drain_c{c}", c, cfg.drain_n, _noop_task, sample_rss=(c == 100))
        _report_drain(report, cfg, f"work.drain.c{c}", out, cfg.drain_n, c)
        if c == 100:
            report.add("work.drain.c100.peak_rss", maxrss_mib(), "MiB",
                       what="ru_maxrss of the whole benchmark process so far",
                       rss_before_mib=round(out["rss_before"] / 2**20, 1))
            report.add("work.drain.c100.rss_during_run", out["rss_peak"] / 2**20, "MiB",
                       what="peak VmRSS sampled every poll during the run",
                       rss_before_mib=round(out["rss_before"] / 2**20, 1))
    if 100 not in concurrencies:
        report.note("concurrency 100 not in --concurrency: no peak RSS reported")

    # 2. 10 ms sleeping jobs
    def nap_task(app: pgjobs.App) -> pgjobs.Task[Any, Any]:
        def nap(i: int) -> None:
            time.sleep(0.01)

        return app.task(name="bench.work.sleep10ms", queue=QUEUE)(nap)

    c = cfg.sleep_concurrency
    reap_lingering(report)
    print(f"  drain {cfg.sleep_n:,} 10 ms jobs at concurrency {c}", flush=True)
    out = drain(cfg, "sleep", c, cfg.sleep_n, nap_task)
    _report_drain(report, cfg, f"work.sleep10ms.c{c}", out, cfg.sleep_n, c, ideal=c / 0.01)
    report.results[-1].params["target_min"] = 4000
    report.add(f"work.sleep10ms.c{c}_vs_ideal", out["rate"] / (c / 0.01), "ratio")

    # 3. pickup latency
    reap_lingering(report)
    bench_latency(cfg, report)

    # 4. backlog independence
    bench_backlog(cfg, report)
    reap_lingering(report)


def bench_latency(cfg: argparse.Namespace, report: Report) -> None:
    url = cfg.database_url
    total = cfg.latency_warmup + cfg.latency_samples
    print(f"  pickup latency: {cfg.latency_samples} samples (+{cfg.latency_warmup} warm-up), "
          f"idle worker at concurrency {cfg.latency_concurrency}", flush=True)
    rng = random.Random(cfg.random_seed)
    started: dict[int, float] = {}
    ran = threading.Event()
    with fresh_schema(url, "latency") as schema:
        app = pgjobs.App(url, schema=schema)

        @app.task(name="bench.work.latency_mark", queue=QUEUE)
        def mark(seq: int) -> None:
            started[seq] = perf()  # first thing the handler does
            ran.set()

        latencies: list[float] = []
        missed = 0
        with running_worker(app, cfg.latency_concurrency, cfg.timeout) as runner, \
                psycopg.connect(url) as conn:
            runner.start()
            worker = runner.worker
            runner.wait_until(worker.started.is_set)
            # The listener must be LISTENing, or the first jobs would wait for the poll.
            runner.wait_until(lambda: worker.listener is None or worker.listener.healthy)
            time.sleep(0.2)  # let the fetcher's start-up claim find nothing and go idle
            for seq in range(total):
                ran.clear()
                mark.enqueue(conn, seq=seq)
                conn.commit()
                committed = perf()
                if not ran.wait(timeout=5.0):
                    missed += 1
                    runner.wait_until(lambda: seq in started)  # noqa: B023 (called now)
                if seq >= cfg.latency_warmup:
                    latencies.append((started[seq] - committed) * 1000)
                time.sleep(rng.uniform(0.001, 0.005))
    latencies.sort()
    p = {"samples": len(latencies), "warmup": cfg.latency_warmup,
         "concurrency": cfg.latency_concurrency, "pause_ms": "1-5 random",
         "over_5s": missed, "mean_ms": round(statistics.fmean(latencies), 3)}
    report.add("work.pickup_latency.p50", percentile(latencies, 50), "ms", target_max=2.0, **p)
    report.add("work.pickup_latency.p95", percentile(latencies, 95), "ms", **p)
    report.add("work.pickup_latency.p99", percentile(latencies, 99), "ms", target_max=10.0, **p)
    report.add("work.pickup_latency.max", latencies[-1], "ms", **p)


def backlog_run(cfg: argparse.Namespace, pending: int) -> dict[str, Any]:
    """Rate of the first jobs drained from a queue holding ``pending`` jobs."""
    url = cfg.database_url
    # A backlog smaller than --backlog-m is only drained to 90%: the last jobs, when the
    # table runs dry and claims come back short, would be measured in one case only.
    end_at = cfg.backlog_m if pending > cfg.backlog_m else int(pending * 0.9)
    warm = min(cfg.backlog_warmup, end_at // 2)
    with fresh_schema(url, f"backlog_{pending}") as schema:
        app = pgjobs.App(url, schema=schema)
        task = _noop_task(app)
        t_seed = perf()
        _prepare(cfg, app, task, pending)
        print(f"    {pending:,} pending (seeded and settled in {perf() - t_seed:.1f} s)",
              flush=True)
        flushes: list[tuple[float, int]] = []
        reached = threading.Event()

        def on_flush(t: float, succeeded: int) -> None:
            flushes.append((t, succeeded))
            if succeeded >= end_at:
                reached.set()

        with running_worker(app, cfg.backlog_concurrency, cfg.timeout, on_flush) as runner:
            t0 = runner.start()
            complete = runner.wait_until(reached.is_set, interval=0.02,
                                         deadline=t0 + cfg.drain_timeout)
        worker_params = runner.params()
    if complete:
        tb, sb = next((t, s) for t, s in flushes if s >= end_at)
    else:
        tb, sb = flushes[-1] if flushes else (perf(), 0)
    ta, sa = next(((t, s) for t, s in flushes if s >= warm), (t0, 0))
    rate = (sb - sa) / (tb - ta) if tb > ta else float("nan")
    return {"rate": rate, "from_start_rate": sb / (tb - t0), "window": [sa, sb],
            "pending": pending, "complete": complete, "worker": worker_params}


def bench_backlog(cfg: argparse.Namespace, report: Report) -> None:
    print(f"  backlog: {cfg.backlog_small:,} vs {cfg.backlog_large:,} pending, concurrency "
          f"{cfg.backlog_concurrency}, small / large / small", flush=True)
    # Small before and after large, averaged, so drift during the long large case cancels.
    runs = []
    for pending in (cfg.backlog_small, cfg.backlog_large, cfg.backlog_small):
        reap_lingering(report)
        runs.append(backlog_run(cfg, pending))
    small1, large, small2 = runs
    small_rate = statistics.fmean([small1["rate"], small2["rate"]])
    common = {"concurrency": cfg.backlog_concurrency, "warmup_jobs": cfg.backlog_warmup}
    report.add("work.backlog.small", small_rate, "jobs/s", pending=cfg.backlog_small,
               runs=[round(small1["rate"], 1), round(small2["rate"], 1)],
               window=small1["window"],
               from_start_rate=[round(small1["from_start_rate"], 1),
                                round(small2["from_start_rate"], 1)],
               complete=small1["complete"] and small2["complete"],
               worker=[small1["worker"], small2["worker"]], **common)
    report.add("work.backlog.large", large["rate"], "jobs/s", pending=cfg.backlog_large,
               window=large["window"], from_start_rate=round(large["from_start_rate"], 1),
               complete=large["complete"], worker=large["worker"], **common)
    report.add("work.backlog.large_vs_small", large["rate"] / small_rate, "ratio",
               target_min=0.80)
    for label, run in (("small", small1), ("large", large), ("small", small2)):
        if not run["complete"]:
            report.note(f"backlog {label} ({run['pending']:,} pending): the window was not "
                        f"reached within --drain-timeout {cfg.drain_timeout:g}s; rate over "
                        f"jobs {run['window'][0]:,}..{run['window'][1]:,}")


# --- coroutine handlers -------------------------------------------------------------------


def _async_noop_task(app: pgjobs.App) -> pgjobs.Task[Any, Any]:
    async def anoop(i: int) -> None:
        return None

    return app.task(name="bench.work.async_noop", queue=QUEUE)(anoop)


def _async_nap_task(app: pgjobs.App) -> pgjobs.Task[Any, Any]:
    async def anap(i: int) -> None:
        await asyncio.sleep(0.01)

    return app.task(name="bench.work.async_sleep10ms", queue=QUEUE)(anap)


def bench_async_work(cfg: argparse.Namespace, report: Report) -> None:
    """Coroutine handlers: no-op drain against the sync drain, interleaved (sync, async,
    async, sync; medians), then 10 ms ``asyncio.sleep`` jobs at each concurrency."""
    print("\n== async work (coroutine handlers)", flush=True)
    concurrencies = [int(c) for c in str(cfg.async_concurrency).split(",") if c.strip()]
    n, c = cfg.async_noop_n, concurrencies[0]
    rates: dict[str, list[float]] = {"sync": [], "async": []}
    for kind in ("sync", "async", "async", "sync"):
        reap_lingering(report)
        print(f"  drain {n:,} no-op {kind} jobs at concurrency {c}", flush=True)
        make = _noop_task if kind == "sync" else _async_noop_task
        out = drain(cfg, f"anoop_{kind}", c, n, make)
        rates[kind].append(out["rate"])
        if len(rates[kind]) == 2:
            median = dict(out, rate=statistics.median(rates[kind]))
            _report_drain(report, cfg, f"work.async.noop_{kind}.c{c}", median, n, c,
                          runs=_rounded(rates[kind]))
    report.add(f"work.async.noop.c{c}_vs_sync",
               statistics.median(rates["async"]) / statistics.median(rates["sync"]), "ratio",
               target_min=0.80, what="median coroutine no-op drain / median sync drain")
    for c in concurrencies:
        reap_lingering(report)
        print(f"  drain {cfg.async_sleep_n:,} 10 ms asyncio.sleep jobs at concurrency {c}",
              flush=True)
        out = drain(cfg, f"asleep_c{c}", c, cfg.async_sleep_n, _async_nap_task)
        _report_drain(report, cfg, f"work.async.sleep10ms.c{c}", out, cfg.async_sleep_n, c,
                      ideal=c / 0.01)
        if c == 500:
            report.results[-1].params["target_min"] = 8000
        report.add(f"work.async.sleep10ms.c{c}_vs_ideal", out["rate"] / (c / 0.01), "ratio")
    reap_lingering(report)


# --- main ---------------------------------------------------------------------------------


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description="pgjobs benchmarks (see the module docstring for what each number means)",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    parser.add_argument("mode", choices=["enqueue", "work", "async-work", "all", "dashboard",
                                         "throughput"])
    parser.add_argument("--database-url",
                        default=os.environ.get("PGJOBS_BENCH_DATABASE_URL") or DEFAULT_URL,
                        help="created (and dropped at the end) if the database is missing")
    parser.add_argument("--json", metavar="FILE", help="also write settings and results here")
    import bench_throughput  # its own flags (concurrent enqueue, process drains)

    bench_throughput.add_arguments(parser)
    parser.add_argument("--quick", action="store_true",
                        help="shrink every size not given explicitly (smoke test)")
    parser.add_argument("--keep-database", action="store_true",
                        help="do not drop a database this run created")
    parser.add_argument("--no-checkpoint", dest="checkpoint", action="store_false",
                        help="skip the CHECKPOINT before each timed run")
    parser.add_argument("--no-settle", dest="settle", action="store_false",
                        help="skip the VACUUM (ANALYZE) of freshly filled tables before "
                        "timed runs (diagnostic: planner statistics change worker plans)")
    parser.add_argument("--drain-timeout", type=float, default=None,
                        help="stop a drain/backlog measurement after this many seconds and "
                        "report the partial rate (default 60, --quick 15)")
    parser.add_argument("--timeout", type=float, default=900.0,
                        help="give up on one worker benchmark after this many seconds")
    parser.add_argument("--poll-interval", type=float, default=0.02,
                        help="seconds between 'is the jobs table empty' polls")
    parser.add_argument("--random-seed", type=int, default=1,
                        help="seed of the latency benchmark's random pauses")
    size_help = {
        "single_n": "single-row transactions per variant per round",
        "rounds": "rounds of the single-row comparison (median reported)",
        "warmup": "untimed single-row transactions per variant first",
        "pending": "jobs pending in the queue before each enqueue run",
        "limit": "pending limit of the 'limit' variants",
        "bulk_n": "jobs per enqueue_many",
        "bulk_reps": "enqueue_many repetitions per variant",
        "drain_n": "jobs per drain run",
        "concurrency": "comma-separated drain concurrencies",
        "sleep_n": "10 ms jobs",
        "sleep_concurrency": "concurrency of the 10 ms jobs run",
        "latency_samples": "pickup latency samples",
        "latency_warmup": "pickup latency samples discarded first",
        "latency_concurrency": "concurrency of the idle worker",
        "backlog_large": "pending jobs of the large-backlog case",
        "backlog_small": "pending jobs of the small-backlog case",
        "backlog_m": "jobs drained (and timed) in the large-backlog case",
        "backlog_warmup": "completions before the backlog timing window opens",
        "backlog_concurrency": "concurrency of the backlog runs",
        "async_noop_n": "jobs per no-op drain of the coroutine vs sync comparison",
        "async_sleep_n": "10 ms asyncio.sleep coroutine jobs per concurrency",
        "async_concurrency": "comma-separated concurrencies of the coroutine drains",
        "dashboard_pending": "live jobs in the dashboard benchmark's tables",
        "dashboard_dead": "dead letters in the dashboard benchmark's tables",
        "dashboard_requests": "timed requests per dashboard page",
    }
    for key, (full, quick) in SIZES.items():
        parser.add_argument("--" + key.replace("_", "-"), dest=key, default=None,
                            type=type(full), help=f"{size_help[key]} (default {full}, "
                            f"--quick {quick})")
    args = parser.parse_args(argv)
    for key, (full, quick) in SIZES.items():
        if getattr(args, key) is None:
            setattr(args, key, quick if args.quick else full)
    if args.drain_timeout is None:
        args.drain_timeout = 15.0 if args.quick else 60.0
    return args


def source_info() -> dict[str, Any]:
    """Which pgjobs code was measured: its path and, in a checkout, the git state."""
    import subprocess

    where = os.path.dirname(os.path.abspath(pgjobs.__file__))
    info: dict[str, Any] = {"path": where}
    try:
        def git(*cmd: str) -> str:
            return subprocess.run(["git", "-C", where, *cmd], capture_output=True,
                                  text=True, timeout=10, check=True).stdout.strip()

        info["commit"] = git("rev-parse", "--short", "HEAD")
        changed = git("status", "--porcelain", "--", ".").splitlines()
        info["uncommitted_changes"] = len(changed)
    except (OSError, subprocess.SubprocessError):
        pass  # not a checkout (installed package)
    return info


def collect_settings(cfg: argparse.Namespace, mode: str) -> dict[str, Any]:
    server = server_settings(cfg.database_url)
    durable = server["fsync"] == "on" and server["synchronous_commit"] in DURABLE_SYNC_COMMIT
    try:
        affinity: int | None = len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        affinity = None
    params = {k: v for k, v in vars(cfg).items()}
    params["database_url"] = redact_url(cfg.database_url)
    return {
        "mode": mode,
        "started_at": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "server": server,
        "durability": "on" if durable else "off",
        "python": f"{platform.python_implementation()} {platform.python_version()}",
        "platform": platform.platform(),
        "cpu_count": os.cpu_count(),
        "cpu_affinity": affinity,
        "load_average": [round(x, 2) for x in os.getloadavg()],
        "pgjobs": pgjobs.__version__,
        "pgjobs_source": source_info(),
        "psycopg": psycopg.__version__,
        "parameters": params,
    }


def print_settings(s: dict[str, Any]) -> None:
    server = s["server"]
    print(f"pgjobs benchmark ({s['mode']}), {s['started_at']}")
    print(f"  server              {server['version']}")
    for name in ("fsync", "synchronous_commit", "wal_sync_method", "full_page_writes",
                 "autovacuum", "shared_buffers", "max_connections"):
        print(f"  {name:<19} {server[name]}")
    if s["durability"] == "on":
        print(f"  => durability on (fsync=on, synchronous_commit={server['synchronous_commit']}):"
              " every commit waits for its WAL flush")
    else:
        print(f"  => durability OFF (fsync={server['fsync']}, synchronous_commit="
              f"{server['synchronous_commit']}): commits do not wait for the disk; enqueue "
              "rates are not those of a durable server")
    if server["autovacuum"] != "on":
        print("  => autovacuum is off on this server: dead tuples from drained jobs are only "
              "cleaned by the benchmark's own VACUUM before each run")
    print(f"  python              {s['python']} on {s['platform']}")
    print(f"  cpus                {s['cpu_count']} (usable: {s['cpu_affinity']}), "
          f"load average {' '.join(map(str, s['load_average']))}")
    src = s["pgjobs_source"]
    git = (f", commit {src['commit']} + {src['uncommitted_changes']} uncommitted "
           "file(s) under pgjobs/" if "commit" in src else "")
    print(f"  pgjobs              {s['pgjobs']} from {src['path']}{git}; "
          f"psycopg {s['psycopg']}")
    print("  parameters          " + ", ".join(f"{k}={v}" for k, v in s["parameters"].items()))
    print("  compare RATIOS from one run: absolute rates drift on a shared machine", flush=True)


def main(argv: list[str] | None = None) -> int:
    cfg = parse_args(argv)
    # pgjobs' own warnings (lost leases, reconnects) matter when reading the numbers.
    logging.basicConfig(level=logging.WARNING, stream=sys.stderr,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    created = ensure_database(cfg.database_url)
    started = perf()
    try:
        report = Report(collect_settings(cfg, cfg.mode))
        print_settings(report.settings)
        if cfg.mode in ("enqueue", "all"):
            bench_enqueue(cfg, report)
        if cfg.mode == "dashboard":
            # Page server times on big tables: scripts/bench_dashboard.py (not in "all").
            from bench_dashboard import bench_dashboard

            bench_dashboard(cfg, report, fresh_schema=fresh_schema, percentile=percentile)
        if cfg.mode in ("work", "all"):
            bench_work(cfg, report)
        if cfg.mode in ("async-work", "work", "all"):
            bench_async_work(cfg, report)
        if cfg.mode in ("throughput", "all"):
            # Concurrent enqueue and `pgjobs work --processes` drains: bench_throughput.py.
            import bench_throughput

            bench_throughput.run(cfg, report, fresh_schema)
        report.settings["elapsed_seconds"] = round(perf() - started, 1)
        report.settings["load_average_end"] = [round(x, 2) for x in os.getloadavg()]
        print_table(report)
        print(f"\ntotal {perf() - started:.1f} s; load average at the end "
              f"{' '.join(map(str, report.settings['load_average_end']))}")
        if cfg.json:
            write_json(report, cfg.json)
    finally:
        if created and not cfg.keep_database:
            drop_database(cfg.database_url)
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""Throughput benchmarks of issue 14: concurrent enqueue, and drains by `pgjobs work`.

Run through ``scripts/bench.py throughput`` (also part of ``all``); the helpers (schemas,
report) are bench.py's. What each number means:

``enqueue.concurrent.*``: tx/s of ``--concurrent-connections`` (16) threads, each on its
    own connection committing single-row transactions, ``--concurrent-n`` in all, rounds
    rotated, medians. Variants: ``tx_insert`` a bare INSERT + commit (the reference);
    ``insert_notify`` the same INSERT with ``pg_notify`` (what any notifying enqueue pays:
    PostgreSQL's global notify lock through commit, no group commit); ``pgjobs`` the
    enqueue while no fetcher waits (workers busy, or none); ``pgjobs_waiting`` the same
    while a fetcher waits (every enqueue notifies); ``pgjobs_0005`` the enqueue with
    migration 0005's wake function (a PL/pgSQL read of ``waiting_fetchers``, replaced by
    0006's advisory-lock probe), no fetcher waiting; ``legacy`` the pre-0005 statement
    (always notifies): the before-figures in the same run. ``pgjobs_vs_tx_insert`` has
    the target (>= 0.80).
``drain.other_backlog.{paused,named}``: jobs/s of ``pgjobs work --concurrency 50``
    draining ``--process-drain-n`` jobs while ``--other-backlog-n`` (100,000) older due
    jobs of another queue come first in the claim index: that queue paused (an all-queue
    worker), or not served (a ``--queues`` worker). ``...baseline``: the same with the
    pgjobs of ``--baseline-checkout DIR``, run just before, in the same run.
``drain.process.p{P}.c{C}``: jobs/s of one ``pgjobs work --processes P --concurrency C``
    draining ``--process-drain-n`` (50,000) no-op jobs, from the first claimed job to an
    empty table (process start-up excluded). ``drain.reference.p{P}``: a minimal psycopg
    loop in P processes, one connection each: claim 100 with UPDATE … SKIP LOCKED
    RETURNING, decode the args, and DELETE them in the statement claiming the next 100
    (one round trip per batch), over the same jobs, in the same run.
"""

from __future__ import annotations

import argparse
import importlib.util
import os
import statistics
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from contextlib import AbstractContextManager
from pathlib import Path
from typing import Any

import psycopg
from psycopg import sql

import pgjobs
import pgjobs.sql as pgsql
from pgjobs.store import JobStore

HERE = Path(__file__).resolve().parent
QUEUE = "bench"
TASK = "bench.throughput.noop"
perf = time.perf_counter

FreshSchema = Callable[[str, str], AbstractContextManager[str]]


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--concurrent-connections", type=int, default=16)
    parser.add_argument("--concurrent-n", type=int, default=None,
                        help="single-row transactions per concurrent variant per round "
                             "(default 8000, --quick 1600)")
    parser.add_argument("--process-drain-n", type=int, default=None,
                        help="jobs per `pgjobs work` drain (default 50000, --quick 5000)")
    parser.add_argument("--process-counts", default="1,2",
                        help="comma-separated --processes values of the process drains")
    parser.add_argument("--process-concurrency", default="10,25,50,100",
                        help="comma-separated --concurrency values of the process drains")
    parser.add_argument("--other-backlog-n", type=int, default=None,
                        help="older due jobs of another queue in the backlog drains "
                             "(default 100000, --quick 10000)")
    parser.add_argument("--baseline-checkout", metavar="DIR", default=None,
                        help="also run the backlog drains with the pgjobs package of this "
                             "checkout (e.g. `git worktree add /tmp/base <commit>`), "
                             "interleaved with this one: a before/after in the same run")


# --- concurrent single-row enqueue ------------------------------------------------------


def _threads(n_threads: int, n_total: int, connect: Callable[[], Any],
             one: Callable[[Any, int], None]) -> float:
    """Seconds for n_total single-row transactions split over n_threads connections."""
    conns = [connect() for _ in range(n_threads)]
    start = threading.Barrier(n_threads + 1)
    errors: list[BaseException] = []
    per = n_total // n_threads

    def run(k: int) -> None:
        conn = conns[k]
        start.wait()
        try:
            for i in range(per):
                one(conn, k * per + i)
                conn.commit()
        except BaseException as exc:  # reported below
            errors.append(exc)

    threads = [threading.Thread(target=run, args=(k,)) for k in range(n_threads)]
    for t in threads:
        t.start()
    start.wait()
    t0 = perf()
    for t in threads:
        t.join()
    elapsed = perf() - t0
    for c in conns:
        c.close()
    if errors:
        raise errors[0]
    return elapsed


def bench_concurrent_enqueue(cfg: argparse.Namespace, report: Any,
                             fresh_schema: FreshSchema) -> None:
    url = cfg.database_url
    n_threads = cfg.concurrent_connections
    n_total = cfg.concurrent_n or (1600 if cfg.quick else 8000)
    n_total -= n_total % n_threads
    print(f"\n== concurrent enqueue: {n_threads} connections, {n_total:,} single-row "
          f"transactions per variant per round, {cfg.rounds} rounds", flush=True)
    variants = ("tx_insert", "insert_notify", "pgjobs", "pgjobs_waiting", "pgjobs_0005",
                "legacy")
    with _schemas(fresh_schema, url, variants) as schemas, \
            psycopg.connect(url, autocommit=True) as waiter:
        apps = {v: pgjobs.App(url, schema=schemas[v]) for v in variants}
        tasks = {v: apps[v].task(name=TASK, queue=QUEUE)(_noop) for v in variants}
        # A fetcher waiting on the pgjobs_waiting schema: its waiting lock, held here.
        assert JobStore(apps["pgjobs_waiting"].sql).hold_waiting_locks(waiter, queues=None)
        with psycopg.connect(url, autocommit=True) as admin:
            for statement in _wake_function_0005():
                admin.execute(sql.SQL(statement).format(  # type: ignore[arg-type]
                    schema=sql.Identifier(schemas["pgjobs_0005"])))
            insert = {v: sql.SQL("INSERT INTO {} (queue, task, args) VALUES (%s, %s, %s::jsonb)"
                                 ).format(sql.Identifier(schemas[v], "jobs")).as_string(admin)
                      for v in ("tx_insert",)}
            notify = sql.SQL("WITH i AS (INSERT INTO {} (queue, task, args) VALUES "
                             "(%s, %s, %s::jsonb) RETURNING id) SELECT id, pg_notify(%s, %s) "
                             "FROM i").format(sql.Identifier(schemas["insert_notify"], "jobs")
                                              ).as_string(admin)
        legacy_sql = apps["legacy"].sql.of(pgsql.ENQUEUE_NOTIFY)  # the statement before 0005
        legacy_channel = apps["legacy"].sql.channel
        channel = apps["insert_notify"].sql.channel

        def one(variant: str) -> Callable[[Any, int], None]:
            if variant == "tx_insert":
                return lambda c, i: c.execute(insert["tx_insert"], (QUEUE, TASK, f'{{"i":{i}}}'))
            if variant == "insert_notify":
                return lambda c, i: c.execute(notify, (QUEUE, TASK, f'{{"i":{i}}}', channel, QUEUE))
            if variant == "legacy":
                return lambda c, i: c.execute(legacy_sql, {
                    "queue": QUEUE, "task": TASK, "args": f'{{"i":{i}}}', "priority": 0,
                    "max_attempts": 25, "unique_key": None, "trace": None,
                    "channel": legacy_channel})
            task = tasks[variant]
            return lambda c, i: task.enqueue(c, i=i)

        def run(variant: str, n: int) -> float:
            return _threads(n_threads, n, lambda: psycopg.connect(url), one(variant))

        for v in variants:  # warm-up
            run(v, n_threads * 20)
        rates: dict[str, list[float]] = {v: [] for v in variants}
        for r in range(cfg.rounds):
            k = r % len(variants)
            for v in variants[k:] + variants[:k]:
                rates[v].append(n_total / run(v, n_total))
            print("  round {}: {}".format(r + 1, ", ".join(
                f"{v} {rates[v][-1]:,.0f}/s" for v in variants)), flush=True)
    med = {v: statistics.median(rates[v]) for v in variants}
    common = {"connections": n_threads, "n": n_total, "rounds": cfg.rounds}
    for v in variants:
        report.add(f"enqueue.concurrent.{v}", med[v], "tx/s",
                   per_round=[round(x, 1) for x in rates[v]], **common)
    for v, target in (("pgjobs", 0.80), ("pgjobs_waiting", None), ("pgjobs_0005", None),
                      ("legacy", None), ("insert_notify", None)):
        report.add(f"enqueue.concurrent.{v}_vs_tx_insert", med[v] / med["tx_insert"], "ratio",
                   target_min=target,
                   per_round=[round(a / b, 3) for a, b in zip(rates[v], rates["tx_insert"],
                                                               strict=True)])


def _noop(i: int) -> None:
    return None


def _wake_function_0005() -> list[str]:
    """Migration 0005's wake function (0006's downgrade restores it), for a same-run
    before/after of 0006."""
    path = HERE.parent / "alembic" / "versions" / "0006_wake_locks.py"
    spec = importlib.util.spec_from_file_location("pgjobs_migration_0006", path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return list(module.DOWNGRADE)


class _schemas:
    def __init__(self, fresh_schema: FreshSchema, url: str, labels: tuple[str, ...]) -> None:
        self._cms = [fresh_schema(url, f"tp_{label}") for label in labels]
        self._labels = labels

    def __enter__(self) -> dict[str, str]:
        return {label: cm.__enter__() for label, cm in zip(self._labels, self._cms, strict=True)}

    def __exit__(self, *exc: object) -> None:
        for cm in self._cms:
            cm.__exit__(None, None, None)


# --- drains by `pgjobs work` processes ----------------------------------------------------


REFERENCE_LOOP = """
import json, sys, psycopg
from psycopg import sql
url, schema = sys.argv[1], sys.argv[2]
jobs = sql.Identifier(schema, "jobs")
# One round trip per batch: the previous batch's DELETE and the next claim together.
claim = sql.SQL(
    "WITH acked AS (DELETE FROM {j} WHERE id = ANY(%s::bigint[])) "
    "UPDATE {j} SET state = 'running', attempts = attempts + 1, "
    "lease_token = gen_random_uuid(), lease_expires_at = now() + interval '60 s' "
    "WHERE id = ANY(ARRAY(SELECT id FROM {j} WHERE state = 'pending' AND next_run_at <= now() "
    "ORDER BY priority DESC, next_run_at, id LIMIT 100 FOR UPDATE SKIP LOCKED)) "
    "RETURNING id, args::text").format(j=jobs)
done = []
with psycopg.connect(url, autocommit=True) as conn:
    while True:
        rows = conn.execute(claim, [done]).fetchall()
        if not rows:
            break
        for _, args in rows:
            json.loads(args)
        done = [r[0] for r in rows]
"""


def _fill(url: str, schema: str, n: int) -> None:
    app = pgjobs.App(url, schema=schema)
    task = app.task(name=TASK, queue=QUEUE)(_noop)
    with psycopg.connect(url) as conn:
        for start in range(0, n, 10_000):
            app.enqueue_many(conn, [task.job(i=i) for i in range(start, min(n, start + 10_000))])
            conn.commit()
    with psycopg.connect(url, autocommit=True) as conn:
        conn.execute(sql.SQL("VACUUM (ANALYZE) {}").format(sql.Identifier(schema, "jobs")))
        try:
            conn.execute("CHECKPOINT")
        except psycopg.errors.InsufficientPrivilege:
            pass


def _time_drain(url: str, schema: str, n: int, procs: list[subprocess.Popen[bytes]],
                timeout: float, queue: str | None = None) -> tuple[float, bool]:
    """Jobs/s from the first claimed job to an empty table, or an empty ``queue`` (or
    the timeout)."""
    jobs = sql.Identifier(schema, "jobs")
    of_queue = sql.SQL("queue = {}").format(sql.Literal(queue)) if queue else sql.SQL("true")
    with psycopg.connect(url, autocommit=True) as mon:
        started = sql.SQL("SELECT EXISTS (SELECT 1 FROM {} WHERE state = 'running' AND {})"
                          ).format(jobs, of_queue)
        empty = sql.SQL("SELECT NOT EXISTS (SELECT 1 FROM {} WHERE {})").format(jobs, of_queue)
        left = sql.SQL("SELECT count(*) FROM {} WHERE {}").format(jobs, of_queue)
        deadline = time.monotonic() + timeout
        while not mon.execute(started).fetchone()[0]:  # type: ignore[index]
            if any(p.poll() is not None for p in procs):
                raise DrainRefused(f"exit status {[p.poll() for p in procs]}")
            if time.monotonic() > deadline:
                raise RuntimeError("the drain never started")
            time.sleep(0.002)
        t0 = perf()
        while True:
            time.sleep(0.01)
            if mon.execute(empty).fetchone()[0]:  # type: ignore[index]
                return n / (perf() - t0), True
            if perf() - t0 > timeout:
                remaining = mon.execute(left).fetchone()[0]  # type: ignore[index]
                return (n - remaining) / (perf() - t0), False


class DrainRefused(Exception):
    """`pgjobs work` exited before claiming (e.g. the connection budget check)."""


def _stop(procs: list[subprocess.Popen[bytes]]) -> None:
    for p in procs:
        if p.poll() is None:
            p.terminate()
    for p in procs:
        try:
            p.wait(60)
        except subprocess.TimeoutExpired:
            p.kill()
            p.wait()


def process_drain(cfg: argparse.Namespace, fresh_schema: FreshSchema, n: int,
                  processes: int, concurrency: int | None) -> tuple[float, bool]:
    """One drain by `pgjobs work` (concurrency given) or the reference loop (None)."""
    url = cfg.database_url
    label = f"pd{processes}c{concurrency}" if concurrency else f"ref{processes}"
    with fresh_schema(url, label) as schema:
        _fill(url, schema, n)
        if concurrency is None:
            cmds = [[sys.executable, "-c", REFERENCE_LOOP, url, schema]] * processes
        else:
            cmds = [[sys.executable, "-m", "pgjobs", "work", "bench_throughput:app",
                     "--processes", str(processes), "--concurrency", str(concurrency),
                     "--log-level", "warning"]]
        return _run_drain(cfg, schema, n, cmds)


def _run_drain(cfg: argparse.Namespace, schema: str, n: int, cmds: list[list[str]],
               checkout: str | None = None, queue: str | None = None) -> tuple[float, bool]:
    """Start ``cmds`` on ``schema`` (pgjobs from ``checkout`` if given), time the drain
    of ``n`` jobs (of ``queue``), stop them."""
    url = cfg.database_url
    path = [checkout] if checkout else []
    env = {**os.environ, "PGJOBS_DATABASE_URL": url, "PGJOBS_SCHEMA": schema,
           "PYTHONPATH": os.pathsep.join([*path, str(HERE), os.environ.get("PYTHONPATH", "")])}
    # `python -m` puts the working directory first on sys.path: run in the checkout.
    procs = [subprocess.Popen(c, env=env, stdin=subprocess.DEVNULL, cwd=checkout)
             for c in cmds]
    try:
        return _time_drain(url, schema, n, procs, cfg.drain_timeout or 60, queue=queue)
    finally:
        _stop(procs)


def bench_process_drains(cfg: argparse.Namespace, report: Any,
                         fresh_schema: FreshSchema) -> None:
    n = cfg.process_drain_n or (5000 if cfg.quick else 50_000)
    counts = [int(x) for x in str(cfg.process_counts).split(",") if x.strip()]
    concurrencies = [int(x) for x in str(cfg.process_concurrency).split(",") if x.strip()]
    print(f"\n== drains by `pgjobs work --processes P`: {n:,} no-op jobs each, "
          "beside a minimal psycopg claim/ack loop", flush=True)
    for p in counts:
        rate, complete = process_drain(cfg, fresh_schema, n, p, None)
        print(f"  reference loop, {p} process(es): {rate:,.0f} jobs/s"
              + ("" if complete else " (incomplete)"), flush=True)
        report.add(f"drain.reference.p{p}", rate, "jobs/s", n=n, complete=complete,
                   what="minimal psycopg claim-100/decode/DELETE loop per process")
        for c in concurrencies:
            try:
                rate, complete = process_drain(cfg, fresh_schema, n, p, c)
            except DrainRefused as refused:  # its one-line error is on stderr above
                print(f"  pgjobs work --processes {p} --concurrency {c}: refused ({refused})",
                      flush=True)
                report.note(f"drain.process.p{p}.c{c}: `pgjobs work` refused to start "
                            f"({refused}; see its error above)")
                continue
            print(f"  pgjobs work --processes {p} --concurrency {c}: {rate:,.0f} jobs/s"
                  + ("" if complete else " (incomplete)"), flush=True)
            report.add(f"drain.process.p{p}.c{c}", rate, "jobs/s", target_min=20_000, n=n,
                       complete=complete)


# --- drains behind another queue's backlog -----------------------------------------------

OTHER_QUEUE = "elsewhere"


def backlog_drain(cfg: argparse.Namespace, fresh_schema: FreshSchema, n: int, other: int,
                  case: str, checkout: str | None) -> tuple[float, bool]:
    """One `pgjobs work --concurrency 50` drain of ``n`` jobs while ``other`` older due
    jobs of another queue come first in jobs_claim_idx: that queue paused and the worker
    serving every queue (``case`` "paused"), or the worker serving only its own queue
    (``case`` "named")."""
    url = cfg.database_url
    with fresh_schema(url, f"ob_{case}") as schema:
        # The other queue's backlog built up first, as it would have (older jobs, lower
        # ids, first in the table); the planner's choices depend on that layout.
        with psycopg.connect(url, autocommit=True) as conn:
            conn.execute(sql.SQL(
                "INSERT INTO {} (queue, task, args, next_run_at) "
                "SELECT %s, %s, '{{}}', now() - interval '1 day' + i * interval '1 ms' "
                "FROM generate_series(1, %s) AS i").format(sql.Identifier(schema, "jobs")),
                [OTHER_QUEUE, TASK, other])
            if case == "paused":
                conn.execute(sql.SQL("INSERT INTO {} (name, paused) VALUES (%s, true)")
                             .format(sql.Identifier(schema, "queues")), [OTHER_QUEUE])
        _fill(url, schema, n)  # and VACUUM (ANALYZE)
        cmd = [sys.executable, "-m", "pgjobs", "work", "bench_throughput:app",
               "--concurrency", "50", "--log-level", "warning"]
        if case == "named":
            cmd += ["--queues", QUEUE]
        return _run_drain(cfg, schema, n, [cmd], checkout=checkout, queue=QUEUE)


def bench_other_backlogs(cfg: argparse.Namespace, report: Any,
                         fresh_schema: FreshSchema) -> None:
    n = cfg.process_drain_n or (5000 if cfg.quick else 50_000)
    other = cfg.other_backlog_n or (10_000 if cfg.quick else 100_000)
    versions: list[tuple[str, str | None]] = [("", None)]
    if cfg.baseline_checkout:
        versions.insert(0, (".baseline", str(Path(cfg.baseline_checkout).resolve())))
    print(f"\n== drains of {n:,} jobs behind {other:,} older due jobs of another queue, "
          "`pgjobs work --concurrency 50`"
          + (f" (and the baseline {cfg.baseline_checkout}, interleaved)"
             if cfg.baseline_checkout else ""), flush=True)
    for case, what in (("paused", "all-queue worker, the other queue paused"),
                       ("named", "--queues worker, the other queue served by nobody")):
        for suffix, checkout in versions:
            rate, complete = backlog_drain(cfg, fresh_schema, n, other, case, checkout)
            print(f"  {what}{' (baseline)' if checkout else ''}: {rate:,.0f} jobs/s"
                  + ("" if complete else " (incomplete)"), flush=True)
            report.add(f"drain.other_backlog.{case}{suffix}", rate, "jobs/s", n=n,
                       other_backlog=other, complete=complete, what=what,
                       checkout=checkout or "this one")


def run(cfg: argparse.Namespace, report: Any, fresh_schema: FreshSchema) -> None:
    """The throughput benchmarks (``bench.py throughput``)."""
    bench_concurrent_enqueue(cfg, report, fresh_schema)
    bench_process_drains(cfg, report, fresh_schema)
    bench_other_backlogs(cfg, report, fresh_schema)


def _app() -> pgjobs.App:
    application = pgjobs.App()
    application.task(name=TASK, queue=QUEUE)(_noop)
    return application


def __getattr__(name: str) -> Any:
    # `pgjobs work bench_throughput:app` imports this module: the App is built only then
    # (it reads PGJOBS_DATABASE_URL / PGJOBS_SCHEMA from the environment).
    if name == "app":
        value = _app()
        globals()["app"] = value
        return value
    raise AttributeError(name)

"""Chaos runs: real `pgjobs work` processes killed, cut off, flooded and poisoned.

Run from the repository root::

    .venv/bin/python scripts/chaos.py                          # every scenario, 60 s each
    .venv/bin/python scripts/chaos.py --scenario sigkill --duration 300
    .venv/bin/python scripts/chaos.py --database-url postgresql://postgres@127.0.0.1:5432/test

The scenarios are the ones tests/chaos/test_kills_and_poison.py runs for a few seconds
(the code is in tests/chaos/chaos_app.py), here run for ``--duration`` seconds each:

  sigkill    2 workers (--lease-timeout 2) serve a steady stream; every second one is
             SIGKILLed and replaced; then one worker drains.
  terminate  1 worker serves a stream while every connection it has is ended with
             pg_terminate_backend every 0.5 s; it must never exit.
  burst      16 threads make bursts of 100,000 enqueue attempts against a queue limited
             to 500 pending jobs while one worker drains (bursts repeat until the
             duration has passed, so one burst may outlast it); the worker's peak RSS.
             First, a check that the pending limit holds within one process.
  poison     2 workers (restarted when they die) serve ordinary jobs while poison jobs
             arrive one at a time: one kills its worker, one blocks in time.sleep(3600)
             past its timeout, one allocates until MemoryError under RLIMIT_AS.
  stuck-db   1 worker (--concurrency 2) gets 5 jobs that block in SELECT pg_sleep(300)
             on their pooled connection past their 0.5 s timeout, then ordinary jobs
             for the duration: they must keep completing.

Server faults (tests/chaos/test_server_faults.py, code in tests/chaos/server_app.py):
postgres_restart (a private embedded server stopped and started mid-run),
restart_retry, connection_exhaustion, silent_listen_death and blackholed_connections
(through a TCP proxy that black-holes traffic), long_transaction (xmin pinned).

Each scenario gets a fresh schema (``pgjobs_chaos_<random>``, dropped afterwards) and
prints a report: jobs enqueued, completed, executed more than once (and whether a worker
death explains it), lost, dead-lettered, recovery times, peak RSS, the workers' warning
lines, and the books: every committed job completed or dead-lettered, none lost.
The exit status is 1 if any scenario's books do not balance.

``--database-url`` defaults to ``$PGJOBS_CHAOS_DATABASE_URL``, else
``$PGJOBS_TEST_DATABASE_URL``, else ``postgresql://postgres@127.0.0.1:5432/test``.
Recovery times compare the server's clock with this machine's (the offset is measured
once); the workers run on this machine.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
import uuid
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import psycopg  # noqa: E402
from psycopg import sql  # noqa: E402

from pgjobs import migrate  # noqa: E402
from tests.chaos import chaos_app, server_app  # noqa: E402

DEFAULT_URL = "postgresql://postgres@127.0.0.1:5432/test"


def run(name: str, url: str, duration: float) -> chaos_app.Report:
    schema = f"pgjobs_chaos_{uuid.uuid4().hex[:10]}"
    migrate.upgrade(url, schema)

    def progress(message: str) -> None:
        print(f"  [{name} {time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)

    try:
        options: dict[str, object] = {}
        if name == "burst":
            options = {"attempts": 100_000, "threads": 16, "limit": 500}
        return chaos_app.SCENARIOS[name](url, schema, duration, progress=progress, **options)
    finally:
        with psycopg.connect(url, autocommit=True) as conn:
            conn.execute(sql.SQL("DROP SCHEMA IF EXISTS {} CASCADE").format(
                sql.Identifier(schema)))


class _ServerReport:
    """Adapts server_app's report dicts to the printed report and the books check."""

    def __init__(self, name: str, figures: dict[str, object]) -> None:
        self.name = name
        self.figures = figures
        lost = figures.get("lost", 0)
        self.problems = [f"{lost} job(s) lost"] if lost else []

    def render(self) -> str:
        lines = [f"== {self.name}"]
        for key, value in self.figures.items():
            if isinstance(value, list | dict) and len(value) > 8:
                continue  # log excerpts and samples: see the scenario's own output
            lines.append(f"   {key}: {value}")
        lines.append("   books balance: " + ("OK" if not self.problems else
                                             "; ".join(self.problems)))
        return "\n".join(lines)


def run_server(name: str, url: str, duration: float) -> _ServerReport:
    schema = f"pgjobs_chaos_{uuid.uuid4().hex[:10]}"
    if name != "postgres_restart":  # that one brings its own server and schema
        migrate.upgrade(url, schema)
    try:
        return _ServerReport(name, server_app.SCENARIOS[name](url, schema, duration))
    finally:
        with psycopg.connect(url, autocommit=True) as conn:
            conn.execute(sql.SQL("DROP SCHEMA IF EXISTS {} CASCADE").format(
                sql.Identifier(schema)))


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--duration", type=float, default=60.0,
                        help="seconds of faults per scenario (default 60)")
    parser.add_argument("--scenario", default="all",
                        choices=[*chaos_app.SCENARIOS, *server_app.SCENARIOS, "all"],
                        help="which one (default all)")
    parser.add_argument("--database-url", default=os.environ.get(
        "PGJOBS_CHAOS_DATABASE_URL", os.environ.get("PGJOBS_TEST_DATABASE_URL", DEFAULT_URL)))
    args = parser.parse_args()
    every = [*chaos_app.SCENARIOS, *server_app.SCENARIOS]
    names = every if args.scenario == "all" else [args.scenario]
    failed = []
    for name in names:
        print(f"running {name} for {args.duration:g} s ...", file=sys.stderr, flush=True)
        started = time.monotonic()
        report: chaos_app.Report | _ServerReport
        if name in server_app.SCENARIOS:
            report = run_server(name, args.database_url, args.duration)
        else:
            report = run(name, args.database_url, args.duration)
        print(report.render())
        print(f"   (scenario wall time {time.monotonic() - started:.0f} s)\n", flush=True)
        if report.problems:
            failed.append(name)
    print(f"books balance in {len(names) - len(failed)} of {len(names)} scenario(s)"
          + (f"; problems in: {', '.join(failed)}" if failed else ""))
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())

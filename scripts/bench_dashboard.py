"""`scripts/bench.py dashboard`: server time of every dashboard page on big tables.

Fills a fresh schema with ``--dashboard-pending`` (1,000,000) live jobs over five queues
and three priorities (10 % scheduled, a few running) and ``--dashboard-dead`` (100,000)
dead letters, plus an hour of history and three workers; then ``VACUUM (ANALYZE)``, what
autovacuum does to tables that filled up. Each page is requested in-process through
httpx's ASGI transport (no network, no browser: the time is the app's and the
database's), ``--dashboard-requests`` (30) times after 3 untimed requests, and reported
as p50/p95/max in ms (target: p95 <= 100 ms for every page).
"""

from __future__ import annotations

import argparse
import time
from typing import Any

import anyio
import httpx
import psycopg
from psycopg import sql

QUEUES = ("email", "webhooks", "reports", "billing", "thumbnails")
TARGET_P95_MS = 100.0
WARMUP = 3


def _seed(url: str, schema: str, pending: int, dead: int) -> dict[str, Any]:
    """Fill the tables server-side (INSERT … SELECT); returns ids the pages will use."""
    def t(name: str) -> sql.Identifier:
        return sql.Identifier(schema, name)

    with psycopg.connect(url, autocommit=True) as conn:
        started = time.perf_counter()
        conn.execute(sql.SQL(
            "INSERT INTO {} (queue, task, args, priority, next_run_at, created_at) "
            "SELECT (ARRAY['email','webhooks','reports','billing','thumbnails'])[1 + g %% 5], "
            "       'app.tasks.handle_' || (g %% 7), "
            "       jsonb_build_object('id', g, 'word', "
            "           (ARRAY['alpha','bravo','charlie','delta'])[1 + g %% 4]), "
            "       (ARRAY[0, 5, 10])[1 + g %% 3], "
            "       CASE WHEN g %% 10 = 0 THEN now() + (g %% 3600) * interval '1 second' "
            "            ELSE now() - (g %% 3600) * interval '1 second' END, "
            "       now() - interval '1 hour' "
            "FROM generate_series(1, %s) AS g").format(t("jobs")), [pending])
        conn.execute(sql.SQL(
            "UPDATE {} SET state = 'running', attempts = 1, lease_token = gen_random_uuid(), "
            "lease_expires_at = now() + interval '1 hour', worker_id = 'bench-1', "
            "started_at = now() WHERE id IN (SELECT id FROM {} ORDER BY id LIMIT 40)"
        ).format(t("jobs"), t("jobs")))
        # One job of a task nobody else has, in the middle: the rare filter's target.
        conn.execute(sql.SQL(
            "UPDATE {} SET task = 'app.tasks.rare' WHERE id = (SELECT min(id) + %s FROM {})"
        ).format(t("jobs"), t("jobs")), [pending // 2])
        conn.execute(sql.SQL(
            "INSERT INTO {} (job_id, queue, task, args, attempts, max_attempts, error, "
            "created_at, failed_at) "
            "SELECT g, (ARRAY['email','webhooks','reports','billing','thumbnails'])[1 + g %% 5], "
            "       'app.tasks.handle_' || (g %% 7), jsonb_build_object('id', g), 5, 5, "
            "       (ARRAY['TimeoutError: gateway took too long', "
            "              'ValueError: invalid address', "
            "              'ConnectionError: reset by peer'])[1 + g %% 3] "
            "         || E'\\nTraceback (most recent call last):\\n  File \"app.py\", line 3', "
            "       now() - interval '2 hours', now() - (g %% 86400) * interval '1 second' "
            "FROM generate_series(1, %s) AS g").format(t("dead_letters")), [dead])
        conn.execute(sql.SQL(
            "INSERT INTO {} (minute, queue, task, succeeded, retried, dead) "
            "SELECT date_trunc('minute', now()) - m * interval '1 minute', q, "
            "       'app.tasks.handle_' || k, 100 + m, m %% 3, m %% 2 "
            "FROM generate_series(0, 59) AS m, unnest(%s::text[]) AS q, "
            "     generate_series(0, 2) AS k").format(t("job_history")), [list(QUEUES)])
        conn.execute(sql.SQL(
            "INSERT INTO {} (id, hostname, pid, queues, concurrency, lease_seconds, "
            "jobs_in_hand, executors_busy) "
            "SELECT 'bench-' || g, 'host', g, NULL, 16, 30, 14, 13 FROM generate_series(1, 3) g"
        ).format(t("workers")))
        conn.execute(sql.SQL("INSERT INTO {} (name, pending_limit) VALUES ('email', 2000000)")
                     .format(t("queues")))
        seeded = time.perf_counter() - started
        conn.execute(sql.SQL("VACUUM (ANALYZE) {}").format(t("jobs")))
        conn.execute(sql.SQL("VACUUM (ANALYZE) {}").format(t("dead_letters")))
        ids = conn.execute(sql.SQL(
            "SELECT (SELECT min(id) + (max(id) - min(id)) / 2 FROM {}), "
            "       (SELECT max(id) FROM {}), (SELECT max(id) FROM {})"
        ).format(t("jobs"), t("jobs"), t("dead_letters"))).fetchone()
    assert ids is not None
    return {"middle_job": ids[0], "last_job": ids[1], "last_dead": ids[2],
            "seed_seconds": round(seeded, 1)}


def _pages(ids: dict[str, Any]) -> list[tuple[str, str]]:
    """(name, path) of every page measured."""
    return [
        ("queues", "/"),
        ("jobs", "/jobs"),
        ("jobs.queue", "/jobs?queue=webhooks"),
        ("jobs.queue_state", "/jobs?queue=reports&state=scheduled"),
        ("jobs.running", "/jobs?state=running"),
        ("jobs.args_search", "/jobs?search=charlie"),
        ("jobs.rare_task", "/jobs?task=app.tasks.rare"),
        ("jobs.older_page", f"/jobs?before={ids['middle_job']}"),
        ("job", f"/jobs/{ids['last_job']}"),
        ("dead_letters", "/dead-letters"),
        ("dead_letters.queue", "/dead-letters?queue=billing"),
        ("dead_letters.search", "/dead-letters?search=timeout"),
        ("dead_letter", f"/dead-letters/{ids['last_dead']}"),
        ("workers", "/workers"),
    ]


async def _time_pages(app: Any, pages: list[tuple[str, str]],
                      requests: int) -> dict[str, list[float]]:
    timings: dict[str, list[float]] = {}
    transport = httpx.ASGITransport(app=app)
    async with httpx.AsyncClient(transport=transport, base_url="http://bench") as client:
        for name, path in pages:
            samples = []
            for i in range(WARMUP + requests):
                started = time.perf_counter()
                response = await client.get(path)
                elapsed = (time.perf_counter() - started) * 1000
                if response.status_code != 200:
                    raise SystemExit(f"dashboard page {path} answered {response.status_code}: "
                                     f"{response.text[:300]}")
                if i >= WARMUP:
                    samples.append(elapsed)
            timings[name] = sorted(samples)
    return timings


def bench_dashboard(cfg: argparse.Namespace, report: Any, *, fresh_schema: Any,
                    percentile: Any) -> None:
    """Seed, then time every page (see the module docstring)."""
    from pgjobs.dashboard import asgi_app

    print(f"\n== dashboard: {cfg.dashboard_pending:,} live jobs, {cfg.dashboard_dead:,} dead "
          f"letters, {cfg.dashboard_requests} requests per page", flush=True)
    with fresh_schema(cfg.database_url, "dash") as schema:
        ids = _seed(cfg.database_url, schema, cfg.dashboard_pending, cfg.dashboard_dead)
        report.note(f"dashboard: seeded in {ids['seed_seconds']} s, then VACUUM (ANALYZE)")
        app = asgi_app(cfg.database_url, schema=schema)
        try:
            timings = anyio.run(_time_pages, app, _pages(ids), cfg.dashboard_requests)
        finally:
            app.state.dashboard.db.close()
        for name, samples in timings.items():
            params = {"p50_ms": round(percentile(samples, 50), 2),
                      "max_ms": round(samples[-1], 2), "requests": len(samples),
                      "pending": cfg.dashboard_pending, "dead": cfg.dashboard_dead}
            report.add(f"dashboard.{name}.p95", percentile(samples, 95), "ms",
                       target_max=TARGET_P95_MS, **params)

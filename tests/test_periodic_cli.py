"""`pgjobs periodic list / run` through the installed command, on registered schedules."""

from __future__ import annotations

import datetime as dt
import json
import subprocess
import sys
from pathlib import Path

from psycopg import sql

import pgjobs
from pgjobs.periodic_scheduler import PeriodicScheduler

from .conftest import ROOT, cli_env

# The installed console script of the environment running the tests (.venv/bin/pgjobs).
PGJOBS = str(Path(sys.executable).parent / "pgjobs")


def _pgjobs(*args: str, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run([PGJOBS, *args], env=env, cwd=ROOT, capture_output=True, text=True,
                          timeout=60, stdin=subprocess.DEVNULL)


def _register(pg_url: str, schema: str) -> pgjobs.App:
    app = pgjobs.App(pg_url, schema=schema)

    @app.periodic(cron="*/15 * * * *", timezone="Europe/Paris", args={"region": "eu"},
                  name="eu-report")
    @app.periodic(cron="@daily", name="nightly", args={"region": "all"})
    @app.task(name="report", queue="reports", priority=3)
    def report(region: str) -> None: ...

    PeriodicScheduler(app).register()
    return app


def test_periodic_list_json_shows_every_registered_schedule(pg_url, schema, db):
    _register(pg_url, schema)
    db.execute(sql.SQL("UPDATE {} SET active = false WHERE name = 'nightly'").format(
        sql.Identifier(schema, "cron_schedules")))
    result = _pgjobs("periodic", "list", "--json", env=cli_env(pg_url, schema))
    assert result.returncode == 0, result.stderr
    rows = json.loads(result.stdout)
    assert [r["name"] for r in rows] == ["eu-report", "nightly"]
    eu, nightly = rows
    for row in rows:
        assert {"name", "cron", "timezone", "active", "last_tick", "next_tick"} <= set(row)
    assert (eu["cron"], eu["timezone"], eu["active"], eu["last_tick"]) == (
        "*/15 * * * *", "Europe/Paris", True, None)
    next_tick = dt.datetime.fromisoformat(eu["next_tick"])  # ISO 8601, with its offset
    server_now = db.execute("SELECT now()").fetchone()[0]
    assert dt.timedelta(0) < next_tick - server_now <= dt.timedelta(minutes=15)
    assert next_tick.minute % 15 == 0 and next_tick.second == 0
    assert (nightly["cron"], nightly["active"], nightly["next_tick"]) == ("@daily", False, None)
    human = _pgjobs("periodic", "list", env=cli_env(pg_url, schema))
    assert human.returncode == 0 and "eu-report" in human.stdout and "Europe/Paris" in human.stdout


def test_periodic_run_enqueues_one_job_now_outside_the_tick_series(pg_url, schema, db):
    _register(pg_url, schema)
    env = cli_env(pg_url, schema)
    result = _pgjobs("periodic", "run", "eu-report", env=env)
    assert result.returncode == 0, result.stderr
    job_id = int(result.stdout.strip())
    row = db.execute(sql.SQL(
        "SELECT task, queue, args, priority, next_run_at <= now() FROM {} WHERE id = %s"
    ).format(sql.Identifier(schema, "jobs")), [job_id]).fetchone()
    assert row == ("report", "reports", {"region": "eu"}, 3, True)
    mark = db.execute(sql.SQL("SELECT last_tick, ticks_enqueued FROM {} WHERE name = %s").format(
        sql.Identifier(schema, "cron_schedules")), ["eu-report"]).fetchone()
    assert mark == (None, 0)  # the tick series is untouched


def test_periodic_run_errors_are_one_line_and_exit_2(pg_url, schema, db):
    _register(pg_url, schema)
    env = cli_env(pg_url, schema)
    unknown = _pgjobs("periodic", "run", "nope", env=env)
    assert unknown.returncode == 2, unknown.stdout
    lines = [line for line in unknown.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and "no periodic schedule named 'nope'" in lines[0], unknown.stderr
    assert _pgjobs("queues", "limit", "reports", "0", env=env).returncode == 0
    full = _pgjobs("periodic", "run", "eu-report", env=env)
    assert full.returncode == 2 and "is full" in full.stderr and "Traceback" not in full.stderr

"""Chaos, short form: real `pgjobs work` processes killed, cut off, flooded and poisoned.

Each scenario (tests/chaos/chaos_app.py) runs for a few seconds, drains, and checks the
books: every committed job completed or dead-lettered, none lost, a job completed twice
only where a worker died mid-job. `scripts/chaos.py` runs the same scenarios for longer.
"""

from __future__ import annotations

import pytest

from . import chaos_app
from .chaos_app import Report

pytestmark = [pytest.mark.chaos, pytest.mark.slow]


def _ok(report: Report) -> None:
    print(report.render())
    assert report.enqueued > 0, report.render()
    assert not report.problems, report.render()
    assert report.lost == [] and report.left_in_jobs == [] and report.phantom == []


def test_repeated_sigkill_loses_nothing(pg_url, schema):
    report = chaos_app.sigkill_scenario(pg_url, schema, duration=8.0, min_kills=5)
    _ok(report)
    assert report.faults >= 5, report.render()
    assert report.completed == report.enqueued  # nothing buried either
    # Killed workers' jobs were completed elsewhere, once their leases (2 s) expired.
    assert report.recovery_orphans, report.render()
    assert max(report.recovery_orphans) < 15, report.render()


def test_terminated_backends_never_stop_the_worker(pg_url, schema):
    report = chaos_app.terminate_scenario(pg_url, schema, duration=6.0)
    _ok(report)
    assert report.faults >= 8 and report.extra["backends terminated"] > 0
    assert report.completed == report.enqueued
    assert report.executed_more_than_once == 0, report.render()  # no worker died
    assert report.extra["re-established lines in the log"] > 0


def test_burst_against_a_small_limit_fails_fast_and_stays_small(pg_url, schema):
    report = chaos_app.burst_scenario(pg_url, schema, 0.0, attempts=20_000, threads=16,
                                      limit=500, rss_limit_mb=300, check_limit=False)
    _ok(report)
    committed, full, other = (int(x.replace(",", "")) for x in
                              report.extra["attempts: committed / QueueFull / other errors"]
                              .split(" / "))
    assert other == 0 and full > 0 and committed + full == 20_000
    assert report.completed == report.enqueued
    assert 0 < report.peak_rss_mb < 300


def test_pending_limit_is_exact_within_one_process(pg_url, schema):
    # 16 threads, one App, one pending count taken before they start, no worker, nothing
    # uncommitted: README's overshoot bound is zero here. Fails: check() and record()
    # race around the INSERT (see the report of the chaos suite).
    overshoot = chaos_app.limit_overshoot(pg_url, schema, threads=16, limit=200, rounds=3)
    assert overshoot == [0, 0, 0]


def test_poison_jobs_are_buried_while_the_fleet_keeps_serving(pg_url, schema):
    report = chaos_app.poison_scenario(pg_url, schema, duration=8.0)
    _ok(report)
    poison = report.extra["poison jobs enqueued"]
    assert set(poison) == {"chaos.exit", "chaos.hang", "chaos.hog"}, poison
    assert len(set(poison.values())) == 1, poison  # whole cycles: one of each per cycle
    cycles = poison["chaos.exit"]
    assert report.dead_lettered == 3 * cycles
    assert report.completed == report.enqueued - 3 * cycles  # every ordinary job
    assert report.faults == 2 * cycles  # each chaos.exit job killed exactly two workers


def test_handlers_stuck_in_a_database_call_do_not_starve_the_pool(pg_url, schema):
    # Fails today: each timed-out handler keeps its pooled connection (and its server
    # backend) while it stays blocked in libpq, so after concurrency + 2 of them no
    # handler can get a connection and ordinary jobs stop completing.
    report = chaos_app.stuck_db_scenario(pg_url, schema, duration=5.0, drain_timeout=15.0)
    print(report.render())
    assert report.dead_lettered == report.faults == 5  # the stuck jobs did time out
    _ok(report)

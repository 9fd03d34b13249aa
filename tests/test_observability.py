"""Metrics, traces, /metrics, SQL views and retention, checked by value on real work."""

from __future__ import annotations

import json
import socket
import threading
import urllib.request

import psycopg
import pytest
from opentelemetry.sdk.metrics import MeterProvider
from opentelemetry.sdk.metrics.export import InMemoryMetricReader
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import SpanKind
from psycopg import sql

import pgjobs
import pgjobs.sql as pgsql
from pgjobs import admin

from .conftest import cli_env, count, run_cli
from .workers import WorkerProcess, wait_until


def _points(reader: InMemoryMetricReader, name: str) -> list:
    data = reader.get_metrics_data()
    found = []
    for rm in data.resource_metrics if data else []:
        for sm in rm.scope_metrics:
            for metric in sm.metrics:
                if metric.name == name:
                    found.extend(metric.data.data_points)
    return found


def _value(points, **attrs) -> float:
    total = 0.0
    for p in points:
        if all(p.attributes.get(k) == v for k, v in attrs.items()):
            total += getattr(p, "value", None) if hasattr(p, "value") else p.count
    return total


@pytest.fixture
def observed(pg_url, schema):
    reader = InMemoryMetricReader()
    spans = InMemorySpanExporter()
    tracer_provider = TracerProvider()
    tracer_provider.add_span_processor(SimpleSpanProcessor(spans))
    app = pgjobs.App(pg_url, schema=schema, meter_provider=MeterProvider(metric_readers=[reader]),
                     tracer_provider=tracer_provider, limit_refresh_interval=0)
    gate = threading.Event()

    @app.task(name="obs.gated", queue="obs")
    def gated() -> None:
        gate.wait(30)

    @app.task(name="obs.boom", queue="obs", max_attempts=2, backoff=lambda a: 0.05)
    def boom() -> None:
        raise RuntimeError("boom")

    return app, reader, spans, gate


def test_metrics_follow_real_work(observed, pg_url, schema, db):
    app, reader, _, gate = observed
    gated, boom = app.tasks["obs.gated"], app.tasks["obs.boom"]
    with psycopg.connect(pg_url) as conn:
        app.set_queue_limit(conn, "obs", 25)
        app.enqueue_many(conn, [gated.job() for _ in range(20)])
        boom.enqueue(conn)
        conn.commit()
        for _ in range(5):
            try:
                gated.enqueue(conn)
                conn.commit()
            except pgjobs.QueueFull:
                conn.rollback()
    assert _value(_points(reader, "pgjobs.jobs.enqueued"), queue="obs") == 25
    assert _value(_points(reader, "pgjobs.queue_full.rejections"), queue="obs") == 1

    worker = app.worker(concurrency=4, install_signal_handlers=False, poll_interval=0.2)
    thread = threading.Thread(target=worker.run, daemon=True)
    thread.start()
    try:
        assert worker.started.wait(30)
        wait_until(lambda: worker.executors.busy() == 4, 30, message="executors busy")
        depth = _points(reader, "pgjobs.queue.depth")
        # Running = executing + prefetched into the worker's buffer (both hold a lease).
        assert _value(depth, queue="obs", state="running") == 4 + worker.prefetch
        pending_before = _value(depth, queue="obs", state="pending")
        assert pending_before >= 15
        assert _value(_points(reader, "pgjobs.worker.executors.active")) == 4
        assert _value(_points(reader, "pgjobs.worker.executors")) == 4
        assert _value(_points(reader, "pgjobs.queue.limit"), queue="obs") == 25
        gate.set()
        wait_until(lambda: count(db, schema, "jobs") == 0, 30, message="drained")
        wait_until(lambda: _value(_points(reader, "pgjobs.jobs.outcomes"),
                                  outcome="succeeded") == 24, 10, message="outcomes")
        depth = _points(reader, "pgjobs.queue.depth")
        assert _value(depth, queue="obs", state="pending") == 0 < pending_before
        outcomes = _points(reader, "pgjobs.jobs.outcomes")
        assert _value(outcomes, task="obs.boom", outcome="retried") == 1
        assert _value(outcomes, task="obs.boom", outcome="dead_lettered") == 1
        # Histograms are sampled (at most 16 records per flush); counts are exact above.
        durations = _points(reader, "pgjobs.job.duration")
        recorded = _value(durations, task="obs.gated", outcome="succeeded")
        assert 16 <= recorded <= 24
        gated_points = [p for p in durations if p.attributes.get("task") == "obs.gated"]
        assert all(p.min >= 0 and p.max < 30 for p in gated_points)
        assert 16 <= _value(_points(reader, "pgjobs.job.pickup_latency"), task="obs.gated") <= 24
        assert _value(_points(reader, "pgjobs.queue.dead_letters"), queue="obs") == 1
    finally:
        gate.set()
        worker.stop()
        thread.join(30)


def test_trace_links_enqueue_and_execution(observed, pg_url, schema, db):
    app, _, spans, gate = observed
    gate.set()
    with psycopg.connect(pg_url) as conn:
        job_id = app.tasks["obs.gated"].enqueue(conn)
        app.tasks["obs.boom"].options(max_attempts=1).enqueue(conn)
        conn.commit()
    stored = db.execute(sql.SQL("SELECT trace_context FROM {} WHERE id = %s").format(
        sql.Identifier(schema, "jobs")), [job_id]).fetchone()
    assert stored is not None and "traceparent" in stored[0]
    worker = app.worker(concurrency=2, install_signal_handlers=False)
    thread = threading.Thread(target=worker.run, daemon=True)
    thread.start()
    try:
        wait_until(lambda: count(db, schema, "jobs") == 0, 30, message="drained")
    finally:
        worker.stop()
        thread.join(30)
    finished = spans.get_finished_spans()
    sends = [s for s in finished if s.kind == SpanKind.PRODUCER]
    processes = [s for s in finished if s.kind == SpanKind.CONSUMER]
    send = next(s for s in sends if s.attributes["messaging.message.id"] == str(job_id))
    assert send.name == "send obs"
    process = next(s for s in processes if s.attributes["messaging.message.id"] == str(job_id))
    assert process.name == "process obs"
    assert [link.context.span_id for link in process.links] == [send.context.span_id]
    assert process.attributes["pgjobs.outcome"] == "succeeded"
    assert process.attributes["pgjobs.attempt"] == 1
    failed = next(s for s in processes if s.attributes["pgjobs.task"] == "obs.boom")
    assert failed.attributes["pgjobs.outcome"] == "dead_lettered"
    assert failed.status.status_code.name == "ERROR" and failed.events  # exception recorded


@pytest.mark.slow
def test_trace_crosses_processes(pg_url, schema, db, tmp_path):
    spans_file = tmp_path / "spans.jsonl"
    exporter = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    app = pgjobs.App(pg_url, schema=schema, tracer_provider=provider)

    @app.task(name="traced.ok")
    def ok() -> None: ...

    with psycopg.connect(pg_url) as conn:
        job_id = ok.enqueue(conn)
        conn.commit()
    (send,) = exporter.get_finished_spans()
    env_extra = {"PGJOBS_TEST_SPANS": str(spans_file)}
    worker = WorkerProcess(pg_url, schema, "--concurrency", "1", app="tests.apps.traced:app",
                           env_extra=env_extra)
    try:
        worker.wait_started()
        wait_until(lambda: count(db, schema, "jobs") == 0, 30, message="job done")
        wait_until(lambda: spans_file.exists() and "process" in spans_file.read_text(), 10,
                   message="worker span exported")
    finally:
        worker.signal()
        worker.wait(30)
    exported = [json.loads(line) for line in spans_file.read_text().splitlines()]
    process = next(s for s in exported if s["name"] == "process default")
    assert process["kind"] == "CONSUMER"
    assert process["attributes"]["messaging.message.id"] == str(job_id)
    link = f"{send.context.trace_id:032x}:{send.context.span_id:016x}"
    assert process["links"] == [link]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.slow
def test_metrics_endpoint_is_scraped_and_parsed(pg_url, schema, db):
    from prometheus_client.parser import text_string_to_metric_families

    from .workers import create_executions_table

    create_executions_table(db, schema)
    port = _free_port()
    env = cli_env(pg_url, schema)
    for _ in range(3):
        assert run_cli("enqueue", "record", "--queue", "scraped", env=env).returncode == 0
    # One job for later keeps the queue visible in the depth gauge.
    assert run_cli("enqueue", "record", "--queue", "scraped", "--delay", "3600",
                   env=env).returncode == 0
    worker = WorkerProcess(pg_url, schema, "--concurrency", "2", "--metrics-port", str(port))
    try:
        worker.wait_started()
        wait_until(lambda: count(db, schema, "jobs") == 1, 30, message="jobs done")

        def scrape() -> dict:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as r:
                text = r.read().decode()
            return {f.name: f for f in text_string_to_metric_families(text)}

        families = wait_until(
            lambda: (f := scrape()) and any(
                s.labels.get("queue") == "scraped" and s.value == 3
                for s in f.get("pgjobs_jobs_outcomes", f.get("pgjobs_jobs_outcomes_total",
                                                               None)).samples
            ) and f, 15, message="outcomes in /metrics")
        depth = {(s.labels["queue"], s.labels["state"]): s.value
                 for s in families["pgjobs_queue_depth"].samples}
        assert depth[("scraped", "scheduled")] == 1 and depth[("scraped", "pending")] == 0
        assert "pgjobs_worker_executors" in families
        assert any(name.startswith("pgjobs_job_duration_seconds") for name in families)
    finally:
        worker.signal()
        assert worker.wait(30) == 0


def test_worker_view_and_history_and_stats_json(pg_url, schema, db):
    app = pgjobs.App(pg_url, schema=schema)

    @app.task(name="hist.ok", queue="hist")
    def ok() -> None: ...

    with psycopg.connect(pg_url) as conn:
        app.enqueue_many(conn, [ok.job() for _ in range(7)])
        conn.commit()
    worker = app.worker(concurrency=2, install_signal_handlers=False, lease_timeout=3)
    thread = threading.Thread(target=worker.run, daemon=True)
    thread.start()
    try:
        assert worker.started.wait(30)
        wait_until(lambda: count(db, schema, "jobs") == 0, 30, message="drained")
        workers = wait_until(lambda: admin.worker_status(db, app.sql), 10,
                             message="worker registered")
        assert workers[0]["id"] == worker.id and workers[0]["alive"]
        assert workers[0]["concurrency"] == 2
        history = db.execute(sql.SQL(
            "SELECT queue, task, succeeded FROM {}").format(
            sql.Identifier(schema, "job_history"))).fetchall()
        assert history == [("hist", "hist.ok", 7)]
        view = db.execute(sql.SQL("SELECT queue, succeeded FROM {}").format(
            sql.Identifier(schema, "throughput"))).fetchall()
        assert view == [("hist", 7)]
        result = run_cli("stats", "--json", env=cli_env(pg_url, schema))
        data = json.loads(result.stdout)
        assert data["workers"][0]["id"] == worker.id
    finally:
        worker.stop()
        thread.join(30)
    assert admin.worker_status(db, app.sql) == []  # removed on clean exit


def test_retention_prunes_history_and_old_dead_letters_only(pg_url, schema, db, app):
    db.execute(sql.SQL(
        "INSERT INTO {h} (minute, queue, task, succeeded) VALUES "
        "(now() - interval '10 days', 'q', 't', 1), (now(), 'q', 't', 2);"
        "INSERT INTO {d} (job_id, queue, task, args, attempts, max_attempts, error, "
        "created_at, failed_at) VALUES (1, 'q', 't', '{{}}', 1, 1, 'old', now(), "
        "now() - interval '40 days'), (2, 'q', 't', '{{}}', 1, 1, 'new', now(), now())"
    ).format(h=sql.Identifier(schema, "job_history"), d=sql.Identifier(schema, "dead_letters")))
    row = db.execute(app.sql.of(pgsql.PRUNE_HISTORY), {"history_seconds": 7 * 86400.0,
                                             "dead_letter_seconds": 30 * 86400.0}).fetchone()
    assert row == (1, 1, 0)
    assert count(db, schema, "job_history") == 1
    assert count(db, schema, "dead_letters", "error = 'new'") == 1
    row = db.execute(app.sql.of(pgsql.PRUNE_HISTORY), {"history_seconds": None,
                                             "dead_letter_seconds": None}).fetchone()
    assert row == (0, 0, 0)  # None keeps everything


def test_stats_watch_refreshes(pg_url, schema):
    import signal
    import subprocess
    import sys

    from .conftest import ROOT

    proc = subprocess.Popen([sys.executable, "-m", "pgjobs", "stats", "--watch", "--interval",
                             "0.2"], env=cli_env(pg_url, schema), cwd=ROOT,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    lines: list[str] = []
    reader = threading.Thread(target=lambda: lines.extend(proc.stdout), daemon=True)
    reader.start()
    try:
        wait_until(lambda: sum("pgjobs queues" in line for line in lines) >= 3, 20,
                   message="three refreshes")
    finally:
        proc.send_signal(signal.SIGINT)
        assert proc.wait(timeout=10) == 0

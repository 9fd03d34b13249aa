"""Instrumentation overhead: drain no-op jobs with OpenTelemetry SDK providers vs none.

    .venv/bin/python scripts/overhead.py [DATABASE_URL] [--traces]

Alternates plain and instrumented runs (3 each, 60,000 jobs, concurrency 50) on a scratch
schema and prints the medians and their ratio. Without --traces only the metrics SDK is
installed; with it, also a TracerProvider sampling every job (spans go to a null
exporter). Durability stays as the server is configured.
"""

from __future__ import annotations

import statistics
import sys
import threading
import time
from collections.abc import Sequence
from typing import Any

import psycopg
from opentelemetry.sdk.metrics import MeterProvider
from opentelemetry.sdk.metrics.export import InMemoryMetricReader
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import BatchSpanProcessor, SpanExporter, SpanExportResult

import pgjobs
from pgjobs import migrate

SCHEMA = "pgjobs_overhead"
JOBS = 60_000


class _NullExporter(SpanExporter):
    def export(self, spans: Sequence[ReadableSpan]) -> SpanExportResult:
        return SpanExportResult.SUCCESS


def _drop(url: str) -> None:
    with psycopg.connect(url, autocommit=True) as conn:
        conn.execute(psycopg.sql.SQL("DROP SCHEMA IF EXISTS {} CASCADE").format(
            psycopg.sql.Identifier(SCHEMA)))


def drain_rate(url: str, instrumented: bool, traces: bool) -> float:
    """Jobs/s draining JOBS no-op jobs at concurrency 50."""
    _drop(url)
    migrate.upgrade(url, SCHEMA)
    options: dict[str, Any] = {}
    if instrumented:
        options["meter_provider"] = MeterProvider(metric_readers=[InMemoryMetricReader()])
        if traces:
            tracer_provider = TracerProvider()
            tracer_provider.add_span_processor(BatchSpanProcessor(_NullExporter()))
            options["tracer_provider"] = tracer_provider
    app = pgjobs.App(url, schema=SCHEMA, **options)

    @app.task(name="noop")
    def noop() -> None:
        pass

    with psycopg.connect(url) as conn:
        app.enqueue_many(conn, [noop.job() for _ in range(JOBS)])
        conn.commit()
    with psycopg.connect(url, autocommit=True) as conn:
        conn.execute(psycopg.sql.SQL("VACUUM ANALYZE {}").format(
            psycopg.sql.Identifier(SCHEMA, "jobs")))
    worker = app.worker(concurrency=50, install_signal_handlers=False)
    thread = threading.Thread(target=worker.run)
    thread.start()
    worker.started.wait()
    started = time.perf_counter()
    while worker.stats.succeeded < JOBS * 0.95 and time.perf_counter() - started < 60:
        time.sleep(0.01)
    rate = worker.stats.succeeded / (time.perf_counter() - started)
    worker.stop()
    thread.join()
    return rate


def main() -> None:
    args = [a for a in sys.argv[1:] if not a.startswith("--")]
    url = args[0] if args else "postgresql://postgres@127.0.0.1:5432/test"
    traces = "--traces" in sys.argv
    rates: dict[bool, list[float]] = {False: [], True: []}
    try:
        for _ in range(3):
            for instrumented in (False, True):
                rate = drain_rate(url, instrumented, traces)
                rates[instrumented].append(rate)
                print("instrumented" if instrumented else "plain", round(rate), flush=True)
    finally:
        _drop(url)
    plain, instrumented = statistics.median(rates[False]), statistics.median(rates[True])
    what = "metrics SDK + traces (every job sampled)" if traces else "metrics SDK"
    print(f"median plain {plain:.0f}/s, {what} {instrumented:.0f}/s, "
          f"ratio {instrumented / plain:.3f}")


if __name__ == "__main__":
    main()

"""OpenTelemetry metrics: every instrument pgjobs records, in one place.

Instruments come from the App's MeterProvider (the global one unless
``App(meter_provider=…)``), so they cost next to nothing when no SDK is configured.
Attributes: ``queue`` and ``task`` where they apply, ``outcome`` on outcomes.

Queue-level gauges (depth, oldest pending age, limit, dead letters) are read from the
database by one query at collection time, never per job; workers report them, so with
several workers take ``max by (queue)``.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any

from opentelemetry import metrics
from opentelemetry.metrics import CallbackOptions, Observation

log = logging.getLogger("pgjobs.metrics")

METER_NAME = "pgjobs"

#: name → (kind, unit, description). Prometheus names: dots become underscores, unit
#: "s" adds ``_seconds``, counters add ``_total`` (see PROMETHEUS_NAMES).
INSTRUMENTS: dict[str, tuple[str, str, str]] = {
    "pgjobs.queue.depth": ("gauge", "{job}", "Jobs per queue and state (pending = due, "
                                             "scheduled = not yet due, running)"),
    "pgjobs.queue.oldest_pending_age": ("gauge", "s", "Age of the oldest due pending job"),
    "pgjobs.queue.limit": ("gauge", "{job}", "Pending-count limit of the queue (if set)"),
    "pgjobs.queue.dead_letters": ("gauge", "{job}", "Rows in dead_letters per queue"),
    "pgjobs.queue.paused": ("gauge", "{queue}", "1 while the queue is paused"),
    "pgjobs.worker.executors": ("gauge", "{thread}", "Executor threads of this worker"),
    "pgjobs.worker.executors.active": ("gauge", "{thread}", "Executors running a job now"),
    "pgjobs.job.duration": ("histogram", "s", "Handler run time per attempt"),
    "pgjobs.job.pickup_latency": ("histogram", "s", "Due time (or enqueue) to handler start"),
    "pgjobs.jobs.enqueued": ("counter", "{job}", "Jobs enqueued"),
    "pgjobs.queue_full.rejections": ("counter", "{job}", "Enqueues refused with QueueFull"),
    "pgjobs.jobs.outcomes": ("counter", "{job}", "Attempt outcomes: succeeded, retried, "
                                                 "dead_lettered, timed_out, rescued, "
                                                 "cancelled, snoozed"),
    # Periodic jobs (attribute: schedule). Each tick is counted once, by the worker that
    # decided it: sum across workers.
    "pgjobs.periodic.ticks_enqueued": ("counter", "{tick}", "Periodic ticks enqueued as jobs"),
    "pgjobs.periodic.ticks_skipped": ("counter", "{tick}", "Periodic ticks skipped: the "
                                                           "queue was at its pending limit"),
    "pgjobs.periodic.ticks_missed": ("counter", "{tick}", "Periodic ticks older than their "
                                                          "max_delay when a worker saw them"),
    "pgjobs.periodic.tick_lag": ("histogram", "s", "Tick time to the commit of its job"),
}


def prometheus_name(name: str) -> str:
    """The name the OpenTelemetry Prometheus exporter gives ``name``."""
    kind, unit, _ = INSTRUMENTS[name]
    base = name.replace(".", "_")
    if unit == "s":
        base += "_seconds"
    if kind == "counter":
        base += "_total"
    return base


PROMETHEUS_NAMES = {name: prometheus_name(name) for name in INSTRUMENTS}

# Durations from 1 ms to ~5 min; latency buckets finer at the low end.
DURATION_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10,
                    30, 60, 120, 300)
LATENCY_BUCKETS = (0.0005, 0.001, 0.002, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5,
                   5, 10, 30, 60)


@dataclass
class EnqueueInstruments:
    """What the enqueue path records."""

    enqueued: Any
    rejections: Any


def enqueue_instruments(provider: Any | None) -> EnqueueInstruments:
    meter = _meter(provider)
    return EnqueueInstruments(
        enqueued=_counter(meter, "pgjobs.jobs.enqueued"),
        rejections=_counter(meter, "pgjobs.queue_full.rejections"),
    )


@dataclass
class PeriodicInstruments:
    """What the periodic scheduler records."""

    enqueued: Any
    skipped: Any
    missed: Any
    lag: Any


def periodic_instruments(provider: Any | None) -> PeriodicInstruments:
    meter = _meter(provider)
    return PeriodicInstruments(
        enqueued=_counter(meter, "pgjobs.periodic.ticks_enqueued"),
        skipped=_counter(meter, "pgjobs.periodic.ticks_skipped"),
        missed=_counter(meter, "pgjobs.periodic.ticks_missed"),
        lag=meter.create_histogram(
            "pgjobs.periodic.tick_lag", unit="s",
            description=INSTRUMENTS["pgjobs.periodic.tick_lag"][2],
            explicit_bucket_boundaries_advisory=LATENCY_BUCKETS),
    )


class WorkerInstruments:
    """What a worker records; gauges call back into the worker and the database."""

    def __init__(
        self,
        provider: Any | None,
        *,
        executors: Callable[[], tuple[int, int]],
        queue_rows: Callable[[], list[dict[str, Any]] | None],
    ) -> None:
        meter = _meter(provider)
        self._executors = executors
        self._queue_rows = queue_rows
        self.duration = meter.create_histogram(
            "pgjobs.job.duration", unit="s", description=INSTRUMENTS["pgjobs.job.duration"][2],
            explicit_bucket_boundaries_advisory=DURATION_BUCKETS)
        self.pickup = meter.create_histogram(
            "pgjobs.job.pickup_latency", unit="s",
            description=INSTRUMENTS["pgjobs.job.pickup_latency"][2],
            explicit_bucket_boundaries_advisory=LATENCY_BUCKETS)
        self.outcomes = _counter(meter, "pgjobs.jobs.outcomes")
        self._cached: list[dict[str, Any]] | None = None
        self._seen: set[str] = set()
        self._gauges = [
            _gauge(meter, "pgjobs.worker.executors", self._observe_total),
            _gauge(meter, "pgjobs.worker.executors.active", self._observe_active),
            _gauge(meter, "pgjobs.queue.depth", self._observe_depth),
            _gauge(meter, "pgjobs.queue.oldest_pending_age", self._observe_age),
            _gauge(meter, "pgjobs.queue.limit", self._observe_limit),
            _gauge(meter, "pgjobs.queue.dead_letters", self._observe_dead),
            _gauge(meter, "pgjobs.queue.paused", self._observe_paused),
        ]

    def _observe_total(self, options: CallbackOptions) -> Iterable[Observation]:
        yield Observation(self._executors()[0])

    def _observe_active(self, options: CallbackOptions) -> Iterable[Observation]:
        yield Observation(self._executors()[1])

    def _rows(self) -> list[dict[str, Any]]:
        # The depth gauge runs first in each collection and reads the database once;
        # the other queue gauges reuse its rows. A queue that emptied completely has no
        # row any more: report it as zero rather than let its series vanish.
        rows = self._queue_rows()
        if rows is None:  # database unreachable: report nothing rather than zeros
            self._cached = []
            return []
        present = {row["queue"] for row in rows}
        rows = rows + [
            {"queue": q, "pending": 0, "scheduled": 0, "running": 0, "dead": 0,
             "oldest_pending_age_seconds": None, "limit": None, "paused": False}
            for q in sorted(self._seen - present)
        ]
        self._seen |= present
        self._cached = rows
        return rows

    def _observe_depth(self, options: CallbackOptions) -> Iterable[Observation]:
        for row in self._rows():
            for state in ("pending", "scheduled", "running"):
                yield Observation(row[state], {"queue": row["queue"], "state": state})

    def _observe_age(self, options: CallbackOptions) -> Iterable[Observation]:
        for row in self._cached or []:
            yield Observation(row["oldest_pending_age_seconds"] or 0.0, {"queue": row["queue"]})

    def _observe_limit(self, options: CallbackOptions) -> Iterable[Observation]:
        for row in self._cached or []:
            if row["limit"] is not None:
                yield Observation(row["limit"], {"queue": row["queue"]})

    def _observe_dead(self, options: CallbackOptions) -> Iterable[Observation]:
        for row in self._cached or []:
            yield Observation(row["dead"], {"queue": row["queue"]})

    def _observe_paused(self, options: CallbackOptions) -> Iterable[Observation]:
        for row in self._cached or []:
            yield Observation(1 if row.get("paused") else 0, {"queue": row["queue"]})


def _meter(provider: Any | None) -> Any:
    if provider is None:
        return metrics.get_meter(METER_NAME)
    return provider.get_meter(METER_NAME)


def _counter(meter: Any, name: str) -> Any:
    _, unit, description = INSTRUMENTS[name]
    return meter.create_counter(name, unit=unit, description=description)


def _gauge(meter: Any, name: str, callback: Callable[[CallbackOptions], Iterable[Observation]]
           ) -> Any:
    _, unit, description = INSTRUMENTS[name]

    def safe(options: CallbackOptions) -> Iterable[Observation]:
        try:
            return list(callback(options))
        except Exception:
            log.warning("could not observe %s", name, exc_info=True)
            return []

    return meter.create_observable_gauge(name, callbacks=[safe], unit=unit,
                                         description=description)

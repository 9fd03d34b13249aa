"""OpenTelemetry traces, following the messaging semantic conventions.

Enqueue opens a PRODUCER span ``send <queue>`` and stores its context (W3C trace
context) in ``jobs.trace_context``; each execution opens a CONSUMER span
``process <queue>`` linked to it, with job id, task, attempt and outcome. With no SDK
configured the spans are no-ops and nothing is stored.
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from contextlib import AbstractContextManager, contextmanager, nullcontext
from typing import Any

from opentelemetry import propagate, trace
from opentelemetry.trace import Link, SpanKind, Status, StatusCode

TRACER_NAME = "pgjobs"
SYSTEM = "pgjobs"


def get_tracer(provider: Any | None) -> trace.Tracer:
    """The pgjobs tracer from ``provider`` (default: the global provider)."""
    return trace.get_tracer(TRACER_NAME, tracer_provider=provider)


def tracing_enabled(provider: Any | None) -> bool:
    """False when every span would be a no-op: no provider given and none installed
    globally (then the worker skips span bookkeeping that costs more than a no-op job)."""
    if provider is None:
        provider = trace.get_tracer_provider()
    return not isinstance(provider, (trace.ProxyTracerProvider, trace.NoOpTracerProvider))


class TracingSwitch:
    """:func:`tracing_enabled`, re-checked at most once a second: looking up the global
    provider reads ``os.environ`` every time, and a provider installed after the worker
    started must still take effect."""

    RECHECK_SECONDS = 1.0

    def __init__(self, provider: Any | None) -> None:
        self._provider = provider
        self._enabled = False
        self._checked_at = float("-inf")

    def enabled(self) -> bool:
        now = time.monotonic()
        if now - self._checked_at >= self.RECHECK_SECONDS:
            self._enabled = tracing_enabled(self._provider)
            self._checked_at = now
        return self._enabled


SendSpan = AbstractContextManager[tuple[trace.Span, "dict[str, str] | None"]]

# What send_span gives when tracing is off: reusable, entered by any number of threads.
_UNTRACED: SendSpan = nullcontext((trace.INVALID_SPAN, None))


def send_span(tracer: trace.Tracer, queue: str, task: str, count: int = 1, *,
              switch: TracingSwitch | None = None) -> SendSpan:
    """The producer span, and the carrier to store with the job (None when not sampled).

    With a ``switch`` that says tracing is off, nothing at all: even a no-op span costs
    ~6 µs of OpenTelemetry's context bookkeeping, a third of an enqueue's Python.
    """
    if switch is not None and not switch.enabled():
        return _UNTRACED
    return _send_span(tracer, queue, task, count)


@contextmanager
def _send_span(tracer: trace.Tracer, queue: str, task: str, count: int
               ) -> Iterator[tuple[trace.Span, dict[str, str] | None]]:
    attributes: dict[str, str | int] = {
        "messaging.system": SYSTEM,
        "messaging.operation.type": "send",
        "messaging.operation.name": "send",
        "messaging.destination.name": queue,
        "pgjobs.task": task,
    }
    if count != 1:
        attributes["messaging.batch.message_count"] = count
    with tracer.start_as_current_span(f"send {queue}", kind=SpanKind.PRODUCER,
                                      attributes=attributes) as span:
        carrier: dict[str, str] | None = None
        if span.is_recording():
            carrier = {}
            propagate.inject(carrier)
        yield span, carrier


@contextmanager
def process_span(tracer: trace.Tracer, *, queue: str, task: str, job_id: int, attempt: int,
                 trace_context: Any) -> Iterator[trace.Span]:
    """The consumer span of one attempt, linked to the enqueueing span if known."""
    links = []
    if trace_context:
        try:  # a malformed stored context must never fail the job
            carrier = json.loads(trace_context) if isinstance(trace_context, str) else (
                trace_context)
            producer = trace.get_current_span(propagate.extract(carrier)).get_span_context()
        except Exception:
            producer = trace.INVALID_SPAN_CONTEXT
        if producer.is_valid:
            links.append(Link(producer))
    with tracer.start_as_current_span(
        f"process {queue}", kind=SpanKind.CONSUMER, links=links,
        record_exception=False, set_status_on_exception=False,
        attributes={
            "messaging.system": SYSTEM,
            "messaging.operation.type": "process",
            "messaging.operation.name": "process",
            "messaging.destination.name": queue,
            "messaging.message.id": str(job_id),
            "pgjobs.task": task,
            "pgjobs.attempt": attempt,
        },
    ) as span:
        yield span


def end_process_span(span: trace.Span, outcome: str, exc: BaseException | None) -> None:
    """Record how the attempt ended on its span."""
    span.set_attribute("pgjobs.outcome", outcome)
    if exc is not None:
        span.record_exception(exc)
        span.set_status(Status(StatusCode.ERROR, f"{type(exc).__name__}: {exc}"[:200]))

"""An App whose worker process writes its finished spans, as JSON lines, to a file.

PGJOBS_TEST_SPANS names the file. Used to check that a trace links an enqueue in one
process with the execution in another.
"""

from __future__ import annotations

import json
import os
from collections.abc import Sequence

from opentelemetry import trace
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor, SpanExporter, SpanExportResult

import pgjobs


class _JsonLinesExporter(SpanExporter):
    def __init__(self, path: str) -> None:
        self._path = path

    def export(self, spans: Sequence[ReadableSpan]) -> SpanExportResult:
        with open(self._path, "a") as out:
            for span in spans:
                out.write(json.dumps({
                    "name": span.name,
                    "kind": span.kind.name,
                    "trace_id": format(span.context.trace_id, "032x"),
                    "links": [format(link.context.trace_id, "032x") + ":"
                              + format(link.context.span_id, "016x") for link in span.links],
                    "attributes": dict(span.attributes or {}),
                    "status": span.status.status_code.name,
                }) + "\n")
        return SpanExportResult.SUCCESS


provider = TracerProvider()
provider.add_span_processor(SimpleSpanProcessor(_JsonLinesExporter(os.environ["PGJOBS_TEST_SPANS"])))
trace.set_tracer_provider(provider)

app = pgjobs.App()


@app.task(name="traced.ok")
def ok() -> None:
    pass


@app.task(name="traced.fails", max_attempts=1)
def fails() -> None:
    raise RuntimeError("traced failure")

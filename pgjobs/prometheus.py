"""Serve the ``pgjobs.*`` OpenTelemetry metrics at ``/metrics`` for Prometheus.

Uses OpenTelemetry's Prometheus exporter (a metric reader) with prometheus-client's HTTP
server: the metrics stay OpenTelemetry instruments (one set of names for OTLP and
Prometheus users) and prometheus-client already does the text format and the server
well.
"""

from __future__ import annotations

from typing import Any

from .errors import ConfigurationError


def serve_metrics(port: int, host: str = "127.0.0.1") -> Any:
    """Install a MeterProvider exporting to Prometheus and serve it; returns the provider.

    Call before creating Apps/Workers that use the global provider.
    """
    try:
        from opentelemetry import metrics
        from opentelemetry.exporter.prometheus import PrometheusMetricReader
        from opentelemetry.sdk.metrics import MeterProvider
        from opentelemetry.sdk.resources import Resource
        from prometheus_client import start_http_server
    except ImportError as exc:
        raise ConfigurationError(
            f"--metrics-port needs the Prometheus exporter ({exc.name} is missing): "
            "pip install 'pgjobs[metrics]'"
        ) from exc
    try:
        start_http_server(port, addr=host)
    except OSError as exc:
        raise ConfigurationError(
            f"cannot serve metrics on {host}:{port}: {exc.strerror or exc}; "
            "choose another --metrics-port"
        ) from exc
    provider = MeterProvider(
        metric_readers=[PrometheusMetricReader()],
        resource=Resource.create({"service.name": "pgjobs-worker"}),
    )
    metrics.set_meter_provider(provider)
    return provider

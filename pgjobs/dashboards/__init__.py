"""Ready-made monitoring for pgjobs: a Grafana dashboard and Prometheus alerting rules.

Both read the names the OpenTelemetry Prometheus exporter gives pgjobs' instruments
(:data:`pgjobs.metrics.PROMETHEUS_NAMES`). They ship as package data, so they are
available from any install: ``pgjobs dashboards grafana`` / ``pgjobs dashboards alerts``
print them. See docs/dashboards.md.
"""

from __future__ import annotations

import re
from importlib import resources

__all__ = ["alert_rules", "grafana_dashboard", "metric_names_used"]

GRAFANA_FILE = "grafana.json"
ALERTS_FILE = "alerts.yml"

_METRIC = re.compile(r"(?<![A-Za-z0-9_])pgjobs_[a-z_]+")
_HISTOGRAM_SUFFIX = re.compile(r"_(?:bucket|sum|count)$")


def _read(name: str) -> str:
    return resources.files(__name__).joinpath(name).read_text(encoding="utf-8")


def grafana_dashboard() -> str:
    """The Grafana dashboard JSON (a Prometheus ``${datasource}`` and a ``queue`` variable)."""
    return _read(GRAFANA_FILE)


def alert_rules() -> str:
    """The Prometheus alerting rules (``groups:`` YAML) for queue fullness, worker
    saturation and growing dead letters."""
    return _read(ALERTS_FILE)


def metric_names_used(text: str) -> set[str]:
    """Every ``pgjobs_…`` metric name in ``text``, histogram suffixes
    (``_bucket``, ``_sum``, ``_count``) stripped."""
    return {_HISTOGRAM_SUFFIX.sub("", name) for name in _METRIC.findall(text)}

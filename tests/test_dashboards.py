"""The shipped Grafana dashboard and Prometheus alerts: well-formed, and only real metrics."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import tomllib
from fnmatch import fnmatch
from pathlib import Path
from typing import Any

import pytest

from pgjobs import dashboards
from pgjobs.metrics import INSTRUMENTS, PROMETHEUS_NAMES

from .conftest import cli_env

ROOT = Path(__file__).resolve().parent.parent
KNOWN = set(PROMETHEUS_NAMES.values())
HISTOGRAMS = {PROMETHEUS_NAMES[n] for n, (kind, _, _) in INSTRUMENTS.items() if kind == "histogram"}
QUEUE_GAUGES = {"pgjobs_queue_depth", "pgjobs_queue_oldest_pending_age_seconds",
                "pgjobs_queue_limit", "pgjobs_queue_dead_letters"}
PANELS = {
    "Queue depth": {"pgjobs_queue_depth"},
    "Oldest pending age": {"pgjobs_queue_oldest_pending_age_seconds"},
    "Queue fullness (% of pending limit)": {"pgjobs_queue_depth", "pgjobs_queue_limit"},
    "Worker saturation": {"pgjobs_worker_executors", "pgjobs_worker_executors_active"},
    "Throughput by outcome": {"pgjobs_jobs_outcomes_total"},
    "Failures by queue and task": {"pgjobs_jobs_outcomes_total"},
    "Dead letters per queue": {"pgjobs_queue_dead_letters"},
    "QueueFull rejections": {"pgjobs_queue_full_rejections_total"},
    "Job duration": {"pgjobs_job_duration_seconds"},
    "Pickup latency": {"pgjobs_job_pickup_latency_seconds"},
    "Enqueue rate": {"pgjobs_jobs_enqueued_total"},
}
ALERTS = {"PgjobsQueueNearlyFull", "PgjobsWorkersSaturated", "PgjobsDeadLettersGrowing"}


def _dashboard() -> dict[str, Any]:
    return json.loads(dashboards.grafana_dashboard())


def _graph_panels(dashboard: dict[str, Any]) -> list[dict[str, Any]]:
    return [p for p in dashboard["panels"] if p["type"] != "row"]


def _exprs(panel: dict[str, Any]) -> list[str]:
    return [t["expr"] for t in panel["targets"]]


# --- the dashboard ----------------------------------------------------------------------------


def test_dashboard_parses_and_has_every_panel():
    dashboard = _dashboard()
    assert dashboard["schemaVersion"] >= 36
    assert dashboard["uid"] and dashboard["title"]
    panels = {p["title"]: p for p in _graph_panels(dashboard)}
    assert set(PANELS) <= set(panels), set(PANELS) - set(panels)
    for title, metrics in PANELS.items():
        used = dashboards.metric_names_used(" ".join(_exprs(panels[title])))
        assert metrics <= used, (title, used)
    for panel in panels.values():
        assert panel["datasource"]["uid"] == "${datasource}", panel["title"]
        assert panel["description"], panel["title"]
        assert panel["targets"], panel["title"]
        for target in panel["targets"]:
            assert target["datasource"]["uid"] == "${datasource}"
            assert target["expr"].strip() and target["refId"]
        ref_ids = [t["refId"] for t in panel["targets"]]
        assert len(ref_ids) == len(set(ref_ids)), panel["title"]


def test_dashboard_variables():
    variables = {v["name"]: v for v in _dashboard()["templating"]["list"]}
    assert variables["datasource"]["type"] == "datasource"
    assert variables["datasource"]["query"] == "prometheus"
    queue = variables["queue"]
    assert queue["type"] == "query"
    assert queue["datasource"]["uid"] == "${datasource}"
    assert queue["definition"] == "label_values(pgjobs_queue_depth, queue)"
    assert queue["query"]["query"] == "label_values(pgjobs_queue_depth, queue)"
    assert queue["includeAll"] and queue["multi"] and queue["allValue"] == ".*"


def test_dashboard_layout_has_no_overlaps_and_unique_ids():
    panels = _dashboard()["panels"]
    ids = [p["id"] for p in panels]
    assert len(ids) == len(set(ids))
    cells: dict[tuple[int, int], str] = {}
    for panel in panels:
        pos = panel["gridPos"]
        assert 0 <= pos["x"] and pos["x"] + pos["w"] <= 24, panel["title"]
        for x in range(pos["x"], pos["x"] + pos["w"]):
            for y in range(pos["y"], pos["y"] + pos["h"]):
                assert (x, y) not in cells, (panel["title"], cells.get((x, y)))
                cells[(x, y)] = panel["title"]


def test_latency_panels_show_p50_p95_p99():
    panels = {p["title"]: p for p in _graph_panels(_dashboard())}
    for title, metric in (("Job duration", "pgjobs_job_duration_seconds"),
                          ("Pickup latency", "pgjobs_job_pickup_latency_seconds")):
        exprs = _exprs(panels[title])
        for q in ("0.5", "0.95", "0.99"):
            assert any(e.startswith(f"histogram_quantile({q},") and f"{metric}_bucket" in e
                       and "by (le)" in e for e in exprs), (title, q)


def test_queue_gauges_are_aggregated_over_workers_and_filtered_by_queue():
    """Every worker reports the queue gauges: summing them would multiply by the workers."""
    for panel in _graph_panels(_dashboard()):
        for expr in _exprs(panel):
            used = dashboards.metric_names_used(expr)
            for gauge in used & QUEUE_GAUGES:
                for match in re.finditer(rf"(?<![a-z_]){gauge}(?![a-z_])", expr):
                    before = expr[: match.start()]
                    assert re.search(r"max by \(queue(, state)?\) \($", before), expr
            if used - {"pgjobs_worker_executors", "pgjobs_worker_executors_active"}:
                assert 'queue=~"$queue"' in expr, (panel["title"], expr)


def test_dashboard_uses_only_exported_metric_names():
    _assert_known_metrics(dashboards.grafana_dashboard())


# --- the alerts -------------------------------------------------------------------------------


def _alert_blocks(text: str) -> dict[str, str]:
    """Alert name → its block of text (a structural check that needs no YAML parser)."""
    parts = re.split(r"^ *- alert: *", text, flags=re.MULTILINE)
    return {part.split("\n", 1)[0].strip(): part for part in parts[1:]}


def test_alert_rules_structure():
    text = dashboards.alert_rules()
    assert "\t" not in text
    assert re.search(r"^groups:\s*$", text, re.MULTILINE)
    assert re.search(r"^ +rules:\s*$", text, re.MULTILINE)
    blocks = _alert_blocks(text)
    assert set(blocks) == ALERTS
    for name, block in blocks.items():
        for key in ("expr:", "labels:", "severity:", "annotations:", "summary:",
                    "description:", "What to do"):
            assert key in block, (name, key)
    full = blocks["PgjobsQueueNearlyFull"]
    assert re.search(r"^ +for: 5m$", full, re.MULTILINE)
    assert 'state=~"pending|scheduled"' in full and "pgjobs_queue_limit > 0" in full
    assert ">= 0.8" in full
    saturated = blocks["PgjobsWorkersSaturated"]
    assert re.search(r"^ +for: 5m$", saturated, re.MULTILINE)
    assert "pgjobs_worker_executors_active" in saturated and ">= 1" in saturated
    dead = blocks["PgjobsDeadLettersGrowing"]
    assert "pgjobs_queue_dead_letters offset 15m" in dead and "[15m]" in dead
    assert "pgjobs dead-letters list" in dead


def test_alert_rules_parse_as_yaml():
    yaml = pytest.importorskip("yaml")
    doc = yaml.safe_load(dashboards.alert_rules())
    (group,) = doc["groups"]
    rules = {r["alert"]: r for r in group["rules"]}
    assert set(rules) == ALERTS
    assert rules["PgjobsQueueNearlyFull"]["for"] == "5m"
    assert rules["PgjobsWorkersSaturated"]["for"] == "5m"
    for rule in rules.values():
        assert rule["expr"].strip()
        assert rule["labels"]["severity"]
        assert rule["annotations"]["summary"] and rule["annotations"]["description"]


def test_alerts_use_only_exported_metric_names():
    _assert_known_metrics(dashboards.alert_rules())


def _assert_known_metrics(text: str) -> None:
    used = dashboards.metric_names_used(text)
    assert used, "no pgjobs metric found"
    assert used <= KNOWN, f"not exported by pgjobs.metrics: {sorted(used - KNOWN)}"
    # _bucket/_sum/_count only on histograms (a gauge with _count would slip through above)
    for raw in re.findall(r"pgjobs_[a-z_]+", text):
        base = re.sub(r"_(?:bucket|sum|count)$", "", raw)
        if base != raw:
            assert base in HISTOGRAMS, raw


def test_metric_names_used():
    text = ('histogram_quantile(0.9, rate(pgjobs_job_duration_seconds_bucket[5m])) '
            '/ pgjobs_job_duration_seconds_count + pgjobs_queue_depth{queue="a"} '
            'xpgjobs_nope pgjobs-dashboard')
    assert dashboards.metric_names_used(text) == {"pgjobs_job_duration_seconds",
                                                  "pgjobs_queue_depth"}


# --- the CLI and packaging --------------------------------------------------------------------


def test_dashboards_sub_app_prints_both():
    from typer.testing import CliRunner

    from pgjobs.cli.dashboards import dashboards_cli

    runner = CliRunner()
    result = runner.invoke(dashboards_cli, ["grafana"])
    assert result.exit_code == 0, result.output
    assert json.loads(result.stdout) == _dashboard()
    result = runner.invoke(dashboards_cli, ["alerts"])
    assert result.exit_code == 0, result.output
    assert result.stdout == dashboards.alert_rules()


@pytest.mark.parametrize("command", ["grafana", "alerts"])
def test_pgjobs_dashboards_command(command, tmp_path):
    """`pgjobs dashboards …` as a user runs it: no database needed."""
    result = subprocess.run(
        [sys.executable, "-m", "pgjobs", "dashboards", command],
        capture_output=True, text=True, timeout=60, cwd=ROOT, stdin=subprocess.DEVNULL,
        env=cli_env("postgresql://127.0.0.1:1/unreachable", "pgjobs"),
    )
    assert result.returncode == 0, result.stderr
    if command == "grafana":
        assert json.loads(result.stdout) == _dashboard()
    else:
        assert result.stdout == dashboards.alert_rules()


def test_dashboard_files_are_package_data():
    """A non-editable install only ships what pyproject lists."""
    setuptools = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]
    assert "pgjobs.dashboards" in setuptools["packages"]
    patterns = setuptools["package-data"]["pgjobs.dashboards"]
    for name in (dashboards.GRAFANA_FILE, dashboards.ALERTS_FILE):
        assert any(fnmatch(name, p) for p in patterns), name


@pytest.mark.slow
def test_non_editable_install_ships_dashboards(tmp_path):
    wheel_dir = tmp_path / "wheel"
    subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation",
         "-q", "-w", str(wheel_dir), str(ROOT)],
        check=True, capture_output=True, timeout=300,
    )
    target = tmp_path / "site"
    subprocess.run(
        [sys.executable, "-m", "pip", "install", "--no-deps", "-q", "--target", str(target),
         str(next(wheel_dir.glob("pgjobs-*.whl")))],
        check=True, capture_output=True, timeout=300,
    )
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    env["PYTHONPATH"] = str(target)  # the installed copy, not this checkout
    result = subprocess.run(
        [sys.executable, "-c",
         "import json, sys, pgjobs.dashboards as d;"
         "assert d.__file__.startswith(sys.argv[1]), d.__file__;"
         "json.loads(d.grafana_dashboard()); print(d.alert_rules())", str(target)],
        env=env, cwd=tmp_path,
        capture_output=True, text=True, timeout=60,
    )
    assert result.returncode == 0, result.stderr
    assert "PgjobsWorkersSaturated" in result.stdout

"""`pgjobs dashboards …`: print the Grafana dashboard and the Prometheus alerting rules.

Import-safe: reads package data only, never the database.
"""

from __future__ import annotations

import sys

import typer

from .. import dashboards

dashboards_cli = typer.Typer(
    help="Print the Grafana dashboard and Prometheus alerting rules for pgjobs' metrics.",
    no_args_is_help=True,
)


def _emit(text: str) -> None:
    sys.stdout.write(text if text.endswith("\n") else text + "\n")


@dashboards_cli.command()
def grafana() -> None:
    """Print the Grafana dashboard JSON (import it: pgjobs dashboards grafana > pgjobs.json)."""
    _emit(dashboards.grafana_dashboard())


@dashboards_cli.command()
def alerts() -> None:
    """Print the Prometheus alerting rules YAML (add the file to rule_files)."""
    _emit(dashboards.alert_rules())

"""The `pgjobs` command line: the one place where every command joins the tree.

Each command lives in its own module as a plain function or a Typer group and knows
nothing of this tree; this module adds them all, so importing :mod:`pgjobs.cli` gives
the complete CLI. Commands are thin layers over the Python API.
"""

from __future__ import annotations

import sys
from typing import Annotated

import typer

from . import (
    dashboard,
    dashboards,
    dead_letters,
    demo,
    enqueue,
    jobs,
    migrate,
    periodic,
    queues,
    roles,
    server,
    stats,
    work,
)
from .common import SETTINGS, UserError, report_error

cli = typer.Typer(
    name="pgjobs",
    help="Transactional background jobs on PostgreSQL.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    add_completion=False,
)


@cli.callback()
def _global(
    database_url: Annotated[
        str | None,
        typer.Option(
            "--database-url",
            help="PostgreSQL URL. Default: PGJOBS_DATABASE_URL, else DATABASE_URL, "
            "else the embedded server in ./.pgjobs/ (extra pgjobs\\[embedded]).",
            show_default=False,
        ),
    ] = None,
    schema: Annotated[
        str | None,
        typer.Option("--schema", help="Schema of the pgjobs tables. Default: PGJOBS_SCHEMA, "
                     "else 'pgjobs'.", show_default=False),
    ] = None,
) -> None:
    SETTINGS.database_url = database_url
    SETTINGS.schema = schema


# --- the tree -------------------------------------------------------------------------------
cli.command()(migrate.migrate)
cli.command()(work.work)
cli.command()(enqueue.enqueue)
cli.command()(stats.stats)
cli.add_typer(queues.queues_cli, name="queues")
cli.add_typer(jobs.jobs_cli, name="jobs")
cli.add_typer(dead_letters.dead_cli, name="dead-letters")
cli.add_typer(roles.roles_cli, name="roles")
cli.add_typer(dashboards.dashboards_cli, name="dashboards")
cli.command()(dashboard.dashboard)
cli.add_typer(server.server_cli, name="server")
cli.add_typer(periodic.periodic_cli, name="periodic")
cli.command()(demo.demo)


def main() -> None:
    """Entry point of the `pgjobs` script."""
    try:
        cli()
    except (UserError, Exception) as exc:
        sys.exit(report_error(exc))

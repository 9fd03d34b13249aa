"""`pgjobs roles …`: least-privilege database roles for apps, workers and operators."""

from __future__ import annotations

from typing import Annotated

import psycopg
import typer

from .. import roles as pgroles
from ..errors import ConfigurationError
from .common import SETTINGS, connect, fail

roles_cli = typer.Typer(
    help="Least-privilege roles: an app role that enqueues, a worker role that processes, "
         "an operator role that inspects and requeues, a viewer role that only reads.",
    no_args_is_help=True,
)

_MEMBER_HELP = "Existing login role to make a member of the {} role (repeatable)."


@roles_cli.command()
def grant(
    app_role: Annotated[str, typer.Option(
        "--app-role", help="Group role that may only enqueue.")] = pgroles.DEFAULT_ROLES.app,
    worker_role: Annotated[str, typer.Option(
        "--worker-role", help="Group role that may process jobs (pgjobs work).")
    ] = pgroles.DEFAULT_ROLES.worker,
    operator_role: Annotated[str, typer.Option(
        "--operator-role", help="Group role that may inspect, requeue, purge and set limits.")
    ] = pgroles.DEFAULT_ROLES.operator,
    viewer_role: Annotated[str, typer.Option(
        "--viewer-role", help="Group role that may only read (pgjobs dashboard --read-only).")
    ] = pgroles.DEFAULT_ROLES.viewer,
    app_member: Annotated[list[str] | None, typer.Option(
        "--app-member", help=_MEMBER_HELP.format("app"), show_default=False)] = None,
    worker_member: Annotated[list[str] | None, typer.Option(
        "--worker-member", help=_MEMBER_HELP.format("worker"), show_default=False)] = None,
    operator_member: Annotated[list[str] | None, typer.Option(
        "--operator-member", help=_MEMBER_HELP.format("operator"), show_default=False)] = None,
    viewer_member: Annotated[list[str] | None, typer.Option(
        "--viewer-member", help=_MEMBER_HELP.format("viewer"), show_default=False)] = None,
    sql: Annotated[bool, typer.Option(
        "--sql", help="Print the SQL instead of running it.")] = False,
) -> None:
    """Create the four NOLOGIN group roles (if missing) and grant them least privilege.

    Run as the schema's owner after `pgjobs migrate` (again after each upgrade); it is
    idempotent. Give them to login users with --app-member/--worker-member/--operator-member/
    --viewer-member or `GRANT pgjobs_worker TO some_user`.
    """
    schema = SETTINGS.resolved_schema()
    members = {"app": app_member or [], "worker": worker_member or [],
               "operator": operator_member or [], "viewer": viewer_member or []}
    try:
        names = pgroles.RoleNames(app=app_role, worker=worker_role, operator=operator_role,
                                  viewer=viewer_role)
        if sql:
            print(pgroles.render_sql(schema, names, members=members), end="")
            return
    except ConfigurationError as exc:
        fail(str(exc))
    with connect() as conn:
        try:
            pgroles.grant_roles(conn, schema, names, members=members)
        except psycopg.errors.InsufficientPrivilege as exc:
            conn.rollback()
            fail(f"not allowed to grant on schema {schema!r} ({_first_line(exc)}): run this as "
                 "the owner of the pgjobs schema, with CREATEROLE (or as a superuser)")
        except psycopg.errors.UndefinedObject as exc:
            conn.rollback()
            fail(f"{_first_line(exc)}: create the login role first, or drop the --*-member "
                 "option")
        conn.commit()
    for kind in ("app", "worker", "operator", "viewer"):
        users = ", ".join(members[kind]) or "no members"
        print(f"{kind:>8}: {names.of(kind)} ({users})")


def _first_line(exc: BaseException) -> str:
    return (str(exc).strip().splitlines() or [type(exc).__name__])[0]

"""The dashboard's pages and its one action endpoint.

Adding a page is three lines here: a handler, a :class:`~starlette.routing.Route` in
:func:`routes`, and (for the header) a :class:`NavItem` in :data:`NAV`. Adding an action
is one :func:`pgjobs.dashboard.actions.register` call: ``POST /actions/<target>/<name>``
and the buttons on the target's pages follow from the registry.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import parse_qsl

import psycopg
from psycopg_pool import PoolTimeout
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import RedirectResponse, Response
from starlette.routing import BaseRoute, Mount, Route
from starlette.staticfiles import StaticFiles

from .. import config
from ..errors import PgjobsError
from . import actions as registry
from . import queries
from .flash import Flash
from .security import set_session_cookie, token_matches

MAX_FORM_BYTES = 1_000_000


@dataclass(frozen=True)
class NavItem:
    """A link in every page's header."""

    label: str
    path: str
    active: bool = False


#: The header's links, in order. A new page adds its entry here.
NAV: list[NavItem] = [
    NavItem("Queues", "/"),
    NavItem("Jobs", "/jobs"),
    NavItem("Dead letters", "/dead-letters"),
    NavItem("Workers", "/workers"),
    NavItem("Periodic", "/periodic"),
]


def nav_for(path: str) -> list[NavItem]:
    """:data:`NAV` with the entry of ``path`` marked active."""
    def active(item: NavItem) -> bool:
        return path == item.path if item.path == "/" else path.startswith(item.path)

    return [NavItem(i.label, i.path, active(i)) for i in NAV]


def _dashboard(request: Request) -> Any:
    return request.app.state.dashboard


# --- pages --------------------------------------------------------------------------------


async def queues_page(request: Request) -> Response:
    dash = _dashboard(request)
    data = await dash.db.run(queries.queues_overview)
    queue_actions = [] if dash.read_only else registry.actions_for("queues")
    return await dash.render(request, "queues.html",
                             {"title": "Queues", "queue_actions": queue_actions, **data})


def _text(request: Request, name: str, max_length: int = 500) -> str | None:
    value = request.query_params.get(name, "").strip()
    return value[:max_length] or None


def _cursor(request: Request) -> int | None:
    raw = request.query_params.get("before", "").strip()
    if not raw:
        return None
    try:
        return int(raw)
    except ValueError:
        raise HTTPException(400, f"before must be a job id (a whole number), got {raw!r}"
                            ) from None


def _job_filters(request: Request) -> queries.Filters:
    state = _text(request, "state")
    if state is not None and state not in queries.JOB_STATES:
        raise HTTPException(400, f"state must be one of {', '.join(queries.JOB_STATES)}, "
                                 f"got {state!r}")
    return queries.Filters(queue=_text(request, "queue"), task=_text(request, "task"),
                           state=state, search=_text(request, "search"))


async def jobs_page(request: Request) -> Response:
    dash = _dashboard(request)
    filters = _job_filters(request)
    page = await dash.db.run(queries.jobs_page, filters, _cursor(request))
    return await dash.render(request, "jobs.html", {
        "title": "Jobs", "filters": filters, "page": page, "states": queries.JOB_STATES,
        "actions": [] if dash.read_only else registry.actions_for("jobs"),
    })


async def job_page(request: Request) -> Response:
    dash = _dashboard(request)
    job_id = request.path_params["job_id"]
    job = await dash.db.run(queries.job, job_id)
    if job is None:
        info = await dash.db.run(queries.finished_job, job_id)
        return await dash.render(request, "gone.html", {
            "title": f"Job {job_id}", "job_id": job_id, "info": info,
        }, status_code=200 if info is not None else 404)
    return await dash.render(request, "job.html", {
        "title": f"Job {job_id}", "job": job,
        "actions": [] if dash.read_only else registry.actions_for("jobs", job),
    })


async def dead_letters_page(request: Request) -> Response:
    dash = _dashboard(request)
    filters = queries.Filters(queue=_text(request, "queue"), task=_text(request, "task"),
                              search=_text(request, "search"))
    page = await dash.db.run(queries.dead_letters_page, filters, _cursor(request))
    return await dash.render(request, "dead_letters.html", {
        "title": "Dead letters", "filters": filters, "page": page,
        "actions": [] if dash.read_only else registry.actions_for("dead-letters"),
    })


async def dead_letter_page(request: Request) -> Response:
    dash = _dashboard(request)
    dead_letter_id = request.path_params["dead_letter_id"]
    row = await dash.db.run(queries.dead_letter, dead_letter_id)
    if row is None:
        raise HTTPException(404, f"dead letter {dead_letter_id} does not exist (requeued or "
                                 "purged?)")
    return await dash.render(request, "dead_letter.html", {
        "title": f"Dead letter {dead_letter_id}", "dl": row,
        "actions": [] if dash.read_only else registry.actions_for("dead-letters", row),
    })


async def workers_page(request: Request) -> Response:
    dash = _dashboard(request)
    rows = await dash.db.run(queries.workers)
    return await dash.render(request, "workers.html", {"title": "Workers", "workers": rows})


async def periodic_page(request: Request) -> Response:
    dash = _dashboard(request)
    rows = await dash.db.run(queries.periodic_schedules)
    return await dash.render(request, "periodic.html", {
        "title": "Periodic", "schedules": rows,
        "actions": [] if dash.read_only else registry.actions_for("periodic"),
    })


# --- actions ------------------------------------------------------------------------------


async def read_form(request: Request) -> dict[str, list[str]]:
    """The URL-encoded form of a POST (bounded in size), as name -> values."""
    body = b""
    async for chunk in request.stream():
        body += chunk
        if len(body) > MAX_FORM_BYTES:
            raise HTTPException(413, "form too large")
    form: dict[str, list[str]] = {}
    for name, value in parse_qsl(body.decode("utf-8", "replace"), keep_blank_values=True):
        form.setdefault(name, []).append(value)
    return form


def _first(form: dict[str, list[str]], name: str) -> str | None:
    values = form.get(name)
    value = values[-1].strip() if values else ""
    return value or None


def safe_next(value: str | None, default: str) -> str:
    """A path below the mount point to go back to (never another site)."""
    if not value or not value.startswith("/") or value.startswith("//") or "\\" in value:
        return default
    return value


async def action_endpoint(request: Request) -> Response:
    dash = _dashboard(request)
    target_name = request.path_params["target"]
    action = registry.ACTIONS.get((target_name, request.path_params["name"]))
    if action is None:
        raise HTTPException(404, "no such action")
    target = registry.TARGETS[target_name]
    form = await read_form(request)
    back = safe_next(_first(form, "next"), "/")
    if action.danger and _first(form, "confirm") != "yes":
        return dash.flash_redirect(request, back, Flash(
            f"Nothing done: tick “confirm” to {action.label.lower()}.", "error"))
    try:
        if _first(form, "scope") == "all":
            if target.matching_statement is None:
                raise HTTPException(400, f"{target_name} has no 'all matching' selection")
            filters = {name: _first(form, name) for name in ("queue", "task", "state", "search")}
            if target_name == "dead-letters":
                filters.pop("state")
            outcome = await dash.db.run(registry.run_on_matching, action, filters)
        else:
            try:
                ids = [target.id_type(v) for v in form.get("id", []) if v.strip()]
            except ValueError:
                raise HTTPException(400, "id must be a whole number") from None
            if not ids:
                return dash.flash_redirect(request, back, Flash(
                    f"Nothing done: select at least one row to {action.label.lower()}.",
                    "error"))
            outcome = await dash.db.run(registry.run_on_ids, action, ids)
    except (psycopg.Error, PgjobsError) as exc:
        # A refusal (QueueFull, an unknown schedule, a permission): said, nothing done.
        first = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
        return dash.flash_redirect(request, back, Flash(
            f"{action.label} failed: {config.redact_text(first, dash.db.url)}", "error"))
    message = action.done.format(n=outcome.changed)
    if outcome.batches > 1:
        message += f" ({outcome.batches} batches)"
    if not outcome.complete:
        message += (f"; stopped after {registry.TIME_BUDGET_SECONDS:g} s: more may match, "
                    "run it again for the rest")
    return dash.flash_redirect(request, back, Flash(message + "."))


# --- login --------------------------------------------------------------------------------


async def login_form(request: Request, dash: Any, error: str | None) -> Response:
    return await dash.render(request, "login.html", {"title": "Log in", "error": error,
                                                "public": True},
                             status_code=401)


async def login(request: Request) -> Response:
    dash = _dashboard(request)
    root = request.scope.get("root_path", "")
    if dash.token is None:
        return RedirectResponse(root + "/", status_code=303)
    if request.method == "GET":
        return await login_form(request, dash, None)
    form = await read_form(request)
    if not token_matches(_first(form, "token"), dash.token):
        return await login_form(request, dash, "wrong token")
    response = RedirectResponse(root + "/", status_code=303)
    set_session_cookie(response, request, dash.token)
    return response


# --- errors -------------------------------------------------------------------------------


async def _http_error(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, HTTPException)
    return await _dashboard(request).render(
        request, "error.html", {"title": "Error", "message": exc.detail},
        status_code=exc.status_code)


async def _database_error(request: Request, exc: Exception) -> Response:
    dash = _dashboard(request)
    if isinstance(exc, psycopg.errors.UndefinedTable | psycopg.errors.InvalidSchemaName):
        message = (f"pgjobs schema {dash.schema!r} has no tables here: run `pgjobs migrate` "
                   "(or set PGJOBS_SCHEMA)")
    elif isinstance(exc, psycopg.errors.InsufficientPrivilege):
        message = ("permission denied: give the dashboard's database user the viewer role "
                   "(`pgjobs roles grant`), or the operator role for actions")
    else:
        first = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
        message = f"database unavailable: {config.redact_text(first, dash.db.url)}"
    return await dash.render(request, "error.html", {"title": "Error", "message": message},
                             status_code=503)


def exception_handlers() -> dict[Any, Any]:
    return {HTTPException: _http_error, psycopg.Error: _database_error,
            PoolTimeout: _database_error}


def routes(static_dir: Path) -> list[BaseRoute]:
    """Every route. Pages are GET; the only POSTs are actions and the login."""
    return [
        Route("/", queues_page, name="queues"),
        Route("/jobs", jobs_page, name="jobs"),
        Route("/jobs/{job_id:int}", job_page, name="job"),
        Route("/dead-letters", dead_letters_page, name="dead_letters"),
        Route("/dead-letters/{dead_letter_id:int}", dead_letter_page, name="dead_letter"),
        Route("/workers", workers_page, name="workers"),
        Route("/periodic", periodic_page, name="periodic"),
        Route("/actions/{target}/{name}", action_endpoint, methods=["POST"], name="action"),
        Route("/login", login, methods=["GET", "POST"], name="login"),
        Mount("/static", StaticFiles(directory=static_dir), name="static"),
    ]

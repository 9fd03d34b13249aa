"""Building the dashboard's ASGI app: settings, templates, middleware and routes."""

from __future__ import annotations

import datetime as dt
import json
import secrets
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlencode

from jinja2 import Environment, PackageLoader, StrictUndefined
from starlette.applications import Starlette
from starlette.middleware import Middleware
from starlette.requests import Request
from starlette.responses import HTMLResponse, Response

from .. import __version__, config
from .charts import throughput_bars
from .db import Database
from .flash import Flash, Flasher
from .security import Guard, route_path

STATIC_DIR = Path(__file__).parent / "static"


@dataclass
class Dashboard:
    """What every request handler needs: the database, templates and settings."""

    db: Database
    schema: str
    read_only: bool
    token: str | None
    refresh_seconds: float
    env: Environment
    flasher: Flasher

    async def render(self, request: Request, template: str, context: dict[str, Any],
                     *, status_code: int = 200) -> HTMLResponse:
        """A page: ``template`` with the shared context (nav, flash, url helpers…)."""
        from .views import nav_for

        response = HTMLResponse("", status_code=status_code)
        flash = self.flasher.pop(request, response)
        root = request.scope.get("root_path", "")
        here = route_path(request.scope)
        body = self.env.get_template(template).render(
            request=request, nav=nav_for(here), here=_here(request), root=root,
            url=lambda path, **query: _url(root, path, query),
            static=lambda name: f"{root}/static/{name}?v={__version__}",
            read_only=self.read_only, schema=self.schema, flash=flash,
            refresh_seconds=self.refresh_seconds, token_required=self.token is not None,
            **{"public": False, **context},
        )
        response.body = response.render(body)
        response.headers["content-length"] = str(len(response.body))
        return response

    def flash_redirect(self, request: Request, next_path: str, flash: Flash) -> Response:
        """303 to ``next_path`` (below the mount point), carrying ``flash``."""
        from starlette.responses import RedirectResponse

        response = RedirectResponse(request.scope.get("root_path", "") + next_path,
                                    status_code=303)
        self.flasher.set(response, request, flash)
        return response


def _url(root: str, path: str, query: dict[str, Any]) -> str:
    pairs = [(k, str(v)) for k, v in query.items() if v is not None and v != ""]
    return root + path + (f"?{urlencode(pairs)}" if pairs else "")


def _here(request: Request) -> str:
    """This page's path and query below the mount point (the ``next`` of its forms)."""
    path = route_path(request.scope)
    query = request.url.query
    return path + (f"?{query}" if query else "")


def _environment() -> Environment:
    env = Environment(
        loader=PackageLoader("pgjobs.dashboard", "templates"),
        autoescape=True,  # every template, whatever its file name
        undefined=StrictUndefined,
        trim_blocks=True,
        lstrip_blocks=True,
    )
    env.filters["num"] = lambda v: "—" if v is None else f"{v:,}"
    env.filters["age"] = format_age
    env.filters["ts"] = format_timestamp
    env.filters["pretty_json"] = lambda v: json.dumps(v, indent=2, ensure_ascii=False,
                                                      sort_keys=True, default=str)
    env.filters["percent"] = lambda v: "—" if v is None else f"{100 * v:.0f}%"
    env.filters["first_line"] = lambda v: "" if v is None else (str(v).splitlines() or [""])[0]
    env.filters["trace_id"] = trace_id
    env.globals["throughput_bars"] = throughput_bars
    return env


def format_age(seconds: float | None) -> str:
    """``4.2s``, ``3m 05s``, ``2h 10m``, ``3d 4h``."""
    if seconds is None:
        return "—"
    if seconds < 60:
        return f"{seconds:.1f}s"
    minutes, secs = divmod(int(seconds), 60)
    if minutes < 60:
        return f"{minutes}m {secs:02d}s"
    hours, minutes = divmod(minutes, 60)
    if hours < 48:
        return f"{hours}h {minutes:02d}m"
    days, hours = divmod(hours, 24)
    return f"{days}d {hours}h"


def format_timestamp(value: dt.datetime | None) -> str:
    """UTC, to the second."""
    if value is None:
        return "—"
    return value.astimezone(dt.UTC).strftime("%Y-%m-%d %H:%M:%S")


def trace_id(trace_context: Any) -> str | None:
    """The W3C trace id carried by a job's ``trace_context`` (``traceparent``), if any."""
    if not isinstance(trace_context, dict):
        return None
    parts = str(trace_context.get("traceparent", "")).split("-")
    return parts[1] if len(parts) == 4 and len(parts[1]) == 32 else None


def asgi_app(
    database_url: str | None = None,
    *,
    schema: str | None = None,
    read_only: bool = False,
    token: str | None = None,
    refresh_seconds: float = 3.0,
    pool_size: int = 4,
) -> Starlette:
    """The pgjobs web dashboard as an ASGI app, to serve or mount under any path prefix.

    ``database_url`` and ``schema`` default like every pgjobs command (``PGJOBS_DATABASE_URL``,
    ``DATABASE_URL``, the embedded server; ``PGJOBS_SCHEMA``). ``read_only=True`` refuses
    every action server-side (and its sessions are read-only, so a SELECT-only role such as
    ``pgjobs_viewer`` suffices). ``token``, when given, must be presented by every request
    (see :mod:`pgjobs.dashboard.security`); the ``pgjobs dashboard`` command requires one
    beyond localhost. ``refresh_seconds`` is the live-refresh period of open pages.

    Mount it like any ASGI app, e.g. with Starlette/FastAPI:
    ``app.mount("/pgjobs", pgjobs.dashboard.asgi_app(read_only=True))``.
    """
    from . import views

    if token is not None and not token:
        raise ValueError("token must be a non-empty string (or None for no token)")
    if refresh_seconds <= 0:
        raise ValueError("refresh_seconds must be > 0")
    url = config.resolve_database_url(database_url)
    resolved_schema = config.resolve_schema(schema)
    dashboard = Dashboard(
        db=Database(url, resolved_schema, read_only=read_only, pool_size=pool_size),
        schema=resolved_schema, read_only=read_only, token=token,
        refresh_seconds=refresh_seconds, env=_environment(),
        flasher=Flasher(secrets.token_bytes(32)),
    )

    @asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        try:
            yield
        finally:
            dashboard.db.close()

    async def login_page(request: Request, error: str | None) -> Response:
        return await views.login_form(request, dashboard, error)

    app = Starlette(
        routes=views.routes(STATIC_DIR),
        middleware=[Middleware(Guard, token=token, read_only=read_only,  # type: ignore[arg-type]
                               login_page=login_page)],
        exception_handlers=views.exception_handlers(),
        lifespan=lifespan,
    )
    app.state.dashboard = dashboard
    return app

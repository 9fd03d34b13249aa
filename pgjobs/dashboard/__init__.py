"""The built-in web dashboard: queues, jobs, dead letters and workers in a browser.

``pgjobs dashboard`` serves it; :func:`asgi_app` mounts it in any ASGI application::

    from starlette.applications import Starlette
    from starlette.routing import Mount
    import pgjobs.dashboard

    app = Starlette(routes=[Mount("/pgjobs", pgjobs.dashboard.asgi_app(read_only=True))])

Needs the ``dashboard`` extra (``pip install 'pgjobs[dashboard]'``): Starlette, Jinja2
and uvicorn. (:mod:`pgjobs.dashboards`, plural, is the Grafana dashboard JSON.)
"""

from __future__ import annotations

try:
    import jinja2  # noqa: F401
    import starlette  # noqa: F401
except ImportError as exc:  # pragma: no cover - depends on the installed extras
    raise ImportError(
        "the pgjobs web dashboard needs the 'dashboard' extra: pip install 'pgjobs[dashboard]'"
    ) from exc

from .app import asgi_app

__all__ = ["asgi_app"]

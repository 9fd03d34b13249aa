"""`pgjobs dashboard`: serve the web dashboard (uvicorn) on localhost, or with a token.

Import-safe without the ``dashboard`` extra: Starlette and uvicorn are imported only when
the command runs, and their absence is one line naming the extra.
"""

from __future__ import annotations

import os
import socket
import sys
from typing import Annotated

import typer

from .. import sql as S
from ..errors import SchemaMissingError
from .common import SETTINGS, connect, fail

TOKEN_ENV = "PGJOBS_DASHBOARD_TOKEN"


def dashboard(
    host: Annotated[str, typer.Option(
        help="Address to listen on. Anything but localhost needs PGJOBS_DASHBOARD_TOKEN.")
    ] = "127.0.0.1",
    port: Annotated[int, typer.Option(help="Port to listen on (0: any free port).")] = 8765,
    read_only: Annotated[bool, typer.Option(
        "--read-only", help="Refuse every action (pages only); works with a SELECT-only "
        "role such as pgjobs_viewer.")] = False,
    refresh: Annotated[float, typer.Option(
        help="Seconds between live refreshes of open pages.")] = 3.0,
) -> None:
    """Serve the web dashboard: queues, jobs, dead letters, workers, and actions on them.

    Binds 127.0.0.1 unless --host says otherwise. Beyond localhost it requires a token in
    PGJOBS_DASHBOARD_TOKEN (browsers log in once with it; scripts send
    `Authorization: Bearer TOKEN`) and refuses to start without one.
    """
    from ..dashboard.security import is_loopback

    token = os.environ.get(TOKEN_ENV, "").strip() or None
    if not is_loopback(host) and token is None:
        fail(f"refusing to serve the dashboard on {host} without a token: set {TOKEN_ENV} "
             "(or keep the default --host 127.0.0.1)")
    if not 0 <= port <= 65535:
        fail(f"--port must be between 0 and 65535, got {port}")
    if refresh <= 0:
        fail(f"--refresh must be > 0 seconds, got {refresh:g}")
    try:
        import uvicorn

        from ..dashboard import asgi_app
    except ImportError:
        fail("the dashboard needs the 'dashboard' extra: pip install 'pgjobs[dashboard]'")
    # Before binding: a bad URL or an unmigrated schema is one line, not a page of errors.
    with connect(autocommit=True) as conn:
        statements = SETTINGS.sql()
        row = conn.execute(statements.of(S.SCHEMA_EXISTS),
                           {"jobs_table": statements.jobs_table}).fetchone()
        if not (row and row[0]):
            raise SchemaMissingError(statements.schema)
    app = asgi_app(SETTINGS.url(), schema=SETTINGS.resolved_schema(), read_only=read_only,
                   token=token, refresh_seconds=refresh)
    sock = _listen(host, port)
    bound_host, bound_port = sock.getsockname()[:2]
    shown = f"[{bound_host}]" if ":" in bound_host else bound_host
    mode = "read-only" if read_only else "actions enabled"
    guard = "token required" if token else "no token (localhost only)"
    print(f"pgjobs dashboard: serving http://{shown}:{bound_port}/ ({mode}, {guard}); "
          "Ctrl-C to stop", file=sys.stderr, flush=True)
    config = uvicorn.Config(app, log_level="warning", access_log=False, lifespan="on")
    uvicorn.Server(config).run(sockets=[sock])


def _listen(host: str, port: int) -> socket.socket:
    """A listening socket, so a busy port is one clear line (and port 0 is reported)."""
    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM,
                                   flags=socket.AI_PASSIVE)
    except socket.gaierror as exc:
        fail(f"cannot resolve --host {host!r}: {exc.strerror}")
    family, kind, proto, _, address = infos[0]
    sock = socket.socket(family, kind, proto)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind(address)
    except OSError as exc:
        sock.close()
        fail(f"cannot listen on {host}:{port}: {exc.strerror}; choose another --port or --host")
    sock.listen(128)
    sock.set_inheritable(True)
    return sock

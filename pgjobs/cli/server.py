"""`pgjobs server status|stop`: the embedded PostgreSQL of the current directory.

Any command run without a database URL starts that server (with the ``pgjobs[embedded]``
extra) and leaves it running, so later commands find the same data quickly. These two
commands show it and stop it; they never start it.
"""

from __future__ import annotations

from pathlib import Path

import typer

from ..config import EMBEDDED_DIR_NAME
from ..embedded import EmbeddedServerError, embedded_server_status, stop_embedded_server
from ..errors import ConfigurationError

server_cli = typer.Typer(
    help="The embedded PostgreSQL of the current directory (./.pgjobs): it keeps running "
         "between commands until `pgjobs server stop`.",
    no_args_is_help=True,
)

#: ``pgjobs server status`` exit code when no server runs (as ``pg_ctl status``).
NOT_RUNNING = 3


def _data_dir() -> Path:
    return Path.cwd() / EMBEDDED_DIR_NAME


@server_cli.command()
def status() -> None:
    """Say whether the embedded server runs here (exit 0) or not (exit 3), and where."""
    state = embedded_server_status(_data_dir())
    if state.running:
        print(f"running: embedded PostgreSQL {state.version} in {state.data_dir} "
              f"(pid {state.pid}); URL {state.url}; stop it with `pgjobs server stop`")
        return
    if state.initialized:
        print(f"not running: embedded PostgreSQL {state.version} data in {state.data_dir} "
              "(any pgjobs command without a database URL starts it)")
    else:
        print(f"not running: no embedded PostgreSQL in {state.data_dir}")
    raise typer.Exit(NOT_RUNNING)


@server_cli.command()
def stop() -> None:
    """Stop the embedded server (fast shutdown: open sessions end); its data is kept."""
    data_dir = _data_dir()
    try:
        pid = stop_embedded_server(data_dir)
    except EmbeddedServerError as exc:
        raise ConfigurationError(str(exc)) from exc
    if pid is None:
        print(f"not running: no embedded PostgreSQL to stop in {data_dir.resolve()}")
    else:
        print(f"stopped the embedded PostgreSQL in {data_dir.resolve()} (pid {pid}); "
              "its data is kept")

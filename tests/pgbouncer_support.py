"""A real PgBouncer in transaction pooling mode in front of the test server.

Debian's ``pgbouncer`` package (``.ci/run`` installs it when run as root). Tests that use
it (the ``pgbouncer`` fixture in test_pgbouncer.py) skip, saying why, only when the
binary is missing here.
PgBouncer refuses to run as root, so as root it is started with ``-u nobody`` and its
files are made readable by that user.
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlsplit

import psycopg

#: Server connections PgBouncer keeps per (database, user): fewer than the clients of one
#: worker, so clients really share server connections from one transaction to the next.
SERVER_POOL_SIZE = 6


def pgbouncer_binary() -> str | None:
    """The pgbouncer executable (Debian installs it in /usr/sbin, off most users' PATH)."""
    found = shutil.which("pgbouncer")
    if found:
        return found
    for candidate in ("/usr/sbin/pgbouncer", "/usr/local/sbin/pgbouncer"):
        if os.access(candidate, os.X_OK):
            return candidate
    return None


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@dataclass
class PgBouncer:
    """A running PgBouncer: its URL (same user and database as the server's URL)."""

    url: str
    process: subprocess.Popen[bytes]
    directory: Path

    @property
    def log(self) -> str:
        return (self.directory / "pgbouncer.log").read_text(errors="replace")


def _write_config(directory: Path, server_url: str, port: int) -> None:
    server = urlsplit(server_url)
    user = server.username or "postgres"
    (directory / "userlist.txt").write_text(f'"{user}" ""\n')
    (directory / "pgbouncer.ini").write_text(f"""\
[databases]
* = host={server.hostname or '127.0.0.1'} port={server.port or 5432}

[pgbouncer]
listen_addr = 127.0.0.1
listen_port = {port}
unix_socket_dir =
auth_type = trust
auth_file = {directory / 'userlist.txt'}
pool_mode = transaction
default_pool_size = {SERVER_POOL_SIZE}
max_client_conn = 1000
server_reset_query =
ignore_startup_parameters = extra_float_digits
# A client waiting for a server connection fails in 20 s instead of hanging for 120.
query_wait_timeout = 20
""")
    for path in (directory, *directory.iterdir()):
        path.chmod(0o755 if path.is_dir() else 0o644)


def start_pgbouncer(server_url: str, binary: str) -> PgBouncer:
    """Start PgBouncer on a free port and wait until it answers a query."""
    directory = Path(tempfile.mkdtemp(prefix="pgjobs-pgbouncer-"))
    server = urlsplit(server_url)
    last_error = ""
    for _ in range(3):  # another process may take the free port before PgBouncer binds it
        port = _free_port()
        _write_config(directory, server_url, port)
        as_user = ["-u", "nobody"] if os.geteuid() == 0 else []
        with open(directory / "pgbouncer.log", "wb") as log:
            process = subprocess.Popen(
                [binary, *as_user, str(directory / "pgbouncer.ini")],
                stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT)
        url = server._replace(netloc=f"{server.username or 'postgres'}@127.0.0.1:{port}").geturl()
        deadline = time.monotonic() + 15
        while process.poll() is None and time.monotonic() < deadline:
            try:
                with psycopg.connect(url, connect_timeout=2, autocommit=True,
                                     prepare_threshold=None) as conn:
                    conn.execute("SELECT 1")
                return PgBouncer(url, process, directory)
            except psycopg.OperationalError as exc:
                last_error = str(exc).strip()
                time.sleep(0.1)
        stop_pgbouncer(PgBouncer(url, process, directory), keep_directory=True)
        last_error = (directory / "pgbouncer.log").read_text(errors="replace")[-2000:] or last_error
    shutil.rmtree(directory, ignore_errors=True)
    raise RuntimeError(f"PgBouncer did not start: {last_error}")


def stop_pgbouncer(bouncer: PgBouncer, keep_directory: bool = False) -> None:
    if bouncer.process.poll() is None:
        bouncer.process.send_signal(signal.SIGTERM)  # immediate shutdown: tests are over
        try:
            bouncer.process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            bouncer.process.kill()
            bouncer.process.wait(timeout=10)
    if not keep_directory:
        shutil.rmtree(bouncer.directory, ignore_errors=True)

"""Tests for pgjobs.embedded: pgserver, the machine's own binaries, and neither."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import psycopg
import pytest

from pgjobs import embedded
from pgjobs.embedded import EmbeddedServerError, embedded_database_url, stop_embedded_server

pytestmark = pytest.mark.embedded

REPO = Path(__file__).resolve().parents[1]


def _server_facts(url: str) -> tuple[object, str, str]:
    """(postmaster start time, data_directory, current_database) of the server at url."""
    with psycopg.connect(url, connect_timeout=10) as conn:
        assert conn.execute("SELECT 1").fetchone() == (1,)
        row = conn.execute(
            "SELECT pg_postmaster_start_time(), current_setting('data_directory'),"
            " current_database()"
        ).fetchone()
    assert row is not None
    return row[0], row[1], row[2]


def _url_in_subprocess(
    data_dir: Path, database: str, *, force_binaries: bool = False
) -> subprocess.Popen[str]:
    """Start a separate Python process that prints embedded_database_url(data_dir)."""
    code = (
        "import sys, pathlib\n"
        "import pgjobs.embedded as e\n"
        + ("e._load_pgserver = lambda: None\n" if force_binaries else "")
        + "print(e.embedded_database_url(pathlib.Path(sys.argv[1]), database=sys.argv[2]))\n"
    )
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    return subprocess.Popen(
        [sys.executable, "-c", code, str(data_dir), database],
        cwd=REPO,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def _finish(proc: subprocess.Popen[str]) -> str:
    out, err = proc.communicate(timeout=90)
    assert proc.returncode == 0, err
    return out.strip().splitlines()[-1]


def _postmaster_pid(data_dir: Path) -> int | None:
    info = embedded._read_postmaster(data_dir / "pgdata")
    return info.pid if info is not None else None


def _stop_and_check(data_dir: Path) -> None:
    pid = _postmaster_pid(data_dir)
    stop_embedded_server(data_dir)
    if pid is not None:
        deadline = time.monotonic() + 10
        while embedded._is_postmaster(pid):
            assert time.monotonic() < deadline, f"postmaster {pid} still running"
            time.sleep(0.05)


def test_pgserver_backend_is_shared_across_processes(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    if embedded._load_pgserver() is None:
        pytest.skip("pgserver is not installed (wheels: CPython 3.11/3.12, x86-64 Linux)")
    # Make sure this test exercises pgserver, not the machine's binaries.
    monkeypatch.setattr(embedded, "_find_postgres_bindir", lambda: None)
    data_dir = tmp_path / "pgjobs-data"
    try:
        url = embedded_database_url(data_dir)
        started, data_directory, db = _server_facts(url)
        assert db == "postgres"
        assert Path(data_directory) == (data_dir / "pgdata").resolve()
        with psycopg.connect(url) as conn:
            version = conn.execute("SHOW server_version_num").fetchone()
        assert version is not None and version[0].startswith("16")  # pgserver's bundled PG

        # A second, separate process finds the same running server (and creates a db).
        other_url = _finish(_url_in_subprocess(data_dir, "pgjobs_other"))
        started2, data_directory2, db2 = _server_facts(other_url)
        assert (started2, data_directory2, db2) == (started, data_directory, "pgjobs_other")

        # In-process again: idempotent.
        assert embedded_database_url(data_dir) == url
    finally:
        _stop_and_check(data_dir)
    assert embedded._running_postmaster(data_dir / "pgdata") is None


def test_system_binaries_fallback(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    bindir = embedded._find_postgres_bindir()
    if bindir is None:
        pytest.skip("no PostgreSQL server binaries (initdb/pg_ctl) on this machine")
    monkeypatch.setattr(embedded, "_load_pgserver", lambda: None)
    # Deep enough that the socket cannot live in pgdata (sun_path limit): exercises /tmp.
    data_dir = tmp_path / ("d" * 60) / ("e" * 40)
    short = embedded._short_socket_dir(data_dir.resolve())
    procs: list[subprocess.Popen[str]] = []
    try:
        # Two processes starting a fresh directory at the same moment: the flock makes
        # one initdb/start and the other reuse it.
        procs = [_url_in_subprocess(data_dir, "postgres", force_binaries=True) for _ in range(2)]
        urls = [_finish(p) for p in procs]
        assert urls[0] == urls[1]
        assert f"host={short}" in urls[0]
        started, data_directory, _ = _server_facts(urls[0])
        assert Path(data_directory) == (data_dir / "pgdata").resolve()

        url = embedded_database_url(data_dir, database="jobs")
        started2, data_directory2, db = _server_facts(url)
        assert (started2, data_directory2, db) == (started, data_directory, "jobs")

        pid = _postmaster_pid(data_dir)
        assert pid is not None
        if os.geteuid() == 0:
            # initdb refuses root: the server must run as an unprivileged user.
            assert Path(f"/proc/{pid}").stat().st_uid != 0
            assert (data_dir / "pgdata").stat().st_uid != 0
        assert (data_dir / "pgdata" / "log").is_file()
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
                p.wait(timeout=10)
        _stop_and_check(data_dir)
    assert not short.exists()

    # Restart after a stop reuses the existing data (no second initdb).
    try:
        url = embedded_database_url(data_dir, database="jobs")
        assert _server_facts(url)[2] == "jobs"
    finally:
        _stop_and_check(data_dir)


def test_no_postgresql_gives_one_line_error(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(embedded, "_load_pgserver", lambda: None)
    monkeypatch.setattr(embedded, "_find_postgres_bindir", lambda: None)
    with pytest.raises(EmbeddedServerError) as info:
        embedded_database_url(tmp_path / "data")
    message = str(info.value)
    assert "\n" not in message
    assert message.startswith("no PostgreSQL found")
    for hint in ("pip install 'pgjobs[embedded]'", "apt-get install postgresql",
                 "PGJOBS_DATABASE_URL"):
        assert hint in message


def test_stop_when_nothing_runs_is_a_no_op(tmp_path: Path) -> None:
    stop_embedded_server(tmp_path / "never-started")
    (tmp_path / "empty" / "pgdata").mkdir(parents=True)
    stop_embedded_server(tmp_path / "empty")


@pytest.mark.embedded
def test_cli_invocations_share_the_embedded_default(tmp_path):
    """With no URL set, `pgjobs` starts ./.pgjobs once and later commands reuse it."""
    import json

    env = {k: v for k, v in os.environ.items()
           if k not in ("PGJOBS_DATABASE_URL", "DATABASE_URL", "PGJOBS_SCHEMA")}
    root = Path(__file__).resolve().parent.parent
    env["PYTHONPATH"] = str(root)

    def cli(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run([sys.executable, "-m", "pgjobs", *args], cwd=tmp_path, env=env,
                              capture_output=True, text=True, timeout=180)

    try:
        migrated = cli("migrate")
        assert migrated.returncode == 0, migrated.stderr
        assert "embedded PostgreSQL" in migrated.stderr
        assert cli("enqueue", "demo.task", "--queue", "shared").returncode == 0
        stats = cli("stats", "--json")
        assert stats.returncode == 0, stats.stderr
        queues = {q["queue"]: q for q in json.loads(stats.stdout)["queues"]}
        assert queues["shared"]["pending"] == 1  # same server, same data
    finally:
        embedded.stop_embedded_server(tmp_path / ".pgjobs")


@pytest.mark.embedded
def test_server_status_stop_and_the_workers_warning(tmp_path: Path) -> None:
    """`pgjobs server status|stop` for ./.pgjobs; `pgjobs work` on it logs a WARNING."""
    if not embedded.embedded_available():
        pytest.skip("no embedded PostgreSQL here (pgjobs[embedded] not installed)")
    installed = Path(sys.executable).parent / "pgjobs"
    env = {k: v for k, v in os.environ.items()
           if k not in ("PGJOBS_DATABASE_URL", "DATABASE_URL", "PGJOBS_SCHEMA")}
    env["PYTHONPATH"] = str(REPO)

    def cli(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run([str(installed), *args], cwd=tmp_path, env=env,
                              capture_output=True, text=True, timeout=180,
                              stdin=subprocess.DEVNULL)

    before = cli("server", "status")
    assert before.returncode == 3 and "not running" in before.stdout, before
    try:
        migrated = cli("migrate")
        assert migrated.returncode == 0, migrated.stderr
        assert "pgjobs server stop" in migrated.stderr  # the announcement says how to stop it
        running = cli("server", "status")
        assert running.returncode == 0 and running.stdout.startswith("running:"), running
        pid = _postmaster_pid(tmp_path / ".pgjobs")
        assert pid is not None and f"pid {pid}" in running.stdout

        worker = subprocess.Popen(
            [str(installed), "work", "tests.apps.sample:app", "--concurrency", "1"],
            cwd=tmp_path, env=env, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE, text=True)
        assert worker.stderr is not None
        seen: list[str] = []
        deadline = time.monotonic() + 60
        for line in worker.stderr:  # ends when the worker exits
            seen.append(line)
            if "private development database" in line or time.monotonic() > deadline:
                break
        worker.send_signal(signal.SIGTERM)
        rest = worker.communicate(timeout=60)[1]
        log = "".join(seen) + rest
        warnings = [line for line in log.splitlines() if "private development database" in line]
        assert warnings and "WARNING" in warnings[0], log
        assert worker.returncode == 0, log

        stopped = cli("server", "stop")
        assert stopped.returncode == 0 and f"pid {pid}" in stopped.stdout, stopped
        assert not embedded._is_postmaster(pid)
        after = cli("server", "status")
        assert after.returncode == 3 and "not running" in after.stdout, after
        again = cli("server", "stop")
        assert again.returncode == 0 and "not running" in again.stdout
    finally:
        embedded.stop_embedded_server(tmp_path / ".pgjobs")

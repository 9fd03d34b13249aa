"""`pgjobs dashboard` as a real process: binding rules, token, read-only, clear refusals."""

from __future__ import annotations

import re
import signal
import socket
import subprocess
import sys
import threading
import urllib.error
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager

from tests.conftest import ROOT, cli_env, count, run_cli
from tests.dashboard_support import insert_dead_letter, wait_until


@contextmanager
def dashboard_process(env: dict[str, str], *args: str) -> Iterator[tuple[str, list[str]]]:
    """`pgjobs dashboard --port 0 ARGS…`; yields its base URL and its stderr lines."""
    proc = subprocess.Popen(
        [sys.executable, "-m", "pgjobs", "dashboard", "--port", "0", *args],
        env=env, cwd=ROOT, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE, text=True,
    )
    lines: list[str] = []

    def read() -> None:
        assert proc.stderr is not None
        for line in proc.stderr:
            lines.append(line)

    reader = threading.Thread(target=read, daemon=True)
    reader.start()
    try:
        def served() -> str | None:
            assert proc.poll() is None, "".join(lines)
            match = re.search(r"serving (http://\S+/) ", "".join(lines))
            return match.group(1) if match else None

        url = wait_until(served, timeout=30)
        yield url.rstrip("/"), lines
    finally:
        proc.send_signal(signal.SIGINT)
        try:
            proc.wait(timeout=15)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        reader.join(timeout=5)


def _request(url: str, *, data: bytes | None = None,
             headers: dict[str, str] | None = None) -> tuple[int, str]:
    request = urllib.request.Request(url, data=data, headers=headers or {})
    try:
        with urllib.request.urlopen(request, timeout=15) as response:
            return response.status, response.read().decode()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read().decode()


def test_refuses_a_non_loopback_bind_without_a_token(pg_url, schema):
    env = cli_env(pg_url, schema)
    env.pop("PGJOBS_DASHBOARD_TOKEN", None)
    result = run_cli("dashboard", "--host", "0.0.0.0", env=env)
    assert result.returncode == 2
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and "PGJOBS_DASHBOARD_TOKEN" in lines[0], result.stderr
    assert "Traceback" not in result.stderr


def test_a_busy_port_is_one_clear_line(pg_url, schema):
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen(1)
        port = busy.getsockname()[1]
        result = run_cli("dashboard", "--port", str(port), env=cli_env(pg_url, schema))
    assert result.returncode == 2
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and f"cannot listen on 127.0.0.1:{port}" in lines[0], result.stderr


def test_serves_on_localhost_by_default_and_acts(pg_url, schema, db):
    dead = insert_dead_letter(db, schema, queue="mail")
    with dashboard_process(cli_env(pg_url, schema)) as (url, lines):
        assert url.startswith("http://127.0.0.1:")
        status, body = _request(url + "/dead-letters")
        assert status == 200 and f'data-id="{dead}"' in body
        status, _ = _request(url + "/actions/dead-letters/requeue",
                             data=f"id={dead}".encode(), headers={"Origin": url})
        assert status == 200  # followed the redirect back to the page
        assert count(db, schema, "dead_letters") == 0
        assert "actions enabled" in "".join(lines)


def test_read_only_process_refuses_actions(pg_url, schema, db):
    dead = insert_dead_letter(db, schema)
    with dashboard_process(cli_env(pg_url, schema), "--read-only") as (url, _):
        status, body = _request(url + "/dead-letters")
        assert status == 200 and "/actions/" not in body
        status, body = _request(url + "/actions/dead-letters/requeue",
                                data=f"id={dead}".encode(), headers={"Origin": url})
        assert status == 403 and "read-only" in body
    assert count(db, schema, "dead_letters") == 1


def test_any_host_with_a_token_requires_it(pg_url, schema):
    token = "t0ken-for-the-test"
    env = cli_env(pg_url, schema, PGJOBS_DASHBOARD_TOKEN=token)
    with dashboard_process(env, "--host", "0.0.0.0") as (url, lines):
        assert "token required" in "".join(lines)
        port = url.rsplit(":", 1)[1]
        local = f"http://127.0.0.1:{port}"
        assert _request(local + "/")[0] == 401
        assert _request(local + "/", headers={"Authorization": "Bearer nope"})[0] == 401
        assert _request(local + "/", headers={"Authorization": f"Bearer {token}"})[0] == 200


def test_an_unmigrated_schema_is_one_line_before_binding(pg_url):
    result = run_cli("dashboard", "--port", "0", env=cli_env(pg_url, "pgjobs_never_migrated"))
    assert result.returncode == 2
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and "pgjobs migrate" in lines[0], result.stderr

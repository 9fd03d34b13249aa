"""`pgjobs work --processes P`: a supervisor and P worker children, real processes and
real signals (pgjobs/supervisor.py)."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import threading
import urllib.request
from pathlib import Path

import psycopg
import pytest
from psycopg import sql

import pgjobs

from .apps import sample
from .chaos.tcp_proxy import TcpProxy
from .conftest import cli_env, count, run_cli
from .workers import WorkerProcess, create_executions_table, wait_until

pytestmark = pytest.mark.slow


@pytest.fixture
def env(pg_url, schema, db):
    create_executions_table(db, schema)
    app = pgjobs.App(pg_url, schema=schema)
    app.tasks.update(sample.app.tasks)  # the sample app's tasks, on this test's schema
    return app


def _enqueue(app: pgjobs.App, pg_url: str, name: str, n: int, **kwargs) -> list[int]:
    with psycopg.connect(pg_url) as conn:
        ids = app.enqueue_many(conn, [app.tasks[name].job(**kwargs) for _ in range(n)])
        conn.commit()
    return ids


def _executions(db, schema, phase: str) -> list[tuple[int, int, int]]:
    """(job_id, attempt, pid) of every execution that reached ``phase``."""
    return db.execute(sql.SQL("SELECT job_id, attempt, pid FROM {} WHERE phase = %s "
                              "ORDER BY job_id").format(sql.Identifier(schema, "executions")),
                      [phase]).fetchall()


def _worker_pids(db, schema) -> set[int]:
    """Pids of the workers registered in the ``workers`` table (live or not)."""
    rows = db.execute(sql.SQL("SELECT pid FROM {}").format(
        sql.Identifier(schema, "workers"))).fetchall()
    return {r[0] for r in rows}


def _parent_of(pid: int) -> int | None:
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    return int(stat.rsplit(")", 1)[1].split()[1])  # field 4, after "(comm)" and state


def _alive(pid: int) -> bool:
    """Running (a zombie, exited but not yet reaped by its parent, is not)."""
    try:
        os.kill(pid, 0)
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (ProcessLookupError, FileNotFoundError):
        return False
    return state != "Z"


def _children_registered(db, schema, supervisor: WorkerProcess, n: int) -> set[int]:
    """Wait until ``n`` live children of the supervisor are rows of ``workers``."""
    def children() -> set[int] | None:
        pids = {p for p in _worker_pids(db, schema)
                if _alive(p) and _parent_of(p) == supervisor.proc.pid}
        assert supervisor.proc.poll() is None, supervisor.log
        return pids if len(pids) == n else None

    return wait_until(children, 60, message=f"{n} children in workers")


def _running_pids(db, schema) -> set[int]:
    return {pid for _, _, pid in _executions(db, schema, "start")}


def test_each_child_is_a_worker_and_sigterm_drains_them_all_exit_0(env, pg_url, schema, db):
    supervisor = WorkerProcess(pg_url, schema, "--processes", "2", "--concurrency", "2",
                               "--shutdown-timeout", "30")
    try:
        children = _children_registered(db, schema, supervisor, 2)
        # Each child claims at most 2 running + 2 prefetched: both get jobs.
        _enqueue(env, pg_url, "sleepy", 8, seconds=2.0)
        wait_until(lambda: _running_pids(db, schema) == children, 60,
                   message="jobs running in both children")
        supervisor.signal(signal.SIGTERM)
        assert supervisor.wait(90) == 0, supervisor.log
    finally:
        supervisor.kill()
    started = {job for job, _, _ in _executions(db, schema, "start")}
    done = _executions(db, schema, "done")
    assert {job for job, _, _ in done} == started  # every running job finished
    assert all(attempt == 1 for _, attempt, _ in done)
    # Claimed but never started: back to pending, the attempt not charged.
    assert count(db, schema, "jobs") == count(db, schema, "jobs",
                                              "state = 'pending' AND attempts = 0")
    assert _worker_pids(db, schema) == set()  # both unregistered on their way out
    assert supervisor.log.count("SIGTERM: draining") == 2  # forwarded once to each child
    assert "all 2 worker processes stopped cleanly" in supervisor.log
    assert not any(_alive(pid) for pid in children)


def test_a_sigkilled_child_is_restarted_and_nothing_is_lost(env, pg_url, schema, db):
    supervisor = WorkerProcess(pg_url, schema, "--processes", "2", "--concurrency", "2",
                               "--lease-timeout", "2")
    try:
        children = _children_registered(db, schema, supervisor, 2)
        ids = _enqueue(env, pg_url, "sleepy", 12, seconds=0.5)
        running = wait_until(lambda: {pid for _, _, pid in _executions(db, schema, "start")},
                             60, message="a job running")
        victim = sorted(running & children)[0]
        os.kill(victim, signal.SIGKILL)
        wait_until(lambda: f"(pid {victim}) was killed by SIGKILL" in supervisor.log, 30,
                   message="the death logged with its signal")
        # A new child takes its place, registered as a worker of its own.
        replacement = wait_until(
            lambda: {p for p in _worker_pids(db, schema)
                     if p not in children and _alive(p)
                     and _parent_of(p) == supervisor.proc.pid}, 60,
            message=f"restarted child; log:\n{supervisor.log}")
        assert f"restarted (pid {sorted(replacement)[0]})" in supervisor.log
        # Nothing lost: the killed child's jobs come back when their leases expire.
        wait_until(lambda: count(db, schema, "jobs") == 0, 90, message="every job done")
        assert supervisor.proc.poll() is None
        supervisor.signal(signal.SIGTERM)
        assert supervisor.wait(60) == 0, supervisor.log
    finally:
        supervisor.kill()
    done = _executions(db, schema, "done")
    assert sorted(set(job for job, _, _ in done)) == sorted(ids)
    dead = db.execute(sql.SQL("SELECT job_id, error FROM {}").format(
        sql.Identifier(schema, "dead_letters"))).fetchall()
    assert dead == []


def test_a_second_signal_kills_the_children_at_once(env, pg_url, schema, db):
    supervisor = WorkerProcess(pg_url, schema, "--processes", "2", "--concurrency", "1",
                               "--shutdown-timeout", "120")
    try:
        children = _children_registered(db, schema, supervisor, 2)
        _enqueue(env, pg_url, "sleepy", 4, seconds=120)  # 1 running + 1 prefetched each
        wait_until(lambda: _running_pids(db, schema) == children, 60,
                   message="a job running in each child")
        supervisor.signal(signal.SIGTERM)
        wait_until(lambda: "asking 2 worker processes to drain" in supervisor.log, 30,
                   message="the drain under way")
        wait_until(lambda: supervisor.log.count("SIGTERM: draining") == 2, 30,
                   message="both children draining")
        wait_until(lambda: count(db, schema, "jobs", "state = 'pending'") == 2, 30,
                   message="the prefetched jobs handed back by the drain")
        supervisor.signal(signal.SIGTERM)
        assert supervisor.wait(30) == 128 + signal.SIGTERM, supervisor.log
    finally:
        supervisor.kill()
    assert "second SIGTERM: killing" in supervisor.log
    assert not any(_alive(pid) for pid in children)
    assert not _executions(db, schema, "done")  # killed mid-job: leases will recover them
    # The two running stay leased (rescued later); the prefetched went back at the drain.
    assert count(db, schema, "jobs", "state = 'running'") == 2
    assert count(db, schema, "jobs", "state = 'pending' AND attempts = 0") == 2


def test_refuses_more_connections_than_the_server_has_free(pg_url, schema, db):
    max_connections = int(db.execute("SHOW max_connections").fetchone()[0])
    processes = max_connections  # x a pool of 2 + 5 + 2: more than the server has at all
    result = run_cli("work", sample.__name__ + ":app", "--processes", str(processes),
                     "--concurrency", "2", env=cli_env(pg_url, schema))
    assert result.returncode == 2, result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith(f"pgjobs: error: --processes {processes} x pool size 9 = "
                               f"{processes * 9} connections, but the server has ")
    assert f"max_connections {max_connections} - " in lines[0]
    assert "Traceback" not in result.stderr
    assert _worker_pids(db, schema) == set()


def _free_port_pair() -> int:
    for _ in range(50):
        with socket.socket() as first:
            first.bind(("127.0.0.1", 0))
            port = first.getsockname()[1]
            with socket.socket() as second:
                try:
                    second.bind(("127.0.0.1", port + 1))
                except OSError:
                    continue
        return int(port)
    raise AssertionError("no two consecutive free ports")


def test_the_supervisor_waits_for_a_database_that_comes_up_late(env, pg_url, schema, db):
    # Nothing listens on the port yet (a container started before PostgreSQL): the
    # supervisor keeps retrying for --wait-for-database, then starts its children.
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    late_url = TcpProxy.url_for(pg_url, "127.0.0.1", port)
    supervisor = WorkerProcess(late_url, schema, "--processes", "2", "--concurrency", "1",
                               "--wait-for-database", "120", "--log-level", "debug")
    try:
        wait_until(lambda: "database not reachable yet" in supervisor.log
                   or supervisor.proc.poll() is not None, 60, message="the supervisor waiting")
        assert supervisor.proc.poll() is None, supervisor.log
        with TcpProxy(listen_port=port):  # the database "comes up"
            _children_registered(db, schema, supervisor, 2)
            ids = _enqueue(env, pg_url, "sleepy", 4, seconds=0.0)
            wait_until(lambda: {job for job, _, _ in _executions(db, schema, "done")}
                       == set(ids), 60, message="the jobs done")
            supervisor.signal(signal.SIGTERM)
            assert supervisor.wait(60) == 0, supervisor.log
    finally:
        supervisor.kill()


def test_the_supervisor_gives_up_after_wait_for_database_in_one_line(schema):
    env = cli_env("postgresql://postgres@127.0.0.1:1/nowhere", schema)
    result = run_cli("work", "tests.apps.sample:app", "--processes", "2",
                     "--wait-for-database", "1", env=env)
    assert result.returncode == 2, result.stderr
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and "Traceback" not in result.stderr, result.stderr
    assert "cannot connect" in lines[0] and "waited 1s" in lines[0], lines[0]


def test_metrics_port_each_child_serves_on_port_plus_its_index(env, pg_url, schema, db):
    port = _free_port_pair()
    supervisor = WorkerProcess(pg_url, schema, "--processes", "2", "--concurrency", "1",
                               "--metrics-port", str(port))
    try:
        children = _children_registered(db, schema, supervisor, 2)
        bodies = [urllib.request.urlopen(f"http://127.0.0.1:{p}/metrics", timeout=10)
                  .read().decode() for p in (port, port + 1)]
        assert all("pgjobs" in body for body in bodies)
        served = {int(line.rsplit("/", 1)[0].rsplit(":", 1)[1])
                  for line in supervisor.log.splitlines() if "serving Prometheus" in line}
        assert served == {port, port + 1}, supervisor.log
        supervisor.signal(signal.SIGTERM)
        assert supervisor.wait(60) == 0, supervisor.log
    finally:
        supervisor.kill()
    assert not any(_alive(pid) for pid in children)


def test_a_child_that_cannot_start_stops_the_group_with_exit_2(env, pg_url, schema, db):
    port = _free_port_pair()
    with socket.socket() as taken:  # child 1's metrics port is busy: a configuration error
        taken.bind(("127.0.0.1", port + 1))
        taken.listen()
        supervisor = WorkerProcess(pg_url, schema, "--processes", "2", "--concurrency", "1",
                                   "--metrics-port", str(port))
        try:
            assert supervisor.wait(90) == 2, supervisor.log
        finally:
            supervisor.kill()
    assert f"cannot serve metrics on 127.0.0.1:{port + 1}" in supervisor.log
    assert "worker process 1" in supervisor.log and "exited with status 2 at start" in (
        supervisor.log)
    assert "restarted" not in supervisor.log  # restarting cannot fix it
    wait_until(lambda: _worker_pids(db, schema) == set(), 30,
               message="the other child drained and unregistered")


def test_children_drain_when_the_supervisor_is_killed(env, pg_url, schema, db):
    supervisor = WorkerProcess(pg_url, schema, "--processes", "2", "--concurrency", "1")
    try:
        children = _children_registered(db, schema, supervisor, 2)
        supervisor.signal(signal.SIGKILL)
        supervisor.wait(30)
    finally:
        supervisor.kill()
    # PR_SET_PDEATHSIG: each child got SIGTERM, drained and unregistered; no orphans.
    wait_until(lambda: not any(_alive(pid) for pid in children), 60,
               message="children gone")
    assert _worker_pids(db, schema) == set()


class ShellJob(WorkerProcess):
    """`pgjobs work` in a process group (and session) of its own, as a shell runs a job."""

    def __init__(self, pg_url: str, schema: str, *args: str) -> None:
        root = Path(__file__).resolve().parent.parent
        env = cli_env(pg_url, schema)
        env["PYTHONPATH"] = os.pathsep.join([str(root), env.get("PYTHONPATH", "")])
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "pgjobs", "work", sample.__name__ + ":app", *args],
            env=env, cwd=root, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE, text=True, start_new_session=True)
        self.lines = []
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()


def test_ctrl_c_to_the_whole_process_group_drains_once(env, pg_url, schema, db):
    """A terminal's Ctrl-C sends SIGINT to the foreground process group. The children
    have groups of their own, so they get it once, from the supervisor: a drain, not the
    'second signal, exit at once' they would see if the group's SIGINT reached them too."""
    supervisor = ShellJob(pg_url, schema, "--processes", "2", "--concurrency", "1")
    try:
        _children_registered(db, schema, supervisor, 2)
        os.killpg(supervisor.proc.pid, signal.SIGINT)
        assert supervisor.wait(60) == 0, supervisor.log
    finally:
        supervisor.kill()
    assert supervisor.log.count("SIGINT: draining") == 2, supervisor.log
    assert "second SIGINT" not in supervisor.log
    assert _worker_pids(db, schema) == set()

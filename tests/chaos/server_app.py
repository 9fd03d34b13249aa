"""Server-side fault scenarios: an App whose handlers record every execution, and the runs.

* ``app`` (configured from the environment: ``PGJOBS_DATABASE_URL``, ``PGJOBS_SCHEMA``)
  has tasks named ``srv.*`` that insert one row per execution into ``<schema>.executions``
  through the job's pooled connection.
* ``python -m tests.chaos.server_app [--concurrency N --poll-interval S --ping-interval S
  --ping-timeout S ...]`` runs a worker for that App with the options ``pgjobs work`` does
  not expose (the self-ping settings), logging like ``pgjobs work``.
* ``run_<scenario>(url, schema, duration) -> dict`` runs one scenario against real worker
  processes with a steady enqueue stream and returns its figures (``enqueued``,
  ``completed``, ``duplicates``, ``lost``, ``dead_lettered``, ``recovery_seconds`` …).
  They do not assert: the tests (``test_server_faults.py``) and ``scripts/chaos.py`` judge
  the figures. The schema is migrated if needed; its ``executions`` table is recreated.

Scenarios (also in ``SCENARIOS`` by name): ``run_postgres_restart`` (a private embedded
server, stopped and started mid-run), ``run_restart_retry`` (a job running across a short
restart: is its failed attempt retried when due?), ``run_connection_exhaustion``
(``max_connections`` nearly used up), ``run_silent_listen_death`` (the LISTEN connection
black-holed by ``tcp_proxy.TcpProxy``), ``run_blackholed_connections`` (every connection
black-holed) and ``run_long_transaction`` (xmin horizon pinned by a long transaction and a
REPEATABLE READ reader). The two restart scenarios never touch ``url``: they start their
own server in a temporary directory.
"""

from __future__ import annotations

import argparse
import contextlib
import faulthandler
import functools
import logging
import os
import re
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import psycopg
from psycopg import sql

import pgjobs
from pgjobs import migrate

ROOT = Path(__file__).resolve().parents[2]
MODULE = "tests.chaos.server_app"
TASK_RECORD = "srv.record"
TASK_WORK = "srv.work"
TASK_SLOW = "srv.slow"

log = logging.getLogger("pgjobs.chaos")

#: Fallback poll of scenarios that must show NOTIFY at work: far longer than any
#: pickup the scenarios accept, so a fast pickup cannot be the poll.
POLL_WHEN_NOTIFIED = 20.0


# --- the App ------------------------------------------------------------------------------


def make_app(database_url: str | None = None, schema: str | None = None) -> pgjobs.App:
    """An App with the ``srv.*`` tasks (URL and schema default to the environment)."""
    the_app = pgjobs.App(database_url, schema=schema)

    def insert(conn: psycopg.Connection[Any], phase: str) -> None:
        job = pgjobs.current_job()
        conn.execute(
            sql.SQL("INSERT INTO {} (job_id, attempt, pid, enqueued_at, phase) "
                    "VALUES (%s, %s, %s, %s, %s)")
            .format(sql.Identifier(the_app.schema, "executions")),
            [job.id, job.attempt, os.getpid(), job.enqueued_at, phase],
        )

    def record(phase: str = "done") -> None:
        with pgjobs.current_job().connection() as conn:
            insert(conn, phase)

    @the_app.task(name=TASK_RECORD)
    def srv_record(n: int = 0) -> None:
        record()

    @the_app.task(name=TASK_WORK)
    def srv_work(n: int = 0, ms: float = 20.0) -> None:
        # Some work in flight when a fault hits (interruptible, unlike one long sleep).
        deadline = time.monotonic() + ms / 1000.0
        while time.monotonic() < deadline:
            time.sleep(0.005)
        record()

    @the_app.task(name=TASK_SLOW, backoff=lambda attempt: 0.5)
    def srv_slow(n: int = 0, ms: float = 5000.0) -> None:
        # Records its start, works, records its end: spans a short outage. It holds one
        # pooled connection throughout (like a handler inside its own transaction), so
        # the outage fails the attempt: the pool's check on lending cannot hide it.
        with pgjobs.current_job().connection() as conn:
            insert(conn, "start")
            conn.commit()
            deadline = time.monotonic() + ms / 1000.0
            while time.monotonic() < deadline:
                time.sleep(0.01)
            insert(conn, "done")

    return the_app


app = make_app()


def prepare_schema(url: str, schema: str) -> None:
    """Migrate ``schema`` (idempotent) and give it a fresh ``executions`` table."""
    migrate.upgrade(url, schema)
    table = sql.Identifier(schema, "executions")
    with psycopg.connect(url, autocommit=True, connect_timeout=10) as conn:
        conn.execute(sql.SQL("DROP TABLE IF EXISTS {}").format(table))
        conn.execute(sql.SQL(
            "CREATE TABLE {} (job_id bigint NOT NULL, attempt int, pid int, "
            "enqueued_at timestamptz, phase text, at timestamptz DEFAULT clock_timestamp())"
        ).format(table))


# --- the worker process ------------------------------------------------------------------


class ScenarioError(RuntimeError):
    """A scenario could not be set up (not a finding about pgjobs)."""


class ScenarioSkipped(RuntimeError):
    """The scenario cannot run here (e.g. max_connections too large to fill); says why."""


def wait_for(condition: Callable[[], Any], timeout: float, interval: float = 0.05) -> Any:
    """Poll ``condition`` until truthy or ``timeout`` passes; its last value either way."""
    deadline = time.monotonic() + timeout
    pause = threading.Event()
    while True:
        value = condition()
        if value or time.monotonic() >= deadline:
            return value
        pause.wait(min(interval, max(0.0, deadline - time.monotonic())))


_FRAME = re.compile(r'File "(.+)", line (\d+) in (\S+)')


class ChaosWorker:
    """``python -m tests.chaos.server_app`` as a subprocess; stderr kept with timestamps."""

    def __init__(self, url: str, schema: str, *, concurrency: int = 4,
                 poll_interval: float = 2.0, ping_interval: float = 0.5,
                 ping_timeout: float = 2.0, lease_timeout: float = 30.0,
                 shutdown_timeout: float = 5.0) -> None:
        env = {k: v for k, v in os.environ.items() if k != "DATABASE_URL"}
        env.update(PGJOBS_DATABASE_URL=url, PGJOBS_SCHEMA=schema, PYTHONUNBUFFERED="1",
                   PYTHONPATH=os.pathsep.join([str(ROOT), env.get("PYTHONPATH", "")]))
        args = ["--concurrency", str(concurrency), "--poll-interval", str(poll_interval),
                "--ping-interval", str(ping_interval), "--ping-timeout", str(ping_timeout),
                "--lease-timeout", str(lease_timeout),
                "--shutdown-timeout", str(shutdown_timeout)]
        self.proc = subprocess.Popen(
            [sys.executable, "-m", MODULE, *args], cwd=ROOT, env=env,
            stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
            text=True,
        )
        self.pid = self.proc.pid
        #: (wall-clock time the line was read, line)
        self.lines: list[tuple[float, str]] = []
        self._reader = threading.Thread(target=self._read, daemon=True,
                                        name=f"chaos-worker-{self.pid}-stderr")
        self._reader.start()

    def _read(self) -> None:
        assert self.proc.stderr is not None
        for line in self.proc.stderr:
            self.lines.append((time.time(), line.rstrip("\n")))

    @property
    def log(self) -> str:
        return "\n".join(line for _, line in list(self.lines))

    def first_line_at(self, fragment: str, after: float = 0.0) -> float | None:
        """Wall time of the first log line containing ``fragment`` read after ``after``."""
        for at, line in list(self.lines):
            if at >= after and fragment in line:
                return at
        return None

    def count_lines(self, fragment: str, after: float = 0.0) -> int:
        return sum(1 for at, line in list(self.lines) if at >= after and fragment in line)

    def alive(self) -> bool:
        return self.proc.poll() is None

    def wait_started(self, timeout: float = 30.0) -> None:
        wait_for(lambda: "executors on" in self.log or not self.alive(), timeout)
        if not self.alive() or "executors on" not in self.log:
            raise ScenarioError(f"worker did not start:\n{self.log}")

    def cpu_seconds(self) -> float:
        """utime + stime of the worker process, from /proc/<pid>/stat."""
        with open(f"/proc/{self.pid}/stat") as f:
            stat = f.read()
        fields = stat[stat.rfind(")") + 2:].split()
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")

    def stop(self, timeout: float = 30.0) -> int | None:
        """SIGTERM (graceful drain), then SIGKILL after ``timeout``; the exit code."""
        if self.alive():
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(timeout=10)
                self._reader.join(timeout=5)
                return None
        self._reader.join(timeout=5)
        return self.proc.returncode

    def stuck_frames(self, timeout: float = 3.0) -> list[str]:
        """SIGUSR1 (faulthandler): per thread, its innermost pgjobs frame and its top frame."""
        if not self.alive():
            return []
        sent = time.time()
        self.proc.send_signal(signal.SIGUSR1)
        # The dump ends with the main thread's stack ("Current thread" is the one handling
        # the signal, the main thread); give the last lines a moment to arrive.
        wait_for(lambda: self.first_line_at("Current thread", sent), timeout)
        threading.Event().wait(0.3)
        dump = [line for at, line in list(self.lines) if at >= sent]
        summary: list[str] = []
        frames: list[str] = []

        def flush() -> None:
            if frames:
                ours = [f for f in frames if f.startswith("pgjobs/")]
                inner = ours[0] if ours else frames[0]
                summary.append(inner if inner == frames[0] else f"{inner} <- {frames[0]}")
            frames.clear()

        for line in dump:
            match = _FRAME.match(line.strip())
            if line.startswith(("Thread 0x", "Current thread")):
                flush()
            elif match:
                path, lineno, func = match.groups()
                short = path[path.rfind("pgjobs/"):] if "/pgjobs/" in path else Path(path).name
                frames.append(f"{short}:{lineno} {func}")
        flush()
        return summary

    def kill(self) -> None:
        if self.alive():
            self.proc.kill()
            self.proc.wait(timeout=10)
        self._reader.join(timeout=5)


def main(argv: list[str] | None = None) -> int:
    """Run a worker for ``app`` (environment-configured) with explicit ping settings."""
    parser = argparse.ArgumentParser(prog=f"python -m {MODULE}")
    parser.add_argument("--concurrency", type=int, default=4)
    parser.add_argument("--poll-interval", type=float, default=2.0)
    parser.add_argument("--ping-interval", type=float, default=5.0)
    parser.add_argument("--ping-timeout", type=float, default=10.0)
    parser.add_argument("--lease-timeout", type=float, default=30.0)
    parser.add_argument("--shutdown-timeout", type=float, default=30.0)
    parser.add_argument("--pool-size", type=int, default=None)
    parser.add_argument("--log-level", default="info")
    options = parser.parse_args(argv)
    # `kill -USR1 <pid>` prints every thread's stack: where a stuck worker is stuck.
    faulthandler.register(signal.SIGUSR1, all_threads=True)
    logging.basicConfig(level=options.log_level.upper(), stream=sys.stderr,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    for noisy in ("alembic", "psycopg.pool"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
    worker = app.worker(
        concurrency=options.concurrency, pool_size=options.pool_size,
        poll_interval=options.poll_interval, ping_interval=options.ping_interval,
        ping_timeout=options.ping_timeout, lease_timeout=options.lease_timeout,
        shutdown_timeout=options.shutdown_timeout,
    )
    try:
        worker.run()  # installs SIGTERM/SIGINT handlers: we are on the main thread
    except pgjobs.ConfigurationError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    return 0


# --- the enqueue stream ------------------------------------------------------------------


class Enqueuer:
    """A thread enqueueing ``rate`` jobs/s, one transaction per ``batch``, on its own
    connection, which it re-makes after any failure (the stream survives outages).

    Only jobs whose COMMIT returned are ``committed``; a COMMIT that failed with the
    connection leaves its jobs ``uncertain`` (they may or may not exist).
    """

    def __init__(self, url: str, enqueue_app: pgjobs.App, *, rate: float = 20.0,
                 batch: int = 1, task: str = TASK_WORK, kwargs: dict[str, Any] | None = None,
                 connect_timeout: int = 3) -> None:
        self._url = url
        self._task = enqueue_app.tasks[task]
        self._app = enqueue_app
        self._rate = rate
        self._batch = batch
        self._kwargs = kwargs or {}
        self._connect_timeout = connect_timeout
        self.committed: list[int] = []
        self.committed_at: dict[int, float] = {}  # job id -> wall time of its commit
        self.uncertain: list[int] = []
        self.failures = 0
        self.last_error: str | None = None
        self._stop = threading.Event()
        self._conn: psycopg.Connection[Any] | None = None
        self._n = 0
        self.thread = threading.Thread(target=self._loop, daemon=True, name="chaos-enqueuer")

    def connect(self) -> None:
        """Open the connection now (before a test takes every free connection slot)."""
        self._conn = psycopg.connect(self._url, connect_timeout=self._connect_timeout)

    def start(self) -> Enqueuer:
        self.thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        self.thread.join(timeout=30)
        conn, self._conn = self._conn, None
        if conn is not None:
            with contextlib.suppress(Exception):
                conn.close()

    def committed_after(self, wall: float) -> list[int]:
        return [i for i in list(self.committed) if self.committed_at.get(i, 0.0) >= wall]

    def _loop(self) -> None:
        interval = self._batch / self._rate
        next_at = time.monotonic()
        while not self._stop.is_set():
            if self._enqueue_once():
                next_at += interval
            else:
                next_at = time.monotonic() + 0.2  # back off, then no burst to catch up
            self._stop.wait(max(0.0, next_at - time.monotonic()))

    def _enqueue_once(self) -> bool:
        try:
            if self._conn is None or self._conn.closed:
                self._conn = psycopg.connect(self._url, connect_timeout=self._connect_timeout)
            conn = self._conn
            self._n += self._batch
            if self._batch == 1:
                ids = [self._task.enqueue(conn, n=self._n, **self._kwargs)]
            else:
                ids = self._app.enqueue_many(conn, [
                    self._task.job(n=self._n - k, **self._kwargs) for k in range(self._batch)])
        except psycopg.Error as exc:  # nothing was committed
            self._failed(exc)
            return False
        try:
            conn.commit()
        except psycopg.Error as exc:
            self.uncertain.extend(ids)
            self._failed(exc)
            return False
        now = time.time()
        for job_id in ids:
            self.committed_at[job_id] = now
        self.committed.extend(ids)
        return True

    def _failed(self, exc: Exception) -> None:
        self.failures += 1
        self.last_error = str(exc).strip().splitlines()[0] if str(exc).strip() else repr(exc)
        conn, self._conn = self._conn, None
        if conn is not None:
            with contextlib.suppress(Exception):
                conn.close()


# --- reading the books -------------------------------------------------------------------


class Monitor:
    """An autocommit connection for inspection that reconnects (the server may restart)."""

    def __init__(self, url: str) -> None:
        self._url = url
        self._conn: psycopg.Connection[Any] | None = None
        self.connect()

    def connect(self) -> None:
        self._conn = psycopg.connect(self._url, autocommit=True, connect_timeout=5)

    def rows(self, query: Any, params: Any = None) -> list[tuple[Any, ...]]:
        """The statement's rows (one reconnect and retry if the connection broke)."""
        for attempt in range(2):
            try:
                if self._conn is None or self._conn.closed:
                    self.connect()
                assert self._conn is not None
                cursor = self._conn.execute(query, params)
                return cursor.fetchall() if cursor.description is not None else []
            except psycopg.OperationalError:
                self.close()
                if attempt:
                    raise
        return []

    def value(self, query: Any, params: Any = None) -> Any:
        rows = self.rows(query, params)
        return rows[0][0] if rows else None

    def close(self) -> None:
        conn, self._conn = self._conn, None
        if conn is not None:
            with contextlib.suppress(Exception):
                conn.close()


def _t(schema: str, table: str) -> sql.Composed:
    return sql.SQL("{}").format(sql.Identifier(schema, table))


def left_in_jobs(mon: Monitor, schema: str, ids: list[int]) -> int:
    return int(mon.value(sql.SQL("SELECT count(*) FROM {} WHERE id = ANY(%s)")
                         .format(_t(schema, "jobs")), [ids]) or 0)


def executed_ids(mon: Monitor, schema: str) -> set[int]:
    rows = mon.rows(sql.SQL("SELECT DISTINCT job_id FROM {} WHERE phase = 'done'")
                    .format(_t(schema, "executions")))
    return {r[0] for r in rows}


def books(mon: Monitor, schema: str, enqueuer: Enqueuer,
          extra: list[int] | None = None) -> dict[str, Any]:
    """Every committed job: completed, dead-lettered, still queued, or lost."""
    uncertain = list(enqueuer.uncertain)
    # A job whose COMMIT failed but that shows up anywhere was committed after all.
    seen_uncertain: set[int] = set()
    if uncertain:
        rows = mon.rows(sql.SQL(
            "SELECT job_id FROM {e} WHERE job_id = ANY(%(ids)s) UNION "
            "SELECT job_id FROM {d} WHERE job_id = ANY(%(ids)s) UNION "
            "SELECT id FROM {j} WHERE id = ANY(%(ids)s)"
        ).format(e=_t(schema, "executions"), d=_t(schema, "dead_letters"),
                 j=_t(schema, "jobs")), {"ids": uncertain})
        seen_uncertain = {r[0] for r in rows}
    ids = sorted(set(enqueuer.committed) | seen_uncertain | set(extra or ()))
    runs = dict(mon.rows(sql.SQL(
        "SELECT job_id, count(*) FROM {} WHERE job_id = ANY(%s) AND phase = 'done' "
        "GROUP BY job_id"
    ).format(_t(schema, "executions")), [ids]))
    dead = {r[0] for r in mon.rows(sql.SQL("SELECT job_id FROM {} WHERE job_id = ANY(%s)")
                                   .format(_t(schema, "dead_letters")), [ids])}
    queued = dict(mon.rows(sql.SQL("SELECT id, state FROM {} WHERE id = ANY(%s)")
                           .format(_t(schema, "jobs")), [ids]))
    lost = [i for i in ids if i not in runs and i not in dead and i not in queued]
    return {
        "enqueued": len(ids),
        "completed": len(runs),
        "executions": sum(runs.values()),
        "duplicates": sum(n - 1 for n in runs.values()),
        "dead_lettered": len(dead),
        "still_queued": len(queued),
        "still_running": sum(1 for s in queued.values() if s == "running"),
        "lost": len(lost),
        "lost_ids": lost[:20],
        "uncertain_commits": len(uncertain),
        "enqueue_failures": enqueuer.failures,
    }


def drain(mon: Monitor, schema: str, ids_fn: Callable[[], list[int]], timeout: float) -> bool:
    """Wait until none of the jobs is left in ``jobs`` (completed or dead-lettered)."""
    return bool(wait_for(lambda: left_in_jobs(mon, schema, ids_fn()) == 0, timeout, 0.1))


def executions_since(mon: Monitor, schema: str, wall: float) -> int:
    return int(mon.value(sql.SQL("SELECT count(*) FROM {} WHERE at >= to_timestamp(%s)")
                         .format(_t(schema, "executions")), [wall]) or 0)


def notify_probe(mon: Monitor, schema: str, enqueue_app: pgjobs.App, url: str,
                 timeout: float) -> float | None:
    """Seconds from commit to execution of a lone job enqueued right after another one.

    The fetcher reschedules its fallback poll after every claim, so the second job can only
    be picked up sooner than ``0.8 * poll_interval`` by a NOTIFY wake-up.
    """
    latency = None
    for n in range(2):
        with psycopg.connect(url, connect_timeout=5) as conn:
            job_id = enqueue_app.tasks[TASK_RECORD].enqueue(conn, n=-1 - n)
            conn.commit()
        committed = time.monotonic()
        query = sql.SQL("SELECT 1 FROM {} WHERE job_id = %s AND phase = 'done'").format(
            _t(schema, "executions"))
        done = wait_for(functools.partial(mon.value, query, [job_id]), timeout, 0.005)
        if not done:
            return None
        latency = time.monotonic() - committed
    return latency


def _tail(worker: ChaosWorker, n: int = 30) -> list[str]:
    return [line for _, line in list(worker.lines)[-n:]]


# --- scenario 1: PostgreSQL restarted mid-run ----------------------------------------------


def run_postgres_restart(url: str | None, schema: str, duration: float = 12.0, *,
                         down_seconds: float | None = None,
                         data_dir: Path | None = None) -> dict[str, Any]:
    """Stop the server while jobs flow, keep it down, start it again; read the books.

    Runs on a private embedded PostgreSQL (``data_dir``, default a new temporary
    directory), never on ``url``, which is accepted for a uniform signature only. The
    worker polls every ``POLL_WHEN_NOTIFIED`` s, so the post-restart probe is picked up by
    NOTIFY or not soon.
    """
    from pgjobs.embedded import embedded_database_url, stop_embedded_server

    del url
    down = down_seconds if down_seconds is not None else max(3.0, min(6.0, duration / 3))
    own_dir = data_dir is None
    base = Path(tempfile.mkdtemp(prefix="pgjobs-chaos-pg-")) if data_dir is None else data_dir
    report: dict[str, Any] = {"scenario": "postgres_restart", "down_seconds": down}
    worker: ChaosWorker | None = None
    enqueuer: Enqueuer | None = None
    mon: Monitor | None = None
    try:
        db_url = embedded_database_url(base, database="chaos")
        prepare_schema(db_url, schema)
        enqueue_app = make_app(db_url, schema)
        mon = Monitor(db_url)
        worker = ChaosWorker(db_url, schema, concurrency=4, poll_interval=POLL_WHEN_NOTIFIED,
                             ping_interval=0.5, ping_timeout=2.0)
        worker.wait_started()
        enqueuer = Enqueuer(db_url, enqueue_app, rate=30.0, kwargs={"ms": 30}).start()
        run_started = time.monotonic()
        before = max(2.0, (duration - down) / 3)
        if not wait_for(lambda: executions_since(mon, schema, 0) >= 10, before + 10):
            raise ScenarioError(f"no jobs executed before the restart:\n{worker.log}")
        pace = threading.Event()
        pace.wait(max(0.0, run_started + before - time.monotonic()))

        stop_started = time.time()
        stop_embedded_server(base)
        stopped_at = time.time()
        report["stop_seconds"] = round(stopped_at - stop_started, 2)
        cpu_0, wall_0 = worker.cpu_seconds(), time.monotonic()
        pace.wait(down)
        cpu_1, wall_1 = worker.cpu_seconds(), time.monotonic()
        report["cpu_fraction_while_down"] = round((cpu_1 - cpu_0) / (wall_1 - wall_0), 3)
        report["alive_while_down"] = worker.alive()
        down_lines = [line for at, line in list(worker.lines)
                      if stop_started <= at and "WARNING" in line]
        report["log_while_down"] = down_lines[:12]
        report["warnings_while_down"] = len(down_lines)
        report["logged_listen_lost_while_down"] = any(
            "LISTEN connection lost (" in line for line in down_lines)
        report["logged_connection_failed_while_down"] = any(
            "connection failed (" in line and "retrying in" in line for line in down_lines)

        restart_started = time.time()
        db_url_again = embedded_database_url(base, database="chaos")
        restarted_at = time.time()
        report["same_url_after_restart"] = db_url_again == db_url
        report["restart_seconds"] = round(restarted_at - restart_started, 2)
        # Recovery: a job committed after the restart is executed.
        ok = wait_for(lambda: any(i in executed_ids(mon, schema)
                                  for i in enqueuer.committed_after(restarted_at)), 30, 0.05)
        report["recovery_seconds"] = round(time.time() - restarted_at, 2) if ok else None
        pace.wait(max(0.0, run_started + duration - time.monotonic()))
        enqueuer.stop()
        stream_ended = time.time()
        report["drained"] = drain(mon, schema, lambda: list(enqueuer.committed), 45)
        report["drain_seconds"] = round(time.time() - stream_ended, 2)
        report["listen_reestablished"] = wait_for(
            lambda: worker.first_line_at("LISTEN connection re-established", stop_started),
            15) is not None
        report["logged_reconnects"] = worker.count_lines("connection re-established after",
                                                         stop_started)
        report["notify_pickup_seconds"] = notify_probe(mon, schema, enqueue_app, db_url, 10)
        report.update(books(mon, schema, enqueuer))
        report["worker_alive"] = worker.alive()
        report["worker_exit_code"] = worker.stop()
        report["log_tail"] = _tail(worker, 12)
        return report
    finally:
        if enqueuer is not None:
            enqueuer.stop()
        if worker is not None:
            worker.kill()
        if mon is not None:
            mon.close()
        stop_embedded_server(base)
        if own_dir:
            shutil.rmtree(base, ignore_errors=True)


def run_restart_retry(url: str | None, schema: str, duration: float = 8.0, *,
                      down_seconds: float = 1.5, data_dir: Path | None = None,
                      wait_eventually: bool = False) -> dict[str, Any]:
    """One slow job (``duration`` seconds of work) runs across a short restart.

    Its attempt fails when it writes its end on the pooled connection it holds (the
    restart killed it);
    the retry (task backoff 0.5 s) should start about 0.5 s after that failure. Nothing
    else is enqueued, so only the worker itself knows the retry is due: its fallback poll
    is ``POLL_WHEN_NOTIFIED`` seconds away (``wait_eventually``: also wait for that).
    Private embedded server, like ``run_postgres_restart`` (``url`` is not used).
    """
    from pgjobs.embedded import embedded_database_url, stop_embedded_server

    del url
    work_ms = max(4.0, duration) * 1000.0
    own_dir = data_dir is None
    base = Path(tempfile.mkdtemp(prefix="pgjobs-chaos-pg-")) if data_dir is None else data_dir
    report: dict[str, Any] = {"scenario": "restart_retry", "work_seconds": work_ms / 1000,
                              "down_seconds": down_seconds, "backoff_seconds": 0.5,
                              "poll_interval": POLL_WHEN_NOTIFIED}
    worker: ChaosWorker | None = None
    mon: Monitor | None = None
    try:
        db_url = embedded_database_url(base, database="chaos")
        prepare_schema(db_url, schema)
        enqueue_app = make_app(db_url, schema)
        mon = Monitor(db_url)
        worker = ChaosWorker(db_url, schema, concurrency=2, poll_interval=POLL_WHEN_NOTIFIED,
                             ping_interval=0.5, ping_timeout=2.0)
        worker.wait_started()
        with psycopg.connect(db_url, connect_timeout=5) as conn:
            job_id = enqueue_app.tasks[TASK_SLOW].enqueue(conn, n=0, ms=work_ms)
            conn.commit()
        starts = sql.SQL("SELECT attempt, extract(epoch FROM at)::float8 FROM {} "
                         "WHERE job_id = %s AND phase = 'start' ORDER BY at").format(
            _t(schema, "executions"))
        first = wait_for(lambda: mon.rows(starts, [job_id]), 15)
        if not first:
            raise ScenarioError(f"the slow job never started:\n{worker.log}")
        stop_embedded_server(base)
        threading.Event().wait(down_seconds)
        embedded_database_url(base, database="chaos")
        restarted_at = time.time()
        failed_at = first[0][1] + work_ms / 1000.0
        report["restart_to_failure_seconds"] = round(failed_at - restarted_at, 2)
        # Expected: the retry starts ~0.5 s after the failure; wait a few seconds more.
        retried = wait_for(lambda: len(mon.rows(starts, [job_id])) > 1,
                           max(1.0, failed_at + 5.0 - time.time()), 0.05)
        # (Had LISTEN come back after the failure, its catch-up claim would have seen
        # the retry: the check would prove nothing.)
        listen_back = worker.first_line_at("LISTEN connection re-established", restarted_at - 5)
        report["listen_back_before_failure"] = listen_back is not None and listen_back < failed_at
        rows = mon.rows(starts, [job_id])
        report["attempts_started"] = [r[0] for r in rows]
        report["retry_started_after_failure_seconds"] = (
            round(rows[1][1] - failed_at, 2) if retried else None)
        row = mon.rows(sql.SQL(
            "SELECT state, attempts, round(extract(epoch FROM now() - next_run_at)::numeric, 1),"
            " split_part(last_error, E'\\n', 1) FROM {} WHERE id = %s").format(
            _t(schema, "jobs")), [job_id])
        report["job_when_checked"] = (
            dict(zip(("state", "attempts", "overdue_seconds", "last_error"), row[0],
                     strict=True)) if row else "finished")
        if wait_eventually:  # the fallback poll picks it up at the latest
            done = wait_for(lambda: mon.value(sql.SQL(
                "SELECT count(*) FROM {} WHERE job_id = %s AND phase = 'done'").format(
                _t(schema, "executions")), [job_id]), POLL_WHEN_NOTIFIED * 1.2 + 5, 0.1)
            report["finished_after_failure_seconds"] = (
                round(time.time() - failed_at, 2) if done else None)
        report["job_lost"] = not row and not mon.value(sql.SQL(
            "SELECT count(*) FROM {} WHERE job_id = %s AND phase = 'done'").format(
            _t(schema, "executions")), [job_id])
        report["worker_alive"] = worker.alive()
        report["worker_exit_code"] = worker.stop()
        report["log_tail"] = _tail(worker, 10)
        return report
    finally:
        if worker is not None:
            worker.kill()
        if mon is not None:
            mon.close()
        stop_embedded_server(base)
        if own_dir:
            shutil.rmtree(base, ignore_errors=True)


# --- scenario 2: connection exhaustion -----------------------------------------------------


def connection_slots(mon: Monitor) -> tuple[int, int]:
    """(connection limit for our role, client backends in use right now)."""
    row = mon.rows(
        "SELECT current_setting('max_connections')::int, "
        "current_setting('superuser_reserved_connections')::int, "
        "(SELECT rolsuper FROM pg_roles WHERE rolname = current_user), "
        "(SELECT count(*) FROM pg_stat_activity WHERE backend_type = 'client backend')")[0]
    max_connections, reserved, superuser, used = row
    return (max_connections if superuser else max_connections - reserved), int(used)


class Squeezer:
    """Holds connections so that at most ``target_free`` slots stay free (a thread keeps
    topping up while others free slots), never more than ``max_hold`` of them."""

    def __init__(self, url: str, mon_url: str, *, target_free: int, max_hold: int) -> None:
        self._url = url
        self._mon = Monitor(mon_url)
        self.target_free = target_free
        self.max_hold = max_hold
        self.held: list[psycopg.Connection[Any]] = []
        self.refused = 0
        self._stop = threading.Event()
        self.thread = threading.Thread(target=self._loop, daemon=True, name="chaos-squeezer")

    def free(self) -> int:
        limit, used = connection_slots(self._mon)
        return limit - used

    def fill(self) -> int:
        """Open connections until at most ``target_free`` slots are free; slots free."""
        while len(self.held) < self.max_hold:
            free = self.free()
            if free <= self.target_free:
                return free
            try:
                self.held.append(psycopg.connect(self._url, autocommit=True, connect_timeout=5))
            except psycopg.OperationalError:  # too many clients: someone took the last slot
                self.refused += 1
                return self.free()
        return self.free()

    def start(self) -> Squeezer:
        self.thread.start()
        return self

    def _loop(self) -> None:
        while not self._stop.wait(0.02):
            with contextlib.suppress(psycopg.Error):
                self.fill()

    def release(self) -> None:
        self._stop.set()
        if self.thread.is_alive():
            self.thread.join(timeout=30)
        while self.held:
            with contextlib.suppress(Exception):
                self.held.pop().close()
        self._mon.close()


def run_connection_exhaustion(url: str, schema: str, duration: float = 10.0, *,
                              free_slots: int = 2, max_hold: int = 150,
                              squeeze_seconds: float | None = None) -> dict[str, Any]:
    """Hold connections until ``free_slots`` remain, start a worker (concurrency 4: it
    needs internal_connections() of its own plus its handlers'), keep every slot it does not get
    taken for ``squeeze_seconds``, release; read the books.

    Raises ``ScenarioSkipped`` if that would take more than ``max_hold`` connections.
    """
    squeeze = squeeze_seconds if squeeze_seconds is not None else max(4.0, min(8.0, duration / 2))
    prepare_schema(url, schema)
    enqueue_app = make_app(url, schema)
    report: dict[str, Any] = {"scenario": "connection_exhaustion", "squeeze_seconds": squeeze}
    worker: ChaosWorker | None = None
    enqueuer: Enqueuer | None = None
    squeezer: Squeezer | None = None
    mon = Monitor(url)

    def worker_backends() -> int:
        assert worker is not None
        return int(mon.value("SELECT count(*) FROM pg_stat_activity WHERE application_name "
                             "LIKE %s", [f"pgjobs worker %:{worker.pid}:%"]) or 0)

    try:
        # The enqueuer's connection is made first: it must not be squeezed out.
        enqueuer = Enqueuer(url, enqueue_app, rate=20.0, kwargs={"ms": 20})
        enqueuer.connect()
        limit, used = connection_slots(mon)
        needed = limit - used - free_slots
        report.update(max_connections=limit, in_use_before=used, to_hold=needed)
        if needed > max_hold:
            raise ScenarioSkipped(
                f"max_connections is {limit} with {used} in use: leaving {free_slots} free "
                f"would take {needed} connections (the cap is {max_hold})")
        if needed < 0:
            raise ScenarioSkipped(f"only {limit - used} connection slot(s) free already")
        t0 = time.monotonic()
        squeezer = Squeezer(url, url, target_free=free_slots, max_hold=max_hold)
        free = squeezer.fill()
        report.update(held=len(squeezer.held), free_when_squeezed=free,
                      fill_seconds=round(time.monotonic() - t0, 2))
        if free > free_slots + 1:
            raise ScenarioSkipped(f"could not get near the limit: {free} slots free while "
                                  f"holding {len(squeezer.held)}")
        # Keep it that tight while the worker starts (others may free slots meanwhile) ...
        squeezer.start()
        enqueuer.start()
        squeezed_at = time.monotonic()
        worker = ChaosWorker(url, schema, concurrency=4, poll_interval=0.5,
                             ping_interval=0.5, ping_timeout=2.0)
        worker.wait_started()
        report["worker_started_under_squeeze"] = True
        # ... then the worker keeps what it got and gets nothing more.
        squeezer.target_free = 0
        pace = threading.Event()
        wait_for(lambda: "too many clients" in worker.log or not worker.alive(), squeeze)
        report["worker_connections_under_squeeze"] = worker_backends()
        pace.wait(max(0.0, squeezed_at + squeeze - time.monotonic()))
        report["alive_under_squeeze"] = worker.alive()
        report["too_many_clients_lines"] = worker.count_lines("too many clients")
        report["log_under_squeeze"] = [line for _, line in list(worker.lines)
                                       if "WARNING" in line or "ERROR" in line][:10]
        report["completed_under_squeeze"] = len(executed_ids(mon, schema)
                                                & set(enqueuer.committed))
        report["held_at_release"] = len(squeezer.held)
        squeezer.release()
        released_at = time.time()
        report["squeeze_held_seconds"] = round(time.monotonic() - squeezed_at, 2)
        # Recovery: everything committed before the release is done.
        before_release = list(enqueuer.committed)
        ok = drain(mon, schema, lambda: before_release, 40)
        report["recovery_seconds"] = round(time.time() - released_at, 2) if ok else None
        pace.wait(max(0.0, squeezed_at + duration - time.monotonic()))
        enqueuer.stop()
        report["drained"] = drain(mon, schema, lambda: list(enqueuer.committed), 40)
        report["worker_connections_after"] = worker_backends()
        report.update(books(mon, schema, enqueuer))
        report["worker_alive"] = worker.alive()
        report["worker_exit_code"] = worker.stop()
        report["log_tail"] = _tail(worker, 12)
        return report
    finally:
        if squeezer is not None:
            squeezer.release()
        if enqueuer is not None:
            enqueuer.stop()
        if worker is not None:
            worker.kill()
        mon.close()


# --- scenario 3: black-holed connections (a TCP proxy) -------------------------------------


def _listen_backend_port(mon: Monitor, worker_pid: int) -> int | None:
    return mon.value(
        "SELECT client_port FROM pg_stat_activity WHERE application_name LIKE %s "
        "AND (query LIKE 'LISTEN %%' OR query LIKE '/* pgjobs listener%%') "
        "ORDER BY backend_start DESC LIMIT 1",
        [f"pgjobs worker %:{worker_pid}:%"])


def run_silent_listen_death(url: str, schema: str, duration: float = 10.0, *,
                            poll_interval: float = 1.0, ping_interval: float = 0.5,
                            ping_timeout: float = 2.0) -> dict[str, Any]:
    """Black-hole only the worker's LISTEN connection (the proxy keeps its socket open).

    Shows the self-ping noticing, polling covering the gap, the reconnect, and NOTIFY
    wake-ups afterwards.
    """
    return _run_blackhole(url, schema, duration, which="listen", poll_interval=poll_interval,
                          ping_interval=ping_interval, ping_timeout=ping_timeout)


def run_blackholed_connections(url: str, schema: str, duration: float = 10.0, *,
                               dark_new_seconds: float = 3.0, hang_window: float = 18.0,
                               poll_interval: float = 1.0, ping_interval: float = 0.5,
                               ping_timeout: float = 2.0) -> dict[str, Any]:
    """Black-hole every open connection of the worker (and new ones for a few seconds).

    Watches ``hang_window`` seconds (longer than pgjobs' keepalive and tcp_user_timeout)
    for the worker to notice and drain. Then the dark connections are cut (closed, as a
    TCP timeout would if it could fire through a proxy) to see whether anything was lost.
    """
    return _run_blackhole(url, schema, duration, which="all", poll_interval=poll_interval,
                          ping_interval=ping_interval, ping_timeout=ping_timeout,
                          dark_new_seconds=dark_new_seconds, hang_window=hang_window)


def _run_blackhole(url: str, schema: str, duration: float, *, which: str,
                   poll_interval: float, ping_interval: float, ping_timeout: float,
                   dark_new_seconds: float = 0.0, hang_window: float = 0.0
                   ) -> dict[str, Any]:
    from .tcp_proxy import TcpProxy

    if _host_port(url)[0].startswith("/"):
        raise ScenarioSkipped("the TCP proxy needs a server reachable over TCP, not a socket")
    prepare_schema(url, schema)
    enqueue_app = make_app(url, schema)
    report: dict[str, Any] = {"scenario": f"blackhole_{which}", "poll_interval": poll_interval,
                              "ping_interval": ping_interval, "ping_timeout": ping_timeout}
    proxy = TcpProxy(*_host_port(url)).start()
    worker: ChaosWorker | None = None
    enqueuer: Enqueuer | None = None
    mon = Monitor(url)
    pace = threading.Event()
    try:
        worker = ChaosWorker(proxy.url(url), schema, concurrency=4,
                             poll_interval=poll_interval, ping_interval=ping_interval,
                             ping_timeout=ping_timeout)
        worker.wait_started()
        # The enqueue stream goes straight to the server, not through the proxy.
        enqueuer = Enqueuer(url, enqueue_app, rate=20.0, kwargs={"ms": 10}).start()
        run_started = time.monotonic()
        if not wait_for(lambda: executions_since(mon, schema, 0) >= 10, 20):
            raise ScenarioError(f"no jobs executed through the proxy:\n{worker.log}")
        listen_port = wait_for(lambda: _listen_backend_port(mon, worker.pid), 10)
        if not listen_port:
            raise ScenarioError("the worker's LISTEN backend is not visible")
        pace.wait(max(0.0, run_started + duration / 4 - time.monotonic()))

        dark_at = time.time()
        if which == "listen":
            report["blackholed"] = proxy.blackhole_existing(
                only=lambda c: c.upstream_port == listen_port)
        else:
            proxy.blackhole_new(True)
            report["blackholed"] = proxy.blackhole_existing()
        report["connections_through_proxy"] = len(proxy.open_connections())
        lost_at = wait_for(lambda: worker.first_line_at("LISTEN connection lost", dark_at),
                           ping_timeout + 4 * ping_interval + 3)
        report["listen_lost_seconds"] = round(lost_at - dark_at, 2) if lost_at else None
        if which == "all":
            pace.wait(max(0.0, dark_at + dark_new_seconds - time.time()))
            proxy.blackhole_new(False)
        back_at = wait_for(lambda: worker.first_line_at("LISTEN connection re-established",
                                                        dark_at),
                           max(10.0, hang_window - (time.time() - dark_at)))
        report["listen_reestablished_seconds"] = round(back_at - dark_at, 2) if back_at else None
        if which == "listen":
            report["recovery_seconds"] = report["listen_reestablished_seconds"]
            # Jobs committed after the LISTEN connection went dark and done before it was
            # back were found by the fallback poll (no NOTIFY could reach the worker).
            window_end = back_at or time.time()
            polled = mon.value(sql.SQL(
                "SELECT count(DISTINCT job_id) FROM {} WHERE job_id = ANY(%s) "
                "AND at < to_timestamp(%s)").format(_t(schema, "executions")),
                [enqueuer.committed_after(dark_at), window_end])
            report["completed_by_polling_while_listen_dead"] = int(polled or 0)
            report["committed_while_listen_dead"] = sum(
                1 for i in list(enqueuer.committed)
                if dark_at <= enqueuer.committed_at[i] < window_end)
            pace.wait(max(0.0, run_started + duration - time.monotonic()))
            enqueuer.stop()
            report["drained"] = drain(mon, schema, lambda: list(enqueuer.committed), 30)
        else:
            committed_before_dark = [i for i in list(enqueuer.committed)
                                     if enqueuer.committed_at[i] < dark_at]
            # The stream runs through the outage and a little past it, then everything
            # committed should complete within the window.
            pace.wait(max(0.0, dark_at + dark_new_seconds + 2.0 - time.time()))
            enqueuer.stop()
            report["committed_after_dark"] = len(enqueuer.committed_after(dark_at))
            drained = drain(mon, schema, lambda: list(enqueuer.committed),
                            max(1.0, dark_at + hang_window - time.time()))
            report["drained_without_cut"] = drained
            report["recovery_seconds"] = (
                round(time.time() - dark_at - dark_new_seconds, 2) if drained else None)
            report["observed_seconds"] = round(time.time() - dark_at, 2)
            report["left_in_jobs_without_cut"] = left_in_jobs(mon, schema,
                                                              list(enqueuer.committed))
            report["committed_before_dark_left"] = left_in_jobs(mon, schema,
                                                                committed_before_dark)
            report["executions_in_last_5s"] = executions_since(mon, schema, time.time() - 5)
            report["log_after_dark"] = [line for at, line in list(worker.lines)
                                        if at >= dark_at][:15]
            report["thread_stacks_before_cut"] = worker.stuck_frames()
            # Close the dark connections (both ends), as a working TCP timeout would.
            cut_at = time.time()
            report["cut"] = proxy.cut_blackholed()
            ok = drain(mon, schema, lambda: list(enqueuer.committed), 30)
            report["drained"] = ok
            report["recovery_after_cut_seconds"] = round(time.time() - cut_at, 2) if ok else None
        lost_later = wait_for(
            lambda: worker.count_lines("LISTEN connection lost",
                                       (back_at or time.time()) + 0.01) > 0,
            3 * ping_timeout)
        report["listen_lost_again_after_reconnect"] = bool(lost_later)
        report["notify_pickup_seconds"] = notify_probe(mon, schema, enqueue_app, url,
                                                       3 * poll_interval + 5)
        report.update(books(mon, schema, enqueuer))
        report["worker_alive"] = worker.alive()
        report["worker_exit_code"] = worker.stop()
        report["log_tail"] = _tail(worker, 12)
        return report
    finally:
        if enqueuer is not None:
            enqueuer.stop()
        proxy.close()
        if worker is not None:
            worker.kill()
        report["proxy_threads_left"] = proxy.threads_alive()
        mon.close()


def _host_port(url: str) -> tuple[str, int]:
    info = psycopg.conninfo.conninfo_to_dict(url)
    return str(info.get("host") or "127.0.0.1"), int(info.get("port") or 5432)


# --- scenario 4: a long transaction pins the xmin horizon ----------------------------------


def _jobs_stats(mon: Monitor, schema: str) -> dict[str, Any]:
    row = mon.rows(
        "SELECT n_dead_tup, n_live_tup, pg_total_relation_size(relid) "
        "FROM pg_stat_user_tables WHERE schemaname = %s AND relname = 'jobs'", [schema])
    dead, live, size = row[0] if row else (None, None, None)
    return {"n_dead_tup": dead, "n_live_tup": live, "jobs_bytes": size}


def run_long_transaction(url: str, schema: str, duration: float = 15.0, *,
                         backlog: int = 1500, concurrency: int = 8) -> dict[str, Any]:
    """Throughput and dead tuples before, during and after a pinned xmin horizon.

    A feeder keeps at least ``backlog`` jobs pending so the worker runs flat out; the
    middle third of the run holds ``BEGIN; SELECT txid_current()`` open and a REPEATABLE
    READ reader scanning ``jobs``.
    """
    prepare_schema(url, schema)
    enqueue_app = make_app(url, schema)
    report: dict[str, Any] = {"scenario": "long_transaction", "backlog": backlog,
                              "concurrency": concurrency}
    phase = duration / 3
    stop_feeding = threading.Event()
    committed: list[int] = []
    mon = Monitor(url)
    worker: ChaosWorker | None = None
    holder: psycopg.Connection[Any] | None = None
    reader: psycopg.Connection[Any] | None = None
    reader_stop = threading.Event()
    reader_scans: list[float] = []

    def feed() -> None:
        task = enqueue_app.tasks[TASK_RECORD]
        with psycopg.connect(url) as conn:
            while not stop_feeding.is_set():
                pending = mon_feed.value(sql.SQL(
                    "SELECT count(*) FROM (SELECT 1 FROM {} WHERE state = 'pending' "
                    "LIMIT %s) AS p").format(_t(schema, "jobs")), [backlog])
                if pending is not None and pending < backlog:
                    committed.extend(enqueue_app.enqueue_many(
                        conn, [task.job(n=i) for i in range(500)]))
                    conn.commit()
                else:
                    stop_feeding.wait(0.05)

    def scan() -> None:
        assert reader is not None
        while not reader_stop.is_set():
            started = time.monotonic()
            reader.execute(sql.SQL("SELECT count(*), max(id) FROM {}")
                           .format(_t(schema, "jobs"))).fetchone()
            reader_scans.append(time.monotonic() - started)
            reader_stop.wait(0.2)

    mon_feed = Monitor(url)
    feeder = threading.Thread(target=feed, daemon=True, name="chaos-feeder")
    scanner = threading.Thread(target=scan, daemon=True, name="chaos-rr-reader")
    try:
        # Backlog first, then the worker: it runs flat out from the start.
        feeder.start()
        wait_for(lambda: len(committed) >= backlog, 30)
        worker = ChaosWorker(url, schema, concurrency=concurrency, poll_interval=0.5,
                             ping_interval=1.0, ping_timeout=5.0)
        worker.wait_started()
        wait_for(lambda: executions_since(mon, schema, 0) > 0, 20)
        pace = threading.Event()

        def measure(name: str) -> None:
            start_wall = time.time()
            start_stats = _jobs_stats(mon, schema)
            pace.wait(phase)
            end_wall = time.time()
            done = mon.value(sql.SQL(
                "SELECT count(*) FROM {} WHERE at >= to_timestamp(%s) AND at < to_timestamp(%s)"
            ).format(_t(schema, "executions")), [start_wall, end_wall])
            end_stats = _jobs_stats(mon, schema)
            report[f"{name}_jobs_per_s"] = round(int(done or 0) / (end_wall - start_wall), 1)
            report[f"{name}_n_dead_tup_start"] = start_stats["n_dead_tup"]
            report[f"{name}_n_dead_tup_end"] = end_stats["n_dead_tup"]
            report[f"{name}_jobs_bytes_end"] = end_stats["jobs_bytes"]
            # What VACUUM can do about them now: it leaves the dead tuples the pinned
            # horizon still protects, and reports that many as n_dead_tup.
            mon.rows(sql.SQL("VACUUM {}").format(_t(schema, "jobs")))
            report[f"{name}_dead_tup_vacuum_cannot_remove"] = _jobs_stats(
                mon, schema)["n_dead_tup"]

        # Someone else's old snapshot pins the horizon too (a shared server): say so.
        report["others_holding_xmin"] = mon.rows(
            "SELECT application_name, age(backend_xmin), "
            "round(extract(epoch FROM now() - xact_start)::numeric, 1) "
            "FROM pg_stat_activity WHERE backend_xmin IS NOT NULL "
            "AND pid <> pg_backend_pid() AND now() - xact_start > interval '2 seconds'")
        measure("before")
        holder = psycopg.connect(url, connect_timeout=5)
        xid = holder.execute("SELECT txid_current()").fetchone()
        report["pinning_xid"] = xid[0] if xid else None
        reader = psycopg.connect(url, connect_timeout=5)
        reader.isolation_level = psycopg.IsolationLevel.REPEATABLE_READ
        # Its first statement opens the transaction (and the snapshot) it keeps to the end.
        isolation = reader.execute("SHOW transaction_isolation").fetchone()
        report["reader_isolation"] = isolation[0] if isolation else None
        scanner.start()
        measure("during")
        report["pinning_xid_age_at_release"] = mon.value(
            "SELECT age(backend_xid) FROM pg_stat_activity WHERE pid = %s",
            [holder.info.backend_pid])
        reader_stop.set()
        scanner.join(timeout=30)
        reader.close()
        holder.close()
        released_at = time.time()
        report["reader_scans"] = len(reader_scans)
        report["reader_scan_ms_median"] = (round(statistics.median(reader_scans) * 1000, 1)
                                           if reader_scans else None)
        measure("after")
        # Recovery: the first half second after the release at >= 50 % of "before".
        buckets = mon.rows(sql.SQL(
            "SELECT floor((extract(epoch FROM at) - %(t)s) / 0.5)::int AS b, count(*) "
            "FROM {} WHERE at >= to_timestamp(%(t)s) GROUP BY b ORDER BY b").format(
            _t(schema, "executions")), {"t": released_at})
        target = 0.5 * report["before_jobs_per_s"] * 0.5
        report["recovery_seconds"] = next(
            ((b + 1) * 0.5 for b, n in buckets if n >= target), None)
        stop_feeding.set()
        feeder.join(timeout=30)
        report["drained"] = drain(mon, schema, lambda: list(committed), 60)
        fake = Enqueuer(url, enqueue_app)  # books() reads ids from an Enqueuer
        fake.committed = list(committed)
        report.update(books(mon, schema, fake))
        report["worker_alive"] = worker.alive()
        report["worker_exit_code"] = worker.stop()
        report["log_tail"] = _tail(worker, 8)
        return report
    finally:
        stop_feeding.set()
        reader_stop.set()
        if scanner.is_alive():
            scanner.join(timeout=30)
        for conn in (reader, holder):
            if conn is not None:
                with contextlib.suppress(Exception):
                    conn.close()
        if feeder.is_alive():
            feeder.join(timeout=30)
        if worker is not None:
            worker.kill()
        mon_feed.close()
        mon.close()


#: Every scenario by name, each ``run(url, schema, duration) -> dict`` (for scripts/chaos.py).
SCENARIOS: dict[str, Callable[..., dict[str, Any]]] = {
    "postgres_restart": run_postgres_restart,
    "restart_retry": run_restart_retry,
    "connection_exhaustion": run_connection_exhaustion,
    "silent_listen_death": run_silent_listen_death,
    "blackholed_connections": run_blackholed_connections,
    "long_transaction": run_long_transaction,
}


if __name__ == "__main__":
    sys.exit(main())

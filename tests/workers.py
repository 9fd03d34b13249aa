"""Helpers for tests that run real `pgjobs work` processes."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

import psycopg
from psycopg import sql

import pgjobs
from pgjobs.store import JobStore

from .conftest import ROOT, cli_env

APP = "tests.apps.sample:app"


def create_executions_table(db: psycopg.Connection[Any], schema: str) -> None:
    db.execute(sql.SQL(
        "CREATE TABLE {} (job_id bigint, attempt int, phase text, pid int, "
        "at timestamptz DEFAULT clock_timestamp())"
    ).format(sql.Identifier(schema, "executions")))


def wait_until(condition: Callable[[], Any], timeout: float = 30.0, interval: float = 0.05,
               message: str = "condition") -> Any:
    """Poll ``condition`` until truthy; fail after ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while True:
        value = condition()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {message}")
        time.sleep(interval)


class CollectedProcess:
    """A subprocess run from the repository root whose stderr is collected line by line
    (``log``), so a test can wait for what it says and show it when an assertion fails."""

    def __init__(self, args: list[str], env: dict[str, str], *,
                 stdout: Any = subprocess.DEVNULL) -> None:
        self.proc = subprocess.Popen(
            args, cwd=ROOT, env=env, stdin=subprocess.DEVNULL, stdout=stdout,
            stderr=subprocess.PIPE, text=True,
        )
        self.lines: list[str] = []
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def _read(self) -> None:
        assert self.proc.stderr is not None
        for line in self.proc.stderr:
            self.lines.append(line)

    @property
    def log(self) -> str:
        return "".join(self.lines)


class WorkerProcess(CollectedProcess):
    """A `pgjobs work` subprocess whose stderr is collected line by line."""

    def __init__(self, pg_url: str, schema: str, *args: str, app: str = APP,
                 env_extra: dict[str, str] | None = None) -> None:
        env = cli_env(pg_url, schema, **(env_extra or {}))
        env["PYTHONPATH"] = os.pathsep.join([str(ROOT), env.get("PYTHONPATH", "")])
        super().__init__([sys.executable, "-m", "pgjobs", "work", app, *args], env,
                         stdout=subprocess.PIPE)

    def wait_started(self, timeout: float = 30.0) -> None:
        wait_until(lambda: "executors on" in self.log or self.proc.poll() is not None,
                   timeout, message="worker start")
        assert self.proc.poll() is None, self.log

    def signal(self, signum: int = signal.SIGTERM) -> None:
        self.proc.send_signal(signum)

    def wait(self, timeout: float = 60.0) -> int:
        code = self.proc.wait(timeout=timeout)
        self._reader.join(timeout=5)
        return code

    def kill(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(timeout=10)


def started_worker(pg_url: str, schema: str, *args: str, app: str = APP) -> WorkerProcess:
    """A `pgjobs work` process of ``app``, once it says it has started."""
    worker = WorkerProcess(pg_url, schema, *args, app=app)
    worker.wait_started()
    return worker


def stop_worker(worker: WorkerProcess) -> None:
    """SIGTERM, and the graceful exit 0 it must lead to."""
    worker.signal(signal.SIGTERM)
    assert worker.wait(60) == 0, worker.log


def phases(db: psycopg.Connection[Any], schema: str, job_id: int | None = None
           ) -> list[str]:
    """The phases the executions table recorded, in order (of one job, or of all)."""
    where = sql.SQL("WHERE job_id = %s") if job_id is not None else sql.SQL("")
    rows = db.execute(sql.SQL("SELECT phase FROM {} {} ORDER BY at").format(
        sql.Identifier(schema, "executions"), where),
        [job_id] if job_id is not None else None).fetchall()
    return [r[0] for r in rows]


def dead_letter(db: psycopg.Connection[Any], schema: str, job_id: int) -> Any:
    """(reason, attempts, error) of a job's dead letter, or None."""
    return db.execute(sql.SQL("SELECT reason, attempts, error FROM {} WHERE job_id = %s")
                      .format(sql.Identifier(schema, "dead_letters")), [job_id]).fetchone()


@contextmanager
def a_fetcher_waits(pg_url: str, app: pgjobs.App, queues: list[str] | None = None
                    ) -> Iterator[psycopg.Connection[Any]]:
    """Enqueue notifies only while a fetcher waits (migration 0006): stand in for one, by
    holding its waiting locks on a connection of our own."""
    with psycopg.connect(pg_url, autocommit=True) as waiter:
        assert JobStore(app.sql).hold_waiting_locks(waiter, queues=queues)
        yield waiter

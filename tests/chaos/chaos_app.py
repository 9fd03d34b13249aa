"""Chaos scenarios (kills, terminated backends, bursts, poison jobs) and the App they run.

Two halves:

* ``app``: a pgjobs App configured from the environment (PGJOBS_DATABASE_URL,
  PGJOBS_SCHEMA) like tests/apps/sample.py. Its handlers (all named ``chaos.*``) record
  every execution in ``<schema>.executions`` through ``pgjobs.current_job().connection()``,
  with the worker's pid, so the books can be checked afterwards. Workers serve it with
  ``pgjobs work tests.chaos.chaos_app:app``, started through :func:`worker_main`, which
  can cap the process's address space first (for the memory hog).
* the scenarios: functions ``(database_url, schema, duration, progress=…) -> Report`` that
  run real ``pgjobs work`` processes, inject faults with real signals and real
  ``pg_terminate_backend`` calls, drain, then CHECK THE BOOKS: every committed job is
  either completed (a ``done`` execution, gone from ``jobs``) or in ``dead_letters``; none
  lost; a job ran to completion more than once only if an earlier run's worker died.
  tests/chaos/test_kills_and_poison.py runs them briefly; scripts/chaos.py runs them for
  longer and prints the reports.

A scenario never raises because the books do not balance: it lists what is wrong in
``Report.problems`` (so the script can still print a full report); it raises only if the
harness itself cannot run.
"""

from __future__ import annotations

import bisect
import itertools
import os
import random
import re
import resource
import signal
import socket
import statistics
import subprocess
import sys
import threading
import time
from collections import Counter, defaultdict
from collections.abc import Callable, Collection
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import psycopg
from psycopg import sql

import pgjobs
from pgjobs.worker.settings import internal_connections
from tests.workers import wait_until

ROOT = Path(__file__).resolve().parents[2]
APP_SPEC = "tests.chaos.chaos_app:app"
QUEUE = "chaos"
#: Ordinary jobs get plenty of attempts: a job that is in hand on several killed workers
#: in a row is charged an attempt each time, and must still complete, not be buried.
ORDINARY_MAX_ATTEMPTS = 25
#: Address-space cap (MiB) for workers that may run ``chaos.hog``; see :func:`worker_main`.
HOG_RLIMIT_AS_MB = 1024
#: Work per job in the burst scenario: slow enough that the burst outruns the worker.
BURST_JOB_MS = 20.0

Progress = Callable[[str], None]


def _fast_backoff(attempt: int) -> float:
    return 0.2


# --- the App -------------------------------------------------------------------------------


def make_app(database_url: str | None = None, schema: str | None = None,
             **options: Any) -> pgjobs.App:
    """The chaos App: ``make_app()`` in workers (env), ``make_app(url, schema)`` to enqueue."""
    app = pgjobs.App(database_url, schema=schema, default_queue=QUEUE, **options)

    def record(phase: str) -> None:
        job = pgjobs.current_job()
        with job.connection() as conn:
            conn.execute(
                sql.SQL("INSERT INTO {} (job_id, attempt, phase, pid) VALUES (%s, %s, %s, %s)")
                .format(sql.Identifier(app.schema, "executions")),
                [job.id, job.attempt, phase, os.getpid()],
            )

    @app.task(name="chaos.work", max_attempts=ORDINARY_MAX_ATTEMPTS, backoff=_fast_backoff)
    def work(ms: float = 0.0, n: int = 0) -> None:
        """An ordinary job: ``ms`` of work (then 'start' is recorded too), then 'done'."""
        if ms > 0:
            record("start")
            deadline = time.monotonic() + ms / 1000
            while (left := deadline - time.monotonic()) > 0:
                time.sleep(min(left, 0.01))
        record("done")

    @app.task(name="chaos.exit", max_attempts=2)
    def exit_worker() -> None:
        """Poison: kills its own worker. No outcome is ever written; only the lease can tell."""
        record("start")
        os._exit(1)

    @app.task(name="chaos.hang", timeout=0.5, max_attempts=1)
    def hang() -> None:
        """Poison: one blocking C call. The injected JobTimeout cannot interrupt it."""
        record("start")
        time.sleep(3600)

    @app.task(name="chaos.hang_db", timeout=0.5, max_attempts=1)
    def hang_db() -> None:
        """Poison: blocks in a database call on the job's pooled connection (libpq waits
        in C, so JobTimeout cannot interrupt it either). 120 s outlasts the scenario
        (at most about 60 s) and bounds the damage on the server if its cleanup does not
        run: a killed test run leaves these backends behind, holding connections the next
        run needs."""
        record("start")
        with pgjobs.current_job().connection() as conn:
            conn.execute("SELECT pg_sleep(120)")

    @app.task(name="chaos.hog", max_attempts=2, backoff=_fast_backoff)
    def hog(chunk_mb: int = 16) -> None:
        """Poison: allocates ``chunk_mb`` chunks until the allocator says no.

        Each zero-fill holds the GIL, so the chunk size bounds how long the worker's
        other threads (heartbeat included) wait for it at a time.

        Bounded by the worker's RLIMIT_AS (see :func:`worker_main`); it refuses to run in a
        worker without one rather than eat the machine. ``bytearray(n)`` zero-fills, so
        this is real memory (the worker's VmHWM shows it), up to the cap. On MemoryError
        it drops its chunks *before* re-raising, so the rest of the worker (whose threads
        share that address space) is short of memory for as little time as possible.
        """
        record("start")
        soft, _ = resource.getrlimit(resource.RLIMIT_AS)
        if soft == resource.RLIM_INFINITY:
            raise pgjobs.PermanentError(
                "chaos.hog needs a worker started by worker_main() with CHAOS_RLIMIT_AS_MB set; "
                "refusing to allocate without bound")
        chunks: list[bytearray] = []
        try:
            while True:
                chunks.append(bytearray(chunk_mb * 2**20))
        except MemoryError:
            held = len(chunks) * chunk_mb
            chunks.clear()
            raise MemoryError(f"chaos.hog: allocation refused after {held} MB "
                              f"(RLIMIT_AS {soft // 2**20} MB)") from None

    return app


app = make_app()


def worker_main() -> None:
    """``pgjobs`` CLI entry point that may first cap the process's address space.

    Why a per-process RLIMIT_AS set here, and not in the handler: the limit must be in
    place before the handler runs, and it must only ever apply to a worker process, never
    to the test runner. Setting it in a wrapper around ``pgjobs.cli.main()`` makes the
    kernel refuse the hog's mmap, which is a real MemoryError raised from a real
    allocation, in a real worker. The limit covers the *whole* worker (every thread), so:
    ``MALLOC_ARENA_MAX=2`` (set by the scenario) stops glibc from reserving 64 MiB of
    address space per thread arena, which would make the headroom depend on thread
    scheduling; the cap (``CHAOS_RLIMIT_AS_MB``, 1 GiB) is four times a worker's normal
    peak address space (~250 MiB with 2 arenas), so nothing but the hog comes near it;
    and the hog frees everything as soon as it hits the limit.
    """
    limit_mb = os.environ.get("CHAOS_RLIMIT_AS_MB")
    if limit_mb:
        limit = int(limit_mb) * 2**20
        resource.setrlimit(resource.RLIMIT_AS, (limit, limit))
    from pgjobs.cli import main

    main()


# --- helpers -------------------------------------------------------------------------------


def _table(schema: str, name: str) -> sql.Identifier:
    return sql.Identifier(schema, name)


def prepare(db: psycopg.Connection[Any], schema: str) -> None:
    db.execute(sql.SQL(
        "CREATE TABLE IF NOT EXISTS {} (job_id bigint, attempt int, phase text, pid int, "
        "at timestamptz DEFAULT clock_timestamp())").format(_table(schema, "executions")))


def jobs_left(db: psycopg.Connection[Any], schema: str) -> int:
    row = db.execute(sql.SQL("SELECT count(*) FROM {}").format(_table(schema, "jobs"))).fetchone()
    return int(row[0]) if row else 0


def peak_rss_kb(pid: int) -> int | None:
    """VmHWM (peak resident set) of a live process, in KiB; None once it is gone."""
    try:
        with open(f"/proc/{pid}/status") as status:
            for line in status:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1])
    except (FileNotFoundError, ProcessLookupError, PermissionError):
        return None
    return None


class Clock:
    """The database server's clock, read locally (executions.at is server time)."""

    def __init__(self, db: psycopg.Connection[Any]) -> None:
        before = time.time()
        row = db.execute("SELECT extract(epoch FROM clock_timestamp())::float8").fetchone()
        after = time.time()
        assert row is not None
        self.offset = float(row[0]) - (before + after) / 2

    def now(self) -> float:
        return time.time() + self.offset


# --- worker processes ----------------------------------------------------------------------


class WorkerProc:
    """One ``pgjobs work`` process (via :func:`worker_main`); stderr collected."""

    def __init__(self, url: str, schema: str, args: list[str],
                 env_extra: dict[str, str] | None = None) -> None:
        env = {k: v for k, v in os.environ.items() if k != "DATABASE_URL"}
        env.update(PGJOBS_DATABASE_URL=url, PGJOBS_SCHEMA=schema, **(env_extra or {}))
        env["PYTHONPATH"] = os.pathsep.join(p for p in (str(ROOT), env.get("PYTHONPATH")) if p)
        self.proc = subprocess.Popen(
            [sys.executable, "-c", "from tests.chaos.chaos_app import worker_main; worker_main()",
             "work", APP_SPEC, *args],
            cwd=ROOT, env=env, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE, text=True, errors="replace",
        )
        self.pid = self.proc.pid
        self.lines: list[str] = []
        self.started = threading.Event()
        self.intended: str | None = None  # set before we signal it on purpose
        self.peak_rss_kb = 0
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def _read(self) -> None:
        assert self.proc.stderr is not None
        for line in self.proc.stderr:
            self.lines.append(line)
            if "executors on" in line:
                self.started.set()

    @property
    def log(self) -> str:
        return "".join(self.lines)

    def alive(self) -> bool:
        return self.proc.poll() is None

    def sample_rss(self) -> None:
        kb = peak_rss_kb(self.pid)
        if kb is not None:
            self.peak_rss_kb = max(self.peak_rss_kb, kb)

    def reap(self, timeout: float = 10.0) -> int:
        code = self.proc.wait(timeout=timeout)
        self._reader.join(timeout=5)
        return code


@dataclass
class Fault:
    at: float  # server clock (epoch seconds)
    pid: int | None = None
    detail: str = ""


class Fleet:
    """The worker processes of one scenario, with a supervisor thread.

    The supervisor (every 0.1 s) samples each worker's peak RSS, notices workers that
    exited without being told to (``deaths`` once they had started serving; ``refused``
    if they never did, e.g. the server was out of connections) and, if
    ``replace_dead``, starts a replacement. ``close()`` SIGKILLs whatever still runs.
    """

    def __init__(self, url: str, schema: str, args: list[str], clock: Clock, *,
                 env_extra: dict[str, str] | None = None) -> None:
        self._url = url
        self._schema = schema
        self._args = args
        self._env_extra = env_extra
        self.clock = clock
        self.workers: list[WorkerProc] = []
        self.deaths: list[Fault] = []
        self.refused: list[Fault] = []
        self.kills: list[Fault] = []
        self.exit_codes: dict[int, int] = {}
        self.replace_dead = False
        self._lock = threading.RLock()
        self._closing = threading.Event()
        self._thread = threading.Thread(target=self._supervise, name="chaos-fleet", daemon=True)
        self._thread.start()

    def start(self, n: int = 1) -> list[WorkerProc]:
        with self._lock:
            new = [WorkerProc(self._url, self._schema, self._args, self._env_extra)
                   for _ in range(n)]
            self.workers += new
            return new

    def alive(self) -> list[WorkerProc]:
        """Running workers we have not signalled (a SIGKILLed one may linger a moment)."""
        with self._lock:
            return [w for w in self.workers if w.intended is None and w.alive()]

    def start_serving(self, n: int, timeout: float = 30.0, tries: int = 3) -> list[WorkerProc]:
        """Start ``n`` workers and wait until they serve (a refused start-up is retried)."""
        serving: list[WorkerProc] = []
        for _ in range(tries):
            for w in self.start(n - len(serving)):
                wait_until(lambda w=w: w.started.is_set() or w.proc.poll() is not None,
                           timeout, message=f"worker {w.pid} to start")
                if w.started.is_set():
                    serving.append(w)
            if len(serving) == n:
                return serving
        raise RuntimeError(f"workers did not start:\n{self.logs()}")

    def kill(self, w: WorkerProc) -> Fault:
        """SIGKILL ``w`` (on purpose: not a death)."""
        with self._lock:
            w.sample_rss()
            w.intended = "SIGKILL"
            w.proc.send_signal(signal.SIGKILL)
            fault = Fault(self.clock.now(), w.pid, "SIGKILL")
            self.kills.append(fault)
        return fault

    def stop(self, w: WorkerProc, timeout: float = 30.0) -> int:
        """SIGTERM ``w`` and wait for it; its exit code (SIGKILLed after ``timeout``).

        A worker still starting up is first allowed to finish: its SIGTERM handler is
        installed only once it runs, and before that SIGTERM simply kills it (-15).
        """
        wait_until(lambda: w.started.is_set() or not w.alive(), timeout,
                   message=f"worker {w.pid} to start before stopping it")
        with self._lock:
            w.sample_rss()
            w.intended = "SIGTERM"
            if w.alive():
                w.proc.send_signal(signal.SIGTERM)
        try:
            code = w.reap(timeout)
        except subprocess.TimeoutExpired:
            w.proc.kill()
            code = w.reap()
            w.lines.append(f"[chaos] did not exit within {timeout}s of SIGTERM: SIGKILLed\n")
        self.exit_codes[w.pid] = code
        return code

    def stop_all(self, timeout: float = 30.0) -> dict[int, int]:
        self.replace_dead = False
        codes: dict[int, int] = {}
        for w in self.alive():
            codes[w.pid] = self.stop(w, timeout)
        return codes

    def _supervise(self) -> None:
        seen_dead: set[int] = set()
        while not self._closing.wait(0.1):  # pacing: a supervisor tick
            with self._lock:
                for w in list(self.workers):
                    w.sample_rss()
                    code = w.proc.poll()
                    if code is None or w.pid in seen_dead:
                        continue
                    seen_dead.add(w.pid)
                    self.exit_codes.setdefault(w.pid, code)
                    if w.intended is None:
                        fault = Fault(self.clock.now(), w.pid, f"exit code {code}")
                        if w.started.is_set():
                            self.deaths.append(fault)
                        else:
                            w.reap(5)
                            fault.detail += f": {(w.lines or ['(no output)'])[-1].strip()}"
                            self.refused.append(fault)
                        if self.replace_dead and not self._closing.is_set():
                            self.start(1)

    @property
    def peak_rss_mb(self) -> float:
        with self._lock:
            return max((w.peak_rss_kb for w in self.workers), default=0) / 1024

    def died_at(self) -> dict[int, float]:
        """When each worker that died mid-service (killed or crashed) was seen to die."""
        return {f.pid: f.at for f in self.kills + self.deaths if f.pid is not None}

    def logs(self) -> str:
        return "".join(f"--- worker {w.pid}\n{w.log}" for w in self.workers)

    def close(self) -> None:
        self._closing.set()
        self._thread.join(timeout=5)
        for w in self.workers:
            if w.alive():
                w.proc.kill()
            try:
                w.reap(10)
            except subprocess.TimeoutExpired:
                pass


# --- enqueueing ----------------------------------------------------------------------------


class Stream:
    """A thread enqueuing ``task`` jobs at about ``rate`` per second, 1-3 per transaction."""

    def __init__(self, app: pgjobs.App, url: str, task: str, rate: float,
                 kwargs: dict[str, Any] | None = None) -> None:
        self._task = app.tasks[task]
        self._url = url
        self._rate = rate
        self._kwargs = kwargs or {}
        self.ids: dict[int, str] = {}
        self.errors: list[str] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="chaos-stream", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join(timeout=30)

    def _run(self) -> None:
        rng = random.Random()
        serial = itertools.count()
        with psycopg.connect(self._url) as conn:
            next_at = time.monotonic()
            while not self._stop.is_set():
                n = rng.randint(1, 3)
                try:
                    ids = [self._task.enqueue(conn, n=next(serial), **self._kwargs)
                           for _ in range(n)]
                    conn.commit()
                except Exception as exc:
                    self.errors.append(f"{type(exc).__name__}: {exc}")
                    conn.rollback()
                    continue
                for job_id in ids:
                    self.ids[job_id] = self._task.name
                next_at += n / self._rate
                self._stop.wait(max(0.0, next_at - time.monotonic()))  # pacing


# --- the books -----------------------------------------------------------------------------


def _summary(values: list[float]) -> str:
    if not values:
        return "n/a"
    return (f"median {statistics.median(values):.2f} s, max {max(values):.2f} s "
            f"(n={len(values)})")


@dataclass
class Report:
    """What a scenario did and whether the books balance (``problems`` empty)."""

    scenario: str
    description: str
    duration: float
    enqueued: int = 0
    completed: int = 0
    executed_more_than_once: int = 0
    unexplained_duplicates: list[int] = field(default_factory=list)
    lost: list[int] = field(default_factory=list)
    left_in_jobs: list[int] = field(default_factory=list)
    dead_lettered: int = 0
    unexpected_dead: list[int] = field(default_factory=list)
    missing_dead: list[int] = field(default_factory=list)
    phantom: list[int] = field(default_factory=list)
    faults: int = 0
    fault_kind: str = "faults"
    recovery_next_completion: list[float] = field(default_factory=list)
    recovery_orphans: list[float] = field(default_factory=list)
    peak_rss_mb: float = 0.0
    extra: dict[str, Any] = field(default_factory=dict)
    log_notes: Counter[str] = field(default_factory=Counter)
    problems: list[str] = field(default_factory=list)
    logs: str = field(default="", repr=False)  # every worker's stderr, for post-mortems

    def render(self) -> str:
        lines = [f"== {self.scenario} ({self.duration:.0f} s): {self.description}"]

        def row(label: str, value: Any) -> None:
            lines.append(f"   {label:<44} {value}")

        row("jobs enqueued (committed)", self.enqueued)
        row("completed", self.completed)
        row("executed more than once", f"{self.executed_more_than_once} "
            f"({len(self.unexplained_duplicates)} not explained by a worker death)")
        row("lost (not completed, not dead, not in jobs)", len(self.lost))
        row("dead-lettered", f"{self.dead_lettered} ({len(self.unexpected_dead)} unexpected, "
            f"{len(self.missing_dead)} expected but missing)")
        row("left in jobs after the drain", len(self.left_in_jobs))
        row(self.fault_kind, self.faults)
        row("recovery: fault -> next completed job", _summary(self.recovery_next_completion))
        if self.recovery_orphans:
            row("recovery: kill -> its jobs completed elsewhere",
                _summary(self.recovery_orphans))
        row("peak RSS of a worker (VmHWM)", f"{self.peak_rss_mb:.0f} MB")
        for key, value in self.extra.items():
            row(key, value)
        if self.log_notes:
            lines.append("   worker log warnings/errors (count x message, numbers elided):")
            for message, n in self.log_notes.most_common(12):
                lines.append(f"     {n:>5} x {message}")
        if self.problems:
            lines.append("   PROBLEMS:")
            lines += [f"     - {p}" for p in self.problems]
            lines += self._post_mortem()
        else:
            lines.append("   books balance: OK")
        return "\n".join(lines)

    def _post_mortem(self) -> list[str]:
        """Worker log lines around the suspicious jobs, so a failed CI run explains itself."""
        suspects = (self.unexplained_duplicates + self.lost)[:10]
        if not suspects or not self.logs:
            return []
        ids = re.compile(r"\b(" + "|".join(str(i) for i in suspects) + r")\b")
        hits = [line for line in self.logs.splitlines()
                if ids.search(line) or " WARNING " in line or " ERROR " in line]
        return ["   worker log lines naming those jobs, and all warnings (last 40):"] + [
            f"     | {line[:300]}" for line in hits[-40:]]


_NUMBERS = re.compile(r"\[[^\]]*\]|\b\d+(\.\d+)?\b|[0-9a-f]{6}\b")
_LOG_LINE = re.compile(r"^\S+ \S+ (WARNING|ERROR|CRITICAL) (\S+): (.*)$")
# Any log line at all: an INFO retry line quotes the handler's error ("MemoryError: …")
# and is not crash output.
_ANY_LOG_LINE = re.compile(r"^\S+ \S+ (DEBUG|INFO|WARNING|ERROR|CRITICAL) \S+: ")


def log_notes(logs: str) -> tuple[Counter[str], list[str]]:
    """Warning/error lines by message (numbers elided), and lines that are not log lines
    but tracebacks or crashes."""
    notes: Counter[str] = Counter()
    odd: list[str] = []
    for line in logs.splitlines():
        match = _LOG_LINE.match(line)
        if match:
            level, _, message = match.groups()
            notes[f"{level} {_NUMBERS.sub('#', message)[:150]}"] += 1
        elif line.startswith("Traceback") or (
                "Error:" in line and not line.startswith(" ") and not _ANY_LOG_LINE.match(line)):
            odd.append(line.strip()[:200])
    return notes, odd


def check_books(db: psycopg.Connection[Any], schema: str, report: Report,
                enqueued: dict[int, str], died_at: dict[int, float],
                expected_dead: Collection[int] = ()) -> dict[int, list[tuple[int, int, float]]]:
    """Fill ``report``'s ledger from the database; return 'done' executions by job."""
    done: dict[int, list[tuple[int, int, float]]] = defaultdict(list)
    for job_id, attempt, pid, at in db.execute(sql.SQL(
            "SELECT job_id, attempt, pid, extract(epoch FROM at)::float8 FROM {} "
            "WHERE phase = 'done' ORDER BY at").format(_table(schema, "executions"))):
        done[job_id].append((attempt, pid, at))
    dead = {r[0] for r in db.execute(sql.SQL("SELECT job_id FROM {}").format(
        _table(schema, "dead_letters")))}
    left = [r[0] for r in db.execute(sql.SQL("SELECT id FROM {} ORDER BY id").format(
        _table(schema, "jobs")))]
    ids = set(enqueued)
    report.enqueued = len(ids)
    report.completed = len([i for i in ids if i in done and i not in dead and i not in left])
    report.dead_lettered = len(dead)
    report.lost = sorted(ids - set(done) - dead - set(left))  # vanished, not just late
    report.left_in_jobs = left
    report.unexpected_dead = sorted(dead - set(expected_dead))
    report.missing_dead = sorted(set(expected_dead) - dead)
    report.phantom = sorted((set(done) | dead | set(left)) - ids)
    duplicates = {j: runs for j, runs in done.items() if len(runs) > 1}
    report.executed_more_than_once = len(duplicates)
    # A completed run may repeat only if the worker of every earlier run died before it
    # could write the outcome, i.e. before the job was run again (a worker that died
    # later lost its lease while alive: that is not explained by its death).
    report.unexplained_duplicates = sorted(
        j for j, runs in duplicates.items()
        if any(died_at.get(pid, float("inf")) > later[2]
               for (_, pid, _), later in itertools.pairwise(runs)))
    if report.lost:
        report.problems.append(f"{len(report.lost)} committed job(s) lost: neither completed, "
                               f"dead-lettered nor still in jobs: {report.lost[:10]}")
    if left:
        states = db.execute(sql.SQL(
            "SELECT state, task, attempts, count(*) FROM {} GROUP BY 1, 2, 3 ORDER BY 4 DESC"
        ).format(_table(schema, "jobs"))).fetchall()
        report.problems.append(f"{len(left)} job(s) still in jobs after the drain "
                               f"(state, task, attempts, n): {states[:5]}")
    if report.unexplained_duplicates:
        report.problems.append(
            f"{len(report.unexplained_duplicates)} job(s) completed more than once although "
            f"no worker died mid-job: {report.unexplained_duplicates[:10]}")
    if report.unexpected_dead:
        report.problems.append(f"{len(report.unexpected_dead)} unexpected dead letter(s): "
                               f"{report.unexpected_dead[:10]}")
    if report.missing_dead:
        report.problems.append(f"expected dead letter(s) missing: {report.missing_dead[:10]}")
    if report.phantom:
        report.problems.append(f"executions or rows of job(s) never committed: "
                               f"{report.phantom[:10]}")
    return done


def _done_times(done: dict[int, list[tuple[int, int, float]]]) -> list[float]:
    return sorted(at for runs in done.values() for _, _, at in runs)


def next_completion_delays(done: dict[int, list[tuple[int, int, float]]],
                           faults: list[Fault]) -> list[float]:
    """For each fault, seconds until some job completed after it."""
    times = _done_times(done)
    delays = []
    for fault in faults:
        i = bisect.bisect_right(times, fault.at)
        if i < len(times):
            delays.append(times[i] - fault.at)
    return delays


def orphan_recovery(db: psycopg.Connection[Any], schema: str,
                    done: dict[int, list[tuple[int, int, float]]],
                    faults: list[Fault]) -> list[float]:
    """For each killed worker: seconds from its death until every job it had started
    (and not finished itself) was completed by another worker."""
    starts: dict[int, set[int]] = defaultdict(set)
    for job_id, pid in db.execute(sql.SQL(
            "SELECT job_id, pid FROM {} WHERE phase = 'start'").format(
            _table(schema, "executions"))):
        starts[pid].add(job_id)
    delays = []
    for fault in faults:
        finished = []
        for job_id in starts.get(fault.pid or -1, ()):
            runs = done.get(job_id)
            if runs and runs[-1][1] != fault.pid:
                finished.append(runs[-1][2])
        if finished:
            delays.append(max(finished) - fault.at)
    return delays


def _drain(db: psycopg.Connection[Any], schema: str, report: Report, timeout: float,
           progress: Progress) -> None:
    progress(f"draining (up to {timeout:.0f} s)")
    started = time.monotonic()
    try:
        wait_until(lambda: jobs_left(db, schema) == 0, timeout, interval=0.1,
                   message="the jobs table to drain")
    except AssertionError as exc:
        report.problems.append(str(exc))
    report.extra["drain time after the faults stopped"] = f"{time.monotonic() - started:.1f} s"


def _finish(report: Report, fleet: Fleet, codes: dict[int, int]) -> None:
    """Shared end of scenario: exit codes of the graceful stops, RSS, log notes."""
    report.peak_rss_mb = fleet.peak_rss_mb
    report.logs = fleet.logs()
    if fleet.refused:  # the environment, not pgjobs (e.g. a shared server out of slots)
        reasons = Counter(re.sub(r"^exit code \d+: |;.*$", "", f.detail) for f in fleet.refused)
        report.extra["worker start-ups refused (replaced)"] = "; ".join(
            f"{n} x {reason[-120:]}" for reason, n in reasons.items())
    bad = {pid: code for pid, code in codes.items() if code != 0}
    if bad:
        report.problems.append(f"worker(s) did not exit 0 on SIGTERM: {bad}")
    notes, odd = log_notes(fleet.logs())
    report.log_notes = notes
    errors = {m: n for m, n in notes.items() if not m.startswith("WARNING")}
    if errors:
        report.problems.append(f"ERROR lines in worker logs: {errors}")
    if odd:
        report.problems.append(f"tracebacks/crash output in worker logs: {odd[:5]}")


def _worker_args(lease: float | None = None, concurrency: int = 4) -> list[str]:
    own = internal_connections(poll_only=False)  # the smallest pool that starts
    args = ["--concurrency", str(concurrency), "--pool-size", str(concurrency + own),
            "--poll-interval", "0.5", "--shutdown-timeout", "5"]
    if lease is not None:
        args += ["--lease-timeout", f"{lease:g}"]
    return args


def _quiet(message: str) -> None:
    pass


# --- scenario 1: repeated SIGKILL ----------------------------------------------------------


def sigkill_scenario(url: str, schema: str, duration: float = 8.0, *, kill_every: float = 1.0,
                     rate: float = 80.0, lease: float = 2.0, min_kills: int = 0,
                     patience: float = 60.0, progress: Progress = _quiet) -> Report:
    """2 workers serve a steady stream; every ``kill_every`` s one is SIGKILLed and
    replaced. Then one worker drains. Duplicates are allowed only for killed workers' jobs.

    A worker is killed only while another started one survives it, so the time until a
    killed worker's jobs complete elsewhere measures leases and rescue, not how long a
    replacement takes to start on a busy machine. Start-ups set the pace, so the run goes
    on past ``duration`` until ``min_kills`` kills (at most ``patience`` s more).
    """
    report = Report("sigkill", f"2 workers (--lease-timeout {lease:g}), SIGKILL one every "
                    f"{kill_every:g} s and start a replacement, {rate:g} jobs/s of 20 ms",
                    duration, fault_kind="workers SIGKILLed")
    with psycopg.connect(url, autocommit=True) as db:
        prepare(db, schema)
        fleet = Fleet(url, schema, _worker_args(lease), Clock(db))
        stream = Stream(make_app(url, schema), url, "chaos.work", rate, {"ms": 20})
        codes: dict[int, int] = {}
        try:
            fleet.start_serving(2)
            fleet.replace_dead = True  # only crashes or refused start-ups: kills are ours
            stream.start()
            pacer = threading.Event()
            end = time.monotonic() + duration

            def go_on() -> bool:
                now = time.monotonic()
                return now < end or (len(fleet.kills) < min_kills and now < end + patience)

            while go_on() and not pacer.wait(kill_every):  # pacing
                victims = [w for w in fleet.alive() if w.started.is_set()]
                if len(victims) >= 2:
                    fleet.kill(victims[0])
                    fleet.start(1)
                    progress(f"SIGKILLed worker {victims[0].pid} "
                             f"({len(fleet.kills)} so far), started a replacement")
            stream.stop()
            fleet.replace_dead = False
            # One worker drains: the newest stays, the others stop gracefully.
            alive = fleet.alive()
            for w in alive[:-1]:
                codes[w.pid] = fleet.stop(w)
            _drain(db, schema, report, 30 + 3 * lease, progress)
            codes.update(fleet.stop_all())
            done = check_books(db, schema, report, stream.ids, fleet.died_at())
            report.faults = len(fleet.kills)
            report.recovery_next_completion = next_completion_delays(done, fleet.kills)
            report.recovery_orphans = orphan_recovery(db, schema, done, fleet.kills)
            if fleet.deaths:
                report.problems.append(f"worker(s) died without being killed: "
                                       f"{[(d.pid, d.detail) for d in fleet.deaths]}")
            if stream.errors:
                report.problems.append(f"enqueue errors: {stream.errors[:5]}")
            report.extra["worker processes started"] = len(fleet.workers)
            _finish(report, fleet, codes)
        finally:
            stream.stop()
            fleet.close()
    return report


# --- scenario 2: pg_terminate_backend ------------------------------------------------------


def terminate_worker_backends(db: psycopg.Connection[Any], pids: list[int]) -> int:
    """pg_terminate_backend every connection of these worker processes.

    Workers name their connections ``pgjobs worker <host>:<pid>:<hex>`` (at most 63
    bytes). Only *our* workers are matched, never other ``pgjobs worker %`` sessions that
    may share the server.
    """
    host = socket.gethostname()
    prefixes = [f"pgjobs worker {host}:{pid}:"[:63] for pid in pids]
    row = db.execute(
        "SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity "
        "WHERE application_name LIKE 'pgjobs worker %%' AND pid <> pg_backend_pid() "
        "AND EXISTS (SELECT 1 FROM unnest(%s::text[]) AS p WHERE starts_with(application_name, p))",
        [prefixes]).fetchone()
    return int(row[0]) if row else 0


def terminate_scenario(url: str, schema: str, duration: float = 6.0, *, every: float = 0.5,
                       rate: float = 80.0, lease: float = 5.0,
                       progress: Progress = _quiet) -> Report:
    """One worker serves a stream while all its connections are terminated every
    ``every`` s. It must never exit, and the books must balance.

    ``--lease-timeout 5`` (not the default 30): a claim whose commit succeeded but whose
    reply was lost to the termination leaves jobs no one heartbeats; they are rescued when
    the lease expires, and the drain should not have to wait 30 s for that.
    """
    report = Report("terminate", f"1 worker (--lease-timeout {lease:g}), pg_terminate_backend "
                    f"of all its connections every {every:g} s, {rate:g} jobs/s of 5 ms",
                    duration, fault_kind="rounds of pg_terminate_backend")
    with psycopg.connect(url, autocommit=True) as db:
        prepare(db, schema)
        fleet = Fleet(url, schema, _worker_args(lease), Clock(db))
        stream = Stream(make_app(url, schema), url, "chaos.work", rate, {"ms": 5})
        codes: dict[int, int] = {}
        rounds: list[Fault] = []
        terminated = 0
        try:
            (worker,) = fleet.start_serving(1)
            stream.start()
            pacer = threading.Event()
            end = time.monotonic() + duration
            while time.monotonic() < end and not pacer.wait(every):  # pacing
                n = terminate_worker_backends(db, [worker.pid])
                terminated += n
                rounds.append(Fault(fleet.clock.now(), worker.pid, f"{n} backends"))
            stream.stop()
            progress(f"{len(rounds)} rounds, {terminated} backends terminated")
            _drain(db, schema, report, 30 + 3 * lease, progress)
            alive_at_end = worker.alive()
            codes.update(fleet.stop_all())
            done = check_books(db, schema, report, stream.ids, fleet.died_at())
            report.faults = len(rounds)
            report.recovery_next_completion = next_completion_delays(done, rounds)
            report.extra["backends terminated"] = terminated
            report.extra["re-established lines in the log"] = worker.log.count("re-established")
            if not alive_at_end or fleet.deaths:
                report.problems.append(f"the worker exited during the scenario: "
                                       f"{[(d.pid, d.detail) for d in fleet.deaths]}")
            if terminated == 0:
                report.problems.append("no backend was terminated: the scenario tested nothing")
            if stream.errors:
                report.problems.append(f"enqueue errors: {stream.errors[:5]}")
            _finish(report, fleet, codes)
        finally:
            stream.stop()
            fleet.close()
    return report


# --- scenario 3: burst against a small pending limit ---------------------------------------


def _burst(task: Any, url: str, attempts: int, threads: int,
           ids: dict[int, str], errors: list[str], ms: float = 0.0) -> tuple[int, int]:
    """``threads`` threads make ``attempts`` single-job enqueues of ``task`` (jobs of
    ``ms`` of work) in all, each in its own committed transaction; returns
    (committed, QueueFull)."""
    tickets = itertools.count()
    lock = threading.Lock()
    counts = Counter[str]()

    def run() -> None:
        with psycopg.connect(url) as conn:
            while True:
                with lock:
                    ticket = next(tickets)
                if ticket >= attempts:
                    return
                try:
                    job_id = task.enqueue(conn, n=ticket, ms=ms)
                    conn.commit()
                except pgjobs.QueueFull:
                    conn.rollback()
                    with lock:
                        counts["full"] += 1
                    continue
                except Exception as exc:
                    conn.rollback()
                    with lock:
                        errors.append(f"{type(exc).__name__}: {exc}")
                    continue
                with lock:
                    ids[job_id] = "chaos.work"
                    counts["committed"] += 1

    pool = [threading.Thread(target=run, name=f"chaos-burst-{i}") for i in range(threads)]
    for t in pool:
        t.start()
    for t in pool:
        t.join()
    return counts["committed"], counts["full"]


def limit_overshoot(url: str, schema: str, *, threads: int = 16, limit: int = 200,
                    rounds: int = 3, ids: dict[int, str] | None = None) -> list[int]:
    """Per round, how far ``threads`` threads sharing one App pushed a fresh queue past
    its pending limit, with no worker running and a single pending count taken before
    they start (``limit_refresh_interval`` of an hour, warmed by one committed enqueue).

    Nothing else writes to the queue, no transaction is open when the count is taken and
    only this process enqueues, so by README's overshoot bound ("the jobs other
    processes enqueued within one refresh interval plus the jobs in transactions still
    uncommitted when the count was taken") and pgjobs/backpressure.py ("within one
    process the limit is exact") every round must end with exactly ``limit`` pending.
    """
    app = make_app(url, schema, limit_refresh_interval=3600.0)
    ids = {} if ids is None else ids
    overshoot = []
    with psycopg.connect(url, autocommit=True) as db:
        for round_ in range(rounds):
            queue = f"{QUEUE}.limit{round_}"
            task = app.tasks["chaos.work"].options(queue=queue)
            app.set_queue_limit(db, queue, limit)
            with psycopg.connect(url) as conn:
                ids[task.enqueue(conn, n=-1)] = "chaos.work"
                conn.commit()
            _burst(task, url, limit + 20 * threads, threads, ids, [])
            row = db.execute(sql.SQL("SELECT count(*) FROM {} WHERE queue = %s").format(
                _table(schema, "jobs")), [queue]).fetchone()
            overshoot.append((int(row[0]) if row else 0) - limit)
    return overshoot


def burst_scenario(url: str, schema: str, duration: float = 0.0, *, attempts: int = 20_000,
                   threads: int = 16, limit: int = 500, rss_limit_mb: float = 300.0,
                   check_limit: bool = True, progress: Progress = _quiet) -> Report:
    """Bursts of ``attempts`` enqueue attempts from ``threads`` threads against a queue
    limited to ``limit`` pending jobs, while one worker drains; repeated until
    ``duration`` has passed (at least one burst). QueueFull for the excess, no other
    error, every committed job processed, the worker's peak RSS under ``rss_limit_mb``.

    The jobs take ``BURST_JOB_MS`` each and the worker has 4 executors, so it drains at
    most ~200 jobs/s: a burst must outrun it and reach the limit on any machine (with
    no-op jobs a fast worker kept up with 16 slow enqueuers and QueueFull never came).

    ``check_limit``: first, with no worker, :func:`limit_overshoot` (its jobs are then
    drained and checked with the rest).
    """
    report = Report("burst", f"{threads} threads, bursts of {attempts:,} enqueue attempts, "
                    f"pending limit {limit}, 1 worker (4 executors) draining jobs of "
                    f"{BURST_JOB_MS:g} ms",
                    duration, fault_kind="bursts")
    with psycopg.connect(url, autocommit=True) as db:
        prepare(db, schema)
        app = make_app(url, schema)
        app.set_queue_limit(db, QUEUE, limit)
        fleet = Fleet(url, schema, _worker_args(), Clock(db))
        ids: dict[int, str] = {}
        errors: list[str] = []
        codes: dict[int, int] = {}
        try:
            if check_limit:
                over = limit_overshoot(url, schema, threads=threads, ids=ids)
                report.extra["limit check (no worker, one count): overshoot per round"] = over
                if any(over):
                    report.problems.append(
                        f"pending limit overshoot within one process: {over} job(s) past the "
                        f"limit in rounds of {threads} threads sharing one App and one "
                        "pending count (check() and record() race around the INSERT)")
            (worker,) = fleet.start_serving(1)
            max_pending = 0
            sampling = threading.Event()

            def sample() -> None:
                nonlocal max_pending
                with psycopg.connect(url, autocommit=True) as conn:
                    query = sql.SQL("SELECT count(*) FROM {} WHERE queue = %s AND "
                                    "state = 'pending'").format(_table(schema, "jobs"))
                    while not sampling.wait(0.01):  # pacing: a sampler
                        row = conn.execute(query, [QUEUE]).fetchone()
                        max_pending = max(max_pending, int(row[0]) if row else 0)

            sampler = threading.Thread(target=sample, daemon=True)
            sampler.start()
            end = time.monotonic() + duration
            bursts = 0
            total_committed = total_full = 0
            burst_seconds = []
            task = app.tasks["chaos.work"]
            while True:
                started = time.monotonic()
                committed, full = _burst(task, url, attempts, threads, ids, errors,
                                         ms=BURST_JOB_MS)
                burst_seconds.append(time.monotonic() - started)
                bursts += 1
                total_committed += committed
                total_full += full
                progress(f"burst {bursts}: {committed} committed, {full} QueueFull in "
                         f"{burst_seconds[-1]:.1f} s")
                if time.monotonic() >= end:
                    break
            sampling.set()
            sampler.join(timeout=5)
            _drain(db, schema, report, 60, progress)
            worker.sample_rss()
            rss = peak_rss_kb(worker.pid)
            codes.update(fleet.stop_all())
            check_books(db, schema, report, ids, fleet.died_at())
            report.faults = bursts
            report.extra["attempts: committed / QueueFull / other errors"] = (
                f"{total_committed:,} / {total_full:,} / {len(errors)}")
            report.extra["burst time"] = _summary(burst_seconds)
            report.extra["max pending seen while the worker drained (10 ms samples)"] = (
                max_pending)
            report.extra["worker VmHWM before stopping it"] = (
                f"{(rss or 0) / 1024:.0f} MB (limit {rss_limit_mb:g} MB)")
            if errors:
                report.problems.append(f"{len(errors)} enqueue error(s) other than QueueFull: "
                                       f"{Counter(errors).most_common(3)}")
            if total_full == 0:
                report.problems.append("no QueueFull: the burst never reached the limit")
            if total_committed + total_full != attempts * bursts:
                report.problems.append("attempts unaccounted for")
            if rss is None or rss / 1024 > rss_limit_mb:
                report.problems.append(f"worker peak RSS {rss} kB is over {rss_limit_mb} MB")
            if max_pending > limit + 2 * threads:
                report.problems.append(f"pending reached {max_pending} while draining "
                                       f"(limit {limit}, {threads} threads)")
            _finish(report, fleet, codes)
        finally:
            fleet.close()
    return report


# --- scenario 4: poison jobs ---------------------------------------------------------------

POISON = ("chaos.exit", "chaos.hang", "chaos.hog")


def poison_scenario(url: str, schema: str, duration: float = 8.0, *, rate: float = 40.0,
                    lease: float = 2.0, progress: Progress = _quiet) -> Report:
    """2 workers (restarted when they die) serve ordinary jobs while poison jobs arrive:
    one that kills its worker (max_attempts 2), one that blocks in ``time.sleep(3600)``
    (timeout 0.5 s, max_attempts 1) and one that allocates until MemoryError under the
    worker's RLIMIT_AS (max_attempts 2). Each must end in dead_letters after its
    attempts, with its own error; every ordinary job must complete.

    The poison jobs come one at a time (the next once the previous one is buried), in
    cycles until ``duration`` has passed. Not all at once, because a worker that dies
    is charged an attempt for every job it held, prefetched ones included: a hang or hog
    job claimed by the worker that then runs chaos.exit would be buried with "lease
    expired" without ever running (pgjobs' documented accounting: attempts are charged
    at claim), and this scenario is about each poison's own failure mode.
    """
    report = Report("poison", f"2 workers (--lease-timeout {lease:g}, RLIMIT_AS "
                    f"{HOG_RLIMIT_AS_MB} MB, restarted when they die), poison jobs one at a "
                    f"time (exit, hang, hog, ...), {rate:g} ordinary jobs/s of 10 ms",
                    duration, fault_kind="workers killed by poison")
    env = {"CHAOS_RLIMIT_AS_MB": str(HOG_RLIMIT_AS_MB), "MALLOC_ARENA_MAX": "2"}
    with psycopg.connect(url, autocommit=True) as db:
        prepare(db, schema)
        app = make_app(url, schema)
        fleet = Fleet(url, schema, _worker_args(lease), Clock(db), env_extra=env)
        stream = Stream(app, url, "chaos.work", rate, {"ms": 10})
        poison: dict[int, str] = {}
        buried_after: dict[str, list[float]] = defaultdict(list)
        codes: dict[int, int] = {}
        dead_query = sql.SQL("SELECT 1 FROM {} WHERE job_id = %s").format(
            _table(schema, "dead_letters"))
        try:
            fleet.start_serving(2)
            fleet.replace_dead = True
            stream.start()
            end = time.monotonic() + duration
            while time.monotonic() < end:
                for name in POISON:
                    with psycopg.connect(url) as conn:
                        job_id = app.tasks[name].enqueue(conn)
                        conn.commit()
                    poison[job_id] = name
                    started = time.monotonic()
                    try:
                        wait_until(lambda job_id=job_id: db.execute(dead_query, [job_id])
                                   .fetchone(), 30, interval=0.02,
                                   message=f"{name} job {job_id} in dead_letters")
                    except AssertionError as exc:
                        report.problems.append(str(exc))
                    buried_after[name].append(time.monotonic() - started)
                    progress(f"{name} job {job_id} buried after {buried_after[name][-1]:.1f} s")
            stream.stop()
            _drain(db, schema, report, 60, progress)
            codes.update(fleet.stop_all())
            enqueued = {**stream.ids, **poison}
            done = check_books(db, schema, report, enqueued, fleet.died_at(), set(poison))
            report.faults = len(fleet.deaths)
            report.recovery_next_completion = next_completion_delays(done, fleet.deaths)
            report.recovery_orphans = orphan_recovery(db, schema, done, fleet.deaths)
            _check_poison(db, schema, report, poison, fleet)
            for name, seconds in buried_after.items():
                report.extra[f"{name}: enqueue -> dead letter"] = _summary(seconds)
            if stream.errors:
                report.problems.append(f"enqueue errors: {stream.errors[:5]}")
            report.extra["worker processes started"] = len(fleet.workers)
            _finish(report, fleet, codes)
        finally:
            stream.stop()
            fleet.close()
    return report


def _check_poison(db: psycopg.Connection[Any], schema: str, report: Report,
                  poison: dict[int, str], fleet: Fleet) -> None:
    letters = {r[0]: (r[1], r[2]) for r in db.execute(sql.SQL(
        "SELECT job_id, attempts, error FROM {}").format(_table(schema, "dead_letters")))}
    starts = Counter(r[0] for r in db.execute(sql.SQL(
        "SELECT job_id FROM {} WHERE phase = 'start' AND job_id = ANY(%s)").format(
        _table(schema, "executions")), [list(poison)]))
    expect = {  # task: (attempts, starts, text in the error)
        "chaos.exit": (2, 2, "lease expired"),
        "chaos.hang": (1, 1, "exceeded its timeout of 0.5s"),
        "chaos.hog": (2, 2, "MemoryError"),
    }
    by_kind = Counter(poison.values())
    report.extra["poison jobs enqueued"] = dict(by_kind)
    for job_id, task in poison.items():
        attempts, n_starts, text = expect[task]
        if job_id not in letters:
            continue  # reported by check_books
        got_attempts, error = letters[job_id]
        if got_attempts != attempts or text not in (error or ""):
            report.problems.append(f"{task} job {job_id}: dead letter after {got_attempts} "
                                   f"attempt(s) with error {(error or '')[:200]!r}; expected "
                                   f"{attempts} and {text!r}")
        if starts[job_id] != n_starts:
            report.problems.append(f"{task} job {job_id} started {starts[job_id]} time(s), "
                                   f"expected {n_starts}")
    codes = Counter(d.detail for d in fleet.deaths)
    report.extra["worker deaths by exit code"] = dict(codes)
    expected_deaths = 2 * by_kind["chaos.exit"]
    if len(fleet.deaths) != expected_deaths or set(codes) - {"exit code 1"}:
        report.problems.append(f"{len(fleet.deaths)} worker death(s) ({dict(codes)}); "
                               f"expected exactly {expected_deaths} with exit code 1 (two per "
                               f"chaos.exit job): something else crashed a worker")


# --- scenario 5: handlers stuck in a database call ----------------------------------------


def stuck_db_scenario(url: str, schema: str, duration: float = 5.0, *, concurrency: int = 2,
                      rate: float = 20.0, drain_timeout: float = 15.0,
                      progress: Progress = _quiet) -> Report:
    """One worker (--concurrency 2, so its handlers' pool holds concurrency + 2 = 4
    connections) first gets ``concurrency + 3`` chaos.hang_db jobs (timeout 0.5 s,
    max_attempts 1): each blocks in ``SELECT pg_sleep(120)`` on its pooled connection and
    is dead-lettered when it times out, its slot getting a fresh thread. Then ordinary
    jobs (which use ``current_job().connection()``) flow for ``duration`` s; they must
    all complete within ``drain_timeout`` s of the end: per docs/architecture.md, "capacity
    is never lost to a stuck handler".
    """
    # --pool-size concurrency + internal + 2, minus the worker's own connections
    pool = concurrency + 2
    report = Report("stuck-db", f"1 worker (--concurrency {concurrency}, handler pool "
                    f"{pool}), {concurrency + 3} jobs stuck in pg_sleep past their 0.5 s "
                    f"timeout, then {rate:g} ordinary jobs/s", duration,
                    fault_kind="jobs stuck in a database call")
    with psycopg.connect(url, autocommit=True) as db:
        prepare(db, schema)
        app = make_app(url, schema)
        args = [*_worker_args(), "--concurrency", str(concurrency),
                "--pool-size", str(concurrency + internal_connections(False) + 2)]
        fleet = Fleet(url, schema, args, Clock(db))
        stream = Stream(app, url, "chaos.work", rate)
        codes: dict[int, int] = {}
        stuck: dict[int, str] = {}
        try:
            (worker,) = fleet.start_serving(1)
            with psycopg.connect(url) as conn:
                for _ in range(concurrency + 3):
                    stuck[app.tasks["chaos.hang_db"].enqueue(conn)] = "chaos.hang_db"
                conn.commit()
            dead = sql.SQL("SELECT count(*) FROM {} WHERE job_id = ANY(%s)").format(
                _table(schema, "dead_letters"))
            try:
                wait_until(lambda: (r := db.execute(dead, [list(stuck)]).fetchone())
                           and r[0] == len(stuck), 30, message="the stuck jobs to time out")
            except AssertionError as exc:
                report.problems.append(str(exc))
            report.faults = len(stuck)
            stream.start()
            threading.Event().wait(duration)  # pacing: the stream runs for `duration`
            stream.stop()
            _drain(db, schema, report, drain_timeout, progress)
            report.extra["server backends still in pg_sleep"] = db.execute(
                "SELECT count(*) FROM pg_stat_activity WHERE query = 'SELECT pg_sleep(120)' "
                "AND starts_with(application_name, %s)",
                [f"pgjobs worker {socket.gethostname()}:{worker.pid}:"[:63]]).fetchone()[0]
            codes.update(fleet.stop_all())
            check_books(db, schema, report, {**stream.ids, **stuck}, fleet.died_at(),
                        set(stuck))
            _finish(report, fleet, codes)
        finally:
            stream.stop()
            pids = [w.pid for w in fleet.workers]
            fleet.close()
            # The backends outlive the worker (PostgreSQL notices a vanished client only
            # when it next talks to it): end them, or each holds a slot for 300 s.
            terminate_worker_backends(db, pids)
    return report


SCENARIOS: dict[str, Callable[..., Report]] = {
    "sigkill": sigkill_scenario,
    "terminate": terminate_scenario,
    "burst": burst_scenario,
    "poison": poison_scenario,
    "stuck-db": stuck_db_scenario,
}

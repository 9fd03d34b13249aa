"""``pgjobs work APP --processes P``: one supervisor process, P ``pgjobs work`` children.

One Python process is bound by one GIL, so CPU-heavy handlers need more processes. The
supervisor starts P children, each the very same ``pgjobs work`` command (minus
``--processes``), so each child is an ordinary worker: its own executors, its own pool,
its own row in ``workers``, its own signal handling and shutdown sequence. The supervisor
only starts, watches, restarts and signals them:

- a child that dies while the supervisor runs is restarted after a backoff (0.5 s,
  doubling up to 30 s, back to 0.5 s once a child has stayed up 30 s), and its exit
  status or signal is logged;
- SIGTERM/SIGINT is forwarded once to every child (each drains as a single worker does);
  the supervisor exits 0 when every child has exited 0. A second signal SIGKILLs the
  children and exits at once with 128 + the signal's number (leases recover their jobs);
- a child of the first launch that exits 2 (a configuration error: bad option, busy
  metrics port…) within its first seconds stops the whole group with exit 2: restarting
  cannot fix it, and the child has already printed its one line.

Children run in their own process group, so a Ctrl-C in a terminal reaches them once,
through the supervisor (the terminal's SIGINT to the whole group would otherwise count as
the first signal and the forwarded one as the second: exit at once). On Linux each child
also gets SIGTERM if the supervisor itself dies (``PR_SET_PDEATHSIG``), so a SIGKILLed
supervisor leaves no orphans serving jobs; they drain and exit.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import logging
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from types import FrameType
from typing import Any

import psycopg

from .errors import ConfigurationError

log = logging.getLogger("pgjobs.supervisor")

RESTART_BACKOFF_FIRST = 0.5
RESTART_BACKOFF_CAP = 30.0
#: A child up this long is healthy: the next restart starts from the first backoff again,
#: and an exit 2 after it is not taken for a configuration error.
STABLE_AFTER = 30.0
#: Extra time, beyond the children's ``--shutdown-timeout``, for their last flushes and
#: goodbyes before the supervisor stops waiting and SIGKILLs what is left.
DRAIN_SLACK = 60.0
POLL_INTERVAL = 0.1
USAGE_ERROR = 2

# --- the connection budget ---------------------------------------------------------------


@dataclass(frozen=True)
class ConnectionBudget:
    """What the server allows, and what is already used (``pgjobs.sql.SERVER_CONNECTIONS``)."""

    max_connections: int
    reserved: int
    in_use: int

    @property
    def free(self) -> int:
        return max(0, self.max_connections - self.reserved - self.in_use)


def read_connection_budget(conn: psycopg.Connection[Any]) -> ConnectionBudget:
    """The server's connection limits and the client connections open now (but ours)."""
    from .sql import SERVER_CONNECTIONS

    row = conn.execute(SERVER_CONNECTIONS, prepare=False).fetchone()
    assert row is not None
    return ConnectionBudget(max_connections=int(row[0]), reserved=int(row[1]),
                            in_use=int(row[2]))


def check_connection_budget(budget: ConnectionBudget, processes: int, pool_size: int) -> None:
    """Refuse (ConfigurationError, one line with the numbers) when P x pool > free."""
    needed = processes * pool_size
    if needed <= budget.free:
        return
    raise ConfigurationError(
        f"--processes {processes} x pool size {pool_size} = {needed} connections, but the "
        f"server has {budget.free} free (max_connections {budget.max_connections} - "
        f"{budget.reserved} reserved - {budget.in_use} in use): lower --processes, "
        "--concurrency or --pool-size, or raise max_connections"
    )


# --- the supervisor ----------------------------------------------------------------------


def _parent_death_signal() -> Callable[[], None] | None:
    """A preexec function asking Linux to SIGTERM the child when its parent dies."""
    if not sys.platform.startswith("linux"):
        return None
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True)
        prctl = libc.prctl
    except (OSError, AttributeError):
        return None
    parent = os.getpid()
    pr_set_pdeathsig = 1

    def preexec() -> None:  # runs in the child between fork and exec: keep it tiny
        prctl(pr_set_pdeathsig, int(signal.SIGTERM), 0, 0, 0)
        if os.getppid() != parent:  # the supervisor died before prctl took effect
            os._exit(1)

    return preexec


@dataclass
class _Child:
    index: int
    process: subprocess.Popen[bytes] | None = None
    started_at: float = 0.0
    generation: int = 0
    backoff: float = RESTART_BACKOFF_FIRST
    restart_at: float | None = None  # waiting to be restarted at this monotonic time
    exit_code: int | None = None  # after the stop: how it ended


def describe_exit(code: int) -> str:
    """``exited with status 1`` / ``was killed by SIGKILL`` (Popen's negative codes)."""
    if code < 0:
        try:
            return f"was killed by {signal.Signals(-code).name}"
        except ValueError:
            return f"was killed by signal {-code}"
    return f"exited with status {code}"


class Supervisor:
    """Runs ``command(i)`` for i in 0..P-1 as child processes until SIGTERM/SIGINT.

    ``run()`` returns the exit code for the supervisor: 0 when every child exited 0
    after the stop, 1 when one did not, 2 for a configuration error a child reported at
    start, 128 + signal number after a second signal.
    """

    def __init__(
        self,
        command: Callable[[int], Sequence[str]],
        processes: int,
        *,
        shutdown_timeout: float,
        env: dict[str, str] | None = None,
        install_signal_handlers: bool = True,
    ) -> None:
        if processes < 1:
            raise ConfigurationError(f"--processes must be >= 1, got {processes}")
        self.command = command
        self.processes = processes
        self.drain_limit = shutdown_timeout + DRAIN_SLACK
        self.env = env
        self.install_signal_handlers = install_signal_handlers
        self.children = [_Child(i) for i in range(processes)]
        self._signals: list[int] = []
        self._wake = threading.Event()
        self._preexec = _parent_death_signal()

    # --- public --------------------------------------------------------------------------

    def stop(self, signum: int = signal.SIGTERM) -> None:
        """What a signal does: the first drains the children, the second kills them."""
        self._signals.append(signum)
        self._wake.set()

    def pids(self) -> list[int]:
        """The live children's process ids, by index (for tests and logs)."""
        return [c.process.pid for c in self.children
                if c.process is not None and c.process.poll() is None]

    def run(self) -> int:
        restore = self._install_signals()
        try:
            return self._run()
        finally:
            restore()

    # --- the loop ------------------------------------------------------------------------

    def _run(self) -> int:
        for child in self.children:
            if self._signals:  # stopped during start-up: start nothing more
                break
            self._spawn(child)
        if not self._signals:
            log.info("supervisor %d: %d worker processes (pids %s); SIGTERM/SIGINT drains "
                     "them all", os.getpid(), self.processes,
                     ", ".join(map(str, self.pids())))
        while not self._signals:
            code = self._watch()
            if code is not None:
                self._forward(signal.SIGTERM)
                self._drain(signal.SIGTERM, signals_before_kill=0)
                return code
            self._wake.wait(POLL_INTERVAL)
            self._wake.clear()
        first = self._signals[0]
        log.info("%s: asking %d worker processes to drain; send it again to stop them at "
                 "once", signal.Signals(first).name, len(self.pids()))
        self._forward(first)
        return self._drain(first, signals_before_kill=1)

    def _spawn(self, child: _Child) -> None:
        child.process = subprocess.Popen(
            list(self.command(child.index)), env=self.env, stdin=subprocess.DEVNULL,
            process_group=0, preexec_fn=self._preexec,
        )
        child.started_at = time.monotonic()
        child.restart_at = None

    def _watch(self) -> int | None:
        """Restart dead children when their backoff is over; an exit code ends the run."""
        now = time.monotonic()
        for child in self.children:
            if child.restart_at is not None:
                if now >= child.restart_at:
                    child.generation += 1
                    self._spawn(child)
                    assert child.process is not None
                    log.info("worker process %d restarted (pid %d)", child.index,
                             child.process.pid)
                continue
            assert child.process is not None
            code = child.process.poll()
            if code is None:
                continue
            uptime = now - child.started_at
            if code == USAGE_ERROR and child.generation == 0 and uptime < STABLE_AFTER:
                log.error("worker process %d (pid %d) exited with status 2 at start (a "
                          "configuration error; see its message above): stopping",
                          child.index, child.process.pid)
                return USAGE_ERROR
            if uptime >= STABLE_AFTER:
                child.backoff = RESTART_BACKOFF_FIRST
            log.warning("worker process %d (pid %d) %s after %.1fs; restarting in %.1fs",
                        child.index, child.process.pid, describe_exit(code), uptime,
                        child.backoff)
            child.restart_at = now + child.backoff
            child.backoff = min(RESTART_BACKOFF_CAP, child.backoff * 2)
        return None

    def _running(self) -> list[_Child]:
        return [c for c in self.children if c.process is not None and c.restart_at is None
                and c.process.poll() is None]

    def _forward(self, signum: int) -> None:
        for child in self._running():
            assert child.process is not None
            try:
                child.process.send_signal(signum)
            except ProcessLookupError:
                pass

    def _drain(self, forwarded: int, signals_before_kill: int) -> int:
        """Wait for every child to exit; one more signal than ``signals_before_kill``
        (a second SIGTERM/SIGINT) kills them at once.

        A child killed by the ``forwarded`` signal itself got it before it could install
        its handlers (still importing): it had claimed nothing, so that is clean too.
        """
        clean = (0, -forwarded)
        deadline = time.monotonic() + self.drain_limit
        waiting = [c for c in self.children if c.restart_at is None and c.process is not None]
        while True:
            for child in waiting:
                assert child.process is not None
                code = child.process.poll()
                if code is not None and child.exit_code is None:
                    child.exit_code = code
                    log.log(logging.INFO if code in clean else logging.WARNING,
                            "worker process %d (pid %d) %s", child.index, child.process.pid,
                            describe_exit(code))
            if all(c.exit_code is not None for c in waiting):
                break
            if len(self._signals) > signals_before_kill:
                second = self._signals[-1]
                log.warning("second %s: killing %d worker processes now; leases will "
                            "recover their jobs", signal.Signals(second).name,
                            len(self._running()))
                self._kill_all()
                return 128 + second
            if time.monotonic() >= deadline:
                log.error("worker processes still running %.0fs after the signal: killing "
                          "them", self.drain_limit)
                self._kill_all()
                return 1
            self._wake.wait(POLL_INTERVAL)
            self._wake.clear()
        for child in self.children:  # stopped while waiting to restart: nothing to wait for
            child.restart_at = None
        if all(c.exit_code in clean for c in waiting):
            log.info("all %d worker processes stopped cleanly", len(waiting))
            return 0
        return 1

    def _kill_all(self) -> None:
        for child in self._running():
            assert child.process is not None
            try:
                child.process.kill()
            except ProcessLookupError:
                pass
        for child in self.children:
            if child.process is not None:
                try:
                    child.process.wait(timeout=10)
                except subprocess.TimeoutExpired:
                    pass

    def _install_signals(self) -> Callable[[], None]:
        on_main_thread = threading.current_thread() is threading.main_thread()
        if not self.install_signal_handlers or not on_main_thread:
            return lambda: None
        previous = {s: signal.getsignal(s) for s in (signal.SIGTERM, signal.SIGINT)}

        def on_signal(signum: int, frame: FrameType | None) -> None:
            self.stop(signum)

        for s in previous:
            signal.signal(s, on_signal)

        def restore() -> None:
            for s, handler in previous.items():
                signal.signal(s, handler)

        return restore

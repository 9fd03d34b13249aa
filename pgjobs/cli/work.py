"""`pgjobs work APP`: run the worker runtime for an App found by import path."""

from __future__ import annotations

import importlib
import logging
import os
import signal
import sys
from collections.abc import Callable
from types import FrameType
from typing import Annotated, Any

import typer

from ..app import App
from ..logformat import formatter
from ..worker.settings import (
    CONNECTION_ROLES,
    DEFAULT_CONCURRENCY,
    DEFAULT_LEASE_TIMEOUT,
    DEFAULT_POLL_INTERVAL,
    DEFAULT_SHUTDOWN_TIMEOUT,
    DEFAULT_WAIT_FOR_DATABASE,
    INTERNAL_CONNECTIONS,
    POOL_HEADROOM,
)
from .common import SETTINGS, connect, fail, parse_duration


def load_app(spec: str) -> App:
    """Import ``module:attribute`` (current directory first on sys.path) as an App."""
    module_name, sep, attribute = spec.partition(":")
    if not sep or not module_name or not attribute:
        fail(f"APP must be 'module:attribute' (e.g. 'myproject.jobs:app'), got {spec!r}")
    cwd = os.getcwd()
    if cwd not in sys.path:
        sys.path.insert(0, cwd)
    try:
        module = importlib.import_module(module_name)
    except ModuleNotFoundError as exc:
        if exc.name and module_name.startswith(exc.name):
            fail(f"cannot import {module_name!r}: no such module in {cwd} or on the Python "
                 "path (run from your project's directory or set PYTHONPATH)")
        fail(f"importing {module_name!r} failed: {exc}")
    except Exception as exc:
        fail(f"importing {module_name!r} failed: {type(exc).__name__}: {exc}")
    obj: object = module
    for part in attribute.split("."):
        if not hasattr(obj, part):
            fail(f"module {module_name!r} has no attribute {attribute!r}")
        obj = getattr(obj, part)
    if not isinstance(obj, App):
        fail(f"{spec!r} is a {type(obj).__name__}, not a pgjobs.App")
    if SETTINGS.database_url:
        obj._database_url = SETTINGS.url()
    if SETTINGS.schema and SETTINGS.schema != obj.schema:
        obj._use_schema(SETTINGS.schema)
    return obj


def configure_logging(level: str, log_format: str = "text") -> None:
    """Log lines to stderr; Alembic and the pool only when something is wrong."""
    numeric = logging.getLevelName(level.upper())
    if not isinstance(numeric, int):
        fail(f"--log-level must be one of debug, info, warning, error; got {level!r}")
    try:
        chosen = formatter(log_format)
    except ValueError as exc:
        fail(str(exc))
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(chosen)
    logging.basicConfig(level=numeric, handlers=[handler])
    for noisy in ("alembic", "psycopg.pool"):
        logging.getLogger(noisy).setLevel(max(numeric, logging.WARNING))


class StartupSignals:
    """SIGTERM/SIGINT while ``pgjobs work`` is still starting (importing the App,
    checking the schema): remembered and honoured as soon as the worker exists, instead
    of the default action killing the process (exit 143) mid-start. A second signal
    exits at once, as it does later. The worker installs its own handlers in ``run()``.
    """

    def __init__(self) -> None:
        self.received: str | None = None
        self._worker: Any = None
        for signum in (signal.SIGTERM, signal.SIGINT):
            signal.signal(signum, self._on_signal)

    def _on_signal(self, signum: int, frame: FrameType | None) -> None:
        name = signal.Signals(signum).name
        if self.received is not None:
            os._exit(128 + signum)
        self.received = name
        logging.getLogger("pgjobs.worker").info(
            "%s during start-up: the worker will stop before claiming anything", name)
        if self._worker is not None:
            self._worker.stop()

    def attach(self, worker: Any) -> None:
        self._worker = worker
        if self.received is not None:
            worker.stop()


def parse_queues(queues: str | None, exact: list[str] | None = None) -> list[str] | None:
    """``--queues a,b`` → ``["a", "b"]``, plus every ``--queue NAME`` as given (a name
    that contains a comma); neither → every queue."""
    if queues is None and not exact:
        return None
    names = [q.strip() for q in (queues or "").split(",") if q.strip()]
    names += [q for q in exact or [] if q not in names]
    if not names:
        fail("--queues needs at least one queue name (omit it to serve every queue)")
    return names


def work(
    ctx: typer.Context,
    app: Annotated[str, typer.Argument(help="The App to serve, as module:attribute.")],
    concurrency: Annotated[int, typer.Option(
        help="Jobs run at once, never more: sync handlers (one thread each) and "
             "coroutine handlers (async def, on one event loop) together.")
    ] = DEFAULT_CONCURRENCY,
    queues: Annotated[str | None, typer.Option(
        help="Comma-separated queues to serve (default: every queue).",
        show_default=False)] = None,
    queue: Annotated[list[str] | None, typer.Option(
        "--queue", help="A queue to serve, named exactly (may contain commas); repeatable, "
        "combines with --queues.", show_default=False)] = None,
    pool_size: Annotated[int | None, typer.Option(
        help=f"Connections this worker may open in all. Default: concurrency + "
             f"{INTERNAL_CONNECTIONS} of pgjobs' own ({', '.join(CONNECTION_ROLES)}) + "
             f"{POOL_HEADROOM} headroom. Refuses to start if smaller than concurrency + "
             f"{INTERNAL_CONNECTIONS} (+ {INTERNAL_CONNECTIONS - 1} with --poll-only). "
             "The rest is the handlers' budget, split in half between the sync pool "
             "(connection()) and the async pool (aconnection()) when the App has both "
             "kinds of handlers.",
        show_default=False)] = None,
    shutdown_timeout: Annotated[float, typer.Option(
        help="Seconds running jobs get to finish after SIGTERM before they are returned "
             "to pending.")] = DEFAULT_SHUTDOWN_TIMEOUT,
    lease_timeout: Annotated[float, typer.Option(
        help="Seconds without a heartbeat before another worker rescues a job.")
    ] = DEFAULT_LEASE_TIMEOUT,
    poll_interval: Annotated[float, typer.Option(
        help="Fallback polling period in seconds (jittered); NOTIFY wakes workers sooner.")
    ] = DEFAULT_POLL_INTERVAL,
    poll_only: Annotated[bool, typer.Option(
        help="No LISTEN connection (e.g. behind PgBouncer in transaction mode); one "
             "internal connection fewer.")] = False,
    metrics_port: Annotated[int | None, typer.Option(
        help="Serve Prometheus /metrics on this port.", show_default=False)] = None,
    metrics_host: Annotated[str, typer.Option(
        help="Address for /metrics (default: localhost only).")] = "127.0.0.1",
    history_retention: Annotated[str, typer.Option(
        help="Keep per-minute job history this long (0: forever).")] = "7d",
    dead_letter_retention: Annotated[str, typer.Option(
        help="Delete dead letters older than this (0: keep forever).")] = "30d",
    log_level: Annotated[str, typer.Option(help="debug, info, warning or error.")] = "info",
    log_format: Annotated[str, typer.Option(
        help="text, or json: one object per line with time, level, logger, message and "
             "the job fields (job_id, task, attempt, error).")] = "text",
    wait_for_database: Annotated[float, typer.Option(
        help="Seconds to keep retrying an unreachable database at start (a container "
             "starting before PostgreSQL) before giving up with exit 2.")
    ] = DEFAULT_WAIT_FOR_DATABASE,
    processes: Annotated[int, typer.Option(
        min=1, help="Worker processes, each with --concurrency executors and its own pool, "
        "under one supervisor that restarts a child that dies and forwards SIGTERM/SIGINT. "
        "With --metrics-port P, child i serves /metrics on P + i. Refuses to start if "
        "processes x pool size exceeds the server's free connections.")] = 1,
    listen_database_url: Annotated[str | None, typer.Option(
        help="LISTEN on this URL (direct to PostgreSQL) while everything else goes through "
             "the database URL, taken for a transaction-mode pooler such as PgBouncer: "
             "nothing is prepared on it.", show_default=False)] = None,
) -> None:
    """Run a fixed pool of workers for APP until SIGTERM/SIGINT, then drain cleanly."""
    startup = StartupSignals()  # first: loading the App below may take a while
    configure_logging(log_level, log_format)
    retention = (parse_duration(history_retention, "--history-retention"),
                 parse_duration(dead_letter_retention, "--dead-letter-retention"))
    the_app = load_app(app)
    worker = the_app.worker(
        concurrency=concurrency, queues=parse_queues(queues, queue), pool_size=pool_size,
        shutdown_timeout=shutdown_timeout, lease_timeout=lease_timeout,
        poll_interval=poll_interval, poll_only=poll_only,
        history_retention=retention[0], dead_letter_retention=retention[1],
        wait_for_database=wait_for_database, listen_database_url=listen_database_url,
    )
    if processes > 1:
        raise typer.Exit(supervise(ctx, the_app, worker, processes, app, metrics_port, startup))
    if metrics_port is not None:
        from ..prometheus import serve_metrics

        provider = serve_metrics(metrics_port, metrics_host)
        if the_app.meter_provider is None:
            the_app.meter_provider = provider
            the_app._use_schema(the_app.schema)  # rebuild instruments on the new provider
        logging.getLogger("pgjobs.worker").info(
            "serving Prometheus metrics on http://%s:%d/metrics", metrics_host, metrics_port)
    startup.attach(worker)
    worker.run()


def supervise(ctx: typer.Context, the_app: App, worker: Any, processes: int, app_spec: str,
              metrics_port: int | None, startup: StartupSignals) -> int:
    """``--processes P``: check the server has room for P pools, then run P children."""
    from ..supervisor import Supervisor, check_connection_budget, read_connection_budget

    url = the_app.database_url
    # Like a single worker: keep retrying an unreachable database for --wait-for-database
    # seconds (a container starting before PostgreSQL), and a signal meanwhile ends it.
    startup.attach(worker)
    if not worker._wait_for_database(url):
        logging.getLogger("pgjobs.worker").info(
            "stopped before the database was reachable: no worker process was started")
        return 0
    with connect(autocommit=True, url=url) as conn:
        budget = read_connection_budget(conn)
    check_connection_budget(budget, processes, worker.pool_size)
    # Once here rather than one line per child: unmigrated or outdated schema.
    worker._check_schema(url)
    supervisor = Supervisor(child_command(ctx, app_spec, metrics_port), processes,
                            shutdown_timeout=worker.shutdown_timeout)
    startup.attach(supervisor)  # a signal during start-up: no child is started
    return supervisor.run()


def child_command(ctx: typer.Context, app_spec: str,
                  metrics_port: int | None) -> Callable[[int], list[str]]:
    """``pgjobs work`` as this process was asked to run, minus ``--processes``: every
    option given on the command line, the global ones too; child i serves metrics on
    ``metrics_port + i``. Rebuilt from the parsed options (not sys.argv) so it is the
    same whatever ran this process (console script, ``python -m pgjobs``, a test)."""
    options: list[str] = []
    for param in ctx.command.params:
        name = param.name
        if (param.param_type_name != "option" or name in (None, "processes", "metrics_port")
                or _left_at_default(ctx, name)):
            continue
        value = ctx.params[name]
        if getattr(param, "is_flag", False):
            flags = param.opts[0] if value else param.secondary_opts[0]
            options.append(flags)
        elif param.multiple:
            for item in value:
                options += [param.opts[0], str(item)]
        else:
            options += [param.opts[0], str(value)]
    global_options: list[str] = []
    if SETTINGS.database_url:
        global_options += ["--database-url", SETTINGS.database_url]
    if SETTINGS.schema:
        global_options += ["--schema", SETTINGS.schema]
    base = [sys.executable, "-m", "pgjobs", *global_options, "work", app_spec, *options]

    def command(index: int) -> list[str]:
        if metrics_port is None:
            return base
        return [*base, "--metrics-port", str(metrics_port + index)]

    return command


def _left_at_default(ctx: typer.Context, name: str | None) -> bool:
    """True for an option not given (left at its default): not passed on to children."""
    source = ctx.get_parameter_source(name) if name else None
    return source is None or source.name == "DEFAULT"

"""`pgjobs demo`: a self-contained tour on the embedded server (or PGJOBS_DATABASE_URL).

migrate → enqueue a burst larger than the queue's limit (QueueFull) → work it with a live
view → stats and dead letters. Everything happens on the queue ``pgjobs-demo``.
"""

from __future__ import annotations

import logging
import random
import shutil
import sys
import threading
import time
from pathlib import Path
from typing import Any

import psycopg
from psycopg import sql as pgsql
from rich.console import Console
from rich.live import Live

from . import admin, migrate, tables
from .app import App
from .config import is_embedded_url, redact_url
from .context import current_job
from .errors import PermanentError, QueueFull

QUEUE = "pgjobs-demo"
LIMIT = 300
BURST = 400


def build_app(database_url: str | None, schema: str | None) -> App:
    """The demo's App and its three tasks: a steady one, a flaky one, a broken one."""
    app = App(database_url, schema=schema)

    # Handler times are chosen so the live view shows ~5 s of progress on 4 executors.
    @app.task(name="demo.resize_image", queue=QUEUE)
    def resize_image(image_id: int) -> None:
        time.sleep(random.uniform(0.04, 0.12))

    @app.task(name="demo.send_webhook", queue=QUEUE, max_attempts=3,
              backoff=lambda attempt: 0.2 * attempt)
    def send_webhook(event_id: int) -> None:
        time.sleep(random.uniform(0.02, 0.06))
        # Fails now and then, like a remote endpoint would; retries usually succeed.
        if current_job().attempt == 1 and random.random() < 0.4:
            raise ConnectionError(f"endpoint timed out for event {event_id}")
        if event_id % 97 == 0:
            raise ConnectionError(f"endpoint for event {event_id} is down for good")

    @app.task(name="demo.parse_upload", queue=QUEUE)
    def parse_upload(upload_id: int) -> None:
        raise PermanentError(f"upload {upload_id} is not a valid CSV file")

    return app


def run_demo(database_url: str | None = None, schema: str | None = None) -> None:
    """Run the tour; prints to the terminal."""
    console = Console()
    logging.getLogger("pgjobs").setLevel(logging.ERROR)
    app = build_app(database_url, schema)
    console.rule("[bold]pgjobs demo")
    console.print(f"1. migrate: schema [bold]{app.schema}[/] on {_where(app.database_url)}")
    migrate.upgrade(app.database_url, app.schema)
    _reset(app)

    resize, webhook, parse = (app.tasks[n] for n in (
        "demo.resize_image", "demo.send_webhook", "demo.parse_upload"))
    console.print(f"2. enqueue: a burst of {BURST} jobs into queue [bold]{QUEUE}[/], whose "
                  f"pending limit is {LIMIT} (`pgjobs queues limit {QUEUE} {LIMIT}`)")
    accepted = rejected = 0
    first_rejection: QueueFull | None = None
    with psycopg.connect(app.database_url) as conn:
        app.set_queue_limit(conn, QUEUE, LIMIT)
        conn.commit()
        for i in range(BURST):
            task = webhook if i % 3 == 1 else parse if i % 50 == 7 else resize
            kwargs = {"event_id": i} if task is webhook else (
                {"upload_id": i} if task is parse else {"image_id": i})
            try:
                task.enqueue(conn, **kwargs)
                conn.commit()  # one transaction per request, as a web app would
                accepted += 1
            except QueueFull as full:
                first_rejection = first_rejection or full
                rejected += 1
    console.print(f"   accepted {accepted}, rejected {rejected} with QueueFull")
    if first_rejection is not None:
        console.print(f"   → {first_rejection}")
        console.print(f"   → a web handler answers 429 with Retry-After: "
                      f"{max(1, round(first_rejection.retry_after))}")

    console.print("3. work: `pgjobs work` with 4 executors (live view)")
    worker = app.worker(concurrency=4, queues=[QUEUE], install_signal_handlers=False,
                        poll_interval=0.2)
    failures: list[BaseException] = []

    def work() -> None:
        try:
            worker.run()
        except BaseException as exc:  # re-raised below, on the main thread
            failures.append(exc)

    thread = threading.Thread(target=work, name="demo-worker", daemon=True)
    thread.start()
    started = time.monotonic()
    with psycopg.connect(app.database_url, autocommit=True) as conn, \
            Live(console=console, refresh_per_second=8) as live:
        while True:
            row = _queue_row(conn, app)
            live.update(_live_table(row, worker, time.monotonic() - started))
            if row["pending"] + row["scheduled"] + row["running"] == 0 and worker.started.is_set():
                break
            if not thread.is_alive():
                break
            time.sleep(0.1)
    elapsed = time.monotonic() - started
    worker.stop()
    thread.join(timeout=30)
    if failures:
        raise failures[0]
    if not console.is_terminal:
        console.line()  # a live view printed into a pipe ends without a newline
    console.print(f"   worked {worker.stats.succeeded} jobs in {elapsed:.1f}s "
                  f"({worker.stats.retried} retries)")

    cli = cli_command()
    console.print(f"4. results: `{cli} stats` and `{cli} dead-letters list`")
    with psycopg.connect(app.database_url, autocommit=True) as conn:
        report = [r for r in admin.queue_report(conn, app.sql) if r["queue"] == QUEUE]
        letters = admin.list_dead_letters(conn, app.sql, queue=QUEUE, limit=10)
    tables.print_renderable(tables.queues_table(report), console)
    tables.print_renderable(tables.dead_letters_table(
        letters, title=f"dead letters (first {len(letters)})", error_width=90), console)
    console.print(f"Try: {cli} dead-letters show {letters[0]['id'] if letters else 'ID'}; "
                  f"{cli} dead-letters requeue --all --task demo.send_webhook; {cli} stats")
    if is_embedded_url(app.database_url):
        console.print(f"The embedded PostgreSQL keeps running for the next command; "
                      f"`{cli} server stop` stops it (its data stays in ./.pgjobs).")


def cli_command() -> str:
    """How to run the pgjobs CLI from here: ``pgjobs`` when that is on PATH, else the
    script's own path (``scripts/demo`` runs ``.venv/bin/pgjobs``, which is not on PATH)."""
    script = Path(sys.argv[0])
    on_path = shutil.which("pgjobs")
    if script.name == "pgjobs" and script.exists():
        if on_path and Path(on_path).resolve() == script.resolve():
            return "pgjobs"
        try:
            return str(script.resolve().relative_to(Path.cwd().resolve()))
        except ValueError:
            return str(script.resolve())
    return "pgjobs" if on_path else f"{sys.executable} -m pgjobs"


def _where(url: str) -> str:
    return "the embedded PostgreSQL (./.pgjobs)" if is_embedded_url(url) else redact_url(url)


def _reset(app: App) -> None:
    """Forget earlier demo runs (only the demo queue is touched)."""
    with psycopg.connect(app.database_url, autocommit=True) as conn:
        for table in ("jobs", "dead_letters"):
            conn.execute(pgsql.SQL("DELETE FROM {} WHERE queue = %s").format(
                pgsql.Identifier(app.schema, table)), [QUEUE])


def _queue_row(conn: psycopg.Connection[Any], app: App) -> dict[str, Any]:
    for row in admin.queue_stats(conn, app.sql):
        if row["queue"] == QUEUE:
            return row
    return {"pending": 0, "scheduled": 0, "running": 0, "dead": 0}


def _live_table(row: dict[str, Any], worker: Any, elapsed: float) -> Any:
    stats = worker.stats
    busy = worker.executors.busy() if worker.executors else 0
    return tables.progress_table(f"queue {QUEUE} — {elapsed:4.1f}s", {
        "pending": row["pending"], "retry wait": row["scheduled"], "running": row["running"],
        "succeeded": stats.succeeded, "retried": stats.retried, "dead": row["dead"],
        "busy executors": f"{busy}/{worker.concurrency}",
    })

"""The webhook examples (examples/), run as their READMEs say, over real HTTP.

Each receiver runs as a real server process (``uvicorn`` for FastAPI, ``flask run`` for
Flask) on this test's schema; a real ``pgjobs work examples.webhook_tasks:app`` process
delivers the events to a recording HTTP server in this process — with its coroutine handler
for the FastAPI receiver's jobs, with its thread executors for the Flask receiver's.
"""

from __future__ import annotations

import json
import math
import re
import signal
import subprocess
import sys
import threading
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import httpx
import psycopg
import pytest
from psycopg import sql

import pgjobs
from examples.webhook_events import retry_after_header

from .conftest import cli_env
from .workers import CollectedProcess, WorkerProcess, wait_until

pytestmark = [pytest.mark.slow, pytest.mark.timeout(240)]

LIMIT = 5  # the webhooks queue's pending limit during the test
BURST = 16  # distinct events sent at once while no worker runs
SERVERS = {
    "fastapi": ["-m", "uvicorn", "examples.fastapi_webhooks.app:app",
                "--host", "127.0.0.1", "--port", "0"],
    "flask": ["-m", "flask", "--app", "examples.flask_webhooks.app", "run",
              "--host", "127.0.0.1", "--port", "0"],
}
# The delivery task each receiver enqueues: the async app's is a coroutine handler.
DELIVERY_TASK = {"fastapi": "webhooks.deliver_async", "flask": "webhooks.deliver"}
_LISTENING = re.compile(r"running on (http://127\.0\.0\.1:\d+)", re.IGNORECASE)


def with_search_path(url: str, schema: str) -> str:
    """``url`` whose sessions find unqualified tables (the example's) in ``schema``."""
    return f"{url}{'&' if '?' in url else '?'}options=-csearch_path%3D{schema}"


class Recorder:
    """A downstream HTTP endpoint that records every delivery the worker POSTs."""

    def __init__(self) -> None:
        self.deliveries: list[tuple[str, dict[str, Any]]] = []
        recorder = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
                recorder.deliveries.append((self.headers["webhook-id"], body))
                self.send_response(204)
                self.end_headers()

            def log_message(self, format: str, *args: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/deliveries"
        self._thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self._thread.start()

    def delivered_ids(self) -> set[str]:
        return {event_id for event_id, _ in list(self.deliveries)}

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


class ServerProcess(CollectedProcess):
    """A receiver served by its real server command; stderr collected line by line."""

    def __init__(self, kind: str, env: dict[str, str]) -> None:
        super().__init__([sys.executable, *SERVERS[kind]], env)

    def base_url(self) -> str:
        """The URL the server listens on, once it says so (it chose a free port)."""
        found = wait_until(lambda: _LISTENING.search(self.log) or self.proc.poll() is not None,
                           timeout=60, message="the receiver to listen")
        assert self.proc.poll() is None, self.log
        return str(found.group(1))

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=15)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(timeout=10)
        self._reader.join(timeout=5)


@contextmanager
def running(kind: str, env: dict[str, str]) -> Iterator[tuple[ServerProcess, httpx.Client]]:
    server = ServerProcess(kind, env)
    try:
        with httpx.Client(base_url=server.base_url(), timeout=30.0) as client:
            yield server, client
    finally:
        server.stop()


def post_event(client: httpx.Client, event_id: str, source: str = "shop") -> httpx.Response:
    return client.post(f"/webhooks/{source}", json={"id": event_id, "amount": 42},
                       headers={"webhook-id": event_id})


def stored_events(db: psycopg.Connection[Any], schema: str) -> dict[str, int]:
    """event_id -> job_id of the receiver's table."""
    rows = db.execute(sql.SQL("SELECT event_id, job_id FROM {}").format(
        sql.Identifier(schema, "webhook_events"))).fetchall()
    return dict(rows)


def undelivered(db: psycopg.Connection[Any], schema: str) -> int:
    row = db.execute(sql.SQL("SELECT count(*) FROM {} WHERE delivered_at IS NULL").format(
        sql.Identifier(schema, "webhook_events"))).fetchone()
    assert row is not None
    return int(row[0])


def lock_waits(db: psycopg.Connection[Any], application_name: str) -> list[str]:
    """What the sessions of ``application_name`` wait for, among locks (sorted)."""
    rows = db.execute(
        "SELECT wait_event FROM pg_stat_activity "
        "WHERE application_name = %s AND wait_event_type = 'Lock' ORDER BY wait_event",
        [application_name]).fetchall()
    return [row[0] for row in rows]


def jobs_succeeded(db: psycopg.Connection[Any], schema: str, task: str) -> int:
    """Jobs of ``task`` that ran to success, from the worker's per-minute history."""
    row = db.execute(sql.SQL("SELECT coalesce(sum(succeeded), 0) FROM {} WHERE task = %s")
                     .format(sql.Identifier(schema, "job_history")), [task]).fetchone()
    assert row is not None
    return int(row[0])


def live_jobs(db: psycopg.Connection[Any], schema: str) -> dict[int, tuple[str, dict, str]]:
    """id -> (task, args, unique_key) of the jobs still in `jobs`."""
    rows = db.execute(sql.SQL("SELECT id, task, args, unique_key FROM {}").format(
        sql.Identifier(schema, "jobs"))).fetchall()
    return {row[0]: (row[1], row[2], row[3]) for row in rows}


@pytest.mark.parametrize("kind", sorted(SERVERS))
def test_receiver_accepts_throttles_redelivers_and_drains(
        kind: str, app: pgjobs.App, pg_url: str, schema: str, conn: psycopg.Connection[Any],
        db: psycopg.Connection[Any]) -> None:
    app.set_queue_limit(conn, "webhooks", LIMIT)
    conn.commit()
    url = with_search_path(pg_url, schema)
    receiver_name = f"examples-{schema}"  # the receiver's sessions, in pg_stat_activity
    recorder = Recorder()
    env = cli_env(f"{url}&application_name={receiver_name}", schema)
    worker: WorkerProcess | None = None
    try:
        with running(kind, env) as (server, client):
            # A request without an event id is refused, and stores nothing.
            refused = client.post("/webhooks/shop", json={"amount": 1})
            assert refused.status_code in (400, 422), refused.text
            assert "detail" in refused.json()

            # A burst past the limit, all at once, with no worker running.
            events = [f"evt-{n}" for n in range(BURST)]
            with ThreadPoolExecutor(8) as pool:
                answers = dict(zip(events, pool.map(lambda e: post_event(client, e), events),
                                   strict=True))
            assert {r.status_code for r in answers.values()} == {202, 429}, server.log
            accepted = {e: r.json()["job_id"] for e, r in answers.items() if r.status_code == 202}
            rejected = [e for e, r in answers.items() if r.status_code == 429]
            # The limit was reached, never undershot (requests in flight while the receiver
            # re-counts may pass it a little: the documented overshoot bound).
            assert len(accepted) >= LIMIT and rejected
            assert len(set(accepted.values())) == len(accepted)
            for event in rejected:
                full = answers[event]
                assert full.headers["Retry-After"] == str(math.ceil(full.json()["retry_after"]))
                assert int(full.headers["Retry-After"]) >= 1

            # Exactly the accepted events are stored, each with its job, in one transaction.
            assert stored_events(db, schema) == accepted
            assert live_jobs(db, schema) == {
                job_id: (DELIVERY_TASK[kind], {"source": "shop", "event_id": event},
                         f"webhook:shop:{event}")
                for event, job_id in accepted.items()}

            # While the queue is full: a re-delivered event gets its job id again (202),
            # a rejected one is still rejected; nothing new is stored or enqueued.
            again = next(iter(accepted))
            redelivered = post_event(client, again)
            assert (redelivered.status_code, redelivered.json()) == (
                202, {"job_id": accepted[again]})
            assert post_event(client, rejected[0]).status_code == 429
            assert stored_events(db, schema) == accepted
            assert set(live_jobs(db, schema)) == set(accepted.values())
            assert recorder.deliveries == []

            # A real worker drains the queue: every stored event is delivered downstream.
            worker = WorkerProcess(url, schema, "--concurrency", "4",
                                   app="examples.webhook_tasks:app",
                                   env_extra={"WEBHOOK_FORWARD_URL": recorder.url})
            worker.wait_started()
            wait_until(lambda: not live_jobs(db, schema) and not undelivered(db, schema),
                       timeout=60, message="the worker to deliver every event")
            assert recorder.delivered_ids() == set(accepted)
            assert all(body == {"source": "shop", "event": {"id": e, "amount": 42}}
                       for e, body in recorder.deliveries)

            # Drained, the receiver accepts again: the events refused earlier now get in.
            retried = post_event(client, rejected[0])
            assert retried.status_code == 202, retried.text
            assert retried.json()["job_id"] not in accepted.values()
            # An event re-delivered after its job finished gets the same id, no new job.
            late = post_event(client, again)
            assert (late.status_code, late.json()) == (202, {"job_id": accepted[again]})

            # Two deliveries of a new event racing: this test's lock holds the first between
            # enqueueing and storing, so the second meets its uncommitted job on the unique
            # key and waits for it. Both get one job; one event is stored (checked below).
            with psycopg.connect(pg_url) as lock, ThreadPoolExecutor(2) as pool:
                lock.execute(sql.SQL("LOCK TABLE {} IN SHARE MODE").format(
                    sql.Identifier(schema, "webhook_events")))
                racing = [pool.submit(post_event, client, "evt-racing") for _ in range(2)]
                wait_until(lambda: lock_waits(db, receiver_name) == ["relation", "transactionid"],
                           message="one request blocked storing, the other on the unique key")
                lock.commit()
                raced = [future.result() for future in racing]
            assert [r.status_code for r in raced] == [202, 202], [r.text for r in raced]
            assert raced[0].json() == raced[1].json()

            wait_until(lambda: not live_jobs(db, schema) and not undelivered(db, schema),
                       timeout=60, message="the worker to deliver the later events")
            assert recorder.delivered_ids() == {*accepted, rejected[0], "evt-racing"}
            assert stored_events(db, schema)["evt-racing"] == raced[0].json()["job_id"]
            assert len(stored_events(db, schema)) == len(accepted) + 2

            worker.signal(signal.SIGTERM)
            assert worker.wait() == 0, worker.log
        # One job ran per stored event: no re-delivery, late or racing, enqueued another.
        assert jobs_succeeded(db, schema, DELIVERY_TASK[kind]) == len(accepted) + 2
    finally:
        if worker is not None:
            worker.kill()
        recorder.close()


def test_retry_after_header_rounds_up_to_whole_seconds() -> None:
    def full(retry_after: float) -> pgjobs.QueueFull:
        return pgjobs.QueueFull("webhooks", pending=5, limit=5, retry_after=retry_after)

    assert [retry_after_header(full(s)) for s in (0.2, 1.0, 2.5)] == ["1", "1", "3"]



def test_one_worker_delivers_for_both_receivers(
        pg_url: str, schema: str, db: psycopg.Connection[Any]) -> None:
    """The README's set-up: both receivers on one database, one `pgjobs work` running the
    sync and the coroutine delivery side by side."""
    url = with_search_path(pg_url, schema)
    recorder = Recorder()
    sent: dict[str, set[str]] = {}
    try:
        # One after the other: the first creates webhook_events, the second finds it.
        with running("fastapi", cli_env(url, schema)) as (_, fastapi), \
                running("flask", cli_env(url, schema)) as (_, flask):
            for source, client in (("shop", fastapi), ("crm", flask)):
                sent[source] = {f"{source}-{n}" for n in range(3)}
                for event in sorted(sent[source]):
                    assert post_event(client, event, source).status_code == 202
        worker = WorkerProcess(url, schema, app="examples.webhook_tasks:app",
                               env_extra={"WEBHOOK_FORWARD_URL": recorder.url})
        try:
            worker.wait_started()
            wait_until(lambda: not live_jobs(db, schema) and not undelivered(db, schema),
                       timeout=60, message="the worker to deliver every event")
            worker.signal(signal.SIGTERM)
            assert worker.wait() == 0, worker.log
        finally:
            worker.kill()
        by_source: dict[str, set[str]] = {}
        for event_id, body in recorder.deliveries:
            by_source.setdefault(body["source"], set()).add(event_id)
        assert by_source == sent
        assert jobs_succeeded(db, schema, DELIVERY_TASK["fastapi"]) == 3
        assert jobs_succeeded(db, schema, DELIVERY_TASK["flask"]) == 3
    finally:
        recorder.close()

"""Helpers shared by the dashboard's HTTP and browser tests."""

from __future__ import annotations

import datetime as dt
import json
import re
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import anyio
import httpx
import psycopg
from psycopg import sql

ORIGIN = "http://testserver"


class Client:
    """A synchronous HTTP client over httpx's ASGI transport (no server, no sockets).

    Cookies persist between requests like a browser's; POSTs carry the same-origin
    ``Origin`` header a browser sends unless the test overrides it.
    """

    def __init__(self, app: Any, base_url: str = ORIGIN) -> None:
        self.app = app
        self.base_url = base_url
        self.cookies = httpx.Cookies()

    def request(self, method: str, path: str, *, follow: bool = True,
                **kwargs: Any) -> httpx.Response:
        async def go() -> httpx.Response:
            transport = httpx.ASGITransport(app=self.app)
            async with httpx.AsyncClient(transport=transport, base_url=self.base_url,
                                         cookies=self.cookies,
                                         follow_redirects=follow) as client:
                response = await client.request(method, path, **kwargs)
                self.cookies = httpx.Cookies(client.cookies)
                return response

        return anyio.run(go)

    def get(self, path: str, **kwargs: Any) -> httpx.Response:
        return self.request("GET", path, **kwargs)

    def post(self, path: str, data: Any = None, *, origin: str | None = ORIGIN,
             headers: dict[str, str] | None = None, **kwargs: Any) -> httpx.Response:
        headers = dict(headers or {})
        if origin is not None:
            headers.setdefault("origin", origin)
        return self.request("POST", path, data=data, headers=headers, **kwargs)


def insert_job(db: psycopg.Connection[Any], schema: str, *, queue: str = "default",
               task: str = "t", args: dict[str, Any] | None = None, state: str = "pending",
               delay: float = 0.0, last_error: str | None = None, priority: int = 0) -> int:
    """A job row written directly (any state), returning its id."""
    running = state == "running"
    row = db.execute(
        sql.SQL(
            "INSERT INTO {} (queue, task, args, state, priority, next_run_at, last_error, "
            "lease_token, lease_expires_at, worker_id, started_at, attempts) "
            "VALUES (%s, %s, %s::jsonb, %s, %s, now() + %s * interval '1 second', %s, "
            "CASE WHEN %s THEN gen_random_uuid() END, "
            "CASE WHEN %s THEN now() + interval '1 minute' END, "
            "CASE WHEN %s THEN 'w1' END, CASE WHEN %s THEN now() END, "
            "CASE WHEN %s THEN 1 ELSE 0 END) RETURNING id"
        ).format(sql.Identifier(schema, "jobs")),
        [queue, task, json.dumps(args or {}), state, priority, delay, last_error,
         running, running, running, running, running],
    ).fetchone()
    assert row is not None
    return int(row[0])


def insert_dead_letter(db: psycopg.Connection[Any], schema: str, *, queue: str = "default",
                       task: str = "t", args: dict[str, Any] | None = None,
                       error: str = "RuntimeError: boom") -> int:
    row = db.execute(
        sql.SQL(
            "INSERT INTO {} (job_id, queue, task, args, attempts, max_attempts, error, "
            "created_at) VALUES (0, %s, %s, %s::jsonb, 5, 5, %s, now()) RETURNING id"
        ).format(sql.Identifier(schema, "dead_letters")),
        [queue, task, json.dumps(args or {}), error],
    ).fetchone()
    assert row is not None
    return int(row[0])


def insert_history(db: psycopg.Connection[Any], schema: str, *, queue: str, task: str = "t",
                   minutes_ago: int, succeeded: int, retried: int = 0, dead: int = 0) -> None:
    db.execute(
        sql.SQL(
            "INSERT INTO {} (minute, queue, task, succeeded, retried, dead) VALUES "
            "(date_trunc('minute', now()) - %s * interval '1 minute', %s, %s, %s, %s, %s)"
        ).format(sql.Identifier(schema, "job_history")),
        [minutes_ago, queue, task, succeeded, retried, dead],
    )


def flash(html: str) -> str | None:
    """The flash message of a page, unescaped, or None."""
    match = re.search(r'<p class="flash [a-z]+" role="status">(.*?)</p>', html, re.S)
    return None if match is None else _unescape(match.group(1))


def _unescape(text: str) -> str:
    import html

    return html.unescape(text)


def row_ids(html: str) -> list[int]:
    """The ids of the list rows (``<tr data-id=…>``) of a jobs or dead-letters page."""
    return [int(m) for m in re.findall(r'<tr data-id="(\d+)"', html)]


@contextmanager
def served(app: Any) -> Iterator[str]:
    """Serve ``app`` with uvicorn on a free localhost port in a thread; yields its URL."""
    import socket

    import uvicorn

    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    sock.listen(64)
    port = sock.getsockname()[1]
    server = uvicorn.Server(uvicorn.Config(app, log_level="warning", access_log=False,
                                           lifespan="on"))
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    deadline = time.monotonic() + 15
    while not server.started:
        if time.monotonic() > deadline or not thread.is_alive():
            raise RuntimeError("the dashboard server did not start")
        time.sleep(0.02)
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        thread.join(timeout=15)
        sock.close()


def wait_until(predicate: Any, timeout: float = 10.0, interval: float = 0.05) -> Any:
    """Poll ``predicate`` until it returns something truthy, or fail after ``timeout``."""
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"condition not met within {timeout} s")
        time.sleep(interval)


def utc_now() -> dt.datetime:
    return dt.datetime.now(dt.UTC)

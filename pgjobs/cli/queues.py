"""`pgjobs queues …`: per-queue settings shared by every process."""

from __future__ import annotations

import json
from typing import Annotated

import typer

from .. import admin
from ..task import validate_queue
from .common import SETTINGS, connect, fail

queues_cli = typer.Typer(help="Per-queue settings shared by every process.", no_args_is_help=True)

_UNLIMITED = {"none", "unlimited", "off"}


def parse_limit(text: str) -> int | None:
    """``"none"`` → None (unlimited); a whole number >= 0 → that number."""
    if text.strip().lower() in _UNLIMITED:
        return None
    try:
        value = int(text)
    except ValueError:
        fail(f"limit must be a whole number >= 0 or 'none', got {text!r}")
    if value < 0:
        fail(f"limit must be >= 0 (or 'none'), got {value}")
    return value


# ignore_unknown_options: `queues limit q -5` reaches parse_limit as a value (and gets
# "limit must be >= 0") instead of Click reporting "no such option: -5".
@queues_cli.command("limit", context_settings={"ignore_unknown_options": True})
def queues_limit(
    queue: Annotated[str, typer.Argument(help="Queue name.")],
    limit: Annotated[str, typer.Argument(help="Max pending jobs, or 'none' to remove the limit.")],
) -> None:
    """Set a queue's pending-count limit (enqueue raises QueueFull at it)."""
    value = parse_limit(limit)
    try:
        validate_queue(queue)
    except ValueError as exc:
        fail(str(exc))
    with connect() as conn:
        admin.set_queue_limit(conn, SETTINGS.sql(), queue, value)
        conn.commit()
    print(f"queue {queue!r}: pending limit {'none (unlimited)' if value is None else value}")


def _set_paused(queue: str, paused: bool) -> None:
    try:
        validate_queue(queue)
    except ValueError as exc:
        fail(str(exc))
    with connect() as conn:
        admin.set_queue_paused(conn, SETTINGS.sql(), queue, paused)
        conn.commit()


@queues_cli.command("pause")
def queues_pause(queue: Annotated[str, typer.Argument(help="Queue name.")]) -> None:
    """Stop every worker claiming from a queue (running jobs finish; enqueue still works,
    within the queue's limit). Stored in the database: it outlives restarts."""
    _set_paused(queue, True)
    print(f"queue {queue!r}: paused (no worker claims from it until `pgjobs queues resume`)")


@queues_cli.command("resume")
def queues_resume(queue: Annotated[str, typer.Argument(help="Queue name.")]) -> None:
    """Let workers claim from a paused queue again (they are woken at once)."""
    _set_paused(queue, False)
    print(f"queue {queue!r}: resumed")


@queues_cli.command("list")
def queues_list(
    as_json: Annotated[bool, typer.Option("--json", help="A JSON array, for machines.")] = False,
) -> None:
    """Every known queue: pending limit, paused, pending (due) and running jobs."""
    with connect(autocommit=True) as conn:
        rows = admin.queue_list(conn, SETTINGS.sql())
    if as_json:
        print(json.dumps(rows))
        return
    if not rows:
        print("no queues yet")
        return
    width = max(5, *(len(r["name"]) for r in rows))
    print(f"{'queue':<{width}}  {'limit':>9}  {'paused':<6}  {'pending':>9}  {'running':>9}")
    for r in rows:
        limit = "-" if r["limit"] is None else str(r["limit"])
        print(f"{r['name']:<{width}}  {limit:>9}  {'yes' if r['paused'] else 'no':<6}  "
              f"{r['pending']:>9}  {r['running']:>9}")

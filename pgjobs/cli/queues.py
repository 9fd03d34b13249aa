"""`pgjobs queues …`: per-queue settings shared by every process."""

from __future__ import annotations

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

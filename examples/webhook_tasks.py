"""The pgjobs App of the webhook examples and the delivery tasks the receivers enqueue.

Two handlers with the same rules: ``deliver_webhook``, a plain function the worker runs on
its threads (the Flask receiver enqueues it), and ``deliver_webhook_async``, a coroutine
it runs on its event loop (the FastAPI receiver's). One worker process runs both::

    pgjobs work examples.webhook_tasks:app

Configuration comes from the environment, like any pgjobs App: ``PGJOBS_DATABASE_URL``
(else ``DATABASE_URL``, else the embedded development server), ``PGJOBS_SCHEMA``.
``WEBHOOK_FORWARD_URL``: where each event is delivered (POSTed as JSON); unset, delivery
only logs the event.
"""

from __future__ import annotations

import logging
import os
from typing import Any

import httpx

import pgjobs

app = pgjobs.App()
logger = logging.getLogger(__name__)

# Events are read and marked by the job, in the job's own transaction. The table comes from
# the connection's search_path, like the receivers' (examples/webhook_events.py). FOR UPDATE
# holds the row across the POST: another attempt at the same event (a lease taken over from
# a stalled worker) waits, then sees delivered_at, instead of POSTing at the same time.
SELECT_EVENT = """
SELECT payload, delivered_at FROM webhook_events
WHERE source = %(source)s AND event_id = %(event_id)s
FOR UPDATE
"""
MARK_DELIVERED = """
UPDATE webhook_events SET delivered_at = now()
WHERE source = %(source)s AND event_id = %(event_id)s
"""


@app.task(name="webhooks.deliver", queue="webhooks", max_attempts=8, timeout=30.0)
def deliver_webhook(source: str, event_id: str) -> None:
    """Deliver one stored event downstream, then mark it delivered.

    At-least-once: if the worker dies between the POST and the commit, the event is
    POSTed again, with the same ``webhook-id`` header so the receiver can drop the copy.
    A failed POST raises, and pgjobs retries with backoff (8 attempts, then dead letters).
    """
    job = pgjobs.current_job()
    params = {"source": source, "event_id": event_id}
    with job.connection() as conn:  # commits when the block ends without an exception
        row = conn.execute(SELECT_EVENT, params).fetchone()
        if row is None:
            # Cannot happen when the event was stored in the enqueueing transaction.
            raise pgjobs.PermanentError(f"no stored event {source}/{event_id}")
        payload, delivered_at = row
        if delivered_at is not None:
            return  # an earlier attempt delivered it and committed
        forward(source, event_id, payload, attempt=job.attempt)
        conn.execute(MARK_DELIVERED, params)


def forward(source: str, event_id: str, payload: dict[str, Any], *, attempt: int) -> None:
    """POST the event to ``WEBHOOK_FORWARD_URL`` (or only log it when unset)."""
    url = os.environ.get("WEBHOOK_FORWARD_URL")
    if not url:
        logger.info("delivered %s/%s (no WEBHOOK_FORWARD_URL set): %s", source, event_id,
                    payload)
        return
    response = httpx.post(
        url, json={"source": source, "event": payload}, timeout=10.0,
        headers={"webhook-id": event_id, "webhook-attempt": str(attempt)},
    )
    response.raise_for_status()  # a 5xx or 4xx fails this attempt; pgjobs retries


@app.task(name="webhooks.deliver_async", queue="webhooks", max_attempts=8, timeout=30.0)
async def deliver_webhook_async(source: str, event_id: str) -> None:
    """:func:`deliver_webhook` as a coroutine: the worker runs it on its event loop, beside
    the thread executors, so many slow deliveries wait on the network without a thread
    each. The FastAPI receiver enqueues this one; the rules are the same."""
    job = pgjobs.current_job()
    params = {"source": source, "event_id": event_id}
    async with job.aconnection() as conn:  # commits when the block ends without an exception
        cursor = await conn.execute(SELECT_EVENT, params)
        row = await cursor.fetchone()
        if row is None:
            raise pgjobs.PermanentError(f"no stored event {source}/{event_id}")
        payload, delivered_at = row
        if delivered_at is not None:
            return  # an earlier attempt delivered it and committed
        await aforward(source, event_id, payload, attempt=job.attempt)
        await conn.execute(MARK_DELIVERED, params)


async def aforward(source: str, event_id: str, payload: dict[str, Any], *,
                   attempt: int) -> None:
    """:func:`forward` without blocking the event loop."""
    url = os.environ.get("WEBHOOK_FORWARD_URL")
    if not url:
        logger.info("delivered %s/%s (no WEBHOOK_FORWARD_URL set): %s", source, event_id,
                    payload)
        return
    async with httpx.AsyncClient(timeout=10.0) as client:
        response = await client.post(
            url, json={"source": source, "event": payload},
            headers={"webhook-id": event_id, "webhook-attempt": str(attempt)},
        )
    response.raise_for_status()

"""A webhook receiver on Flask and SQLAlchemy 2 (sync ``Session``).

The same receiver as examples/fastapi_webhooks: ``POST /webhooks/<source>`` with a JSON
body and a ``webhook-id`` header stores the event and enqueues its delivery in one
transaction; ``202 {"job_id": …}`` (the same id for a re-delivered event), or ``429`` with
``Retry-After`` when the ``webhooks`` queue is full, with nothing stored.

Run it (from the repository root)::

    flask --app examples.flask_webhooks.app run
"""

from __future__ import annotations

from typing import Any

from flask import Flask, current_app, request
from sqlalchemy import create_engine
from sqlalchemy.orm import sessionmaker

import pgjobs
from examples import webhook_events as events
from examples.webhook_tasks import app as jobs
from examples.webhook_tasks import deliver_webhook


def create_app() -> Flask:
    """The Flask application factory (``flask --app`` finds it)."""
    app = Flask(__name__)
    # The same database as the jobs: the event and its job commit (or not) together.
    engine = create_engine(events.sqlalchemy_url(jobs.database_url))
    events.Base.metadata.create_all(engine)
    app.extensions["sessionmaker"] = sessionmaker(engine, expire_on_commit=False)
    app.post("/webhooks/<source>")(receive_webhook)
    return app


def receive_webhook(source: str) -> Any:
    """Store the event and enqueue its delivery, atomically; 429 when the queue is full."""
    event_id = request.headers.get(events.EVENT_ID_HEADER, "")
    if not 0 < len(event_id) <= events.MAX_EVENT_ID_LENGTH:
        return {"detail": f"a {events.EVENT_ID_HEADER} header of 1 to "
                          f"{events.MAX_EVENT_ID_LENGTH} characters is required"}, 400
    if len(source) > events.MAX_SOURCE_LENGTH:
        return {"detail": f"source names have at most {events.MAX_SOURCE_LENGTH} "
                          "characters"}, 400
    payload = request.get_json(silent=True)
    if not isinstance(payload, dict):
        return {"detail": "the body must be a JSON object"}, 400

    # Nothing is committed unless this block commits: closing the session rolls back.
    with current_app.extensions["sessionmaker"]() as session:
        stored = session.scalar(events.job_of_event(source, event_id))
        if stored is not None:
            return {"job_id": stored}, 202  # a re-delivery: accepted before, same job
        try:
            # A re-delivery racing this request waits for it on the unique key, then gets
            # this job's id instead of enqueueing a second one.
            job_id = deliver_webhook.options(
                unique_key=events.unique_key(source, event_id),
            ).enqueue(session, source=source, event_id=event_id)
        except pgjobs.QueueFull as full:
            # Raised before anything was written: nothing to keep, the sender comes back.
            return events.queue_full_body(full), 429, {
                "Retry-After": events.retry_after_header(full)}
        if session.scalar(events.store_event(source, event_id, payload, job_id)) is None:
            # A racing re-delivery stored this event first (the insert waited for its
            # commit): answer with its job, and roll back ours if the unique key did not
            # give us that one.
            session.rollback()
            return {"job_id": session.scalar(events.job_of_event(source, event_id))}, 202
        session.commit()  # the event and its job, together
    return {"job_id": job_id}, 202

"""The receivers' own table, ``webhook_events``, and what both receivers share.

One row per received event, with the id of the delivery job that was enqueued in the same
transaction. The unique (source, event_id) pair makes a re-delivered event a lookup: the
sender gets the job id it was given the first time, even long after delivery.
"""

from __future__ import annotations

import datetime as dt
import math
from typing import Any

from sqlalchemy import BigInteger, DateTime, Identity, Select, String, UniqueConstraint, func
from sqlalchemy import select as sa_select
from sqlalchemy.dialects.postgresql import JSONB, insert
from sqlalchemy.engine import make_url
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column
from sqlalchemy.sql.dml import ReturningInsert

import pgjobs

#: The header that carries the sender's event id (the Standard Webhooks convention).
EVENT_ID_HEADER = "webhook-id"
MAX_SOURCE_LENGTH = 64
MAX_EVENT_ID_LENGTH = 200


class Base(DeclarativeBase):
    """Declarative base of the example's tables."""


class WebhookEvent(Base):
    """A received event and the job that delivers it."""

    __tablename__ = "webhook_events"
    __table_args__ = (UniqueConstraint("source", "event_id"),)

    id: Mapped[int] = mapped_column(BigInteger, Identity(), primary_key=True)
    source: Mapped[str] = mapped_column(String(MAX_SOURCE_LENGTH))
    event_id: Mapped[str] = mapped_column(String(MAX_EVENT_ID_LENGTH))
    payload: Mapped[dict[str, Any]] = mapped_column(JSONB)
    job_id: Mapped[int] = mapped_column(BigInteger)
    received_at: Mapped[dt.datetime] = mapped_column(
        DateTime(timezone=True), server_default=func.now())
    delivered_at: Mapped[dt.datetime | None] = mapped_column(DateTime(timezone=True))


def sqlalchemy_url(database_url: str) -> str:
    """``postgresql://…`` as a SQLAlchemy URL on psycopg 3, the driver pgjobs enqueues on
    (for both ``create_engine`` and ``create_async_engine``)."""
    url = make_url(database_url).set(drivername="postgresql+psycopg")
    return url.render_as_string(hide_password=False)


def unique_key(source: str, event_id: str) -> str:
    """The delivery job's unique key: one live job per event, however often it arrives."""
    return f"webhook:{source}:{event_id}"


def job_of_event(source: str, event_id: str) -> Select[Any]:
    """The id of the job that took care of an event already stored (re-delivery)."""
    return sa_select(WebhookEvent.job_id).where(
        WebhookEvent.source == source, WebhookEvent.event_id == event_id)


def store_event(source: str, event_id: str, payload: dict[str, Any], job_id: int
                ) -> ReturningInsert[Any]:
    """Store an event; returns its job id, or no row when a concurrent delivery of the same
    event stored it first (the insert waits for that one to commit or roll back)."""
    return insert(WebhookEvent).values(
        source=source, event_id=event_id, payload=payload, job_id=job_id,
    ).on_conflict_do_nothing(
        index_elements=["source", "event_id"],
    ).returning(WebhookEvent.job_id)


def retry_after_header(full: pgjobs.QueueFull) -> str:
    """``Retry-After`` takes whole seconds: round up, so a sender never retries too early."""
    return str(math.ceil(full.retry_after))


def queue_full_body(full: pgjobs.QueueFull) -> dict[str, Any]:
    """The JSON body of a 429: what is full and when to come back."""
    return {"detail": f"queue {full.queue!r} is full", "retry_after": full.retry_after}

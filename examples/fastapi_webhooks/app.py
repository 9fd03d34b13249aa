"""A webhook receiver on FastAPI and async SQLAlchemy 2.

``POST /webhooks/{source}`` with a JSON body and a ``webhook-id`` header stores the event
and enqueues its delivery in one transaction, then answers:

* ``202 {"job_id": …}`` — accepted; a re-delivered event (same source and ``webhook-id``)
  gets the same job id, whether its job is still queued or already done;
* ``429`` with ``Retry-After`` (whole seconds) when the ``webhooks`` queue is full —
  nothing was stored, the sender retries later.

Run it (from the repository root)::

    uvicorn examples.fastapi_webhooks.app:app
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Annotated, Any

from fastapi import Body, Depends, FastAPI, Header, Path, Request, status
from fastapi.responses import JSONResponse
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker, create_async_engine

import pgjobs
from examples import webhook_events as events
from examples.webhook_tasks import app as jobs
from examples.webhook_tasks import deliver_webhook_async


@asynccontextmanager
async def lifespan(app: FastAPI) -> AsyncIterator[None]:
    """One engine for the process; the example's table is created if missing."""
    # The same database as the jobs: the event and its job commit (or not) together.
    engine = create_async_engine(events.sqlalchemy_url(jobs.database_url))
    async with engine.begin() as conn:
        await conn.run_sync(events.Base.metadata.create_all)
    app.state.sessionmaker = async_sessionmaker(engine, expire_on_commit=False)
    yield
    await engine.dispose()


app = FastAPI(title="pgjobs webhook receiver (FastAPI)", lifespan=lifespan)


async def get_session(request: Request) -> AsyncIterator[AsyncSession]:
    """A session per request (FastAPI dependency); what it did not commit is rolled back
    when the request ends."""
    async with request.app.state.sessionmaker() as session:
        yield session


@app.post("/webhooks/{source}", status_code=status.HTTP_202_ACCEPTED)
async def receive_webhook(
    source: Annotated[str, Path(max_length=events.MAX_SOURCE_LENGTH)],
    payload: Annotated[dict[str, Any], Body()],
    event_id: Annotated[str, Header(alias=events.EVENT_ID_HEADER, min_length=1,
                                    max_length=events.MAX_EVENT_ID_LENGTH)],
    session: Annotated[AsyncSession, Depends(get_session)],
) -> Any:
    """Store the event and enqueue its delivery, atomically; 429 when the queue is full.

    Nothing is committed unless this function commits: the session dependency rolls back
    whatever is left when the request ends.
    """
    stored = await session.scalar(events.job_of_event(source, event_id))
    if stored is not None:
        return {"job_id": stored}  # a re-delivery: accepted before, same job
    try:
        # A re-delivery racing this request waits for it on the unique key, then gets
        # this job's id instead of enqueueing a second one.
        # The coroutine handler: an async app's delivery awaits the network too.
        job_id = await deliver_webhook_async.options(
            unique_key=events.unique_key(source, event_id),
        ).aenqueue(session, source=source, event_id=event_id)
    except pgjobs.QueueFull as full:
        # Raised before anything was written: nothing to keep, the sender comes back later.
        return JSONResponse(
            events.queue_full_body(full), status_code=status.HTTP_429_TOO_MANY_REQUESTS,
            headers={"Retry-After": events.retry_after_header(full)},
        )
    if await session.scalar(events.store_event(source, event_id, payload, job_id)) is None:
        # A racing re-delivery stored this event first (the insert waited for its commit):
        # answer with its job, and roll back ours if the unique key did not give us that.
        await session.rollback()
        return {"job_id": await session.scalar(events.job_of_event(source, event_id))}
    await session.commit()  # the event and its job, together
    return {"job_id": job_id}

"""Find the psycopg 3 connection behind what an application hands to ``enqueue``."""

from __future__ import annotations

from typing import Any

import psycopg

_SUPPORTED = "a psycopg 3 Connection, a SQLAlchemy 2 Connection or a SQLAlchemy 2 Session"
_ASYNC_SUPPORTED = ("a psycopg 3 AsyncConnection, a SQLAlchemy 2 AsyncConnection or a "
                    "SQLAlchemy 2 AsyncSession")


def raw_connection(conn: Any) -> psycopg.Connection[Any]:
    """The psycopg connection of ``conn``, inside the caller's transaction.

    For SQLAlchemy the transaction is begun through SQLAlchemy first, so that the
    caller's ``commit()``/``rollback()`` covers the job rows written on the raw
    connection (SQLAlchemy 2 ignores ``commit()`` on a connection it did not begin).
    """
    if isinstance(conn, psycopg.Connection):
        return conn
    sa_connection = _sqlalchemy_connection(conn)
    if sa_connection is None:
        if _is_async_kind(conn):
            raise TypeError(f"{_name(conn)} is asynchronous: use `await task.aenqueue(...)` "
                            "/ `await app.aenqueue_many(...)` (the sync calls need "
                            f"{_SUPPORTED})")
        raise TypeError(f"enqueue needs {_SUPPORTED}; got {_name(conn)}")
    if not sa_connection.in_transaction():
        sa_connection.begin()
    dbapi = sa_connection.connection.dbapi_connection
    if not isinstance(dbapi, psycopg.Connection):
        raise TypeError(_wrong_driver(sa_connection.dialect.driver, "postgresql+psycopg://"))
    return dbapi


async def async_raw_connection(aconn: Any) -> psycopg.AsyncConnection[Any]:
    """The psycopg ``AsyncConnection`` of ``aconn``, inside the caller's transaction.

    ``aconn`` is a psycopg ``AsyncConnection`` or a SQLAlchemy ``AsyncConnection`` /
    ``AsyncSession`` on the ``postgresql+psycopg`` async driver; the SQLAlchemy
    transaction is begun first, as in :func:`raw_connection`.
    """
    if isinstance(aconn, psycopg.AsyncConnection):
        return aconn
    sa_connection = await _sqlalchemy_async_connection(aconn)
    if sa_connection is None:
        if _is_sync_kind(aconn):
            raise TypeError(f"{_name(aconn)} is synchronous: use `task.enqueue(...)` / "
                            f"`app.enqueue_many(...)` (the async calls need {_ASYNC_SUPPORTED})")
        raise TypeError(f"aenqueue needs {_ASYNC_SUPPORTED}; got {_name(aconn)}")
    if not sa_connection.in_transaction():
        await sa_connection.begin()
    raw = await sa_connection.get_raw_connection()
    driver = raw.driver_connection
    if not isinstance(driver, psycopg.AsyncConnection):
        raise TypeError(
            _wrong_driver(sa_connection.dialect.driver, "postgresql+psycopg://")
            + f" (aenqueue accepts {_ASYNC_SUPPORTED} on that driver)")
    return driver


def _wrong_driver(driver: str, url: str) -> str:
    return (f"the SQLAlchemy engine uses the {driver!r} driver; pgjobs enqueues through "
            f"psycopg 3: create the engine with a {url!r} URL")


def _name(obj: Any) -> str:
    return f"{type(obj).__module__}.{type(obj).__qualname__}"


def _is_async_kind(conn: Any) -> bool:
    if isinstance(conn, psycopg.AsyncConnection):
        return True
    try:
        from sqlalchemy.ext.asyncio import AsyncConnection, AsyncSession
    except ImportError:  # pragma: no cover - SQLAlchemy is a dependency
        return False
    return isinstance(conn, AsyncConnection | AsyncSession)


def _is_sync_kind(conn: Any) -> bool:
    if isinstance(conn, psycopg.Connection):
        return True
    from sqlalchemy.engine import Connection
    from sqlalchemy.orm import Session

    return isinstance(conn, Connection | Session)


def _sqlalchemy_connection(conn: Any) -> Any | None:
    try:
        from sqlalchemy.engine import Connection
        from sqlalchemy.orm import Session
    except ImportError:  # pragma: no cover - SQLAlchemy is a dependency
        return None
    if isinstance(conn, Session):
        # Begins the session's transaction on its connection if not yet begun.
        return conn.connection()
    if isinstance(conn, Connection):
        return conn
    return None


async def _sqlalchemy_async_connection(aconn: Any) -> Any | None:
    try:
        from sqlalchemy.ext.asyncio import AsyncConnection, AsyncSession
    except ImportError:  # pragma: no cover - SQLAlchemy is a dependency
        return None
    if isinstance(aconn, AsyncSession):
        # Begins the session's transaction on its connection if not yet begun.
        return await aconn.connection()
    if isinstance(aconn, AsyncConnection):
        return aconn
    return None

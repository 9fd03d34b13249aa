"""Find the psycopg 3 connection behind what an application hands to ``enqueue``."""

from __future__ import annotations

from typing import Any

import psycopg

_SUPPORTED = "a psycopg 3 Connection, a SQLAlchemy 2 Connection or a SQLAlchemy 2 Session"


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
        raise TypeError(f"enqueue needs {_SUPPORTED}; got {type(conn).__module__}."
                        f"{type(conn).__qualname__}")
    if not sa_connection.in_transaction():
        sa_connection.begin()
    dbapi = sa_connection.connection.dbapi_connection
    if not isinstance(dbapi, psycopg.Connection):
        raise TypeError(
            f"the SQLAlchemy engine uses the {sa_connection.dialect.driver!r} driver; pgjobs "
            "enqueues through psycopg 3: create the engine with a 'postgresql+psycopg://' URL"
        )
    return dbapi


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

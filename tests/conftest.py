"""Test fixtures: a real PostgreSQL, one fresh pgjobs schema per test.

The server is ``PGJOBS_TEST_DATABASE_URL`` when set, else an embedded one this test
session starts (and stops) in a temporary directory.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tempfile
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import psycopg
import pytest
from psycopg import sql

import pgjobs
from pgjobs import migrate

ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture(scope="session")
def pg_url() -> Iterator[str]:
    """URL of the server the tests use."""
    url = os.environ.get("PGJOBS_TEST_DATABASE_URL")
    if url:
        yield url
        return
    from pgjobs.embedded import embedded_database_url, stop_embedded_server

    data_dir = Path(tempfile.mkdtemp(prefix="pgjobs-test-"))
    try:
        yield embedded_database_url(data_dir)
    finally:
        stop_embedded_server(data_dir)
        shutil.rmtree(data_dir, ignore_errors=True)


@pytest.fixture(scope="session")
def migrated_template(pg_url: str) -> str:
    """Check once that migrations run; per-test schemas are migrated the same way."""
    return pg_url


def _drop_schema(url: str, schema: str) -> None:
    with psycopg.connect(url, autocommit=True) as conn:
        conn.execute(sql.SQL("DROP SCHEMA IF EXISTS {} CASCADE").format(sql.Identifier(schema)))


@pytest.fixture
def schema(pg_url: str) -> Iterator[str]:
    """A freshly migrated pgjobs schema of this test's own."""
    name = f"pgjobs_t_{uuid.uuid4().hex[:12]}"
    migrate.upgrade(pg_url, name)
    try:
        yield name
    finally:
        _drop_schema(pg_url, name)


@pytest.fixture
def app(pg_url: str, schema: str) -> pgjobs.App:
    """An App on this test's schema."""
    return pgjobs.App(pg_url, schema=schema)


@pytest.fixture
def conn(pg_url: str) -> Iterator[psycopg.Connection[Any]]:
    """A plain connection (transactional) to the test server."""
    with psycopg.connect(pg_url) as connection:
        yield connection


@pytest.fixture
def db(pg_url: str) -> Iterator[psycopg.Connection[Any]]:
    """An autocommit connection for inspecting state."""
    with psycopg.connect(pg_url, autocommit=True) as connection:
        yield connection


def cli_env(pg_url: str, schema: str, **extra: str) -> dict[str, str]:
    """Environment for a `pgjobs` subprocess on the test schema."""
    env = {k: v for k, v in os.environ.items() if k not in ("DATABASE_URL",)}
    env.update(PGJOBS_DATABASE_URL=pg_url, PGJOBS_SCHEMA=schema, **extra)
    return env


def run_cli(
    *args: str, env: dict[str, str], cwd: Path | None = None, timeout: float = 60
) -> subprocess.CompletedProcess[str]:
    """Run `pgjobs ARGS…` as a real process."""
    return subprocess.run(
        [sys.executable, "-m", "pgjobs", *args],
        env=env, cwd=cwd or ROOT, capture_output=True, text=True, timeout=timeout,
        stdin=subprocess.DEVNULL,
    )


def count(db: psycopg.Connection[Any], schema: str, table: str, where: str = "true",
          params: Any = None) -> int:
    """Rows of ``schema.table`` matching a (test-written) condition."""
    query = sql.SQL("SELECT count(*) FROM {} WHERE ").format(sql.Identifier(schema, table))
    row = db.execute(query + sql.SQL(where), params).fetchone()  # type: ignore[arg-type]
    assert row is not None
    return int(row[0])

"""Schema management: idempotent upgrade, --sql dry run, own version table, packaging."""

from __future__ import annotations

import os
import subprocess
import sys
import uuid
from pathlib import Path

import psycopg
import pytest
from psycopg import sql

from pgjobs import migrate

from .conftest import ROOT, _drop_schema, cli_env, run_cli


def _tables(db: psycopg.Connection, schema: str) -> set[str]:
    rows = db.execute(
        "SELECT table_name FROM information_schema.tables WHERE table_schema = %s", [schema]
    ).fetchall()
    return {r[0] for r in rows}


def test_migrate_creates_contract_tables_and_is_idempotent(pg_url, db):
    schema = f"pgjobs_m_{uuid.uuid4().hex[:8]}"
    try:
        env = cli_env(pg_url, schema)
        first = run_cli("migrate", env=env)
        assert first.returncode == 0, first.stderr
        second = run_cli("migrate", env=env)
        assert second.returncode == 0, second.stderr
        assert {"jobs", "dead_letters", "queues", "queue_stats",
                migrate.VERSION_TABLE} <= _tables(db, schema)
        # pgjobs never creates or touches an application's alembic_version table.
        assert "alembic_version" not in _tables(db, schema)
        assert migrate.current_revision(db, schema) == migrate.head_revision()
        cols = {r[0] for r in db.execute(
            "SELECT column_name FROM information_schema.columns "
            "WHERE table_schema = %s AND table_name = 'jobs'", [schema]).fetchall()}
        assert {"id", "queue", "task", "args", "priority", "state", "attempts", "max_attempts",
                "next_run_at", "created_at", "last_error"} <= cols
    finally:
        _drop_schema(pg_url, schema)


def test_migrate_sql_prints_and_changes_nothing(pg_url, db):
    schema = f"pgjobs_s_{uuid.uuid4().hex[:8]}"
    result = run_cli("migrate", "--sql", env=cli_env(pg_url, schema))
    assert result.returncode == 0, result.stderr
    assert "CREATE TABLE" in result.stdout
    assert f'"{schema}".jobs' in result.stdout
    exists = db.execute("SELECT count(*) FROM pg_namespace WHERE nspname = %s", [schema])
    assert exists.fetchone() == (0,)


def test_schema_with_hostile_name_is_quoted(pg_url, db):
    schema = 'we"ird; DROP TABLE x; --é'
    try:
        migrate.upgrade(pg_url, schema)
        assert "jobs" in _tables(db, schema)
    finally:
        _drop_schema(pg_url, schema)


def test_claim_index_matches_claim_order(db, schema):
    row = db.execute(
        "SELECT indexdef FROM pg_indexes WHERE schemaname = %s AND indexname = 'jobs_claim_idx'",
        [schema],
    ).fetchone()
    assert row is not None
    assert "(priority DESC, next_run_at, id) WHERE (state = 'pending'::text)" in row[0]


def test_hot_table_has_autovacuum_settings(db, schema):
    row = db.execute(
        "SELECT reloptions FROM pg_class WHERE oid = %s::regclass",
        [sql.Identifier(schema, "jobs").as_string(db)],
    ).fetchone()
    assert row is not None
    assert "autovacuum_vacuum_scale_factor=0.0" in row[0]


@pytest.mark.slow
def test_non_editable_install_ships_migrations(pg_url, tmp_path):
    """A wheel installed elsewhere (not this checkout) can run `pgjobs migrate`."""
    wheel_dir = tmp_path / "wheel"
    subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation",
         "-q", "-w", str(wheel_dir), str(ROOT)],
        check=True, capture_output=True, timeout=300,
    )
    target = tmp_path / "site"
    wheel = next(wheel_dir.glob("pgjobs-*.whl"))
    subprocess.run(
        [sys.executable, "-m", "pip", "install", "--no-deps", "-q", "--target", str(target),
         str(wheel)],
        check=True, capture_output=True, timeout=300,
    )
    assert (target / "pgjobs" / "migrations" / "env.py").is_file()
    assert list((target / "pgjobs" / "migrations" / "versions").glob("0001_*.py"))
    schema = f"pgjobs_w_{uuid.uuid4().hex[:8]}"
    env = cli_env(pg_url, schema)
    # The installed copy first on the path; run outside the checkout so it cannot leak in.
    env["PYTHONPATH"] = os.pathsep.join([str(target), *sys.path[1:]])
    try:
        result = subprocess.run(
            [sys.executable, "-c",
             "import pgjobs, sys; assert 'site' in pgjobs.__file__, pgjobs.__file__;"
             "from pgjobs.cli import main; sys.argv=['pgjobs','migrate']; main()"],
            env=env, cwd=tmp_path, capture_output=True, text=True, timeout=120,
        )
        assert result.returncode == 0, result.stderr
        with psycopg.connect(pg_url) as db:
            assert migrate.current_revision(db, schema) == migrate.head_revision()
    finally:
        _drop_schema(pg_url, schema)


def test_script_location_is_inside_package_or_checkout():
    location = migrate.script_location()
    assert (location / "env.py").is_file()
    assert Path(location).name in {"migrations", "alembic"}


def test_every_subpackage_is_listed_for_packaging():
    """A package missing from pyproject's explicit list is missing from the wheel."""
    import tomllib

    listed = set(tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"][
        "packages"])
    found = {
        ".".join(p.relative_to(ROOT).parts[:-1])
        for p in (ROOT / "pgjobs").rglob("__init__.py")
    }
    assert found <= listed, f"add to [tool.setuptools] packages: {sorted(found - listed)}"

"""Least privilege and credential hygiene, proven with real roles and real processes.

``pgjobs roles grant`` creates an app, a worker, an operator and a viewer group role;
login users that are members of each must be able to do their job and nothing else. And no password
may ever reach stdout, stderr or a log line, whatever goes wrong.
"""

from __future__ import annotations

import datetime as dt
import json
import subprocess
import sys
import uuid
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any
from urllib.parse import quote

import psycopg
import pytest
from psycopg import sql
from psycopg.conninfo import conninfo_to_dict

import pgjobs
import pgjobs.sql as pgsql
from pgjobs import admin, migrate
from pgjobs.roles import PRIVILEGES, RoleNames, grant_roles, render_sql

from ..conftest import ROOT, cli_env, count, run_cli
from ..workers import WorkerProcess, create_executions_table, wait_until
from . import store_support

pytestmark = pytest.mark.chaos

PASSWORD = "s3cr3t-P4ss"
KINDS = ("app", "worker", "operator", "viewer")

# `pgjobs roles` is registered by pgjobs/cli/extra.py; importing the module first makes
# these tests independent of that registration.
_ROLES_MAIN = ("import sys; import pgjobs.cli.roles; from pgjobs.cli.main import main; "
               "sys.argv[0] = 'pgjobs'; main()")


def run_pgjobs(*args: str, env: dict[str, str], timeout: float = 60
               ) -> subprocess.CompletedProcess[str]:
    """`pgjobs ARGS…` as a real process, with the `roles` commands available."""
    return subprocess.run(
        [sys.executable, "-c", _ROLES_MAIN, *args], env=env, cwd=ROOT, capture_output=True,
        text=True, timeout=timeout, stdin=subprocess.DEVNULL,
    )


def url_for(pg_url: str, user: str, password: str = PASSWORD, dbname: str | None = None,
            port: str | None = None) -> str:
    """A postgresql:// URL for ``user`` on the test server, password included."""
    info = conninfo_to_dict(pg_url)
    host = quote(str(info.get("host") or "127.0.0.1"), safe="")
    return (f"postgresql://{quote(user, safe='')}:{quote(password, safe='')}@{host}:"
            f"{port or info.get('port') or 5432}/{quote(dbname or str(info['dbname']), safe='')}")


def _one_line_error(result: subprocess.CompletedProcess[str]) -> str:
    assert result.returncode == 2, (result.returncode, result.stdout, result.stderr[-3000:])
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(lines) == 1, result.stderr[-3000:]
    assert "Traceback" not in result.stderr
    return lines[0]


def _no_password(*texts: str) -> None:
    for text in texts:
        assert PASSWORD not in text, text[-3000:]
        assert quote(PASSWORD, safe="") not in text


def _denied(conn: psycopg.Connection[Any], statement: Any, params: Any = None) -> None:
    """``statement`` must fail for lack of privilege (and change nothing)."""
    try:
        with pytest.raises(psycopg.errors.InsufficientPrivilege):
            conn.execute(statement, params)
    finally:
        conn.rollback()


def _on(schema: str, template: str) -> sql.Composed:
    return sql.SQL(template).format(s=sql.Identifier(schema))


@dataclass
class Setup:
    """The four group roles granted on the test schema, and a login user in each."""

    names: RoleNames
    users: dict[str, str]
    urls: dict[str, str]
    env: dict[str, str]

    def connect(self, kind: str) -> psycopg.Connection[Any]:
        return psycopg.connect(self.urls[kind])


def _drop_roles(db: psycopg.Connection[Any], roles: list[str]) -> None:
    for role in roles:
        if db.execute("SELECT 1 FROM pg_roles WHERE rolname = %s", [role]).fetchone():
            db.execute("SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
                       "WHERE usename = %s AND pid <> pg_backend_pid()", [role])
            db.execute(sql.SQL("DROP OWNED BY {}").format(sql.Identifier(role)))
            db.execute(sql.SQL("DROP ROLE {}").format(sql.Identifier(role)))


@pytest.fixture
def roles(pg_url: str, schema: str, db: psycopg.Connection[Any]) -> Iterator[Setup]:
    """Roles granted on the test schema, a member login user (WITH PASSWORD) for each."""
    suffix = uuid.uuid4().hex[:8]
    # Every role named with the suffix: a default-named role (pgjobs_viewer…) created
    # here would outlive the test and be shared with every other test on the server.
    names = RoleNames(app=f"chaos_app_{suffix}", worker=f"chaos_worker_{suffix}",
                      operator=f"chaos_operator_{suffix}", viewer=f"chaos_viewer_{suffix}")
    users = {kind: f"chaos_{kind}_user_{suffix}" for kind in KINDS}
    try:
        for user in users.values():
            db.execute(sql.SQL("CREATE ROLE {} LOGIN PASSWORD {}").format(
                sql.Identifier(user), sql.Literal(PASSWORD)))
        with psycopg.connect(pg_url) as conn:  # the CLI is exercised by the tests below
            grant_roles(conn, schema, names, members={k: [u] for k, u in users.items()})
            conn.commit()
        yield Setup(names, users, {k: url_for(pg_url, u) for k, u in users.items()},
                    cli_env(pg_url, schema))
    finally:
        _drop_roles(db, [*users.values(), *(names.of(kind) for kind in KINDS)])


def _task(app: pgjobs.App, name: str = "t") -> Any:
    return app.task(name=name)(lambda **kwargs: None)


def _bury(db: psycopg.Connection[Any], app: pgjobs.App, n: int) -> None:
    """Make ``n`` dead letters the way a worker does (as the owner)."""
    store_support.bury(db, app, n, error="E: boom")


def _role_args(names: RoleNames) -> list[str]:
    """``pgjobs roles grant`` options naming all four roles (none left to its default)."""
    return ["--app-role", names.app, "--worker-role", names.worker, "--operator-role",
            names.operator, "--viewer-role", names.viewer]


def _denied_flush(conn: psycopg.Connection[Any], app: pgjobs.App, job: Any,
                  kinds: tuple[str, ...] = ("ok", "retry", "dead")) -> None:
    """A worker's completion flush (success, retry, dead letter) is refused."""
    outcomes = {"ok": {"ok": [job]}, "retry": {"retry": [(job, 1.0, "E")]},
                "dead": {"dead": [(job, "E")]}}
    for outcome in (outcomes[kind] for kind in kinds):
        try:
            with pytest.raises(psycopg.errors.InsufficientPrivilege):
                store_support.complete(conn, app, **outcome)  # type: ignore[arg-type]
        finally:
            conn.rollback()


# --- the roles themselves -----------------------------------------------------------------


def test_roles_are_nologin_groups_with_exactly_the_documented_privileges(roles, db, schema):
    for kind in KINDS:
        row = db.execute("SELECT rolcanlogin, rolsuper, rolcreaterole, rolcreatedb, "
                         "rolbypassrls FROM pg_roles WHERE rolname = %s",
                         [roles.names.of(kind)]).fetchone()
        assert row == (False, False, False, False, False), kind
        assert db.execute("SELECT pg_has_role(%s, %s, 'MEMBER')",
                          [roles.users[kind], roles.names.of(kind)]).fetchone() == (True,)
    # Table-level privileges on pgjobs' objects: exactly those of PRIVILEGES (column-level
    # ones show up in column_privileges instead).
    rows = db.execute(
        "SELECT grantee, table_name, privilege_type FROM information_schema.role_table_grants "
        "WHERE table_schema = %s AND grantee = ANY(%s)",
        [schema, [roles.names.of(k) for k in KINDS]]).fetchall()
    expected = {(roles.names.of(k), obj, priv) for k in KINDS
                for priv, obj, cols in PRIVILEGES[k] if cols is None and priv != "USAGE"}
    assert set(rows) == expected
    # Nobody but the owner may create objects in the schema.
    for kind in KINDS:
        assert db.execute("SELECT has_schema_privilege(%s, %s, 'CREATE')",
                          [roles.users[kind], schema]).fetchone() == (False,)


def test_grant_is_idempotent_and_revokes_what_is_no_longer_needed(roles, db, schema, pg_url):
    app_role = sql.Identifier(roles.names.app)
    db.execute(_on(schema, "GRANT UPDATE, TRUNCATE ON {s}.jobs TO ") + app_role)
    db.execute(_on(schema, "GRANT SELECT, DELETE ON {s}.dead_letters TO ") + app_role)
    db.execute(_on(schema, "GRANT INSERT ON {s}.jobs TO ") + sql.Identifier(roles.names.viewer))
    again = run_pgjobs("roles", "grant", *_role_args(roles.names),
                       "--app-member", roles.users["app"], "--operator-member",
                       roles.users["operator"], env=roles.env)
    assert again.returncode == 0, again.stderr
    for kind in KINDS:
        assert roles.names.of(kind) in again.stdout
    assert roles.users["app"] in again.stdout and roles.users["operator"] in again.stdout
    user = roles.users["app"]
    for table, privilege in (("jobs", "UPDATE"), ("jobs", "TRUNCATE"),
                             ("dead_letters", "SELECT"), ("dead_letters", "DELETE")):
        assert db.execute("SELECT has_table_privilege(%s, %s, %s)", [
            user, sql.Identifier(schema, table).as_string(None), privilege,
        ]).fetchone() == (False,), (table, privilege)
    # Column-level grants converge too: the app may flag a cancel, never move a lease.
    jobs = sql.Identifier(schema, "jobs").as_string(None)
    assert db.execute("SELECT has_column_privilege(%s, %s, 'state', 'UPDATE'), "
                      "has_column_privilege(%s, %s, 'cancel_requested_at', 'UPDATE')",
                      [user, jobs, user, jobs]).fetchone() == (False, True)
    assert db.execute("SELECT has_table_privilege(%s, %s, 'INSERT')",
                      [roles.names.viewer, jobs]).fetchone() == (False,)
    # Memberships survive a re-grant (the worker's was not repeated), and enqueueing works.
    assert db.execute("SELECT pg_has_role(%s, %s, 'MEMBER')", [
        roles.users["worker"], roles.names.worker]).fetchone() == (True,)
    app = pgjobs.App(roles.urls["app"], schema=schema)
    with roles.connect("app") as conn:
        _task(app).enqueue(conn)
        conn.commit()
    assert count(db, schema, "jobs") == 1


def test_grant_by_someone_who_does_not_own_the_schema_fails_clearly(roles):
    result = run_pgjobs("roles", "grant", *_role_args(roles.names),
                        env={**roles.env, "PGJOBS_DATABASE_URL": roles.urls["operator"]})
    line = _one_line_error(result)
    assert "does not own" in line and "owner" in line
    _no_password(result.stdout, result.stderr)


def test_grant_sql_quotes_hostile_role_names_and_runs_as_printed(pg_url, schema, db):
    suffix = uuid.uuid4().hex[:6]
    hostile = RoleNames(app=f'x"; DROP ROLE postgres; --{suffix}',
                        worker=f"w$pgjobs$ %s %(x)s{suffix}",
                        operator=f"o'); DROP SCHEMA {schema} CASCADE; --{suffix}"[:63],
                        viewer=f"v\\ $1 🦄 %%{suffix}")
    printed = run_pgjobs("roles", "grant", "--sql", *_role_args(hostile),
                         env=cli_env(pg_url, schema))
    assert printed.returncode == 0, printed.stderr
    assert printed.stdout == render_sql(schema, hostile)
    assert sql.Identifier(hostile.app).as_string(None) in printed.stdout
    names = [hostile.of(kind) for kind in KINDS]
    assert db.execute("SELECT count(*) FROM pg_roles WHERE rolname = ANY(%s)",
                      [names]).fetchone() == (0,), "--sql must not touch the database"
    try:
        db.execute(printed.stdout)  # the script exactly as printed, as psql would run it
        rows = db.execute("SELECT rolname FROM pg_roles WHERE rolname = ANY(%s)", [names])
        assert sorted(r[0] for r in rows.fetchall()) == sorted(names)
        assert db.execute("SELECT 1 FROM pg_roles WHERE rolname = 'postgres'").fetchone()
        assert count(db, schema, "jobs") == 0  # the schema is still there
        assert db.execute("SELECT has_table_privilege(%s, %s, 'DELETE')", [
            hostile.worker, sql.Identifier(schema, "jobs").as_string(None)]).fetchone() == (True,)
    finally:
        _drop_roles(db, names)


# --- the app role -------------------------------------------------------------------------


def test_app_user_can_enqueue_and_do_nothing_else(roles, db, schema, pg_url):
    app = pgjobs.App(roles.urls["app"], schema=schema, default_queue_limit=1000)
    t = _task(app)
    admin.set_queue_limit(db, app.sql, "closed", 0)
    with roles.connect("app") as conn:
        ids = [t.enqueue(conn, n=1), t.options(delay=60).enqueue(conn, n=2)]
        held = t.options(unique_key="k").enqueue(conn)
        assert t.options(unique_key="k").enqueue(conn) == held
        ids += [held, *app.enqueue_many(conn, [t.job(n=i) for i in range(3)])]
        ids += app.enqueue_many(conn, [t.options(unique_key=f"m{i}").job() for i in range(2)])
        with pytest.raises(pgjobs.QueueFull):
            t.options(queue="closed").enqueue(conn)
        conn.commit()
    assert count(db, schema, "jobs") == len(ids) == 8
    cli = run_cli("enqueue", "t", "--args", '{"n": 9}',
                  env={**roles.env, "PGJOBS_DATABASE_URL": roles.urls["app"]})
    assert cli.returncode == 0, cli.stderr
    _no_password(cli.stdout, cli.stderr)

    _bury(db, app, 1)
    # The app may cancel its jobs and read their status (App.cancel, get_job): a pending
    # job leaves for dead_letters, a running one is only flagged for its worker.
    (running,) = store_support.claim(db, app, limit=1, worker_id="w")
    with roles.connect("app") as conn:
        assert app.cancel(conn, ids[1]) == "cancelled"  # the delayed one: still pending
        assert app.cancel(conn, running.id) == "cancelling"
        conn.commit()
    assert app.get_job(ids[1]).state == "cancelled"  # type: ignore[union-attr]
    assert count(db, schema, "jobs", "id = %s AND state = 'running' AND lease_token = %s "
                 "AND cancel_requested_at IS NOT NULL", [running.id, running.token]) == 1

    claim = dict(now=None, limit=10, lease_seconds=30, worker_id="app")
    store = store_support.store(app)
    with roles.connect("app") as conn:
        # …and nothing of the worker's: claim, renew, complete, rescue.
        _denied(conn, app.sql.of(pgsql.CLAIM_ANY_QUEUE), claim)
        _denied(conn, app.sql.of(pgsql.CLAIM_QUEUES), {**claim, "queues": ["default"]})
        _denied(conn, app.sql.of(pgsql.HEARTBEAT), dict(now=None, ids=[1], tokens=[uuid.uuid4()],
                                              lease_seconds=30))
        for call in (lambda: store.renew_leases(conn, [running.id], [running.token],
                                                lease_seconds=30, now=None),
                     lambda: store.rescue_expired(conn, limit=10, now=None),
                     lambda: store.release(conn, [running])):
            try:
                with pytest.raises(psycopg.errors.InsufficientPrivilege):
                    call()
            finally:
                conn.rollback()
        _denied_flush(conn, app, running)
        _denied(conn, _on(schema, "UPDATE {s}.jobs SET priority = 5"))
        _denied(conn, _on(schema, "UPDATE {s}.jobs SET state = 'pending', lease_token = NULL"))
        _denied(conn, _on(schema, "SELECT lease_token FROM {s}.jobs"))
        _denied(conn, _on(schema, "SELECT * FROM {s}.dead_letters"))
        _denied(conn, _on(schema, "UPDATE {s}.dead_letters SET error = 'x'"))
        _denied(conn, _on(schema, "DELETE FROM {s}.dead_letters"))
        _denied(conn, _on(schema, "SELECT * FROM {s}.queue_stats"))
        _denied(conn, _on(schema, "INSERT INTO {s}.jobs (task, state, attempts, lease_token) "
                                  "VALUES ('t', 'running', 1, gen_random_uuid())"))
        _denied(conn, app.sql.of(pgsql.SET_QUEUE_LIMIT), {"queue": "default", "limit": None})
        _denied(conn, _on(schema, "TRUNCATE {s}.jobs"))
        _denied(conn, _on(schema, "DROP TABLE {s}.jobs"))
        _denied(conn, _on(schema, "CREATE TABLE {s}.evil (x int)"))
        with pytest.raises(psycopg.errors.InsufficientPrivilege):
            admin.requeue_dead_letters(conn, app.sql)
        conn.rollback()
    assert count(db, schema, "jobs") == 7 and count(db, schema, "dead_letters") == 2
    assert count(db, schema, "jobs", "id = %s AND lease_token = %s",
                 [running.id, running.token]) == 1


def test_cli_commands_outside_a_roles_scope_fail_with_one_line(roles):
    """BUG: a permission error is not a user error to the CLI: `pgjobs stats` run by a
    role without SELECT on queue_stats prints a psycopg traceback and exits 1."""
    env = {**roles.env, "PGJOBS_DATABASE_URL": roles.urls["app"]}
    commands = [("stats",), ("dead-letters", "list"), ("queues", "limit", "q", "3")]
    with ThreadPoolExecutor(3) as pool:
        results = list(pool.map(lambda args: run_cli(*args, env=env), commands))
    for command, result in zip(commands, results, strict=True):
        _no_password(result.stdout, result.stderr)
        line = _one_line_error(result)
        assert "permission denied" in line, (command, line)


# --- the worker role ----------------------------------------------------------------------


def test_worker_user_runs_a_real_worker_end_to_end(roles, db, schema, pg_url):
    """Claims, successes, retries, dead letters, history, its workers row, retention, and
    reconnects after its backends are killed: all as the worker role, password redacted."""
    create_executions_table(db, schema)
    db.execute(sql.SQL("GRANT INSERT ON {} TO {}").format(  # the handlers' own table
        sql.Identifier(schema, "executions"), sql.Identifier(roles.names.worker)))
    # A stale workers row: retention (5 s after start) deletes it, as the worker role.
    db.execute(_on(schema, "INSERT INTO {s}.workers (id, hostname, pid, concurrency, "
                           "lease_seconds, last_heartbeat_at) VALUES ('gone', 'h', 1, 1, 30, "
                           "now() - interval '2 days')"))
    app = pgjobs.App(roles.urls["app"], schema=schema)
    names = ("record", "record", "record", "always_fails", "permanent", "no.such.task")
    tasks = {name: app.task(name=name, max_attempts=2 if name == "always_fails" else None)(
        lambda **kwargs: None) for name in set(names)}
    with roles.connect("app") as conn:
        ids = app.enqueue_many(conn, [tasks[name].job() for name in names])
        conn.commit()
    worker = WorkerProcess(roles.urls["worker"], schema, "--concurrency", "2",
                           "--lease-timeout", "3")
    try:
        worker.wait_started()
        wait_until(lambda: count(db, schema, "jobs") == 0, 20, message="all jobs handled")
        done = db.execute(_on(schema, "SELECT job_id FROM {s}.executions ORDER BY 1"))
        assert [r[0] for r in done.fetchall()] == ids[:3]
        errors = dict(db.execute(_on(schema, "SELECT job_id, error FROM {s}.dead_letters")
                                 ).fetchall())
        assert set(errors) == set(ids[3:])
        assert "this never works" in errors[ids[3]] and "permanent error" in errors[ids[4]]
        assert "unknown task 'no.such.task'" in errors[ids[5]]
        history = db.execute(_on(schema, "SELECT sum(succeeded), sum(retried), sum(dead) "
                                         "FROM {s}.job_history")).fetchone()
        assert history == (3, 1, 3)
        wait_until(lambda: count(db, schema, "workers", "id <> 'gone'") == 1, 5,
                   message="the worker registered its row")

        # Kill every connection of the worker and refuse new ones for a moment: the
        # failure paths log the driver's messages, which must not carry the password.
        user = sql.Identifier(roles.users["worker"])
        db.execute(sql.SQL("ALTER ROLE {} NOLOGIN").format(user))
        db.execute("SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE usename = %s",
                   [roles.users["worker"]])
        wait_until(lambda: "not permitted to log in" in worker.log, 15,
                   message="a failed reconnect logged")
        db.execute(sql.SQL("ALTER ROLE {} LOGIN").format(user))
        wait_until(lambda: "re-established" in worker.log, 15, message="reconnected")
        with roles.connect("app") as conn:
            (again,) = app.enqueue_many(conn, [tasks["record"].job()])
            conn.commit()
        wait_until(lambda: count(db, schema, "executions", "job_id = %s", [again]) == 1, 20,
                   message="a job after reconnecting")
        wait_until(lambda: "stale worker row" in worker.log, 10, message="retention ran")
        assert count(db, schema, "workers", "id = 'gone'") == 0
        assert worker.proc.poll() is None
        worker.signal()
        assert worker.wait(30) == 0, worker.log[-3000:]
        assert count(db, schema, "workers") == 0  # removed its own row on the way out
        assert "permission denied" not in worker.log, worker.log[-3000:]
        assert "Traceback" not in worker.log, worker.log[-3000:]
        _no_password(worker.log)
    finally:
        db.execute(sql.SQL("ALTER ROLE {} LOGIN").format(sql.Identifier(roles.users["worker"])))
        worker.kill()


def test_worker_user_stays_in_its_lane(roles, db, conn, schema):
    app = pgjobs.App(roles.urls["worker"], schema=schema)
    _task(app).enqueue(conn)  # as the owner
    conn.commit()
    _bury(db, app, 1)
    with roles.connect("worker") as conn:
        # What retention and the metrics gauges run, even with retention switched off.
        conn.execute(app.sql.of(pgsql.PRUNE_HISTORY),
                     dict(history_seconds=None, dead_letter_seconds=None))
        assert admin.queue_stats(conn, app.sql)[0]["dead"] == 1
        assert migrate.current_revision(conn, schema) == migrate.head_revision()
        conn.commit()
        _denied(conn, _on(schema, "SELECT args FROM {s}.dead_letters"))
        _denied(conn, _on(schema, "SELECT error FROM {s}.dead_letters"))
        _denied(conn, _on(schema, "UPDATE {s}.dead_letters SET error = 'x'"))
        _denied(conn, _on(schema, "UPDATE {s}.jobs SET args = '{{}}', task = 'other'"))
        _denied(conn, _on(schema, "INSERT INTO {s}.jobs (task) VALUES ('x')"))
        _denied(conn, app.sql.of(pgsql.SET_QUEUE_LIMIT), {"queue": "default", "limit": 1})
        _denied(conn, app.sql.of(pgsql.SET_QUEUE_PAUSED), {"queue": "default", "paused": True,
                                                 "channel": app.sql.channel})
        _denied(conn, _on(schema, "UPDATE {s}.jobs SET cancel_requested_at = now()"))
        _denied(conn, _on(schema, "SELECT * FROM {s}.worker_status"))
        _denied(conn, _on(schema, "TRUNCATE {s}.jobs"))
        _denied(conn, _on(schema, "DROP TABLE {s}.dead_letters"))
        _denied(conn, _on(schema, "ALTER TABLE {s}.jobs ADD COLUMN z int"))
        _denied(conn, _on(schema, "CREATE TABLE {s}.evil (x int)"))
    assert count(db, schema, "dead_letters") == 1


# --- the operator role --------------------------------------------------------------------


def test_operator_user_inspects_requeues_and_sets_limits(roles, db, schema):
    owner_app = pgjobs.App(roles.env["PGJOBS_DATABASE_URL"], schema=schema)
    t = _task(owner_app)
    with psycopg.connect(roles.env["PGJOBS_DATABASE_URL"]) as owner:
        owner_app.enqueue_many(owner, [t.options(queue="mail").job(n=i) for i in range(4)])
        owner.commit()
    _bury(db, owner_app, 3)
    letters = [r[0] for r in db.execute(_on(schema, "SELECT id FROM {s}.dead_letters "
                                                    "ORDER BY id")).fetchall()]
    env = {**roles.env, "PGJOBS_DATABASE_URL": roles.urls["operator"]}
    with ThreadPoolExecutor(4) as pool:
        stats, listed, shown, limited = pool.map(lambda args: run_cli(*args, env=env), [
            ("stats", "--json"), ("dead-letters", "list", "--json"),
            ("dead-letters", "show", str(letters[0]), "--json"),
            ("queues", "limit", "mail", "7")])
    requeued = run_cli("dead-letters", "requeue", str(letters[0]), env=env)
    purged = run_cli("dead-letters", "purge", "--yes", env=env)
    human = run_cli("stats", env=env)
    for result in (stats, listed, shown, limited, requeued, purged, human):
        assert result.returncode == 0, (result.args, result.stderr[-2000:])
        _no_password(result.stdout, result.stderr)
    (mail,) = json.loads(stats.stdout)["queues"]
    assert (mail["queue"], mail["pending"], mail["dead"]) == ("mail", 1, 3)
    assert [d["id"] for d in json.loads(listed.stdout)] == letters
    assert json.loads(shown.stdout)["error"] == "E: boom"
    assert count(db, schema, "queues", "name = 'mail' AND pending_limit = 7") == 1
    assert count(db, schema, "jobs", "id = %s AND attempts = 0", [int(requeued.stdout)]) == 1
    assert "deleted 2" in purged.stdout and count(db, schema, "dead_letters") == 0

    # Cancels and pauses through the supported commands: a pending job ends cancelled in
    # dead_letters, a running one is flagged and stays its worker's (lease untouched).
    with psycopg.connect(roles.env["PGJOBS_DATABASE_URL"]) as owner:
        (first, pending) = owner_app.enqueue_many(owner, [t.options(queue="ops").job(n=i)
                                                          for i in range(2)])
        owner.commit()
    (running,) = store_support.claim(db, owner_app, queues=["ops"], limit=1, worker_id="w")
    running_id = running.id
    assert running_id == first
    cancelled = run_cli("jobs", "cancel", str(pending), str(running_id), env=env)
    paused = run_cli("queues", "pause", "ops", env=env)
    for result in (cancelled, paused):
        assert result.returncode == 0, (result.args, result.stderr[-2000:])
    assert f"job {pending}: cancelled" in cancelled.stdout
    assert f"job {running_id}: cancelling" in cancelled.stdout
    assert count(db, schema, "dead_letters", "job_id = %s AND reason = 'cancelled'",
                 [pending]) == 1
    assert count(db, schema, "jobs", "id = %s AND state = 'running' AND lease_token = %s "
                 "AND cancel_requested_at IS NOT NULL", [running_id, running.token]) == 1
    assert count(db, schema, "queues", "name = 'ops' AND paused") == 1
    resumed = run_cli("queues", "resume", "ops", env=env)
    assert resumed.returncode == 0 and count(db, schema, "queues", "paused") == 0

    app = pgjobs.App(roles.urls["operator"], schema=schema)
    claim = dict(now=None, limit=10, lease_seconds=30, worker_id="op")
    with roles.connect("operator") as conn:
        # Cancelling needs DELETE on jobs (so a success, which only deletes the row, is not
        # checked here), but the worker's other writes stay the worker's.
        _denied(conn, app.sql.of(pgsql.CLAIM_ANY_QUEUE), claim)
        _denied(conn, app.sql.of(pgsql.RESCUE_EXPIRED), dict(now=dt.datetime.now(dt.UTC), limit=10))
        _denied_flush(conn, app, running, kinds=("retry", "dead"))
        _denied(conn, _on(schema, "UPDATE {s}.jobs SET state = 'pending', lease_token = NULL"))
        _denied(conn, _on(schema, "UPDATE {s}.jobs SET priority = 1"))
        _denied(conn, _on(schema, "INSERT INTO {s}.jobs (task, state, lease_token) "
                                  "VALUES ('t', 'running', gen_random_uuid())"))
        _denied(conn, _on(schema, "UPDATE {s}.dead_letters SET error = 'rewritten'"))
        _denied(conn, _on(schema, "DELETE FROM {s}.job_history"))
        _denied(conn, _on(schema, "DELETE FROM {s}.queues"))
        for target in ("jobs", "dead_letters", "queues", "job_history"):
            _denied(conn, _on(schema, "TRUNCATE {s}." + target))
        _denied(conn, _on(schema, "DROP TABLE {s}.jobs"))
        _denied(conn, _on(schema, "DROP VIEW {s}.queue_stats"))
        _denied(conn, _on(schema, "ALTER TABLE {s}.jobs DISABLE TRIGGER ALL"))
        _denied(conn, _on(schema, "CREATE TABLE {s}.evil (x int)"))
    assert count(db, schema, "jobs") == 3 and count(db, schema, "dead_letters") == 1


# --- the viewer role -----------------------------------------------------------------------


def test_viewer_user_reads_everything_and_changes_nothing(roles, db, schema):
    owner_app = pgjobs.App(roles.env["PGJOBS_DATABASE_URL"], schema=schema)
    t = _task(owner_app)
    with psycopg.connect(roles.env["PGJOBS_DATABASE_URL"]) as owner:
        ids = owner_app.enqueue_many(owner, [t.options(queue="mail").job(n=i) for i in range(3)])
        owner.commit()
    _bury(db, owner_app, 1)
    (running,) = store_support.claim(db, owner_app, limit=1, worker_id="w")
    (letter,) = [r[0] for r in db.execute(_on(schema, "SELECT id FROM {s}.dead_letters"))]
    env = {**roles.env, "PGJOBS_DATABASE_URL": roles.urls["viewer"]}
    with ThreadPoolExecutor(4) as pool:
        stats, listed, jobs, queues = pool.map(lambda args: run_cli(*args, env=env), [
            ("stats", "--json"), ("dead-letters", "list", "--json"),
            ("jobs", "list", "--json"), ("queues", "list", "--json")])
    for result in (stats, listed, jobs, queues):
        assert result.returncode == 0, (result.args, result.stderr[-2000:])
        _no_password(result.stdout, result.stderr)
    (mail,) = json.loads(stats.stdout)["queues"]
    assert (mail["pending"], mail["running"], mail["dead"]) == (1, 1, 1)
    assert [d["error"] for d in json.loads(listed.stdout)] == ["E: boom"]
    assert {j["id"] for j in json.loads(jobs.stdout)} >= set(ids[1:])

    writes = [("enqueue", "t"), ("jobs", "cancel", str(ids[2])), ("queues", "pause", "mail"),
              ("queues", "limit", "mail", "1"), ("dead-letters", "requeue", str(letter)),
              ("dead-letters", "purge", "--yes")]
    with ThreadPoolExecutor(3) as pool:
        refused = list(pool.map(lambda args: run_cli(*args, env=env), writes))
    for command, result in zip(writes, refused, strict=True):
        _no_password(result.stdout, result.stderr)
        assert "permission denied" in _one_line_error(result), command

    app = pgjobs.App(roles.urls["viewer"], schema=schema)
    with roles.connect("viewer") as conn:
        _denied(conn, app.sql.of(pgsql.CLAIM_ANY_QUEUE), dict(now=None, limit=10, lease_seconds=30,
                                                    worker_id="viewer"))
        _denied_flush(conn, app, running)
        _denied(conn, _on(schema, "DELETE FROM {s}.jobs"))
        _denied(conn, _on(schema, "UPDATE {s}.jobs SET cancel_requested_at = now()"))
        _denied(conn, _on(schema, "DELETE FROM {s}.dead_letters"))
        _denied(conn, _on(schema, "UPDATE {s}.queues SET paused = true"))
        _denied(conn, _on(schema, "DELETE FROM {s}.cron_schedules"))
        _denied(conn, _on(schema, "TRUNCATE {s}.job_results"))
        _denied(conn, _on(schema, "CREATE TABLE {s}.evil (x int)"))
    assert count(db, schema, "jobs") == 2 and count(db, schema, "dead_letters") == 1
    assert count(db, schema, "queues", "paused OR pending_limit IS NOT NULL") == 0


# --- credentials never printed ------------------------------------------------------------


def test_no_password_in_cli_errors(pg_url, schema, db):
    """Unreachable server, unknown database, bad URL, unmigrated schema: one line, exit 2,
    never the password, whether the URL comes from the environment or an option."""
    user = f"chaos_pw_user_{uuid.uuid4().hex[:8]}"
    info = conninfo_to_dict(pg_url)
    host = str(info.get("host") or "127.0.0.1")
    urls = {
        "unreachable": url_for(pg_url, user, port="1"),
        "unknown database": url_for(pg_url, user, dbname=f"no_such_db_{uuid.uuid4().hex[:6]}"),
        "bad port": url_for(pg_url, user, port="notaport"),
        "sqlalchemy style": url_for(pg_url, user, port="1").replace(
            "postgresql://", "postgresql+psycopg://"),
        "query password": f"postgresql://{host}:1/test?user={user}&password={PASSWORD}",
        "key=value": f"host={host} port=1 user={user} password={PASSWORD} dbname=test",
        "unmigrated schema": url_for(pg_url, user),
    }
    commands: list[tuple[str, ...]] = [
        ("stats",), ("enqueue", "t"), ("migrate",), ("dead-letters", "list"),
        ("queues", "limit", "q", "1"), ("roles", "grant"), ("work", "tests.apps.sample:app"),
    ]
    runs: list[tuple[str, tuple[str, ...], Callable[[], subprocess.CompletedProcess[str]]]] = []
    absent = f"pgjobs_chaos_absent_{uuid.uuid4().hex[:6]}"
    for label, url in urls.items():
        chosen = commands if label in ("unreachable", "unknown database") else [
            ("stats",), ("work", "tests.apps.sample:app")]
        if label == "unmigrated schema":
            chosen = [("stats",), ("enqueue", "t"), ("work", "tests.apps.sample:app")]
        for command in chosen:
            env = cli_env(url, absent if label == "unmigrated schema" else schema,
                          PYTHONPATH=str(ROOT))
            if label == "key=value":  # through the option rather than the environment
                env = {**cli_env("postgresql://unused", schema), "PYTHONPATH": str(ROOT)}
                env.pop("PGJOBS_DATABASE_URL")
                runs.append((label, command, lambda c=command, e=env, u=url: run_pgjobs(
                    "--database-url", u, *c, env=e)))
            elif label == "sqlalchemy style":  # DATABASE_URL, the fallback variable
                env.pop("PGJOBS_DATABASE_URL")
                env["DATABASE_URL"] = url
                runs.append((label, command, lambda c=command, e=env: run_pgjobs(*c, env=e)))
            else:
                runs.append((label, command, lambda c=command, e=env: run_pgjobs(*c, env=e)))
    db.execute(sql.SQL("CREATE ROLE {} LOGIN PASSWORD {}").format(
        sql.Identifier(user), sql.Literal(PASSWORD)))
    try:
        with ThreadPoolExecutor(4) as pool:
            results = list(pool.map(lambda run: run[2](), runs))
    finally:
        _drop_roles(db, [user])
    failures = []
    for (label, command, _), result in zip(runs, results, strict=True):
        _no_password(result.stdout, result.stderr)
        try:
            line = _one_line_error(result)
        except AssertionError:
            failures.append(f"{label} / {' '.join(command)}: exit {result.returncode}, "
                            f"{result.stderr.strip().splitlines()[-1:]}")
            continue
        expected = {"unmigrated schema": "pgjobs migrate", "unreachable": "cannot connect",
                    "unknown database": "does not exist"}.get(label, "")
        assert expected in line, (label, command, line)
    assert not failures, "not one clear line:\n" + "\n".join(failures)

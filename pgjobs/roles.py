"""Least-privilege database roles for pgjobs: who may enqueue, process and operate.

Four group roles (``NOLOGIN``), granted on one pgjobs schema:

``app`` (default ``pgjobs_app``)
    What ``Task.enqueue`` / ``App.enqueue_many`` / ``pgjobs enqueue`` need, nothing more:
    ``INSERT`` of the enqueue columns of ``jobs`` (never ``state``, ``attempts`` or a lease),
    ``SELECT`` of ``jobs.id, queue, state, unique_key`` (unique keys and the bounded pending
    count; not ``args``), ``SELECT`` of ``queues.name, pending_limit`` (the limit check) and
    ``USAGE`` on the ``jobs`` id sequence (``enqueue_many`` reserves ids with ``nextval``;
    single inserts take the identity default, which needs no privilege). And what
    ``App.cancel`` and ``App.get_job`` / ``wait_for`` need: reading a job's status (its
    row, dead letter or kept result, arguments included), ``DELETE`` of jobs and
    ``INSERT`` into ``dead_letters`` (a cancelled pending job moves there) and ``UPDATE``
    of ``jobs.cancel_requested_at`` (a running one is asked to stop).

``worker`` (default ``pgjobs_worker``)
    What ``pgjobs work`` needs: claim, complete, retry, heartbeat, release and rescue
    (``SELECT``, ``DELETE`` and ``UPDATE`` of the lease columns of ``jobs``), bury
    (``INSERT`` into ``dead_letters``), per-minute history (``job_history`` upsert), its
    ``workers`` row, the revision check, ``queue_stats`` for the metrics gauges, and the
    age-based retention every worker runs (``DELETE`` on ``job_history``, ``workers`` and
    ``dead_letters``: PostgreSQL checks the privileges of the whole retention statement even
    when retention is switched off). It cannot read dead letters' arguments or errors,
    enqueue, or change queue limits. LISTEN/NOTIFY need no privilege.

``operator`` (default ``pgjobs_operator``)
    What ``pgjobs stats``, ``pgjobs dead-letters …``, ``pgjobs queues limit|pause|resume``
    and ``pgjobs jobs list|show|cancel`` need: ``SELECT`` on every pgjobs table and view,
    requeue (``DELETE`` dead letters and ``INSERT`` fresh jobs), purge, queue limits and
    pauses, and cancelling jobs (as the app role may). It cannot claim or complete jobs,
    and (like the others) cannot ``TRUNCATE``, ``DROP`` or ``ALTER`` anything, nor create
    objects in the schema.

``viewer`` (default ``pgjobs_viewer``)
    What ``pgjobs dashboard --read-only`` and ``pgjobs stats`` need: ``SELECT`` on every
    pgjobs table and view (arguments and errors included, which the dashboard shows), and
    nothing else: it cannot enqueue, requeue, purge or change anything.

Handlers' own tables are the application's business: grant the worker's login users
what the handlers touch.

Run :func:`grant_roles` (or ``pgjobs roles grant``) as the schema's owner, after every
``pgjobs migrate`` (new revisions may add tables). It is idempotent and converges: each
role's privileges on pgjobs' objects are revoked and granted again in one transaction, so
nothing a role had before and no longer needs survives. Roles that already exist are
left as they are (their LOGIN, passwords and memberships are not touched). Every
identifier is quoted with :class:`psycopg.sql.Identifier`.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

import psycopg
from psycopg import sql

from .errors import ConfigurationError, SchemaMissingError
from .migrate import VERSION_TABLE, current_revision, head_revision

#: The pgjobs objects privileges are managed on (tables, views, sequences).
TABLES = ("jobs", "dead_letters", "queues", "workers", "job_history", "cron_schedules",
          "job_results", "waiting_fetchers", VERSION_TABLE)
VIEWS = ("queue_stats", "worker_status", "throughput", "periodic_schedules")
SEQUENCES = ("jobs_id_seq", "dead_letters_id_seq")

_KINDS = ("app", "worker", "operator", "viewer")

# (privilege, object, columns or None for the whole object) per kind of role.
_JOBS_ENQUEUE_COLUMNS = ("id", "queue", "task", "args", "priority", "max_attempts",
                         "next_run_at", "unique_key", "trace_context")
_JOBS_LEASE_COLUMNS = ("state", "attempts", "next_run_at", "last_error", "lease_token",
                       "lease_expires_at", "worker_id", "started_at")
_DEAD_LETTER_COLUMNS = ("job_id", "queue", "task", "args", "priority", "attempts",
                        "max_attempts", "error", "created_at", "failed_at", "trace_context",
                        "reason")
# The queue settings enqueue reads (limit) and claims read (paused queues are skipped).
_QUEUE_LIMIT_COLUMNS = ("name", "pending_limit", "pending_limit_set")

Grant = tuple[str, str, tuple[str, ...] | None]

# App.cancel / `pgjobs jobs cancel`: a pending job moves to dead_letters (DELETE …
# RETURNING, INSERT), a running one is flagged (UPDATE of cancel_requested_at).
_CANCEL: tuple[Grant, ...] = (
    ("SELECT", "jobs", ("id", "queue", "task", "args", "priority", "state", "attempts",
                        "max_attempts", "next_run_at", "created_at", "last_error",
                        "trace_context", "cancel_requested_at")),
    ("DELETE", "jobs", None),
    ("UPDATE", "jobs", ("cancel_requested_at",)),
    ("INSERT", "dead_letters", _DEAD_LETTER_COLUMNS),
)
# App.get_job / wait_for: a job's status from its row, its dead letter or its result.
_READ_STATUS: tuple[Grant, ...] = (
    ("SELECT", "dead_letters", ("id", "job_id", "queue", "task", "args", "attempts",
                                "max_attempts", "error", "created_at", "failed_at", "reason")),
    ("SELECT", "job_results", None),
)

PRIVILEGES: dict[str, tuple[Grant, ...]] = {
    "app": (
        ("INSERT", "jobs", _JOBS_ENQUEUE_COLUMNS),
        ("SELECT", "jobs", ("id", "queue", "state", "unique_key")),
        ("SELECT", "queues", _QUEUE_LIMIT_COLUMNS),
        ("USAGE", "jobs_id_seq", None),
        # Read by 0005's wake_waiting_fetchers; kept while a schema may be downgraded.
        ("SELECT", "waiting_fetchers", None),
        *_CANCEL,
        *_READ_STATUS,
    ),
    "worker": (
        ("SELECT", "jobs", None),
        ("UPDATE", "jobs", _JOBS_LEASE_COLUMNS),
        ("DELETE", "jobs", None),
        ("INSERT", "dead_letters", _DEAD_LETTER_COLUMNS),
        # RETURNING of the rescue, and the retention's age filter; not args nor error.
        ("SELECT", "dead_letters", ("id", "job_id", "queue", "task", "failed_at", "reason")),
        ("DELETE", "dead_letters", None),
        ("SELECT", "job_history", None),
        ("INSERT", "job_history", None),
        ("UPDATE", "job_history", ("succeeded", "retried", "dead", "duration_seconds",
                                   "max_duration_seconds")),
        ("DELETE", "job_history", None),
        ("SELECT", "workers", None),
        ("INSERT", "workers", None),
        ("UPDATE", "workers", ("last_heartbeat_at", "jobs_in_hand", "executors_busy")),
        ("DELETE", "workers", None),
        ("SELECT", VERSION_TABLE, None),
        ("SELECT", "queue_stats", None),
        # Claims skip paused queues; periodic ticks check the queue's limit.
        ("SELECT", "queues", (*_QUEUE_LIMIT_COLUMNS, "paused")),
        # Kept results (result_ttl): written by completions, pruned by retention (whose
        # FOR UPDATE SKIP LOCKED needs an UPDATE privilege).
        ("SELECT", "job_results", None),
        ("INSERT", "job_results", None),
        ("UPDATE", "job_results", ("result", "finished_at", "expires_at")),
        ("DELETE", "job_results", None),
        # Workers before 0006 advertise waiting here (retention prunes their rows).
        ("SELECT", "waiting_fetchers", None),
        ("INSERT", "waiting_fetchers", ("worker_id", "queues")),
        ("DELETE", "waiting_fetchers", None),
    ),
    "operator": (
        *(("SELECT", name, None) for name in (*TABLES, *VIEWS)),
        ("INSERT", "jobs", ("queue", "task", "args", "priority", "max_attempts",
                            "trace_context")),
        ("DELETE", "dead_letters", None),
        # Limits (`queues limit`) and pauses (`queues pause|resume`).
        ("INSERT", "queues", ("name", "pending_limit", "pending_limit_set", "paused",
                              "updated_at")),
        ("UPDATE", "queues", ("pending_limit", "pending_limit_set", "paused", "updated_at")),
        *_CANCEL,
    ),
    # Read-only dashboards and monitoring: look at everything, change nothing.
    "viewer": tuple(("SELECT", name, None) for name in (*TABLES, *VIEWS)),
}


def validate_role_name(name: str, what: str = "role") -> str:
    """Role names are identifiers: non-empty, at most 63 bytes, no NUL."""
    if not isinstance(name, str) or not name or "\x00" in name or len(name.encode()) > 63:
        raise ConfigurationError(
            f"{what} role name {name!r} is invalid: use a non-empty name of at most 63 bytes "
            "without NUL"
        )
    return name


@dataclass(frozen=True)
class RoleNames:
    """The names of the four group roles."""

    app: str = "pgjobs_app"
    worker: str = "pgjobs_worker"
    operator: str = "pgjobs_operator"
    viewer: str = "pgjobs_viewer"

    def __post_init__(self) -> None:
        for kind in _KINDS:
            validate_role_name(getattr(self, kind), kind)
        names = [getattr(self, kind) for kind in _KINDS]
        if len(set(names)) != len(names):
            raise ConfigurationError(
                "the app, worker, operator and viewer roles must be four different roles "
                f"(got {', '.join(repr(n) for n in names)})"
            )

    def of(self, kind: str) -> str:
        """The role name for ``kind`` (``app``, ``worker``, ``operator`` or ``viewer``)."""
        if kind not in _KINDS:
            raise ValueError(f"role kind must be one of {', '.join(_KINDS)}, got {kind!r}")
        return str(getattr(self, kind))


DEFAULT_ROLES = RoleNames()


def _object(schema: str, name: str) -> sql.Composable:
    return sql.Identifier(schema, name)


def _create_role(role: str) -> sql.Composed:
    """``CREATE ROLE … NOLOGIN`` unless it exists, as one DO block.

    The body is dollar-quoted with a tag that does not occur in it, so no role name can
    end the quoting early.
    """
    body = sql.SQL(
        "BEGIN\n"
        "    IF NOT EXISTS (SELECT FROM pg_catalog.pg_roles WHERE rolname = {literal}) THEN\n"
        "        CREATE ROLE {role} NOLOGIN;\n"
        "    END IF;\n"
        "EXCEPTION WHEN duplicate_object OR unique_violation THEN\n"
        "    NULL;  -- created concurrently\n"
        "END\n"
    ).format(literal=sql.Literal(role), role=sql.Identifier(role))
    text = body.as_string(None)
    tag, n = "$pgjobs$", 0
    while tag in text:
        n += 1
        tag = f"$pgjobs{n}$"
    return sql.SQL("DO {tag}\n{body}{tag}").format(tag=sql.SQL(tag), body=sql.SQL(text))


def grant_statements(
    schema: str,
    roles: RoleNames = DEFAULT_ROLES,
    *,
    members: Mapping[str, Iterable[str]] | None = None,
    create: bool = True,
) -> list[sql.Composed]:
    """The statements :func:`grant_roles` runs, in order (run them in one transaction).

    ``members`` maps a kind (``app``, ``worker``, ``operator``, ``viewer``) to existing login roles
    that should become members of that group role (``GRANT group TO user``).
    """
    statements: list[sql.Composed] = []
    names = [roles.of(kind) for kind in _KINDS]
    if create:
        statements.extend(_create_role(name) for name in names)
    schema_id = sql.Identifier(schema)
    all_roles = sql.SQL(", ").join(sql.Identifier(n) for n in names)
    # Converge: whatever these roles held on pgjobs' objects goes, then exactly the
    # privileges below are granted.
    statements.append(sql.SQL("REVOKE ALL ON SCHEMA {} FROM {}").format(schema_id, all_roles))
    for table in (*TABLES, *VIEWS):
        statements.append(sql.SQL("REVOKE ALL ON TABLE {} FROM {}").format(
            _object(schema, table), all_roles))
    for sequence in SEQUENCES:
        statements.append(sql.SQL("REVOKE ALL ON SEQUENCE {} FROM {}").format(
            _object(schema, sequence), all_roles))
    for kind in _KINDS:
        role = sql.Identifier(roles.of(kind))
        statements.append(sql.SQL("GRANT USAGE ON SCHEMA {} TO {}").format(schema_id, role))
        for privilege, name, columns in PRIVILEGES[kind]:
            what: sql.Composable = sql.SQL(privilege)
            if columns is not None:
                what = sql.SQL("{} ({})").format(
                    what, sql.SQL(", ").join(sql.Identifier(c) for c in columns))
            kind_of_object = "SEQUENCE" if name in SEQUENCES else "TABLE"
            statements.append(sql.SQL("GRANT {} ON {} {} TO {}").format(
                what, sql.SQL(kind_of_object), _object(schema, name), role))
    for kind, users in (members or {}).items():
        group = sql.Identifier(roles.of(kind))
        for user in users:
            validate_role_name(user, "member")
            statements.append(sql.SQL("GRANT {} TO {}").format(group, sql.Identifier(user)))
    return statements


def render_sql(
    schema: str,
    roles: RoleNames = DEFAULT_ROLES,
    *,
    members: Mapping[str, Iterable[str]] | None = None,
) -> str:
    """The script :func:`grant_roles` would run, for review or your own tooling."""
    lines = ["BEGIN;"]
    lines += [s.as_string(None) + ";" for s in grant_statements(schema, roles, members=members)]
    lines.append("COMMIT;")
    return "\n".join(lines) + "\n"


def grant_roles(
    conn: psycopg.Connection[Any],
    schema: str,
    roles: RoleNames = DEFAULT_ROLES,
    *,
    members: Mapping[str, Iterable[str]] | None = None,
) -> None:
    """Create the four group roles (if missing) and grant them least privilege on ``schema``.

    Run as the owner of the pgjobs schema (with CREATEROLE, or as a superuser, for the
    roles to be created). Runs in ``conn``'s current transaction and does not commit;
    the caller commits, so the revoke-then-grant is atomic for other sessions. ``members``
    maps ``app``/``worker``/``operator``/``viewer`` to existing login roles to grant the
    group to.
    Raises :class:`~pgjobs.errors.SchemaMissingError` if ``schema`` was never migrated.
    """
    revision = current_revision(conn, schema)
    if revision is None:
        raise SchemaMissingError(schema)
    if revision != head_revision():
        raise ConfigurationError(
            f"pgjobs schema {schema!r} is at revision {revision}, this version needs "
            f"{head_revision()}: run `pgjobs migrate` first"
        )
    # GRANT/REVOKE by someone who does not own an object only warn ("no privileges were
    # granted"): refuse up front instead of reporting a success that did nothing.
    objects = [sql.Identifier(schema, name).as_string(None)
               for name in (*TABLES, *VIEWS, *SEQUENCES)]
    not_owned = conn.execute(
        "SELECT coalesce(array_agg(c.relname ORDER BY c.relname), '{}') "
        "FROM unnest(%s::text[]) AS o(name) JOIN pg_catalog.pg_class c "
        "ON c.oid = to_regclass(o.name) WHERE NOT pg_catalog.pg_has_role(c.relowner, 'USAGE')",
        [objects],
    ).fetchone()
    if not_owned and not_owned[0]:
        raise ConfigurationError(
            f"{conn.info.user!r} does not own {', '.join(not_owned[0])} in schema {schema!r}: "
            "run `pgjobs roles grant` as the owner of the pgjobs schema (the role that ran "
            "`pgjobs migrate`) or as a superuser"
        )
    for statement in grant_statements(schema, roles, members=members):
        # No parameters: the text is sent as is, so '%' in a name is just a character.
        conn.execute(statement)


def grant_membership(conn: psycopg.Connection[Any], group: str, user: str) -> None:
    """``GRANT group TO user``: make an existing login role a member of a pgjobs role."""
    conn.execute(sql.SQL("GRANT {} TO {}").format(
        sql.Identifier(validate_role_name(group, "group")),
        sql.Identifier(validate_role_name(user, "member"))))

"""Every command, every mistake a user can make: one line on stderr, exit 2.

Runs the INSTALLED `pgjobs` script (the one next to the Python running the tests, i.e.
``.venv/bin/pgjobs``), as a user would. Conditions: a database never migrated, a server
that cannot be reached, a URL of another database, and bad values for each option.
Commands added to the tree later are probed too (with placeholder arguments), so the
sweep cannot silently fall behind the CLI.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
import typing
import uuid
from collections.abc import Iterable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import typer

from pgjobs.cli import cli

from .conftest import ROOT

INSTALLED = Path(sys.executable).parent / "pgjobs"
PASSWORD = "s3cret-pw"
UNREACHABLE = f"postgresql://alice:{PASSWORD}@127.0.0.1:1/db"
NOT_POSTGRES = f"mysql://alice:{PASSWORD}@db.example/app"

# One invocation per command that touches the database.
DB_COMMANDS: dict[str, list[str]] = {
    "migrate": ["migrate"],
    "work": ["work", "tests.apps.sample:app"],
    "enqueue": ["enqueue", "t"],
    "enqueue --app": ["enqueue", "reports.build", "--app", "tests.apps.cli_app:app",
                      "--args", '{"region": "eu"}'],
    "stats": ["stats"],
    "stats --json": ["stats", "--json"],
    "queues limit": ["queues", "limit", "q", "5"],
    "queues list": ["queues", "list"],
    "queues pause": ["queues", "pause", "q"],
    "queues resume": ["queues", "resume", "q"],
    "jobs list": ["jobs", "list"],
    "jobs show": ["jobs", "show", "1"],
    "jobs cancel": ["jobs", "cancel", "1"],
    "periodic list": ["periodic", "list"],
    "periodic run": ["periodic", "run", "nightly"],
    "dead-letters list": ["dead-letters", "list"],
    "dead-letters show": ["dead-letters", "show", "1"],
    "dead-letters requeue": ["dead-letters", "requeue", "1"],
    "dead-letters requeue --all": ["dead-letters", "requeue", "--all"],
    "dead-letters purge": ["dead-letters", "purge"],
    "dead-letters purge --yes": ["dead-letters", "purge", "--yes"],
    "roles grant": ["roles", "grant"],
    "demo": ["demo"],
    "dashboard": ["dashboard", "--port", "0"],
}
# These create the schema themselves: an unmigrated database is not a mistake for them.
CREATE_SCHEMA = {"migrate", "demo"}
# Commands that never connect (and `server stop` would stop a real server): not probed.
NO_DATABASE = {"dashboards grafana", "dashboards alerts", "server status", "server stop"}

# (argv, what the one line must say); None: a usage error Typer reports in its own format.
BAD_VALUES: list[tuple[list[str], str | None]] = [
    (["queues", "limit", "q", "-5"], "limit must be >= 0"),
    (["queues", "limit", "q", "ten"], "whole number"),
    (["queues", "limit", "", "5"], "queue name"),
    (["work", "tests.apps.sample:app", "--history-retention", "banana"],
     "--history-retention"),
    (["work", "tests.apps.sample:app", "--dead-letter-retention", "soon"],
     "--dead-letter-retention"),
    (["work", "tests.apps.sample:app", "--pool-size", "1"], "pool"),
    (["work", "no_such_module:app"], "cannot import"),
    (["work", "tests.apps.sample"], "module:attribute"),
    (["dead-letters", "purge", "--older-than", "soon", "--yes"], "--older-than"),
    (["dead-letters", "requeue"], "IDs or --all"),
    (["dead-letters", "show", "abc"], None),
    (["dead-letters", "list", "--limit", "0"], None),
    (["enqueue", "t", "--args", "{"], "not valid JSON"),
    (["enqueue", "t", "--args", "[1]"], "JSON object"),
    (["enqueue", "t", "--priority", "99999"], "out of range"),
    (["enqueue", "t", "--delay", "-1"], "delay must be"),
    (["enqueue", "t", "--max-attempts", "0"], "max_attempts"),
    (["enqueue", "t", "--queue", ""], "queue name"),
    (["enqueue", "t", "--unique-key", ""], "--unique-key"),
    (["enqueue", "reports.biuld", "--app", "tests.apps.cli_app:app"], "reports.build"),
    (["enqueue", "reports.build", "--app", "tests.apps.cli_app:app", "--args", '{"x": 1}'],
     "region"),
    (["enqueue", "t", "--app", "no_such_module:app"], "cannot import"),
    (["--schema", "bad%name", "stats"], "'%'"),
    (["stats", "--watch", "--interval", "0"], None),
    (["queues", "pause", ""], "queue name"),
    (["jobs", "list", "--state", "bogus"], "unknown state"),
    (["jobs", "list", "--limit", "-1"], "--limit"),
    (["jobs", "show", "abc"], None),
    (["jobs", "cancel"], None),
    (["jobs", "show", "999999"], "no job 999999"),
    (["periodic", "run", "no-such-schedule"], "no periodic schedule"),
    (["no-such-command"], None),
]


def run_installed(argv: list[str], env: dict[str, str],
                  timeout: float = 60) -> subprocess.CompletedProcess[str]:
    """The installed `pgjobs ARGV`; one still running after ``timeout`` counts as exit -1
    (a command that should have refused to start is serving instead)."""
    try:
        return subprocess.run([str(INSTALLED), *argv], env=env, cwd=ROOT, capture_output=True,
                              text=True, timeout=timeout, stdin=subprocess.DEVNULL)
    except subprocess.TimeoutExpired as exc:
        err = exc.stderr.decode(errors="replace") if isinstance(exc.stderr, bytes) else ""
        return subprocess.CompletedProcess(exc.cmd, -1, "", f"still running after "
                                           f"{timeout:g}s: {err}")


# `pgjobs work` logs its progress (e.g. while waiting for the database) before the error:
# INFO/DEBUG log records are its normal output, not part of the error.
_LOG_RECORD = re.compile(r"^\d{4}-\d\d-\d\d \d\d:\d\d:\d\d,\d+ (DEBUG|INFO) ")


def _env(url: str, schema: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in ("DATABASE_URL",)}
    env.update(PGJOBS_DATABASE_URL=url, PGJOBS_SCHEMA=schema)
    return env


def problem(result: subprocess.CompletedProcess[str], expected: str | None) -> str | None:
    """Why ``result`` is not a clean user error (None when it is)."""
    if result.returncode != 2:
        return f"exit {result.returncode}: {result.stderr[-400:]!r}"
    if "Traceback" in result.stderr:
        return f"traceback: {result.stderr[-400:]!r}"
    if PASSWORD in result.stderr + result.stdout:
        return "the password is shown"
    if expected is None:  # Typer's own usage error: its format, exit 2
        return None
    lines = [line for line in result.stderr.splitlines()
             if line.strip() and not _LOG_RECORD.match(line)]
    if len(lines) != 1:
        return f"{len(lines)} lines: {result.stderr[-400:]!r}"
    if expected not in lines[0]:
        return f"{expected!r} not in {lines[0]!r}"
    return None


def _sweep(cases: Iterable[tuple[str, list[str], str | None]], env: dict[str, str]) -> None:
    """Run every case (in parallel: each is a process start) and report all failures."""
    cases = list(cases)
    with ThreadPoolExecutor(max_workers=4) as pool:
        results = list(pool.map(lambda case: run_installed(case[1], env), cases))
    failures = [f"pgjobs {' '.join(argv)} [{name}]: {why}"
                for (name, argv, expected), result in zip(cases, results, strict=True)
                if (why := problem(result, expected))]
    assert not failures, "\n".join(failures)


def _leaf_commands() -> dict[str, Any]:
    """Every runnable command of the tree, by its space-separated path."""
    found: dict[str, Any] = {}

    def walk(command: Any, path: list[str]) -> None:
        if hasattr(command, "commands"):  # a group (Typer ships its own Click)
            for name, sub in command.commands.items():
                walk(sub, [*path, name])
        else:
            found[" ".join(path)] = command

    walk(typer.main.get_command(cli), [])
    return found


def _takes_int(param: Any) -> bool:
    """Whether a (Typer or Click) parameter takes whole numbers."""
    annotation = getattr(getattr(param, "type_descriptor", None), "annotation", None)
    if annotation is None:
        return getattr(getattr(param, "type", None), "name", "") == "integer"

    def mentions_int(tp: Any) -> bool:
        return tp is int or any(mentions_int(arg) for arg in typing.get_args(tp))

    return mentions_int(annotation)


def _placeholder_argv(path: str, command: Any) -> list[str]:
    """The command with a placeholder for each required argument and option."""
    argv = path.split()
    for param in command.params:
        if not param.required:
            continue
        value = "1" if _takes_int(param) else "x"
        if param.param_type_name == "option":
            argv += [param.opts[0], value]
        else:
            argv.append(value)
    return argv


def _database_commands() -> list[tuple[str, list[str]]]:
    """The table above plus every command of the tree it does not name yet."""
    commands = [(name, argv) for name, argv in DB_COMMANDS.items()]
    named = {name.split(" --")[0] for name in DB_COMMANDS} | NO_DATABASE
    for path, command in sorted(_leaf_commands().items()):
        if path not in named:
            commands.append((f"{path} (auto)", _placeholder_argv(path, command)))
    return commands


def test_the_installed_command_exists():
    assert INSTALLED.is_file(), f"{INSTALLED} is missing: run `pip install -e .` (scripts/test)"


def test_the_sweep_covers_the_tree():
    """Every command of the tree is probed: named in the table, or (auto) with placeholders."""
    probed = {name.split(" (auto)")[0].split(" --")[0] for name, _ in _database_commands()}
    assert set(_leaf_commands()) <= probed | NO_DATABASE
    assert {"migrate", "work", "enqueue", "stats", "queues limit", "dead-letters list",
            "roles grant", "demo"} <= probed


def test_unmigrated_database(pg_url):
    schema = f"pgjobs_never_{uuid.uuid4().hex[:8]}"
    _sweep(((name, argv, "pgjobs migrate") for name, argv in _database_commands()
            if name not in CREATE_SCHEMA),
           _env(pg_url, schema))



def test_unreachable_server():
    _sweep(((name, argv, "cannot connect") for name, argv in _database_commands()),
           _env(UNREACHABLE, "pgjobs"))


def test_url_of_another_database():
    _sweep(((name, argv, "not a PostgreSQL URL") for name, argv in _database_commands()),
           _env(NOT_POSTGRES, "pgjobs"))


def test_bad_values(pg_url, schema):
    _sweep(((argv[0], argv, expected) for argv, expected in BAD_VALUES), _env(pg_url, schema))


def test_bad_values_are_refused_before_anything_is_written(pg_url, schema, db):
    from psycopg import sql

    env = _env(pg_url, schema)
    assert problem(run_installed(["queues", "limit", "q", "-5"], env), "limit must be") is None
    row = db.execute(sql.SQL("SELECT count(*) FROM {}").format(
        sql.Identifier(schema, "queues"))).fetchone()
    assert row == (0,)

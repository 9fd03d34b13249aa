"""The CLI as a user runs it: real processes, exit codes, one-line errors."""

from __future__ import annotations

import json

from psycopg import sql

from .conftest import cli_env, count, run_cli


def _one_line_error(result) -> str:
    assert result.returncode == 2, (result.stdout, result.stderr)
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(lines) == 1, result.stderr
    assert "Traceback" not in result.stderr
    return lines[0]


def test_enqueue_prints_job_id_and_stats_json(pg_url, schema, db):
    env = cli_env(pg_url, schema)
    result = run_cli("enqueue", "mail.send", "--args", '{"to": "a@b.c"}', "--queue", "mail",
                     "--priority", "3", env=env)
    assert result.returncode == 0, result.stderr
    job_id = int(result.stdout.strip())
    row = db.execute(sql.SQL("SELECT task, queue, args, priority FROM {} WHERE id = %s").format(
        sql.Identifier(schema, "jobs")),
                     [job_id]).fetchone()
    assert row == ("mail.send", "mail", {"to": "a@b.c"}, 3)
    run_cli("enqueue", "mail.send", "--delay", "3600", "--queue", "mail", env=env)
    run_cli("queues", "limit", "mail", "100", env=env)
    stats = run_cli("stats", "--json", env=env)
    assert stats.returncode == 0, stats.stderr
    data = json.loads(stats.stdout)
    (mail,) = [q for q in data["queues"] if q["queue"] == "mail"]
    assert mail["pending"] == 1 and mail["scheduled"] == 1 and mail["running"] == 0
    assert mail["dead"] == 0 and mail["limit"] == 100
    assert mail["oldest_pending_age_seconds"] >= 0
    human = run_cli("stats", env=env)
    assert human.returncode == 0 and "mail" in human.stdout


def test_enqueue_into_full_queue_exits_2(pg_url, schema, db):
    env = cli_env(pg_url, schema)
    assert run_cli("queues", "limit", "q", "0", env=env).returncode == 0
    line = _one_line_error(run_cli("enqueue", "t", "--queue", "q", env=env))
    assert "is full" in line
    assert count(db, schema, "jobs") == 0


def test_bad_json_args(pg_url, schema):
    env = cli_env(pg_url, schema)
    assert "not valid JSON" in _one_line_error(run_cli("enqueue", "t", "--args", "{", env=env))
    assert "JSON object" in _one_line_error(run_cli("enqueue", "t", "--args", "[1]", env=env))
    assert "NaN" in _one_line_error(run_cli("enqueue", "t", "--args", '{"x": NaN}', env=env))


def test_unreachable_server_and_bad_url_and_redaction(schema):
    env = cli_env("postgresql://alice:s3cret@127.0.0.1:1/db", schema)
    line = _one_line_error(run_cli("stats", env=env))
    assert "cannot connect" in line and "s3cret" not in line and "alice:***@" in line
    env = cli_env("not a url", schema)
    assert "invalid database URL" in _one_line_error(run_cli("stats", env=env))


def test_unmigrated_schema_says_run_migrate(pg_url):
    env = cli_env(pg_url, "pgjobs_never_migrated")
    assert "pgjobs migrate" in _one_line_error(run_cli("stats", env=env))
    assert "pgjobs migrate" in _one_line_error(run_cli("enqueue", "t", env=env))


def test_bad_limit_values(pg_url, schema):
    env = cli_env(pg_url, schema)
    assert "whole number" in _one_line_error(run_cli("queues", "limit", "q", "ten", env=env))
    assert "queue name" in _one_line_error(run_cli("queues", "limit", "", "1", env=env))
    ok = run_cli("queues", "limit", "q", "none", env=env)
    assert ok.returncode == 0 and "unlimited" in ok.stdout


def test_typer_usage_errors_keep_exit_2(pg_url, schema):
    result = run_cli("no-such-command", env=cli_env(pg_url, schema))
    assert result.returncode == 2 and "No such command" in result.stderr


def test_dead_letters_show_purge_and_errors(pg_url, schema, db):
    env = cli_env(pg_url, schema)
    db.execute(sql.SQL(
        "INSERT INTO {} (job_id, queue, task, args, attempts, max_attempts, error, created_at, "
        "failed_at) VALUES (1, 'q', 't', '{{\"a\": 1}}', 5, 5, 'E: boom', now(), "
        "now() - interval '2 days'), (2, 'q', 't', '{{}}', 5, 5, 'E: new', now(), now())"
    ).format(sql.Identifier(schema, "dead_letters")))
    ids = [r[0] for r in db.execute(sql.SQL("SELECT id FROM {} ORDER BY id").format(
        sql.Identifier(schema, "dead_letters"))).fetchall()]
    shown = run_cli("dead-letters", "show", str(ids[0]), "--json", env=env)
    assert shown.returncode == 0 and json.loads(shown.stdout)["args"] == {"a": 1}
    assert "no dead letter with id 999999" in _one_line_error(
        run_cli("dead-letters", "show", "999999", env=env))
    assert "nothing requeued" in _one_line_error(
        run_cli("dead-letters", "requeue", str(ids[0]), "999999", env=env))
    assert count(db, schema, "dead_letters") == 2  # the valid id was not requeued either
    assert "--yes" in _one_line_error(run_cli("dead-letters", "purge", env=env))
    assert count(db, schema, "dead_letters") == 2
    purged = run_cli("dead-letters", "purge", "--older-than", "1d", "--yes", env=env)
    assert purged.returncode == 0 and "deleted 1" in purged.stdout
    assert count(db, schema, "dead_letters") == 1
    assert "duration" in _one_line_error(
        run_cli("dead-letters", "purge", "--older-than", "soon", "--yes", env=env))
    listed = run_cli("dead-letters", "list", env=env)
    assert listed.returncode == 0 and "E: new" in listed.stdout

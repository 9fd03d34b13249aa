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


def test_stats_counts_the_last_60_seconds(pg_url, schema, db):
    """ok/min is the last 60 s: this minute's finished jobs count at once, older ones not."""
    history = sql.Identifier(schema, "job_history")
    assert run_cli("queues", "limit", "q", "100", env=cli_env(pg_url, schema)).returncode == 0
    db.execute(sql.SQL(
        "INSERT INTO {} (minute, queue, task, succeeded, retried, dead) VALUES "
        "(date_trunc('minute', now()), 'q', 't', 80, 2, 1), "
        "(date_trunc('minute', now()) - interval '5 minutes', 'q', 't', 1000, 1000, 0)"
    ).format(history))
    stats = run_cli("stats", "--json", env=cli_env(pg_url, schema))
    assert stats.returncode == 0, stats.stderr
    (q,) = [r for r in json.loads(stats.stdout)["queues"] if r["queue"] == "q"]
    assert q["succeeded_last_minute"] == 80 and q["failed_last_minute"] == 3
    # The previous minute counts for the part of it still inside the window.
    db.execute(sql.SQL(
        "INSERT INTO {} (minute, queue, task, succeeded) VALUES "
        "(date_trunc('minute', now()) - interval '1 minute', 'q', 't', 60)").format(history))
    stats = run_cli("stats", "--json", env=cli_env(pg_url, schema))
    (q,) = [r for r in json.loads(stats.stdout)["queues"] if r["queue"] == "q"]
    assert 80 <= q["succeeded_last_minute"] <= 140


def test_stats_piped_keeps_headers_and_shows_start_time(pg_url, schema, db):
    """Into a pipe, wide tables print whole; `since` is the worker's start (local time)."""
    import datetime as dt

    started = dt.datetime.now(dt.UTC).replace(microsecond=0) - dt.timedelta(hours=1)
    db.execute(sql.SQL(
        "INSERT INTO {} (id, hostname, pid, queues, concurrency, lease_seconds, started_at) "
        "VALUES ('web-1.eu-west.example.internal:4121:9f2c1a', 'web-1', 4121, "
        "ARRAY['webhooks-with-a-long-name', 'emails'], 10, 30, %s)"
    ).format(sql.Identifier(schema, "workers")), [started])
    run_cli("queues", "limit", "a-queue-with-a-rather-long-name-for-a-table", "10",
            env=cli_env(pg_url, schema))
    result = run_cli("stats", env=cli_env(pg_url, schema))  # stdout is a pipe here
    assert result.returncode == 0, result.stderr
    assert "…" not in result.stdout, result.stdout
    for header in ("queue", "pending", "sched", "oldest", "ok/min", "fail/min", "limit",
                   "worker", "in hand", "since", "last heartbeat", "alive"):
        assert header in result.stdout, (header, result.stdout)
    assert "web-1.eu-west.example.internal:4121:9f2c1a" in result.stdout
    assert started.astimezone().strftime("%H:%M:%S") in result.stdout


def test_enqueue_with_app_uses_the_tasks_own_options(pg_url, schema, db):
    """--app: the task's queue, max_attempts and priority; options still override them."""
    env = cli_env(pg_url, schema)
    query = sql.SQL("SELECT task, queue, max_attempts, priority, args FROM {} WHERE id = %s"
                    ).format(sql.Identifier(schema, "jobs"))

    declared = run_cli("enqueue", "reports.build", "--app", "tests.apps.cli_app:app",
                       "--args", '{"region": "eu"}', env=env)
    assert declared.returncode == 0, declared.stderr
    assert db.execute(query, [int(declared.stdout)]).fetchone() == (
        "reports.build", "reports", 2, 7, {"region": "eu"})

    overridden = run_cli("enqueue", "reports.build", "--app", "tests.apps.cli_app:app",
                         "--args", '{"region": "us"}', "--queue", "urgent", "--priority", "9",
                         "--max-attempts", "4", env=env)
    assert overridden.returncode == 0, overridden.stderr
    assert db.execute(query, [int(overridden.stdout)]).fetchone()[1:4] == ("urgent", 4, 9)

    # Without --app the name is taken as given and the queue is `default`.
    by_name = run_cli("enqueue", "reports.build", "--args", '{"region": "eu"}', env=env)
    assert by_name.returncode == 0, by_name.stderr
    assert db.execute(query, [int(by_name.stdout)]).fetchone()[1:4] == ("default", 5, 0)

    unknown = _one_line_error(run_cli("enqueue", "reports.biuld", "--app",
                                      "tests.apps.cli_app:app", env=env))
    assert "unknown task 'reports.biuld'" in unknown and "'reports.build'" in unknown
    assert count(db, schema, "jobs") == 3


def test_enqueue_help_says_the_name_is_not_checked_without_app(pg_url, schema):
    result = run_cli("enqueue", "--help", env={**cli_env(pg_url, schema), "COLUMNS": "200"})
    assert result.returncode == 0
    text = " ".join(result.stdout.split())
    assert "NOT checked" in text and "'default'" in text


def test_tables_print_names_and_errors_verbatim(pg_url, schema, db):
    """Rich markup in data ("[/]", "[Errno 111]", "[bold]") is shown, not interpreted."""
    env = cli_env(pg_url, schema)
    db.execute(sql.SQL(
        "INSERT INTO {} (job_id, queue, task, args, attempts, max_attempts, error, created_at, "
        "failed_at) VALUES (1, '[bold]q', 't[/]', '{{}}', 5, 5, "
        "'ConnectionRefusedError: [Errno 111] refused [/]', now(), now())"
    ).format(sql.Identifier(schema, "dead_letters")))
    listed = run_cli("dead-letters", "list", env=env)
    assert listed.returncode == 0, listed.stderr
    assert "[Errno 111] refused [/]" in listed.stdout and "t[/]" in listed.stdout
    stats = run_cli("stats", env=env)
    assert stats.returncode == 0, stats.stderr
    assert "[bold]q" in stats.stdout

"""The web dashboard over HTTP (httpx's ASGI transport), against the real database.

Every page and action, read-only and token modes, cross-site refusal, escaping, capped
counts, keyset pagination and mounting under a path prefix.
"""

from __future__ import annotations

import html
import re
import uuid
from collections.abc import Iterator
from typing import Any

import psycopg
import pytest
from psycopg import sql
from starlette.applications import Starlette
from starlette.routing import Mount

import pgjobs.sql as pgsql
from pgjobs import roles as pgroles
from pgjobs.dashboard import actions, asgi_app, queries
from pgjobs.dashboard.security import SESSION_COOKIE
from tests.conftest import count
from tests.dashboard_support import (
    Client,
    flash,
    insert_dead_letter,
    insert_history,
    insert_job,
    row_ids,
)

XSS = "<script>alert(1)</script>"


@pytest.fixture
def make_client(pg_url: str, schema: str) -> Iterator[Any]:
    """Build dashboards on this test's schema; their pools close at the end."""
    apps: list[Any] = []

    def make(**options: Any) -> Client:
        app = asgi_app(options.pop("database_url", pg_url), schema=schema, **options)
        apps.append(app)
        return Client(app)

    yield make
    for app in apps:
        app.state.dashboard.db.close()


@pytest.fixture
def client(make_client: Any) -> Client:
    return make_client()


def _jobs_table(schema: str) -> sql.Composed:
    return sql.SQL("{}").format(sql.Identifier(schema, "jobs"))


# --- pages --------------------------------------------------------------------------------


def test_every_page_renders_with_the_header_links_and_no_script_needed(client, db, schema):
    job = insert_job(db, schema, queue="mail", task="send_mail", args={"to": "a@b.c"})
    dead = insert_dead_letter(db, schema, queue="mail", task="send_mail",
                              error="ValueError: bad address\nTraceback (most recent call)")
    pages = ["/", "/jobs", f"/jobs/{job}", "/dead-letters", f"/dead-letters/{dead}",
             "/workers", "/periodic"]
    for path in pages:
        response = client.get(path)
        assert response.status_code == 200, (path, response.text[:300])
        body = response.text
        # Navigation is plain links in every page's header.
        for link in ('href="/"', 'href="/jobs"', 'href="/dead-letters"', 'href="/workers"',
                     'href="/periodic"'):
            assert link in body, (path, link)
        assert 'src="/static/dashboard.js' in body
        assert "content-security-policy" in response.headers
    assert "send_mail" in client.get(f"/jobs/{job}").text
    assert "a@b.c" in client.get(f"/jobs/{job}").text
    detail = client.get(f"/dead-letters/{dead}").text
    assert "ValueError: bad address" in detail and "Traceback (most recent call)" in detail
    assert client.get("/static/dashboard.js").status_code == 200
    assert client.get("/static/dashboard.css").status_code == 200


def test_queues_page_shows_depth_limit_fullness_dead_age_and_last_hour(client, db, schema):
    for _ in range(3):
        insert_job(db, schema, queue="mail")
    insert_job(db, schema, queue="mail", delay=3600)
    insert_job(db, schema, queue="mail", state="running")
    insert_dead_letter(db, schema, queue="mail")
    insert_dead_letter(db, schema, queue="reports")
    db.execute(sql.SQL("INSERT INTO {} (name, pending_limit) VALUES ('mail', 8)").format(
        sql.Identifier(schema, "queues")))
    insert_history(db, schema, queue="mail", minutes_ago=2, succeeded=40, retried=3, dead=1)
    insert_history(db, schema, queue="mail", minutes_ago=90, succeeded=1000)  # too old
    page = client.get("/").text
    row = _table_row(page, "mail")
    cells = _cells(row)
    # pending, scheduled, backlog, running, dead, oldest, limit, fullness (4 of 8 held)
    assert cells[:5] == ["3", "1", "4", "1", "1"], cells
    assert cells[6] == "8"
    assert "50%" in cells[7]
    # Last hour: 40 succeeded, 4 failed (retried + dead); the 90-minute-old row is out.
    assert re.search(r"40</span> / <span class=\"fail-text\">4<", row), row
    assert "reports" in page  # a queue known only from its dead letters
    assert _cells(_table_row(page, "reports"))[4] == "1"


def test_queue_counts_are_capped_past_the_threshold(client, db, schema, monkeypatch):
    monkeypatch.setattr(queries, "COUNT_CAP", 5)
    monkeypatch.setattr(queries, "LIST_COUNT_CAP", 5)
    for priority in (0, 0, 0, 1, 1, 2, 2, 2):  # 8 due jobs over three priorities
        insert_job(db, schema, queue="big", priority=priority)
    for _ in range(7):
        insert_dead_letter(db, schema, queue="big")
    cells = _cells(_table_row(client.get("/").text, "big"))
    assert cells[0] == "5+", cells
    assert cells[4] == "5+" or cells[4].startswith("≈"), cells
    # Past the cap, the backlog is the planner's estimate (exact here, after ANALYZE).
    db.execute(sql.SQL("ANALYZE {}").format(sql.Identifier(schema, "jobs")))
    cells = _cells(_table_row(client.get("/").text, "big"))
    assert cells[2] == "≈ 8", cells
    # Small numbers stay exact.
    insert_job(db, schema, queue="small")
    assert _cells(_table_row(client.get("/").text, "small"))[0] == "1"
    jobs = client.get("/jobs").text
    assert "<strong>5+</strong> live jobs" in jobs


def test_jobs_filters_narrow_the_list(client, db, schema):
    a = insert_job(db, schema, queue="mail", task="send", args={"user": "alice"})
    b = insert_job(db, schema, queue="mail", task="send", args={"user": "bob"})
    c = insert_job(db, schema, queue="reports", task="build")
    d = insert_job(db, schema, queue="mail", task="send", delay=600)
    e = insert_job(db, schema, queue="mail", task="send", state="running")
    assert set(row_ids(client.get("/jobs").text)) == {a, b, c, d, e}
    assert set(row_ids(client.get("/jobs?queue=mail").text)) == {a, b, d, e}
    assert row_ids(client.get("/jobs?task=build").text) == [c]
    assert set(row_ids(client.get("/jobs?queue=mail&state=pending").text)) == {a, b}
    assert row_ids(client.get("/jobs?state=scheduled").text) == [d]
    assert row_ids(client.get("/jobs?state=running").text) == [e]
    assert row_ids(client.get("/jobs?search=ALICE").text) == [a]
    page = client.get("/jobs?queue=mail&state=pending").text
    assert "<strong>2</strong> matching jobs" in page
    assert client.get("/jobs?state=nonsense").status_code == 400


def test_jobs_keyset_pagination_visits_every_job_once(client, db, schema):
    ids = [insert_job(db, schema, task=f"t{i}") for i in range(120)]
    seen: list[int] = []
    path = "/jobs"
    pages = 0
    while path:
        body = client.get(path).text
        seen += row_ids(body)
        pages += 1
        older = re.search(r'<a rel="next" href="([^"]+)"', body)
        path = html.unescape(older.group(1)) if older else ""
    assert pages == 3
    assert seen == sorted(ids, reverse=True)  # newest first, no duplicates, none missed
    for name in dir(pgsql):
        if name.startswith("DASHBOARD"):
            assert "OFFSET" not in getattr(pgsql, name).upper()


def test_a_rare_filter_reads_a_bounded_window_and_offers_to_search_further(
        client, db, schema, monkeypatch):
    monkeypatch.setattr(queries, "SCAN_WINDOW", 10)
    rare = insert_job(db, schema, task="rare")
    for _ in range(25):
        insert_job(db, schema, task="common")
    first = client.get("/jobs?task=rare").text
    assert row_ids(first) == []
    assert "Search older" in first
    path = "/jobs?task=rare"
    found: list[int] = []
    for _ in range(5):
        body = client.get(path).text
        found += row_ids(body)
        more = re.search(r'<a rel="next" href="([^"]+)"', body)
        if not more:
            break
        path = html.unescape(more.group(1))
    assert found == [rare]


def test_job_detail_shows_arguments_error_trace_and_a_finished_job_is_gone(client, db, schema):
    job = insert_job(db, schema, task="charge", args={"amount": 12}, delay=60,
                     last_error="TimeoutError: gateway slow")
    db.execute(sql.SQL("UPDATE {} SET trace_context = %s::jsonb WHERE id = %s").format(
        sql.Identifier(schema, "jobs")),
        ['{"traceparent": "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"}', job])
    page = client.get(f"/jobs/{job}").text
    assert "&#34;amount&#34;: 12" in page or '"amount": 12' in html.unescape(page)
    assert "TimeoutError: gateway slow" in page
    assert "0af7651916cd43dd8448eb211c80319c" in page
    assert "scheduled" in page
    gone = client.get("/jobs/999999")
    assert gone.status_code == 404 and "not a live job" in gone.text


def test_workers_page_lists_registered_workers(client, db, schema):
    db.execute(sql.SQL(
        "INSERT INTO {} (id, hostname, pid, queues, concurrency, lease_seconds, jobs_in_hand, "
        "executors_busy) VALUES ('host-1:42', 'host-1', 42, ARRAY['mail'], 10, 30, 7, 3)"
    ).format(sql.Identifier(schema, "workers")))
    page = client.get("/workers").text
    assert "host-1:42" in page and "3 / 10" in page and "alive" in page
    assert ">7<" in page


# --- actions ------------------------------------------------------------------------------


def test_retry_now_makes_a_scheduled_job_due_and_says_so(client, db, schema):
    later = insert_job(db, schema, delay=3600)
    due = insert_job(db, schema)
    response = client.post("/actions/jobs/retry-now",
                           data={"id": [str(later), str(due)], "next": "/jobs"})
    assert response.status_code == 200 and str(response.url).endswith("/jobs")
    assert flash(response.text) == "1 job(s) made due now."
    assert count(db, schema, "jobs", "id = %s AND next_run_at <= now()", [later]) == 1


def test_retry_now_on_all_matching_runs_in_batches(client, db, schema, monkeypatch):
    monkeypatch.setattr(actions, "BATCH_SIZE", 2)
    for _ in range(5):
        insert_job(db, schema, queue="mail", delay=3600)
    insert_job(db, schema, queue="other", delay=3600)
    response = client.post("/actions/jobs/retry-now", data={
        "scope": "all", "queue": "mail", "state": "scheduled", "next": "/jobs"})
    assert flash(response.text) == "5 job(s) made due now (3 batches)."
    assert count(db, schema, "jobs", "next_run_at > now()") == 1  # the other queue's job


def test_requeue_one_selected_and_all_matching_dead_letters(client, db, schema, monkeypatch):
    one = insert_dead_letter(db, schema, queue="mail", args={"n": 1})
    response = client.post("/actions/dead-letters/requeue",
                           data={"id": str(one), "next": "/dead-letters"})
    assert flash(response.text) == "1 dead letter(s) requeued as new pending jobs."
    assert count(db, schema, "dead_letters") == 0
    assert count(db, schema, "jobs", "queue = 'mail' AND args = '{\"n\": 1}'") == 1

    picked = [insert_dead_letter(db, schema, queue="mail") for _ in range(3)]
    client.post("/actions/dead-letters/requeue",
                data={"id": [str(picked[0]), str(picked[2])], "scope": "selected"})
    assert count(db, schema, "dead_letters") == 1

    monkeypatch.setattr(actions, "BATCH_SIZE", 2)
    for _ in range(4):
        insert_dead_letter(db, schema, queue="reports", error="KeyError: x")
    insert_dead_letter(db, schema, queue="reports", error="other")
    response = client.post("/actions/dead-letters/requeue", data={
        "scope": "all", "queue": "reports", "search": "keyerror", "next": "/dead-letters"})
    assert flash(response.text) == "4 dead letter(s) requeued as new pending jobs (2 batches)."
    assert count(db, schema, "dead_letters", "queue = 'reports'") == 1


def test_purge_needs_confirmation_then_deletes(client, db, schema):
    ids = [insert_dead_letter(db, schema, queue="mail") for _ in range(3)]
    response = client.post("/actions/dead-letters/purge", data={"id": str(ids[0])})
    assert "Nothing done" in (flash(response.text) or "")
    assert count(db, schema, "dead_letters") == 3
    response = client.post("/actions/dead-letters/purge",
                           data={"id": str(ids[0]), "confirm": "yes"})
    assert flash(response.text) == "1 dead letter(s) purged."
    response = client.post("/actions/dead-letters/purge",
                           data={"scope": "all", "queue": "mail", "confirm": "yes"})
    assert flash(response.text) == "2 dead letter(s) purged."
    assert count(db, schema, "dead_letters") == 0


def test_an_action_without_a_selection_or_unknown_says_so(client, db, schema):
    response = client.post("/actions/dead-letters/requeue", data={"next": "/dead-letters"})
    assert "Nothing done: select at least one row" in (flash(response.text) or "")
    assert client.post("/actions/jobs/explode", data={"id": "1"}).status_code == 404
    assert client.post("/actions/jobs/retry-now", data={"id": "x"}).status_code == 400


def test_next_never_leaves_the_dashboard(client, db, schema):
    dead = insert_dead_letter(db, schema)
    response = client.post("/actions/dead-letters/requeue",
                           data={"id": str(dead), "next": "//evil.example/x"}, follow=False)
    assert response.status_code == 303 and response.headers["location"] == "/"


# --- safety -------------------------------------------------------------------------------


@pytest.mark.parametrize("headers", [
    {"origin": "http://evil.example"},
    {"origin": "null"},
    {"sec-fetch-site": "cross-site"},
    {"sec-fetch-site": "same-site"},
])
def test_cross_site_posts_are_refused(client, db, schema, headers):
    dead = insert_dead_letter(db, schema)
    response = client.post("/actions/dead-letters/requeue", data={"id": str(dead)},
                           origin=None, headers=headers)
    assert response.status_code == 403 and "cross-site request refused" in response.text
    assert count(db, schema, "dead_letters") == 1
    ok = client.post("/actions/dead-letters/requeue", data={"id": str(dead)},
                     headers={"sec-fetch-site": "same-origin"})
    assert ok.status_code == 200 and count(db, schema, "dead_letters") == 0


def test_read_only_refuses_every_action_and_shows_none(make_client, db, schema):
    client = make_client(read_only=True)
    dead = insert_dead_letter(db, schema)
    job = insert_job(db, schema, delay=3600)
    for path in ("/", "/jobs", f"/jobs/{job}", "/dead-letters", f"/dead-letters/{dead}"):
        page = client.get(path).text
        assert "/actions/" not in page, path
        assert 'method="post"' not in page, path
        assert "read-only" in page
    for action, data in (("dead-letters/requeue", {"id": str(dead)}),
                         ("dead-letters/purge", {"scope": "all", "confirm": "yes"}),
                         ("jobs/retry-now", {"id": str(job)})):
        response = client.post(f"/actions/{action}", data=data)
        assert response.status_code == 403 and "read-only" in response.text
    assert count(db, schema, "dead_letters") == 1
    assert count(db, schema, "jobs", "next_run_at > now()") == 1


def test_read_only_works_with_a_select_only_viewer_role(make_client, db, schema, pg_url):
    suffix = uuid.uuid4().hex[:8]
    names = pgroles.RoleNames(app=f"t_app_{suffix}", worker=f"t_worker_{suffix}",
                              operator=f"t_operator_{suffix}", viewer=f"t_viewer_{suffix}")
    user = f"t_viewer_user_{suffix}"
    db.execute(sql.SQL("CREATE ROLE {} LOGIN").format(sql.Identifier(user)))
    try:
        with psycopg.connect(pg_url) as owner:
            pgroles.grant_roles(owner, schema, names, members={"viewer": [user]})
            owner.commit()
        insert_job(db, schema, queue="mail", args={"x": 1})
        dead = insert_dead_letter(db, schema, queue="mail", error="boom")
        viewer_url = psycopg.conninfo.make_conninfo(pg_url, user=user)
        client = make_client(database_url=viewer_url, read_only=True)
        dashboard_db = client.app.state.dashboard.db
        for path in ("/", "/jobs", "/dead-letters", f"/dead-letters/{dead}", "/workers",
                     "/jobs?search=x&queue=mail"):
            response = client.get(path)
            assert response.status_code == 200, (path, response.text[:500])
        assert "boom" in client.get(f"/dead-letters/{dead}").text
        with psycopg.connect(viewer_url) as conn, pytest.raises(
                psycopg.errors.InsufficientPrivilege):
            conn.execute(sql.SQL("DELETE FROM {}").format(
                sql.Identifier(schema, "dead_letters")))
        dashboard_db.close()  # before its login role is dropped
    finally:
        for role in (user, names.app, names.worker, names.operator, names.viewer):
            if db.execute("SELECT 1 FROM pg_roles WHERE rolname = %s", [role]).fetchone():
                db.execute(sql.SQL("DROP OWNED BY {}").format(sql.Identifier(role)))
                db.execute(sql.SQL("DROP ROLE {}").format(sql.Identifier(role)))


def test_viewer_role_is_select_only_on_every_pgjobs_object():
    viewer = pgroles.PRIVILEGES["viewer"]
    assert {p for p, _, _ in viewer} == {"SELECT"}
    assert {name for _, name, _ in viewer} == {*pgroles.TABLES, *pgroles.VIEWS}
    assert '"pgjobs_viewer"' in pgroles.render_sql("pgjobs")


def test_token_mode_requires_the_token_everywhere(make_client, db, schema):
    token = "s3cret-" + uuid.uuid4().hex
    client = make_client(token=token)
    dead = insert_dead_letter(db, schema)
    anonymous = client.get("/jobs")
    assert anonymous.status_code == 401 and 'name="token"' in anonymous.text
    assert "schema" not in anonymous.text.split("<main>")[0]  # no details before login
    assert client.get("/jobs", headers={"authorization": "Bearer wrong"}).status_code == 401
    assert client.get("/jobs", headers={"authorization": f"Bearer {token}"}).status_code == 200
    assert client.get("/jobs", headers={"x-pgjobs-token": token}).status_code == 200
    refused = client.post("/actions/dead-letters/requeue", data={"id": str(dead)})
    assert refused.status_code == 401 and count(db, schema, "dead_letters") == 1
    # ?token= logs the browser in and drops the token from the URL.
    login = client.get(f"/jobs?queue=x&token={token}", follow=False)
    assert login.status_code == 303 and login.headers["location"] == "/jobs?queue=x"
    assert token not in login.headers["set-cookie"]
    assert client.cookies.get(SESSION_COOKIE)
    assert client.get("/jobs").status_code == 200
    done = client.post("/actions/dead-letters/requeue", data={"id": str(dead)})
    assert done.status_code == 200 and count(db, schema, "dead_letters") == 0
    # The login form.
    fresh = make_client(token=token)
    assert fresh.post("/login", data={"token": "nope"}).status_code == 401
    assert fresh.post("/login", data={"token": token}).status_code == 200
    assert fresh.get("/workers").status_code == 200
    wrong = make_client(token=token).get("/jobs?token=wrong")
    assert wrong.status_code == 401 and "wrong token" in wrong.text


def test_nothing_user_supplied_is_rendered_unescaped(client, db, schema):
    job = insert_job(db, schema, queue=XSS, task=XSS, args={"html": XSS, XSS: 1},
                     last_error=XSS, delay=60)
    dead = insert_dead_letter(db, schema, queue=XSS, task=XSS, args={"html": XSS},
                              error=f"{XSS}\n<img src=x onerror=alert(2)>")
    insert_history(db, schema, queue=XSS, minutes_ago=1, succeeded=1)
    db.execute(sql.SQL(
        "INSERT INTO {} (id, hostname, pid, queues, concurrency, lease_seconds) "
        "VALUES (%s, %s, 1, ARRAY[%s], 4, 30)").format(sql.Identifier(schema, "workers")),
        [XSS, XSS, XSS])
    pages = ["/", "/jobs", f"/jobs/{job}", "/dead-letters", f"/dead-letters/{dead}",
             "/workers", f"/jobs?task={XSS}", f"/dead-letters?search={XSS}",
             f"/jobs?queue={XSS}&search={XSS}"]
    for path in pages:
        body = client.get(path).text
        assert "<script>alert" not in body, path
        assert "<img src=x" not in body, path
        assert "&lt;script&gt;alert(1)&lt;/script&gt;" in body, path
    response = client.post("/actions/jobs/retry-now",
                           data={"id": str(job), "next": f"/jobs?task={XSS}"})
    assert "<script>alert" not in response.text


def test_mounted_under_a_path_prefix(pg_url, schema, db):
    inner = asgi_app(pg_url, schema=schema)
    try:
        client = Client(Starlette(routes=[Mount("/ops/pgjobs", app=inner)]))
        dead = insert_dead_letter(db, schema, queue="mail")
        page = client.get("/ops/pgjobs/dead-letters").text
        assert 'href="/ops/pgjobs/jobs"' in page and 'href="/ops/pgjobs/workers"' in page
        assert 'action="/ops/pgjobs/actions/dead-letters/requeue"' in page
        assert client.get("/ops/pgjobs/static/dashboard.css").status_code == 200
        response = client.post("/ops/pgjobs/actions/dead-letters/requeue",
                               data={"id": str(dead), "next": "/dead-letters"}, follow=False)
        assert response.headers["location"] == "/ops/pgjobs/dead-letters"
        assert count(db, schema, "dead_letters") == 0
    finally:
        inner.state.dashboard.db.close()


def test_an_unmigrated_schema_is_one_clear_line(pg_url):
    app = asgi_app(pg_url, schema=f"nothing_here_{uuid.uuid4().hex[:8]}")
    try:
        response = Client(app).get("/")
        assert response.status_code == 503 and "run `pgjobs migrate`" in response.text
    finally:
        app.state.dashboard.db.close()


# --- helpers ------------------------------------------------------------------------------


def _table_row(page: str, queue: str) -> str:
    match = re.search(
        r'<tr>\s*<th scope="row"><a href="/jobs\?queue=' + re.escape(queue)
        + r'">.*?</tr>', page, re.S)
    assert match, f"no row for queue {queue!r}"
    return match.group(0)


def _cells(row: str) -> list[str]:
    cells = re.findall(r"<td[^>]*>(.*?)</td>", row, re.S)
    return [re.sub(r"<[^>]+>", "", c).strip() for c in cells]


def test_a_count_that_would_read_too_much_is_left_unknown(client, db, schema, monkeypatch,
                                                          pg_url):
    monkeypatch.setattr(queries, "SCAN_WINDOW", 10)
    for _ in range(30):
        insert_job(db, schema, task="common")
    sparse = client.get("/jobs?task=rare").text
    assert "not counted" in sparse and "All matching:" in sparse
    # A count the time bound stops is unknown, never wrong, and the connection stays usable.
    monkeypatch.setattr(queries, "COUNT_TIMEOUT_MS", 1)
    db.execute(sql.SQL("INSERT INTO {} (task, args) SELECT 'bulk', '{{}}' "
                       "FROM generate_series(1, 300000)").format(sql.Identifier(schema, "jobs")))
    with psycopg.connect(pg_url, autocommit=True) as conn:
        statements = pgsql.statements(schema)
        needle = queries.Filters(search="needle-that-is-nowhere")
        assert queries.count_matching(conn, statements, pgsql.DASHBOARD_JOBS_COUNT, needle,
                                      1000) == queries.Bounded(None)
        monkeypatch.setattr(queries, "COUNT_TIMEOUT_MS", 60_000)
        assert queries.count_matching(conn, statements, pgsql.DASHBOARD_JOBS_COUNT, needle,
                                      1000) == queries.Bounded(0)


def _schedule(db: psycopg.Connection[Any], schema: str, name: str, **columns: Any) -> None:
    values = {"cron": "*/5 * * * *", "timezone": "Europe/Paris", "task": "app.report",
              "queue": "reports", "args": '{"region": "eu"}', **columns}
    db.execute(sql.SQL(
        "INSERT INTO {} (name, cron, timezone, task, queue, args) "
        "VALUES (%s, %s, %s, %s, %s, %s::jsonb)").format(sql.Identifier(schema, "cron_schedules")),
        [name, values["cron"], values["timezone"], values["task"], values["queue"],
         values["args"]])


def test_periodic_page_lists_schedules_and_runs_one_now(client, db, schema):
    _schedule(db, schema, "eu-report")
    _schedule(db, schema, XSS, task=XSS)
    page = client.get("/periodic").text
    assert "eu-report" in page and "*/5 * * * *" in page and "Europe/Paris" in page
    assert "<script>alert" not in page
    response = client.post("/actions/periodic/run-now",
                           data={"id": "eu-report", "next": "/periodic"})
    assert flash(response.text) == "1 periodic job(s) enqueued now."
    assert count(db, schema, "jobs",
                 "task = 'app.report' AND queue = 'reports' AND args = '{\"region\": \"eu\"}'") == 1
    refused = client.post("/actions/periodic/run-now", data={"id": "no-such-schedule"})
    assert "Run now failed: no periodic schedule named 'no-such-schedule'" in (
        flash(refused.text) or "")
    db.execute(sql.SQL("INSERT INTO {} (name, pending_limit) VALUES ('reports', 1)").format(
        sql.Identifier(schema, "queues")))
    full = client.post("/actions/periodic/run-now", data={"id": "eu-report"})
    assert (flash(full.text) or "").startswith("Run now failed:")
    assert count(db, schema, "jobs") == 1


def test_pause_and_resume_a_queue_from_the_queues_page(client, db, schema):
    insert_job(db, schema, queue="mail")
    page = client.get("/").text
    assert 'action="/actions/queues/pause"' in page
    response = client.post("/actions/queues/pause", data={"id": "mail", "next": "/"})
    assert flash(response.text) == "1 queue(s) paused."
    assert count(db, schema, "queues", "name = 'mail' AND paused") == 1
    assert "badge paused" in response.text
    assert 'action="/actions/queues/resume"' in response.text
    # Pausing kept the App's default limit: no limit appears.
    assert _cells(_table_row(response.text, "mail"))[6] == "—"
    response = client.post("/actions/queues/resume", data={"id": "mail", "next": "/"})
    assert flash(response.text) == "1 queue(s) resumed."
    assert count(db, schema, "queues", "name = 'mail' AND NOT paused") == 1


def test_cancel_pending_and_running_jobs(client, db, schema):
    pending = insert_job(db, schema, queue="mail", task="send")
    running = insert_job(db, schema, queue="mail", task="send", state="running")
    assert 'formaction="/actions/jobs/cancel"' in client.get("/jobs").text
    refused = client.post("/actions/jobs/cancel", data={"id": str(pending)})
    assert "Nothing done" in (flash(refused.text) or "")
    response = client.post("/actions/jobs/cancel", data={
        "id": [str(pending), str(running)], "confirm": "yes", "next": "/jobs"})
    assert flash(response.text) == (
        "2 job(s) cancelled (pending) or asked to stop (running).")
    assert count(db, schema, "jobs", "id = %s", [pending]) == 0
    assert count(db, schema, "dead_letters", "job_id = %s AND reason = 'cancelled'",
                 [pending]) == 1
    assert count(db, schema, "jobs", "id = %s AND cancel_requested_at IS NOT NULL",
                 [running]) == 1
    assert "Cancel requested" in client.get(f"/jobs/{running}").text
    # The cancelled job's page says what became of it; the dead letters list marks it.
    gone = client.get(f"/jobs/{pending}")
    assert gone.status_code == 200 and "state-cancelled" in gone.text
    assert "state-cancelled" in client.get("/dead-letters").text


def test_a_succeeded_job_with_a_kept_result_shows_it(client, db, schema):
    db.execute(sql.SQL(
        "INSERT INTO {} (job_id, queue, task, args, attempts, max_attempts, result, "
        "created_at, finished_at, expires_at) VALUES (424242, 'mail', 'send', '{{}}', 1, 5, "
        "%s::jsonb, now(), now(), now() + interval '1 hour')").format(
        sql.Identifier(schema, "job_results")), ['{"sent": "<b>yes</b>"}'])
    page = client.get("/jobs/424242")
    assert page.status_code == 200 and "state-succeeded" in page.text
    assert "&lt;b&gt;yes&lt;/b&gt;" in page.text

"""The dashboard in a real headless Chromium (Debian's `chromium`, driven by Playwright).

Playwright never downloads a browser here: it launches /usr/bin/chromium (``.ci/run``
installs it). Without that binary these tests skip, saying so.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from typing import Any

import psycopg
import pytest
from psycopg import sql

import pgjobs
from pgjobs.dashboard import asgi_app
from tests.conftest import count
from tests.dashboard_support import insert_dead_letter, insert_job, served, wait_until

CHROMIUM = os.environ.get("PGJOBS_TEST_CHROMIUM", "/usr/bin/chromium")
CHROMIUM_ARGS = [
    "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
    "--disable-background-networking", "--disable-component-update", "--disable-sync",
]

pytestmark = pytest.mark.skipif(
    not os.path.exists(CHROMIUM),
    reason=f"no Chromium at {CHROMIUM}: apt-get install -y chromium (CI installs it)",
)


@pytest.fixture(scope="module")
def browser() -> Iterator[Any]:
    sync_api = pytest.importorskip("playwright.sync_api")
    with sync_api.sync_playwright() as playwright:
        chromium = playwright.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        try:
            yield chromium
        finally:
            chromium.close()


class Console:
    """Errors the page reported: console.error messages and uncaught exceptions."""

    def __init__(self, page: Any) -> None:
        self.errors: list[str] = []
        page.on("console", lambda m: m.type == "error" and self.errors.append(m.text))
        page.on("pageerror", lambda e: self.errors.append(str(e)))


@pytest.fixture
def page(browser: Any) -> Iterator[Any]:
    context = browser.new_context()
    tab = context.new_page()
    tab.set_default_timeout(10_000)
    tab.console = Console(tab)
    try:
        yield tab
    finally:
        context.close()


@pytest.fixture
def dashboard(pg_url: str, schema: str) -> Iterator[str]:
    """A dashboard served by uvicorn on localhost, refreshing open pages every 0.5 s."""
    app = asgi_app(pg_url, schema=schema, refresh_seconds=0.5)
    with served(app) as url:
        yield url


@pytest.fixture
def read_only_dashboard(pg_url: str, schema: str) -> Iterator[str]:
    app = asgi_app(pg_url, schema=schema, read_only=True, refresh_seconds=0.5)
    with served(app) as url:
        yield url


def test_every_page_renders_without_console_errors(page, dashboard, db, schema):
    job = insert_job(db, schema, queue="mail", task="send", args={"to": "<b>x</b>"})
    dead = insert_dead_letter(db, schema, queue="mail", error="ValueError: nope")
    for path, heading in (("/", "Queues"), ("/jobs", "Jobs"), (f"/jobs/{job}", f"Job {job}"),
                          ("/dead-letters", "Dead letters"),
                          (f"/dead-letters/{dead}", f"Dead letter {dead}"),
                          ("/workers", "Workers"), ("/periodic", "Periodic")):
        response = page.goto(dashboard + path)
        assert response.status == 200, path
        assert page.locator("h1").inner_text().startswith(heading)
        # The script ran: the live toggle shows on pages with live sections.
        if path != f"/dead-letters/{dead}":
            page.wait_for_selector("#live-toggle:not([hidden])")
    # Navigation is plain links in the header.
    page.goto(dashboard + "/")
    page.click("header nav >> text=Dead letters")
    page.wait_for_url(dashboard + "/dead-letters")
    assert page.console.errors == []


def test_filtering_narrows_the_list(page, dashboard, db, schema):
    for _ in range(3):
        insert_job(db, schema, queue="mail", task="send_mail")
    wanted = insert_job(db, schema, queue="reports", task="build_report")
    page.goto(dashboard + "/jobs")
    assert page.locator("tbody tr[data-id]").count() == 4
    page.fill("input[name=task]", "build_report")
    page.click("form.filters button[type=submit]")
    page.wait_for_url("**/jobs?*task=build_report*")
    rows = page.locator("tbody tr[data-id]")
    assert rows.count() == 1
    assert rows.first.get_attribute("data-id") == str(wanted)
    assert page.console.errors == []


def test_requeue_from_a_dead_letter_changes_the_database(page, dashboard, db, schema):
    dead = insert_dead_letter(db, schema, queue="mail", task="send", args={"n": 7})
    page.goto(f"{dashboard}/dead-letters/{dead}")
    page.click("form[action$='/actions/dead-letters/requeue'] button")
    page.wait_for_url(dashboard + "/dead-letters")
    assert "1 dead letter(s) requeued" in page.locator(".flash").inner_text()
    assert count(db, schema, "dead_letters") == 0
    assert count(db, schema, "jobs", "task = 'send' AND args = '{\"n\": 7}'") == 1
    assert page.console.errors == []


def test_purge_all_matching_asks_first_then_deletes(page, dashboard, db, schema):
    for _ in range(3):
        insert_dead_letter(db, schema, queue="mail")
    insert_dead_letter(db, schema, queue="other")
    page.goto(dashboard + "/dead-letters?queue=mail")
    asked: list[str] = []

    def answer(dialog: Any) -> None:
        asked.append(dialog.message)
        dialog.accept()

    page.on("dialog", answer)
    page.click("button[name=scope][value=all].danger")
    page.wait_for_selector(".flash")
    assert asked and "Purge all 3 matching" in asked[0]
    assert "3 dead letter(s) purged" in page.locator(".flash").inner_text()
    assert count(db, schema, "dead_letters") == 1


def test_a_job_enqueued_elsewhere_appears_without_a_reload(page, dashboard, pg_url, schema):
    page.goto(dashboard + "/jobs")
    page.evaluate("window.__sameDocument = true")
    app = pgjobs.App(pg_url, schema=schema)

    @app.task(name="arrives.later")
    def later() -> None: ...

    with psycopg.connect(pg_url) as conn:
        job_id = later.enqueue(conn)
        conn.commit()
    page.wait_for_selector(f"tbody tr[data-id='{job_id}']")
    assert page.evaluate("window.__sameDocument") is True  # swapped in place, no reload
    assert page.console.errors == []


def test_the_live_toggle_pauses_and_is_remembered(page, dashboard, db, schema):
    page.goto(dashboard + "/jobs")
    toggle = page.locator("#live-toggle")
    assert toggle.get_attribute("aria-pressed") == "true"
    toggle.click()
    assert toggle.get_attribute("aria-pressed") == "false"
    assert toggle.inner_text() == "Paused"
    page.reload()
    assert page.locator("#live-toggle").get_attribute("aria-pressed") == "false"
    # Resuming refreshes at once: a job inserted while paused shows up.
    job = insert_job(db, schema)
    page.locator("#live-toggle").click()
    page.wait_for_selector(f"tbody tr[data-id='{job}']")


def test_read_only_shows_no_action_that_works(page, read_only_dashboard, db, schema):
    dead = insert_dead_letter(db, schema)
    job = insert_job(db, schema, delay=3600)
    db.execute(sql.SQL("INSERT INTO {} (name, cron, task, queue) VALUES "
                       "('nightly', '0 3 * * *', 'app.nightly', 'reports')").format(
        sql.Identifier(schema, "cron_schedules")))
    for path in ("/", "/jobs", f"/jobs/{job}", "/dead-letters", f"/dead-letters/{dead}",
                 "/periodic"):
        page.goto(read_only_dashboard + path)
        assert page.locator("form[method=post]").count() == 0, path
        assert page.locator("[formaction]").count() == 0, path
        assert page.locator("header .badge.readonly").inner_text() == "read-only"
    # A POST forged from the page itself is refused server-side.
    status = page.evaluate(
        """async (id) => (await fetch('/actions/dead-letters/requeue', {method: 'POST',
             headers: {'Content-Type': 'application/x-www-form-urlencoded'},
             body: 'id=' + id})).status""", dead)
    assert status == 403
    assert count(db, schema, "dead_letters") == 1
    # The only console error allowed is the browser reporting that refused fetch.
    assert all("403" in e for e in page.console.errors)


def test_cancel_from_a_job_page_changes_the_database(page, dashboard, db, schema):
    job = insert_job(db, schema, queue="mail", task="send", delay=3600)
    page.goto(f"{dashboard}/jobs/{job}")
    page.on("dialog", lambda dialog: dialog.accept())
    page.click("form[action$='/actions/jobs/cancel'] button")
    page.wait_for_selector(".flash")
    assert "1 job(s) cancelled" in page.locator(".flash").inner_text()
    assert count(db, schema, "jobs", "id = %s", [job]) == 0
    assert count(db, schema, "dead_letters", "job_id = %s AND reason = 'cancelled'", [job]) == 1
    assert page.console.errors == []


def test_a_hidden_or_paused_page_stops_fetching(page, dashboard):
    page.goto(dashboard + "/jobs")

    def counter(name: str) -> int:
        return int(page.evaluate(f"document.body.getAttribute('{name}') || '0'"))

    # (Polled from Python: the page's CSP forbids the eval wait_for_function needs.)
    wait_until(lambda: counter("data-live-fetches") >= 1)
    # Hidden: the timer keeps ticking, nothing is fetched.
    page.evaluate("""() => {
        Object.defineProperty(document, 'hidden', {configurable: true, get: () => true});
        document.dispatchEvent(new Event('visibilitychange'));
    }""")
    fetches, ticks = counter("data-live-fetches"), counter("data-live-ticks")
    wait_until(lambda: counter("data-live-ticks") >= ticks + 3)
    assert counter("data-live-fetches") == fetches
    # Visible again: it refreshes at once.
    page.evaluate("""() => {
        Object.defineProperty(document, 'hidden', {configurable: true, get: () => false});
        document.dispatchEvent(new Event('visibilitychange'));
    }""")
    wait_until(lambda: counter("data-live-fetches") > fetches)
    # Paused by the button: same.
    page.click("#live-toggle")
    fetches, ticks = counter("data-live-fetches"), counter("data-live-ticks")
    wait_until(lambda: counter("data-live-ticks") >= ticks + 3)
    assert counter("data-live-fetches") == fetches
    assert page.console.errors == []

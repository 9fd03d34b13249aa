"""An App for `pgjobs enqueue --app` tests: tasks with their own queue and options."""

from __future__ import annotations

import pgjobs

app = pgjobs.App()


@app.task(name="reports.build", queue="reports", max_attempts=2, priority=7)
def build_report(region: str, day: str = "today") -> None:
    """Declares its own queue, attempts and priority."""


@app.task(name="reports.send")
def send_report(to: str) -> None:
    """Uses the App's defaults."""

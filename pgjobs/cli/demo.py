"""`pgjobs demo`: the guided tour (see :mod:`pgjobs.demo`)."""

from __future__ import annotations

from .common import SETTINGS, connect


def demo() -> None:
    """A self-contained tour on the embedded server: enqueue, QueueFull, work, dead letters."""
    from ..demo import run_demo

    url = SETTINGS.url()
    with connect(url=url):  # one clear line for a bad URL or an unreachable server
        pass
    run_demo(url, SETTINGS.schema)

"""Services: the worker is a set of small start/stop units, each with one thread.

A service is built from what it needs (the store, its connection, the clock, the
settings, the few collaborators it signals) and nothing else. The runtime starts them
in order and stops them in the reverse order of what they depend on (see runtime.py).
"""

from __future__ import annotations

import logging
import threading
from typing import Protocol

log = logging.getLogger("pgjobs.worker")


class Service(Protocol):
    """What the runtime needs of every service."""

    name: str

    def start(self) -> None:
        """Start the service's thread."""

    def stop(self) -> None:
        """Ask it to stop (returns at once)."""

    def join(self, timeout: float) -> bool:
        """Wait up to ``timeout`` seconds; True when it has stopped."""


class ThreadService:
    """A service whose work is ``loop()`` in one daemon thread, until ``stop()``."""

    name = "service"

    def __init__(self, stopping: threading.Event | None = None) -> None:
        #: Set by ``stop()``; pass one in to share it with the service's connection.
        self.stopping = stopping or threading.Event()
        self.thread = threading.Thread(target=self._main, name=f"pgjobs-{self.name}",
                                       daemon=True)

    def start(self) -> None:
        self.thread.start()

    def stop(self) -> None:
        self.stopping.set()

    def join(self, timeout: float) -> bool:
        if self.thread.ident is not None:
            self.thread.join(timeout)
        return not self.thread.is_alive()

    def _main(self) -> None:
        try:
            self.loop()
        except BaseException:  # a service must never die silently
            log.exception("%s: stopped by an unexpected error", self.name)

    def loop(self) -> None:
        raise NotImplementedError

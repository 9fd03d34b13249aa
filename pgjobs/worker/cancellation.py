"""Cancel requests for the jobs a worker holds: one flag per job, set by the worker,
read by the handler (``current_job().cancel_requested``).

Requests arrive two ways: a NOTIFY on the workers' channel at the canceller's commit
(the listener), and the heartbeat's once-a-second read of this worker's flagged rows
(the fallback when LISTEN is down or ``--poll-only``). Either calls
``InHand.request_cancel(ids)``, which sets the flag of each job in hand.

Executors hook in with :meth:`CancelFlag.on_cancel`: the callback runs once, at once
if the request already arrived, else in the thread that delivers the request. A
coroutine executor registers ``lambda: loop.call_soon_threadsafe(task.cancel)`` so the
coroutine is cancelled at its next await.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable

log = logging.getLogger("pgjobs.worker")

_lock = threading.Lock()  # flags change rarely: one lock for all of them is enough


class CancelFlag:
    """Whether someone asked to cancel one job, and who to tell when they do."""

    __slots__ = ("_callbacks", "requested")

    def __init__(self) -> None:
        self.requested = False
        self._callbacks: list[Callable[[], None]] | None = None

    def set(self) -> None:
        """Record the request and run the registered callbacks (once)."""
        with _lock:
            if self.requested:
                return
            self.requested = True
            callbacks, self._callbacks = self._callbacks or [], None
        for callback in callbacks:
            _call(callback)

    def on_cancel(self, callback: Callable[[], None]) -> Callable[[], None]:
        """Run ``callback`` when the request arrives (now, if it already has); returns
        a function that unregisters it (call it when the attempt ends)."""
        with _lock:
            if not self.requested:
                if self._callbacks is None:
                    self._callbacks = []
                self._callbacks.append(callback)
                return lambda: self._forget(callback)
        _call(callback)
        return lambda: None

    def _forget(self, callback: Callable[[], None]) -> None:
        with _lock:
            if self._callbacks and callback in self._callbacks:
                self._callbacks.remove(callback)


def _call(callback: Callable[[], None]) -> None:
    try:
        callback()
    except Exception:
        log.exception("cancel callback failed")

"""``--concurrency`` as one budget shared by the sync executors and the coroutine executor.

Sync handlers run on threads, coroutine handlers on one event loop; the fetcher claims for
both (its capacity is shared). A job starts only once it holds one of the ``limit`` slots,
so sync and async jobs in flight never exceed ``--concurrency`` together. Threads wait
for a slot (:meth:`Capacity.acquire`); the event loop never waits: it tries
(:meth:`Capacity.try_acquire`) and is told when a slot frees (``on_room``).
"""

from __future__ import annotations

import threading
from collections.abc import Callable


class Capacity:
    """A counting semaphore that can be closed (shutdown: nothing more starts)."""

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self._used = 0
        self._closed = False
        # Plain lock for the hot paths; the condition (same lock) only for waiting threads.
        self._lock = threading.Lock()
        self._cv = threading.Condition(self._lock)
        self._waiters = 0
        #: Called (outside the lock, in the releasing thread) whenever a slot frees or the
        #: capacity closes; the coroutine executor uses it to start waiting jobs.
        self.on_room: Callable[[], None] | None = None

    def acquire(self) -> bool:
        """Wait for a slot (threads only); False once closed: do not start the job."""
        with self._lock:
            while self._used >= self.limit and not self._closed:
                self._waiters += 1
                try:
                    self._cv.wait()
                finally:
                    self._waiters -= 1
            if self._closed:
                return False
            self._used += 1
            return True

    def try_acquire(self) -> bool:
        """Take a slot if one is free now (never waits: safe on the event loop)."""
        with self._lock:
            if self._closed or self._used >= self.limit:
                return False
            self._used += 1
            return True

    def try_acquire_many(self, wanted: int) -> int:
        """Take up to ``wanted`` free slots now (never waits); returns how many."""
        with self._lock:
            if self._closed:
                return 0
            granted = max(0, min(wanted, self.limit - self._used))
            self._used += granted
            return granted

    def release(self) -> None:
        """A job's attempt ended (or it was disowned): its slot is free."""
        self.release_many(1)

    def release_many(self, count: int) -> None:
        """``count`` attempts ended: their slots are free."""
        with self._lock:
            self._used -= count
            if self._waiters:
                self._cv.notify(count)
        on_room = self.on_room
        if on_room is not None:
            on_room()

    def close(self) -> None:
        """Shutdown: jobs not started yet never start (waiting threads get False)."""
        with self._lock:
            self._closed = True
            self._cv.notify_all()

    @property
    def in_use(self) -> int:
        """Jobs running now, sync and async together."""
        return self._used

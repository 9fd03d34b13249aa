"""The jobs this worker holds leases on, from claim until their outcome is written."""

from __future__ import annotations

import threading
from collections.abc import Iterable

from .cancellation import CancelFlag


class InHand:
    """Thread-safe map of job id to lease token (the heartbeat renews all of them), and
    the cancel flags of those jobs (see :mod:`pgjobs.worker.cancellation`)."""

    def __init__(self) -> None:
        self._tokens: dict[int, str] = {}
        self._flags: dict[int, CancelFlag] = {}
        # Jobs a handler completed in its own transaction: their row may vanish before
        # the outcome is written, which is not a lost lease.
        self._self_completed: set[int] = set()
        # Jobs whose outcome the completer is writing: their row leaves `jobs` (or its
        # lease token changes) before they leave this map, which is not a lost lease.
        self._settling: set[int] = set()
        self._lock = threading.Lock()

    def add(self, items: Iterable[tuple[int, str]]) -> None:
        with self._lock:
            self._tokens.update(items)

    def remove(self, ids: Iterable[int]) -> None:
        with self._lock:
            tokens, flags, completed = self._tokens, self._flags, self._self_completed
            settling = self._settling
            for job_id in ids:
                tokens.pop(job_id, None)
                if flags:
                    flags.pop(job_id, None)
                if completed:
                    completed.discard(job_id)
                if settling:
                    settling.discard(job_id)

    def snapshot(self) -> tuple[list[int], list[str]]:
        with self._lock:
            return list(self._tokens), list(self._tokens.values())

    def __len__(self) -> int:
        return len(self._tokens)

    # --- cancellation ----------------------------------------------------------------------

    def cancel_flag(self, job_id: int) -> CancelFlag:
        """The cancel flag of a job in hand (created on first use)."""
        with self._lock:
            flag = self._flags.get(job_id)
            if flag is None:
                flag = self._flags[job_id] = CancelFlag()
            return flag

    def request_cancel(self, ids: Iterable[int]) -> list[int]:
        """Set the flags of those ``ids`` that are in hand; returns them."""
        flags = []
        with self._lock:
            for job_id in ids:
                if job_id in self._tokens:
                    flag = self._flags.get(job_id)
                    if flag is None:
                        flag = self._flags[job_id] = CancelFlag()
                    if not flag.requested:
                        flags.append((job_id, flag))
        for _, flag in flags:
            flag.set()
        return [job_id for job_id, _ in flags]

    def cancel_requested(self, job_id: int) -> bool:
        with self._lock:
            flag = self._flags.get(job_id)
        return flag is not None and flag.requested

    def mark_self_completed(self, job_id: int) -> None:
        with self._lock:
            if job_id in self._tokens:
                self._self_completed.add(job_id)

    def settling(self, ids: Iterable[int]) -> None:
        """The completer is about to write these jobs' outcomes (see ``_settling``)."""
        with self._lock:
            self._settling.update(i for i in ids if i in self._tokens)

    def is_settling(self, job_id: int) -> bool:
        # Read without the lock, like self_completed.
        return bool(self._settling) and job_id in self._settling

    def self_completed(self, job_id: int) -> bool:
        # Read without the lock: a set membership test is atomic, and the set is
        # almost always empty (the completer asks for every success).
        return bool(self._self_completed) and job_id in self._self_completed

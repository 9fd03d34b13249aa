"""The jobs this worker holds leases on, from claim until their outcome is written."""

from __future__ import annotations

import threading
from collections.abc import Iterable


class InHand:
    """Thread-safe map of job id to lease token (the heartbeat renews all of them)."""

    def __init__(self) -> None:
        self._tokens: dict[int, str] = {}
        self._lock = threading.Lock()

    def add(self, items: Iterable[tuple[int, str]]) -> None:
        with self._lock:
            self._tokens.update(items)

    def remove(self, ids: Iterable[int]) -> None:
        with self._lock:
            for job_id in ids:
                self._tokens.pop(job_id, None)

    def snapshot(self) -> tuple[list[int], list[str]]:
        with self._lock:
            return list(self._tokens), list(self._tokens.values())

    def __len__(self) -> int:
        return len(self._tokens)

"""Per-queue pending counts that stay cheap on a big table (``App.queue_depths``).

The ``queue_stats`` view counts every state of every queue by scanning ``jobs``; this
reads only the pending part of the queue claim index (see ``QUEUE_DEPTHS_ALL``).
"""

from __future__ import annotations

from collections.abc import Iterable

from . import sql as S
from .plan import Execute, Plan
from .sql import Statements
from .task import validate_queue


def queue_depths(statements: Statements, queues: Iterable[str] | None,
                 at_most: int | None) -> Plan[dict[str, int]]:
    """Plan: ``{queue: pending jobs}``; run with :func:`pgjobs.plan.run` or ``arun``."""
    if at_most is not None and (isinstance(at_most, bool) or not isinstance(at_most, int)
                                or at_most < 0):
        raise ValueError(f"at_most must be an int >= 0 or None, got {at_most!r}")
    if isinstance(queues, str):
        raise TypeError(f"queues must be a list of queue names, got the string {queues!r}")
    if queues is None:
        rows = yield Execute(statements.of(S.QUEUE_DEPTHS_ALL), {"at_most": at_most})
    else:
        wanted = sorted({validate_queue(q) for q in queues})
        rows = yield Execute(statements.of(S.QUEUE_DEPTHS_OF),
                             {"queues": wanted, "at_most": at_most})
    return {queue: int(count) for queue, count in rows}

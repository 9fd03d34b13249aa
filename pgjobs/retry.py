"""Retry policy: which errors are worth retrying, and how long to wait before the next try.

Default backoff after failed attempt ``n`` (1-based)::

    delay = min(BACKOFF_CAP, BACKOFF_BASE * 2 ** (n - 1)) * uniform(0.75, 1.25), at most BACKOFF_CAP

i.e. about 1 s, 2 s, 4 s, 8 s … capped at one hour, with ±25 % jitter so a burst of
failures does not come back as a burst of retries.
"""

from __future__ import annotations

import logging
import math
import random
from collections.abc import Callable

import psycopg
from psycopg import errors as pg_errors

from .errors import PermanentError

BACKOFF_BASE = 1.0
BACKOFF_CAP = 3600.0
BACKOFF_JITTER = 0.25

log = logging.getLogger("pgjobs.retry")

# Errors that no retry can fix: the same statement with the same data fails again.
_PERMANENT_DB_ERRORS: tuple[type[BaseException], ...] = (
    pg_errors.IntegrityError,
    pg_errors.DataError,
    pg_errors.ProgrammingError,
    pg_errors.NotSupportedError,
)
# Errors that mean "try again later": connection trouble, deadlocks, serialization
# failures, timeouts (all OperationalError subclasses in psycopg); and the prepared
# statements a transaction-mode pooler (PgBouncer) loses or duplicates when a connection
# that prepares (psycopg's default) lands on another server connection. Those are
# ProgrammingErrors by SQLSTATE (26000, 42P05), but an artefact of the pooler, not of the
# job's data: the same statement succeeds on the next try.
_TRANSIENT_DB_ERRORS: tuple[type[BaseException], ...] = (
    psycopg.OperationalError,
    psycopg.InterfaceError,
    pg_errors.InvalidSqlStatementName,
    pg_errors.DuplicatePreparedStatement,
)


def default_backoff(attempt: int) -> float:
    """Seconds to wait after failed attempt ``attempt`` (exponential, jittered, capped)."""
    exponent = min(max(attempt - 1, 0), 62)
    delay = min(BACKOFF_CAP, BACKOFF_BASE * 2.0**exponent)
    jittered = delay * random.uniform(1 - BACKOFF_JITTER, 1 + BACKOFF_JITTER)
    return min(BACKOFF_CAP, jittered)


def retry_delay(backoff: Callable[[int], float] | None, attempt: int, task: str) -> float:
    """The task's backoff for ``attempt``, falling back to the default if it misbehaves."""
    if backoff is None:
        return default_backoff(attempt)
    try:
        delay = float(backoff(attempt))
    except Exception:
        log.exception("backoff of task %r raised for attempt %d; using the default", task,
                      attempt)
        return default_backoff(attempt)
    if math.isnan(delay) or delay < 0:
        log.warning("backoff of task %r returned %r for attempt %d; using the default",
                    task, delay, attempt)
        return default_backoff(attempt)
    return min(delay, 10 * 365 * 24 * 3600.0)


def is_permanent(exc: BaseException) -> bool:
    """True when retrying cannot help: PermanentError, constraint/data/SQL errors.

    Looks through SQLAlchemy's wrappers (``.orig``) and explicit ``raise … from``.
    """
    seen: set[int] = set()
    current: BaseException | None = exc
    while current is not None and id(current) not in seen:
        seen.add(id(current))
        if isinstance(current, PermanentError):
            return True
        if isinstance(current, _TRANSIENT_DB_ERRORS):
            return False
        if isinstance(current, _PERMANENT_DB_ERRORS):
            return True
        orig = getattr(current, "orig", None)
        current = orig if isinstance(orig, BaseException) else current.__cause__
    return False

"""Retry policy: error classification and the default backoff."""

from __future__ import annotations

import psycopg
import pytest
from psycopg import errors as pg_errors

import pgjobs
from pgjobs.retry import BACKOFF_CAP, default_backoff, is_permanent, retry_delay


@pytest.mark.parametrize("exc", [
    pgjobs.PermanentError("x"),
    pg_errors.UniqueViolation("dup"),
    pg_errors.ForeignKeyViolation("fk"),
    pg_errors.InvalidTextRepresentation("bad"),  # a DataError
    pg_errors.UndefinedColumn("no column"),  # SQL that can never work
])
def test_permanent_errors(exc):
    assert is_permanent(exc)


@pytest.mark.parametrize("exc", [
    RuntimeError("flaky"),
    TimeoutError(),
    psycopg.OperationalError("connection lost"),
    pg_errors.DeadlockDetected("deadlock"),
    pg_errors.SerializationFailure("retry me"),
    pg_errors.QueryCanceled("statement timeout"),
])
def test_transient_errors(exc):
    assert not is_permanent(exc)


def test_wrapped_errors_are_classified_by_their_cause():
    sqlalchemy_exc = pytest.importorskip("sqlalchemy.exc")
    wrapped = sqlalchemy_exc.IntegrityError("INSERT", {}, pg_errors.UniqueViolation("dup"))
    assert is_permanent(wrapped)
    try:
        try:
            raise pg_errors.CheckViolation("check")
        except pg_errors.CheckViolation as inner:
            raise RuntimeError("while saving") from inner
    except RuntimeError as outer:
        assert is_permanent(outer)


def test_default_backoff_grows_with_jitter_and_is_capped():
    for attempt in range(1, 8):
        base = 2.0 ** (attempt - 1)
        samples = [default_backoff(attempt) for _ in range(200)]
        assert all(0.75 * base <= s <= 1.25 * base for s in samples)
        assert len(set(samples)) > 1  # jittered
    assert all(default_backoff(a) <= BACKOFF_CAP for a in (20, 100, 10_000))


def test_task_backoff_is_used_and_bad_ones_fall_back():
    assert retry_delay(lambda a: 0.2 * a, 3, "t") == pytest.approx(0.6)
    assert 0.75 <= retry_delay(lambda a: 1 / 0, 1, "t") <= 1.25
    assert 0.75 <= retry_delay(lambda a: -5, 1, "t") <= 1.25


def test_current_job_outside_a_handler_says_so():
    with pytest.raises(RuntimeError, match="outside a job"):
        pgjobs.current_job()

"""Cron expressions in a time zone: the only place pgjobs talks to the cron parser.

The parser is `cronsim <https://pypi.org/project/cronsim/>`_ (why: docs/architecture.md).
This module keeps it behind three calls — :func:`parse`, :meth:`Cron.latest_at_or_before`
and :meth:`Cron.next_after` — so swapping it would touch nothing else.

DST follows Debian cron (cronsim's model): a job at a fixed wall-clock time (neither the
minute nor the hour field starts with ``*``) whose time does not exist on the
spring-forward day runs once, right after the gap; on the fall-back day it runs once, at
the first occurrence of the repeated time. Jobs with ``*`` in the minute or hour field
follow real elapsed time (an hourly job runs in both repeated hours).

Every instant this module returns is an aware UTC ``datetime``: Python compares two
datetimes of the *same* zone by wall-clock time, ignoring ``fold``, which is wrong exactly
in the repeated hour.
"""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass, field
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError, available_timezones

from cronsim import CronSim, CronSimError

#: ``@name`` shortcuts (as in cron(5); ``@reboot`` has no meaning for a job queue).
ALIASES = {
    "@yearly": "0 0 1 1 *",
    "@annually": "0 0 1 1 *",
    "@monthly": "0 0 1 * *",
    "@weekly": "0 0 * * 0",
    "@daily": "0 0 * * *",
    "@midnight": "0 0 * * *",
    "@hourly": "0 * * * *",
}

_FIELDS = "minute hour day-of-month month day-of-week"
_UTC = dt.UTC
_ONE_MICROSECOND = dt.timedelta(microseconds=1)


class CronError(ValueError):
    """A cron expression or time zone that cannot be used; the message says why."""


@dataclass(frozen=True)
class Cron:
    """A validated 5-field cron expression evaluated in an IANA time zone."""

    expression: str
    """As written by the user (an alias stays an alias)."""
    timezone: str
    fields: str = field(repr=False)
    zone: ZoneInfo = field(repr=False, compare=False)

    def latest_at_or_before(self, moment: dt.datetime) -> dt.datetime | None:
        """The latest tick at or before ``moment`` (UTC), or None (none for 50 years)."""
        local = _aware(moment).astimezone(self.zone)
        # cronsim's reverse iteration excludes its start, but takes a start with
        # microseconds as "just after" the whole second: +1 µs includes `moment` itself.
        iterator = CronSim(self.fields, local + _ONE_MICROSECOND, reverse=True)
        try:
            for _ in range(3):
                tick = next(iterator).astimezone(_UTC)
                if tick <= moment:  # a spring-forward fix-up can land after `moment`
                    return tick
        except StopIteration:
            return None
        return None

    def next_after(self, moment: dt.datetime) -> dt.datetime | None:
        """The first tick strictly after ``moment`` (UTC), or None (none for 50 years)."""
        local = _aware(moment).astimezone(self.zone)
        iterator = CronSim(self.fields, local)
        try:
            for _ in range(3):
                tick = next(iterator).astimezone(_UTC)
                # In the repeated hour of a fall-back day cronsim may answer the first
                # occurrence of a fixed time although `moment` is past it: skip it.
                if tick > moment:
                    return tick
        except StopIteration:
            return None
        return None


def parse(expression: str, timezone: str = "UTC") -> Cron:
    """Validate ``expression`` (5 fields or an ``@alias``) in ``timezone``.

    Raises :class:`CronError` (a ``ValueError``) with a message saying what to write.
    """
    zone = parse_timezone(timezone)
    if not isinstance(expression, str) or not expression.strip():
        raise CronError(
            f"cron expression {expression!r} is invalid: use 5 fields ({_FIELDS}), "
            "e.g. '*/5 * * * *', or an alias like @hourly"
        )
    text = " ".join(expression.split())
    fields = ALIASES.get(text.lower())
    if fields is None:
        if text.startswith("@"):
            raise CronError(
                f"cron alias {text!r} is not supported: use one of "
                f"{', '.join(sorted(ALIASES))} or 5 fields ({_FIELDS})"
            )
        count = len(text.split(" "))
        if count != 5:
            raise CronError(
                f"cron expression {expression!r} has {count} field(s): use exactly 5 "
                f"({_FIELDS}), e.g. '*/5 * * * *'"
            )
        fields = text
    try:
        iterator = CronSim(fields, dt.datetime(2000, 1, 1, tzinfo=zone))
        next(iterator)
    except CronSimError as exc:
        reason = str(exc).strip() or "invalid"
        raise CronError(
            f"cron expression {expression!r} is invalid ({reason[:1].lower()}{reason[1:]}): "
            f"use 5 fields ({_FIELDS}) with numbers, names (JAN, MON), ranges, lists "
            "and steps, e.g. '*/5 * * * *'"
        ) from exc
    except StopIteration:
        raise CronError(f"cron expression {expression!r} never matches a date") from None
    return Cron(expression=expression, timezone=timezone, fields=fields, zone=zone)


def parse_timezone(name: str) -> ZoneInfo:
    """The IANA zone ``name`` (e.g. ``Europe/Paris``, ``UTC``) or a :class:`CronError`."""
    if not isinstance(name, str) or not name.strip():
        raise CronError(f"time zone {name!r} is invalid: use an IANA name like "
                        "'Europe/Paris' or 'UTC'")
    try:
        return ZoneInfo(name)
    except (ZoneInfoNotFoundError, ValueError, OSError) as exc:
        if not available_timezones():
            raise CronError(
                f"time zone {name!r} cannot be used: this system has no time zone database; "
                "install the tzdata package (pip install tzdata)"
            ) from exc
        raise CronError(
            f"unknown time zone {name!r}: use an IANA name like 'Europe/Paris', "
            "'America/New_York' or 'UTC'"
        ) from exc


def _aware(moment: dt.datetime) -> dt.datetime:
    if moment.tzinfo is None:
        raise ValueError("cron times must be timezone-aware datetimes")
    return moment

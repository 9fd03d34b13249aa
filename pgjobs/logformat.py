"""Log formats for ``pgjobs work --log-format``: ``text`` for people, ``json`` for machines.

The JSON format writes one object per line with ``time`` (UTC, ISO 8601), ``level``,
``logger`` and ``message``, plus every structured field a pgjobs line carries (e.g.
``job_id``, ``task``, ``attempt``, ``error`` on retries and dead letters) and
``exception`` when there is a traceback.
"""

from __future__ import annotations

import datetime as dt
import json
import logging

TEXT_FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"
FORMATS = ("text", "json")

# Attributes every LogRecord has: not "extra" fields.
_STANDARD = set(vars(logging.LogRecord("", 0, "", 0, "", None, None))) | {
    "message", "asctime", "taskName"}


class JsonFormatter(logging.Formatter):
    """One JSON object per record."""

    def format(self, record: logging.LogRecord) -> str:
        out: dict[str, object] = {
            "time": dt.datetime.fromtimestamp(record.created, dt.UTC).isoformat(
                timespec="milliseconds"),
            "level": record.levelname,
            "logger": record.name,
            "message": record.getMessage(),
        }
        for key, value in vars(record).items():
            if key not in _STANDARD and not key.startswith("_") and key not in out:
                out[key] = value
        if record.exc_info:
            out["exception"] = self.formatException(record.exc_info)
        return json.dumps(out, default=str, ensure_ascii=False)


def formatter(name: str) -> logging.Formatter:
    """The formatter of ``--log-format NAME`` (``text`` or ``json``)."""
    if name == "json":
        return JsonFormatter()
    if name == "text":
        return logging.Formatter(TEXT_FORMAT)
    raise ValueError(f"--log-format must be one of {', '.join(FORMATS)}; got {name!r}")

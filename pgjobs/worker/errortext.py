"""Error descriptions that PostgreSQL can always store.

A handler's exception text is arbitrary: a NUL byte (PostgreSQL text cannot hold one)
or a lone surrogate (a ``surrogateescape`` file name; not encodable as UTF-8) made the
whole outcome flush fail, and megabytes of message cost every flush that carried it.
Everything the worker writes as an error goes through :func:`storable` first.
"""

from __future__ import annotations

import re
import traceback

#: Longest error text stored, in UTF-8 bytes (head and tail kept, the middle elided).
MAX_ERROR_BYTES = 16 * 1024
REPLACEMENT = "\ufffd"
_ELISION = "\n…\n"
_UNSTORABLE = re.compile("[\x00\ud800-\udfff]")


def storable(text: str, max_bytes: int = MAX_ERROR_BYTES) -> str:
    """``text`` with NUL and lone surrogates replaced by U+FFFD, at most ``max_bytes``."""
    if len(text) > max_bytes:  # cheap first cut: a character is at least one byte
        text = text[: max_bytes // 2] + text[-(max_bytes // 2):]
    text = _UNSTORABLE.sub(REPLACEMENT, text)
    data = text.encode("utf-8")
    if len(data) <= max_bytes:
        return text
    half = (max_bytes - len(_ELISION.encode("utf-8"))) // 2
    # Cut on byte offsets; "ignore" drops the partial character at each cut.
    return (data[:half].decode("utf-8", "ignore") + _ELISION
            + data[-half:].decode("utf-8", "ignore"))


def first_line(text: str | None, limit: int = 200) -> str:
    """The first line of an error text, shortened for a log line."""
    line = (text or "").strip().split("\n", 1)[0]
    return line if len(line) <= limit else line[: limit - 1] + "…"


def format_error(exc: BaseException) -> str:
    """``Type: message``, a blank line, then the traceback; always storable.

    Never raises: an exception whose ``__str__`` fails is still described (an error
    here would leave its job without an outcome until its lease expired).
    """
    name = type(exc).__name__
    try:
        message = str(exc)
    except Exception:
        message = f"<unprintable {name}>"
    try:
        text = "".join(traceback.format_exception(exc)).rstrip()
    except Exception:
        text = ""
    return storable(f"{name}: {message}\n\n{text}" if text else f"{name}: {message}")

"""Task arguments as JSON: validated and serialised once, before anything is written."""

from __future__ import annotations

import json
import json.encoder
import math
import re
from collections.abc import Callable
from typing import Any

#: Default largest serialised ``args`` accepted by enqueue (App(max_args_bytes=...)).
DEFAULT_MAX_ARGS_BYTES = 1024 * 1024

_encoder = json.JSONEncoder(allow_nan=False, ensure_ascii=False, separators=(",", ":"))


# A NUL character as JSON escapes it: \u0000 after an even number of backslashes (an odd
# number would make it the text "\u0000", which is fine).
_NUL_ESCAPE = re.compile(r"(?<!\\)(?:\\\\)*\\u0000")


def _not_json(value: Any) -> Any:
    raise TypeError(f"Object of type {type(value).__name__} is not JSON serializable")


def _c_encoder() -> Callable[[dict[str, Any]], str] | None:
    """``_encoder.encode`` without its per-call set-up, where CPython's C encoder exists.

    ``JSONEncoder.encode`` builds a new C encoder object on every call: for the small
    payloads jobs carry, that was 0.74 of the 1.16 µs a call took, paid per job by
    ``enqueue_many``'s callers. Same output and the same errors, except
    that a circular reference surfaces as RecursionError (there is no marker dict to
    detect it early; ``dump_args`` reports both alike).
    """
    make = json.encoder.c_make_encoder  # type: ignore[attr-defined]
    if make is None:  # an interpreter without the C accelerator
        return None
    encode_chunks = make(None, _not_json, json.encoder.encode_basestring,  # type: ignore[attr-defined]
                         None, ":", ",", False, False, False)

    def encode(args: dict[str, Any]) -> str:
        return "".join(encode_chunks(args, 0))
    return encode


_encode: Callable[[dict[str, Any]], str] = _c_encoder() or _encoder.encode


def dump_args(task: str, args: dict[str, Any], max_bytes: int) -> str:
    """``args`` as a JSON object, exactly as given.

    Raises ``TypeError`` naming the first argument that is not JSON (including NaN and
    infinity, which JSON cannot represent) and ``ValueError`` for text PostgreSQL's
    jsonb rejects (NUL characters) or a payload over ``max_bytes``.
    """
    try:
        text = _encode(args)
    except (TypeError, ValueError, RecursionError) as exc:
        raise TypeError(_explain(task, args, exc)) from exc
    if "\\u0000" in text and _NUL_ESCAPE.search(text):
        name = next((k for k in args if _NUL_ESCAPE.search(_encoder.encode({k: args[k]}))),
                    "?")
        raise ValueError(
            f"argument {name!r} of task {task!r} contains a NUL character (\\u0000), "
            "which PostgreSQL jsonb cannot store; remove it or encode the value (e.g. base64)"
        )
    if text.isascii():  # O(1): no need to build the UTF-8 bytes to know their length
        size = len(text)
    else:
        size = _utf8_length(task, text)
    if size > max_bytes:
        raise ValueError(
            f"arguments of task {task!r} are {size} bytes of JSON, over the {max_bytes}-byte "
            "limit: store large data elsewhere and pass a reference "
            "(or raise App(max_args_bytes=...))"
        )
    return text


def _utf8_length(task: str, text: str) -> int:
    try:
        return len(text.encode())
    except UnicodeEncodeError as exc:
        raise ValueError(
            f"arguments of task {task!r} contain text that is not valid Unicode "
            f"({exc.reason}: {text[exc.start:exc.end]!r}); clean it or encode it (e.g. base64)"
        ) from exc


def _explain(task: str, args: dict[str, Any], exc: Exception) -> str:
    for key, value in args.items():
        if not isinstance(key, str):
            return f"argument names of task {task!r} must be strings, got {key!r}"
        try:
            _encoder.encode(value)
        except (TypeError, ValueError, RecursionError) as inner:
            what = _describe(value, inner)
            return (
                f"argument {key!r} of task {task!r} is not JSON-serialisable ({what}); "
                "pass JSON types (str, int, float, bool, None, list, dict) and convert the rest"
            )
    return f"arguments of task {task!r} are not JSON-serialisable: {exc}"


def _describe(value: Any, exc: Exception) -> str:
    if isinstance(exc, RecursionError):
        return "nested too deeply to encode"
    if isinstance(value, float) and (math.isnan(value) or math.isinf(value)):
        return f"{value!r} has no JSON representation"
    return str(exc)

"""Task arguments as JSON: validated and serialised once, before anything is written."""

from __future__ import annotations

import json
import math
from typing import Any

#: Default largest serialised ``args`` accepted by enqueue (App(max_args_bytes=...)).
DEFAULT_MAX_ARGS_BYTES = 1024 * 1024

_encoder = json.JSONEncoder(allow_nan=False, ensure_ascii=False, separators=(",", ":"))


def dump_args(task: str, args: dict[str, Any], max_bytes: int) -> str:
    """``args`` as a JSON object, exactly as given.

    Raises ``TypeError`` naming the first argument that is not JSON (including NaN and
    infinity, which JSON cannot represent) and ``ValueError`` for text PostgreSQL's
    jsonb rejects (NUL characters) or a payload over ``max_bytes``.
    """
    try:
        text = _encoder.encode(args)
    except (TypeError, ValueError) as exc:
        raise TypeError(_explain(task, args, exc)) from exc
    if "\\u0000" in text:
        name = next((k for k in args if "\\u0000" in _encoder.encode({k: args[k]})), "?")
        raise ValueError(
            f"argument {name!r} of task {task!r} contains a NUL character (\\u0000), "
            "which PostgreSQL jsonb cannot store; remove it or encode the value (e.g. base64)"
        )
    try:
        size = len(text.encode())
    except UnicodeEncodeError as exc:
        raise ValueError(
            f"arguments of task {task!r} contain text that is not valid Unicode "
            f"({exc.reason}: {text[exc.start:exc.end]!r}); clean it or encode it (e.g. base64)"
        ) from exc
    if size > max_bytes:
        raise ValueError(
            f"arguments of task {task!r} are {size} bytes of JSON, over the {max_bytes}-byte "
            "limit: store large data elsewhere and pass a reference "
            "(or raise App(max_args_bytes=...))"
        )
    return text


def _explain(task: str, args: dict[str, Any], exc: Exception) -> str:
    for key, value in args.items():
        if not isinstance(key, str):
            return f"argument names of task {task!r} must be strings, got {key!r}"
        try:
            _encoder.encode(value)
        except (TypeError, ValueError) as inner:
            what = _describe(value, inner)
            return (
                f"argument {key!r} of task {task!r} is not JSON-serialisable ({what}); "
                "pass JSON types (str, int, float, bool, None, list, dict) and convert the rest"
            )
    return f"arguments of task {task!r} are not JSON-serialisable: {exc}"


def _describe(value: Any, exc: Exception) -> str:
    if isinstance(value, float) and (math.isnan(value) or math.isinf(value)):
        return f"{value!r} has no JSON representation"
    return str(exc)

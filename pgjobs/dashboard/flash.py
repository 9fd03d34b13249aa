"""One-shot messages across the POST → redirect → GET of an action ("3 jobs requeued").

The message rides in a short-lived cookie signed with a per-app random key, so nobody can
make the dashboard display text of their choosing through a crafted link.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
from dataclasses import dataclass

from starlette.requests import Request
from starlette.responses import Response

FLASH_COOKIE = "pgjobs_dashboard_flash"


@dataclass(frozen=True)
class Flash:
    """A message and its kind: ``ok`` or ``error``."""

    message: str
    kind: str = "ok"


class Flasher:
    """Signs flash messages into a cookie and reads them back once."""

    def __init__(self, key: bytes) -> None:
        self._key = key

    def _sign(self, payload: bytes) -> str:
        return hmac.new(self._key, payload, hashlib.sha256).hexdigest()

    def set(self, response: Response, request: Request, flash: Flash) -> None:
        payload = base64.urlsafe_b64encode(
            json.dumps({"m": flash.message[:2000], "k": flash.kind}).encode())
        response.set_cookie(
            FLASH_COOKIE, f"{payload.decode()}.{self._sign(payload)}", max_age=60,
            httponly=True, samesite="strict", path=request.scope.get("root_path") or "/",
            secure=request.url.scheme == "https",
        )

    def pop(self, request: Request, response: Response) -> Flash | None:
        """The pending message, if any (and clear it on ``response``)."""
        raw = request.cookies.get(FLASH_COOKIE)
        if not raw:
            return None
        response.delete_cookie(FLASH_COOKIE, path=request.scope.get("root_path") or "/")
        payload, _, signature = raw.rpartition(".")
        if not hmac.compare_digest(signature, self._sign(payload.encode())):
            return None
        try:
            data = json.loads(base64.urlsafe_b64decode(payload.encode()))
            return Flash(str(data["m"]), "error" if data.get("k") == "error" else "ok")
        except (ValueError, KeyError, TypeError):
            return None

"""The dashboard's guard: token login, cross-site POST refusal, read-only, safe headers.

One ASGI middleware in front of every route:

* **Token** (when configured): a request is let in with ``Authorization: Bearer <token>``,
  an ``X-PGJobs-Token`` header, the session cookie set by ``/login``, or ``?token=`` on a
  page (which sets the cookie and redirects to the same URL without it). Tokens are
  compared in constant time; the cookie holds an HMAC of the token, never the token.
* **Cross-site POSTs** are refused (403): ``Sec-Fetch-Site`` other than ``same-origin`` or
  ``none``, or an ``Origin`` (including ``null``) that is not this server's own.
* **Read-only**: every POST except the login is refused (403), whatever the form says.
* Every response carries a strict Content-Security-Policy (scripts and styles from the
  dashboard only; no inline script can run even if something slipped through escaping),
  ``nosniff``, ``DENY`` framing and ``no-store`` caching of pages.
"""

from __future__ import annotations

import hashlib
import hmac
import ipaddress
from collections.abc import Awaitable, Callable
from urllib.parse import urlencode, urlsplit

from starlette.datastructures import URL, Headers, MutableHeaders
from starlette.requests import Request
from starlette.responses import PlainTextResponse, RedirectResponse, Response
from starlette.types import ASGIApp, Message, Receive, Scope, Send

SESSION_COOKIE = "pgjobs_dashboard_session"
TOKEN_HEADER = "x-pgjobs-token"
_SESSION_CONTEXT = b"pgjobs-dashboard-session-v1"

CONTENT_SECURITY_POLICY = (
    "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data:; "
    "connect-src 'self'; form-action 'self'; frame-ancestors 'none'; base-uri 'none'"
)
SECURITY_HEADERS = {
    "content-security-policy": CONTENT_SECURITY_POLICY,
    "x-content-type-options": "nosniff",
    "x-frame-options": "DENY",
    "referrer-policy": "same-origin",
}


def is_loopback(host: str) -> bool:
    """True for addresses only this machine can reach (``127.0.0.1``, ``::1``, ``localhost``)."""
    if host.strip().lower() == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


def session_value(token: str) -> str:
    """What the session cookie holds for ``token`` (an HMAC, so the cookie is not the token)."""
    return hmac.new(token.encode(), _SESSION_CONTEXT, hashlib.sha256).hexdigest()


def token_matches(given: str | None, token: str) -> bool:
    """Constant-time comparison of a presented token with the configured one."""
    if not given:
        return False
    return hmac.compare_digest(given.encode(), token.encode())


def route_path(scope: Scope) -> str:
    """The request path below the mount point (``root_path``)."""
    path: str = scope.get("path", "/")
    root: str = scope.get("root_path", "")
    if root and path.startswith(root):
        path = path[len(root):]
    return path or "/"


def cross_site(headers: Headers, request_url: URL) -> str | None:
    """Why a state-changing request looks cross-site, or None if it does not."""
    site = headers.get("sec-fetch-site")
    if site is not None and site not in ("same-origin", "none"):
        return f"Sec-Fetch-Site is {site!r}"
    origin = headers.get("origin")
    if origin is not None:
        if origin == "null":
            return "Origin is 'null'"
        own = f"{request_url.scheme}://{request_url.netloc}"
        parts = urlsplit(origin)
        if f"{parts.scheme}://{parts.netloc}".lower() != own.lower():
            return f"Origin {origin!r} is not {own!r}"
    return None


LoginPage = Callable[[Request, str | None], Awaitable[Response]]


class Guard:
    """ASGI middleware applying the rules in this module's docstring."""

    def __init__(self, app: ASGIApp, *, token: str | None, read_only: bool,
                 login_page: LoginPage) -> None:
        self.app = app
        self.token = token
        self.read_only = read_only
        self.login_page = login_page

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        send = _with_security_headers(send)
        request = Request(scope, receive)
        path = route_path(scope)
        refusal = await self._refusal(request, path)
        if refusal is not None:
            await refusal(scope, receive, send)
            return
        await self.app(scope, receive, send)

    async def _refusal(self, request: Request, path: str) -> Response | None:
        is_post = request.method not in ("GET", "HEAD", "OPTIONS")
        if is_post:
            reason = cross_site(request.headers, request.url)
            if reason is not None:
                return PlainTextResponse(
                    f"cross-site request refused ({reason}): use the dashboard's own pages",
                    status_code=403)
        if self.token is not None and not path.startswith("/static/") and path != "/login":
            if not self._authenticated(request):
                presented = request.query_params.get("token")
                if not is_post and token_matches(presented, self.token):
                    return self._login_redirect(request)
                return await self.login_page(
                    request, "wrong token" if presented is not None else None)
        if is_post and self.read_only and path != "/login":
            return PlainTextResponse(
                "this dashboard is read-only: actions are disabled (started with --read-only)",
                status_code=403)
        return None

    def _authenticated(self, request: Request) -> bool:
        assert self.token is not None
        auth = request.headers.get("authorization", "")
        if auth[:7].lower() == "bearer " and token_matches(auth[7:].strip(), self.token):
            return True
        if token_matches(request.headers.get(TOKEN_HEADER), self.token):
            return True
        return token_matches(request.cookies.get(SESSION_COOKIE), session_value(self.token))

    def _login_redirect(self, request: Request) -> Response:
        """``?token=`` accepted: set the session cookie, drop the token from the URL."""
        assert self.token is not None
        query = urlencode([(k, v) for k, v in request.query_params.multi_items()
                           if k != "token"])
        target = request.scope.get("root_path", "") + route_path(request.scope)
        response = RedirectResponse(target + (f"?{query}" if query else ""), status_code=303)
        set_session_cookie(response, request, self.token)
        return response


def set_session_cookie(response: Response, request: Request, token: str) -> None:
    """Log the browser in: an HttpOnly, SameSite=Strict cookie scoped to the mount point."""
    response.set_cookie(
        SESSION_COOKIE, session_value(token), httponly=True, samesite="strict",
        secure=request.url.scheme == "https", path=request.scope.get("root_path") or "/",
    )


def _with_security_headers(send: Send) -> Send:
    async def wrapped(message: Message) -> None:
        if message["type"] == "http.response.start":
            headers = MutableHeaders(scope=message)
            for name, value in SECURITY_HEADERS.items():
                headers.setdefault(name, value)
            if headers.get("content-type", "").startswith("text/html"):
                headers.setdefault("cache-control", "no-store")
        await send(message)

    return wrapped

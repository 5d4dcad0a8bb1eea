"""Security for a page that lives in someone else's frame: CSP per site, CSRF without cookies; headers on
every response; who the client is and whether it came over HTTPS.

The clinician pages never set a cookie: an embedded browser may block third-party cookies, and the app must
still work there. The launch handle in the URL names the launch (one per tab); the CSRF token is an HMAC of that
handle with the app secret, rendered into the page and sent back in a header (htmx) or a form field.

The /admin pages (integration engineers, never framed) have named accounts and a first-party session cookie
(`app/web/admin.py`, `bff/admin/`), whose CSRF token is random per session.

`security_headers` is the app's `before_send` hook: every response, whatever produced it (a page, JSON, a
static file, a 404 from the router, an unexpected 500), gets `X-Content-Type-Options: nosniff`, a
`Referrer-Policy` and a `Content-Security-Policy` (a restrictive one where the handler set none), and
`Strict-Transport-Security` when the request came over HTTPS. A request came over HTTPS when its own scheme is
https, or when it came from a trusted proxy (`APP_TRUSTED_PROXIES`) whose `X-Forwarded-Proto` says https; the
client's address is then the right-most `X-Forwarded-For` entry that is not a trusted proxy. Headers from
anybody else are ignored.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import ipaddress
from collections.abc import Iterable, Sequence
from typing import Any

from litestar.datastructures import MutableScopeHeaders
from litestar.types import Message, Scope

from bff.settings import IpNetwork

HSTS = "max-age=63072000; includeSubDomains"
#: For responses whose handler set no policy (JSON, static files, errors the router answers): nothing may run.
DEFAULT_CSP = "default-src 'none'; frame-ancestors 'none'; base-uri 'none'; form-action 'none'"


def csrf_token(secret: bytes, handle: str) -> str:
    digest = hmac.new(secret, f"csrf|{handle}".encode(), hashlib.sha256).digest()
    return base64.urlsafe_b64encode(digest).decode().rstrip("=")


def csrf_ok(secret: bytes, handle: str, presented: str | None) -> bool:
    return bool(presented) and hmac.compare_digest(csrf_token(secret, handle), presented or "")


def content_security_policy(frame_ancestors: Iterable[str]) -> str:
    """Scripts only from this origin (no inline script); the EHR origins of the site may frame the page."""
    ancestors = " ".join(sorted(set(frame_ancestors))) or "'none'"
    return (
        "default-src 'self'; script-src 'self'; style-src 'self' 'unsafe-inline'; img-src 'self' data:; "
        f"connect-src 'self'; form-action 'self'; base-uri 'none'; object-src 'none'; "
        f"frame-ancestors {ancestors}"
    )


SECURITY_HEADERS = {
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",  # the launch handle is in the URL: never leak it in a Referer
    "Cache-Control": "no-store",
}


# MARK: the client, behind trusted proxies or not


def _address(text: str) -> ipaddress.IPv4Address | ipaddress.IPv6Address | None:
    try:
        return ipaddress.ip_address(text.strip())
    except ValueError:
        return None


def _trusted(text: str | None, proxies: Sequence[IpNetwork]) -> bool:
    address = _address(text or "")
    return address is not None and any(address in network for network in proxies)


def _header(scope: Scope | Any, name: bytes) -> str | None:
    values = [v.decode("latin-1") for k, v in scope.get("headers", ()) if k.lower() == name]
    return ",".join(values) if values else None


def _peer(scope: Scope | Any) -> str | None:
    client = scope.get("client")
    return str(client[0]) if client else None


def client_address(scope: Scope | Any, proxies: Sequence[IpNetwork]) -> str:
    """The client's IP address: the peer's, or behind trusted proxies the right-most untrusted X-Forwarded-For."""
    peer = _peer(scope)
    forwarded = _header(scope, b"x-forwarded-for")
    if forwarded and _trusted(peer, proxies):
        for hop in reversed(forwarded.split(",")):
            if _address(hop) is None:
                break
            if not _trusted(hop, proxies):
                return hop.strip()
    return peer or "unknown"


def over_https(scope: Scope | Any, proxies: Sequence[IpNetwork]) -> bool:
    """Whether the request came over HTTPS: its scheme, or a trusted proxy's X-Forwarded-Proto (last value)."""
    if scope.get("scheme") in ("https", "wss"):
        return True
    proto = _header(scope, b"x-forwarded-proto")
    return bool(proto) and _trusted(_peer(scope), proxies) and (proto or "").split(",")[-1].strip() == "https"


def security_headers(proxies: Sequence[IpNetwork]) -> Any:
    """The app's before_send hook (module docstring)."""

    async def hook(message: Message, scope: Scope) -> None:
        if message["type"] != "http.response.start":
            return
        headers = MutableScopeHeaders.from_message(message)
        headers["X-Content-Type-Options"] = "nosniff"
        if "referrer-policy" not in headers:
            headers["Referrer-Policy"] = "no-referrer"
        if "content-security-policy" not in headers:
            headers["Content-Security-Policy"] = DEFAULT_CSP
        if over_https(scope, proxies):
            headers["Strict-Transport-Security"] = HSTS

    return hook

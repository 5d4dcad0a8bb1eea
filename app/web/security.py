"""Security for a page that lives in someone else's frame: CSP per site, CSRF without cookies.

No cookie is ever set: an embedded browser may block third-party cookies, and the app must still work there.
The launch handle in the URL names the launch (one per tab); the CSRF token is an HMAC of that handle with the
app secret, rendered into the page and sent back in a header (htmx) or a form field.

The /admin pages (integration engineers, never framed) use HTTP Basic against `ADMIN_PASSWORD`, compared in
constant time; their CSRF token is an HMAC of "admin|<user>" with the app secret.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
from collections.abc import Iterable


def csrf_token(secret: bytes, handle: str) -> str:
    digest = hmac.new(secret, f"csrf|{handle}".encode(), hashlib.sha256).digest()
    return base64.urlsafe_b64encode(digest).decode().rstrip("=")


def csrf_ok(secret: bytes, handle: str, presented: str | None) -> bool:
    return bool(presented) and hmac.compare_digest(csrf_token(secret, handle), presented or "")


def admin_csrf_token(secret: bytes, user: str) -> str:
    digest = hmac.new(secret, f"admin|{user}".encode(), hashlib.sha256).digest()
    return base64.urlsafe_b64encode(digest).decode().rstrip("=")


def admin_csrf_ok(secret: bytes, user: str, presented: str | None) -> bool:
    return bool(presented) and hmac.compare_digest(admin_csrf_token(secret, user), presented or "")


def basic_credentials(header: str | None) -> tuple[str, str] | None:
    """(user, password) of an `Authorization: Basic …` header; None when absent or unreadable."""
    if not header:
        return None
    scheme, _, encoded = header.strip().partition(" ")
    if scheme.lower() != "basic" or not encoded:
        return None
    try:
        decoded = base64.b64decode(encoded.strip(), validate=True).decode("utf-8")
    except (binascii.Error, UnicodeDecodeError):
        return None
    user, sep, password = decoded.partition(":")
    if not sep or not user.strip():
        return None
    return user.strip(), password


def password_ok(expected: str, presented: str) -> bool:
    """Constant time in the presented password's content (bytes, so any characters compare)."""
    return hmac.compare_digest(expected.encode(), presented.encode())


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

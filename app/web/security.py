"""Security for a page that lives in someone else's frame: CSP per site, CSRF without cookies.

No cookie is ever set: an embedded browser may block third-party cookies, and the app must still work there.
The launch handle in the URL names the launch (one per tab); the CSRF token is an HMAC of that handle with the
app secret, rendered into the page and sent back in a header (htmx) or a form field.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
from collections.abc import Iterable


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

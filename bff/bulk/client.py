"""Bulk Data over HTTP: kick-off, status, cancel and file download, with a Backend Services token per request.

`BulkClient` only speaks HTTP and reports what came back (`Answer`); what an answer means for the job (wait, retry,
fail, export again) is decided by `bff.bulk.runner` with `bff.bulk.protocol`. Every request asks the token source
for a token first (a `TokenSource` such as `backend_token_source(BackendAuth)` refreshes shortly before expiry, so
tokens of a few minutes are renewed between polls and files); a 401 drops the cached token (`forget_token`) and
tries once more with a new one.

Files are streamed to disk (never held in memory), hashed and their lines counted as they arrive; a body cut short
(the connection closed before the declared length or the last chunk) is an `Answer` with `error` set.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx

from bff.broker.broker import TokenSource
from bff.capabilities import SiteCapabilities, Vendor

FHIR_JSON = "application/fhir+json"
NDJSON = "application/fhir+ndjson"
#: Read scopes an export needs, one per type where wildcards are refused (Oracle Health), in SMART v1 spelling,
#: which v2 servers accept too. Epic grants by registration; other servers get `system/*.read` (sekmet, for one,
#: checks its status and file endpoints against `*`).
BULK_SCOPES = ("system/Group.read", "system/Patient.read", "system/Observation.read")
WILDCARD_SCOPES = ("system/*.read",)
_BODY_LIMIT = 1 << 20  # a status or error body larger than this is not kept


def bulk_scopes(caps: SiteCapabilities) -> tuple[str, ...]:
    if caps.vendor is Vendor.EPIC:
        return ()
    return BULK_SCOPES if caps.vendor is Vendor.ORACLE else WILDCARD_SCOPES


@dataclass(frozen=True, slots=True)
class Answer:
    """One response: `status` None when none arrived (then `error` says why); `body` is the parsed JSON, if any."""

    status: int | None
    headers: Mapping[str, str] = field(default_factory=dict)
    body: Any = None
    error: str | None = None

    def header(self, name: str) -> str | None:
        return self.headers.get(name.lower())


@dataclass(frozen=True, slots=True)
class Download:
    """A file on disk: its size, SHA-256 and number of NDJSON lines (non-empty)."""

    path: Path
    size: int
    sha256: str
    lines: int


def _headers(response: httpx.Response) -> dict[str, str]:
    return {k.lower(): v for k, v in response.headers.items()}


def _json(content: bytes) -> Any:
    if not content or len(content) > _BODY_LIMIT:
        return None
    try:
        return json.loads(content)
    except (ValueError, UnicodeDecodeError):
        return None


class BulkClient:
    """HTTP for one process; safe to share between jobs and sites."""

    def __init__(
        self,
        http: httpx.AsyncClient,
        token: TokenSource,
        *,
        forget_token: Callable[[], None] | None = None,
        scopes: Callable[[SiteCapabilities], Sequence[str]] = bulk_scopes,
        timeout_s: float = 60.0,
    ) -> None:
        self._http = http
        self._token = token
        self._forget = forget_token
        self._scopes = scopes
        self.timeout_s = timeout_s

    async def _auth(self, caps: SiteCapabilities) -> dict[str, str]:
        return {"Authorization": f"Bearer {await self._token(caps, self._scopes(caps))}"}

    async def _send(self, caps: SiteCapabilities, method: str, url: str, headers: Mapping[str, str]) -> Answer:
        for attempt in (1, 2):
            try:
                auth = await self._auth(caps)
            except Exception as exc:  # the token endpoint failed: nothing was sent
                return Answer(None, error=f"no system token: {type(exc).__name__}: {exc}")
            try:
                response = await self._http.request(method, url, headers={**headers, **auth}, timeout=self.timeout_s)
            except httpx.HTTPError as exc:
                return Answer(None, error=f"{type(exc).__name__}: {exc}")
            if response.status_code == 401 and attempt == 1 and self._forget is not None:
                self._forget()  # an expired or revoked token: one more try with a new one
                continue
            return Answer(response.status_code, _headers(response), _json(response.content))
        raise AssertionError("unreachable")

    async def kickoff(self, caps: SiteCapabilities, url: str) -> Answer:
        return await self._send(caps, "GET", url, {"Accept": FHIR_JSON, "Prefer": "respond-async"})

    async def status(self, caps: SiteCapabilities, status_url: str) -> Answer:
        return await self._send(caps, "GET", status_url, {"Accept": "application/json"})

    async def cancel(self, caps: SiteCapabilities, status_url: str) -> Answer:
        return await self._send(caps, "DELETE", status_url, {"Accept": "application/json"})

    async def download(self, caps: SiteCapabilities, url: str, dest: Path, *, with_token: bool) -> Download | Answer:
        """Stream the file at `url` to `dest`. An `Answer` when it did not arrive whole (status, or `error` for a
        transport failure or a body cut short), else the `Download`."""
        for attempt in (1, 2):
            headers = {"Accept": NDJSON}
            if with_token:
                try:
                    headers.update(await self._auth(caps))
                except Exception as exc:
                    return Answer(None, error=f"no system token: {type(exc).__name__}: {exc}")
            try:
                async with self._http.stream("GET", url, headers=headers, timeout=self.timeout_s) as response:
                    if response.status_code == 401 and attempt == 1 and with_token and self._forget is not None:
                        self._forget()
                        continue
                    if response.status_code != 200:
                        body = await response.aread()
                        return Answer(response.status_code, _headers(response), _json(body))
                    return await _save(response, dest)
            except httpx.HTTPError as exc:
                return Answer(None, error=f"{type(exc).__name__}: {exc}")
        raise AssertionError("unreachable")


async def _save(response: httpx.Response, dest: Path) -> Download:
    sha = hashlib.sha256()
    size = lines = 0
    last = b"\n"
    with dest.open("wb") as out:
        async for chunk in response.aiter_bytes(1 << 16):
            out.write(chunk)
            sha.update(chunk)
            size += len(chunk)
            lines += chunk.count(b"\n")
            last = chunk[-1:]
    if size and last != b"\n":
        lines += 1  # a last line without its newline
    return Download(dest, size, sha.hexdigest(), lines)


__all__ = ["BULK_SCOPES", "Answer", "BulkClient", "Download", "bulk_scopes"]

"""The request journal: every FHIR request each site received, so a test can prove what the EHR got.

    GET    /sandbox/sites/{site}/journal            the site's FHIR requests in order (JSON list)
    GET    /sandbox/sites/{site}/journal?writes=1   only POST, PUT, PATCH and DELETE
    DELETE /sandbox/sites/{site}/journal            forget them (204)

An entry (`JournalRecord.to_json`):

    {"seq": 7, "time": "2026-11-26T15:00:01.250000+00:00", "method": "POST",
     "path": "/sites/epic-like/fhir/Observation", "query": "", "status": 201,
     "location": "http://…/Observation/e…/_history/1", "resource_type": "Observation",
     "category": ["vital-signs"], "codes": [{"system": "urn:oid:…", "code": "3040101010"}], "entries": []}

`time` is the sandbox clock's (real time plus the test offset); `seq` counts per site over the server's life
(clearing does not reset it). `category` and `codes` are the category codes and the `code.coding` of an
Observation body; `entries` summarise a Bundle body (`{"method", "url", "resource_type"}` per entry). Refused
requests are journaled too (401, 403, 404, 405, …): a request under `/sites/{site}/fhir` is recorded whatever
route, handler or error answered it. Each site keeps its last 10,000 entries.

`JournalMiddleware` is plain ASGI and wraps the whole Litestar handler (`install`), outside the router, so that
requests no route matches (404) or whose method no route allows (405) are recorded as well: a Litestar
`middleware=` entry only runs for matched routes. It reads the request body before the app does and replays it.
"""

from __future__ import annotations

import json
import re
import threading
from collections import deque
from collections.abc import Callable, Iterable, Mapping
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from typing import Any, cast

from litestar import Litestar, Request, Response, delete, get
from litestar.types import ASGIApp, Receive, Scope, Send

WRITE_METHODS = frozenset({"POST", "PUT", "PATCH", "DELETE"})
MAX_ENTRIES_PER_SITE = 10_000
_FHIR_PATH = re.compile(r"^/sites/(?P<site>[^/]+)/fhir(?:/|$)")
_MAX_JSON = 20 * 1024 * 1024


@dataclass(frozen=True, slots=True)
class JournalRecord:
    seq: int
    time: str
    method: str
    path: str
    query: str
    status: int
    location: str | None = None
    resource_type: str | None = None
    category: tuple[str, ...] = ()
    codes: tuple[dict[str, str], ...] = ()
    entries: tuple[dict[str, str | None], ...] = ()

    @property
    def is_write(self) -> bool:
        return self.method in WRITE_METHODS

    def to_json(self) -> dict[str, Any]:
        data = asdict(self)
        data["category"] = list(self.category)
        data["codes"] = list(self.codes)
        data["entries"] = list(self.entries)
        return data


@dataclass(slots=True)
class _Body:
    resource_type: str | None = None
    category: tuple[str, ...] = ()
    codes: tuple[dict[str, str], ...] = ()
    entries: tuple[dict[str, str | None], ...] = ()


def _codings(value: Any) -> Iterable[Mapping[str, Any]]:
    if isinstance(value, Mapping):
        coding = value.get("coding")
        if isinstance(coding, list):
            yield from (c for c in coding if isinstance(c, Mapping))


def _text(value: Any) -> str | None:
    return value if isinstance(value, str) else None


def summarise(body: bytes) -> _Body:
    """What the journal keeps of a request body (nothing unless it is a JSON resource)."""
    if not body or len(body) > _MAX_JSON or body.lstrip()[:1] != b"{":
        return _Body()
    try:
        document = json.loads(body)
    except (ValueError, UnicodeDecodeError):
        return _Body()
    if not isinstance(document, dict) or not isinstance(document.get("resourceType"), str):
        return _Body()
    rtype: str = document["resourceType"]
    if rtype == "Observation":
        categories = document.get("category")
        category = tuple(
            str(c["code"])
            for item in (categories if isinstance(categories, list) else [])
            for c in _codings(item)
            if "code" in c
        )
        codes = tuple(
            {"system": str(c.get("system", "")), "code": str(c.get("code", ""))} for c in _codings(document.get("code"))
        )
        return _Body(rtype, category, codes)
    if rtype == "Bundle" and isinstance(document.get("entry"), list):
        entries: list[dict[str, str | None]] = []
        for entry in document["entry"]:
            if not isinstance(entry, Mapping):
                continue
            request = entry.get("request")
            resource = entry.get("resource")
            request = request if isinstance(request, Mapping) else {}
            resource = resource if isinstance(resource, Mapping) else {}
            entries.append(
                {
                    "method": _text(request.get("method")),
                    "url": _text(request.get("url")),
                    "resource_type": _text(resource.get("resourceType")),
                }
            )
        return _Body(rtype, entries=tuple(entries))
    return _Body(rtype)


@dataclass(slots=True)
class Journal:
    """Per-site journals (thread-safe); `clock` gives epoch seconds (the sandbox's movable clock)."""

    sites: tuple[str, ...]
    clock: Callable[[], float]
    _entries: dict[str, deque[JournalRecord]] = field(default_factory=dict)
    _seq: dict[str, int] = field(default_factory=dict)
    _lock: threading.Lock = field(default_factory=threading.Lock)

    def __post_init__(self) -> None:
        for site in self.sites:
            self._entries[site] = deque(maxlen=MAX_ENTRIES_PER_SITE)
            self._seq[site] = 0

    def knows(self, site: str) -> bool:
        return site in self._entries

    def record(
        self, site: str, method: str, path: str, query: str, status: int, location: str | None, body: bytes
    ) -> JournalRecord | None:
        if site not in self._entries:
            return None
        summary = summarise(body)
        when = datetime.fromtimestamp(self.clock(), UTC).isoformat()
        with self._lock:
            self._seq[site] += 1
            entry = JournalRecord(
                self._seq[site],
                when,
                method,
                path,
                query,
                status,
                location,
                summary.resource_type,
                summary.category,
                summary.codes,
                summary.entries,
            )
            self._entries[site].append(entry)
        return entry

    def entries(self, site: str, *, writes: bool = False) -> list[JournalRecord]:
        with self._lock:
            entries = list(self._entries.get(site, ()))
        return [e for e in entries if e.is_write] if writes else entries

    def clear(self, site: str) -> None:
        with self._lock:
            if site in self._entries:
                self._entries[site].clear()


class JournalMiddleware:
    """ASGI: records each request under `/sites/{site}/fhir` with the status answered."""

    def __init__(self, app: ASGIApp, journal: Journal) -> None:
        self.app = app
        self.journal = journal

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        raw: Mapping[str, Any] = scope
        path = str(raw.get("path", ""))
        found = _FHIR_PATH.match(path) if raw["type"] == "http" else None
        if found is None or not self.journal.knows(found["site"]):
            await self.app(scope, receive, send)
            return
        chunks: list[bytes] = []
        disconnected: Any = None
        while True:
            message: Mapping[str, Any] = await receive()
            if message["type"] == "http.disconnect":
                disconnected = message
                break
            chunks.append(bytes(message.get("body", b"")))
            if not message.get("more_body", False):
                break
        body = b"".join(chunks)
        replayed = False

        async def replay() -> Any:
            nonlocal replayed
            if disconnected is not None:
                return disconnected
            if not replayed:
                replayed = True
                return {"type": "http.request", "body": body, "more_body": False}
            return await receive()

        answered: dict[str, Any] = {"status": 500, "location": None}

        async def watch(message: Any) -> None:
            if message["type"] == "http.response.start":
                answered["status"] = int(message["status"])
                for name, value in message.get("headers", ()):
                    if bytes(name).lower() == b"location":
                        answered["location"] = bytes(value).decode("latin-1")
            await send(message)

        try:
            await self.app(scope, cast(Receive, replay), cast(Send, watch))
        finally:
            query = bytes(raw.get("query_string", b"")).decode("latin-1")
            method = str(raw.get("method", "")).upper()
            self.journal.record(found["site"], method, path, query, answered["status"], answered["location"], body)


def install(app: Litestar, journal: Journal) -> None:
    """Wrap the app's whole ASGI handler (router, exception handling and CORS included) in the journal."""
    app.asgi_handler = JournalMiddleware(app.asgi_handler, journal)


# MARK: routes


def _journal_of(request: Request[Any, Any, Any]) -> tuple[Journal, str] | Response[Any]:
    journal: Journal = request.app.state.journal
    site = str(request.path_params["site_key"])
    if not journal.knows(site):
        return Response({"error": f"no site {site!r} in this sandbox"}, status_code=404)
    return journal, site


@get("/sandbox/sites/{site_key:str}/journal")
async def get_journal(request: Request[Any, Any, Any]) -> Response[Any]:
    found = _journal_of(request)
    if isinstance(found, Response):
        return found
    journal, site = found
    writes = request.query_params.get("writes", "0").lower() in ("1", "true", "yes")
    return Response([e.to_json() for e in journal.entries(site, writes=writes)], headers={"Cache-Control": "no-store"})


@delete("/sandbox/sites/{site_key:str}/journal", status_code=204)
async def clear_journal(request: Request[Any, Any, Any]) -> Response[None]:
    found = _journal_of(request)
    if isinstance(found, Response):
        return Response(None, status_code=404)
    journal, site = found
    journal.clear(site)
    return Response(None, status_code=204)


ROUTES = [get_journal, clear_journal]

__all__ = ["ROUTES", "Journal", "JournalMiddleware", "JournalRecord", "install", "summarise"]

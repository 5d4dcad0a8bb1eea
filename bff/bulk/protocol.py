"""The Bulk Data Access IG as pure functions: kick-off URLs, poll delays, transient errors, the manifest.

No I/O and no clock here (the caller passes `now`); `bff.bulk.client` speaks HTTP, `bff.bulk.runner` keeps the
job record.

- Kick-off: `[base]/Group/{id}/$export`, `[base]/Patient/$export` or `[base]/$export`, with `_type`, `_since`,
  `_typeFilter` and the site's other `[bulk] params`, values percent-encoded.
- Polling: `Retry-After` in delta seconds, an HTTP date or epoch seconds (`bff.outbox.retry.parse_retry_after`),
  never sooner than the site's `poll_floor_s`; without one, back off from the floor.
- Errors: an OperationOutcome whose issue code is `transient` or one of its kinds (IssueType hierarchy) means
  "try again later", as does 429 and 503; anything else failed the export.
- Manifest: `transactionTime` (an instant), `request` (the kick-off we sent), `requiresAccessToken` (boolean),
  `output[]` of `{type, url, count?}` with types we asked for and absolute URLs, `error[]` of OperationOutcome files.
  Files that need our token must be on the FHIR server's own origin: the token is never sent anywhere else.
"""

from __future__ import annotations

import enum
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, time, timedelta
from typing import Any
from urllib.parse import parse_qsl, quote, unquote, urljoin, urlsplit
from zoneinfo import ZoneInfo

from bff.outbox.retry import parse_retry_after

#: OperationOutcome issue codes that mean "retry later": `transient` and its kinds in the FHIR IssueType hierarchy.
TRANSIENT_CODES = frozenset({"transient", "lock-error", "no-store", "exception", "timeout", "incomplete", "throttled"})
#: The resource types a CGM export needs when the site's `[bulk] params` name none.
DEFAULT_TYPES = "Patient,Observation"
#: The longest wait between polls whatever a server says (the IG lets servers ask for more; we look again).
MAX_POLL_S = 3600.0
#: Parameters glucobridge sets itself: a site's `params` may not carry them.
OWN_PARAMS = frozenset({"_since", "_outputFormat"})

_INSTANT = re.compile(r"\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}(\.\d+)?(Z|[+-]\d{2}:\d{2})")


class BulkProtocolError(ValueError):
    """What a server answered does not follow the Bulk Data IG (the message says which part)."""


class Level(enum.StrEnum):
    GROUP = "group"
    PATIENT = "patient"
    SYSTEM = "system"


@dataclass(frozen=True, slots=True)
class ExportScope:
    """What one job exports: a level, and the group for a Group export. `key` names its `_since` watermark."""

    level: Level
    group_id: str | None = None

    def __post_init__(self) -> None:
        if (self.level is Level.GROUP) != bool(self.group_id):
            raise ValueError("a Group export needs a group id, and only a Group export has one")

    @property
    def key(self) -> str:
        return f"group:{self.group_id}" if self.level is Level.GROUP else self.level.value

    def path(self) -> str:
        if self.level is Level.GROUP:
            return f"Group/{quote(str(self.group_id), safe='')}/$export"
        return "Patient/$export" if self.level is Level.PATIENT else "$export"


def format_instant(moment: datetime) -> str:
    """A FHIR instant in UTC with milliseconds: 2026-11-26T15:00:00.000Z."""
    if moment.tzinfo is None:
        raise ValueError("an instant needs a zone")
    return moment.astimezone(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def parse_instant(text: Any) -> datetime | None:
    """A FHIR instant (a time with seconds and a zone), else None."""
    if not isinstance(text, str) or not _INSTANT.fullmatch(text):
        return None
    try:
        return datetime.fromisoformat(text.replace("Z", "+00:00")).astimezone(UTC)
    except ValueError:
        return None


def export_params(params: Mapping[str, str], since: datetime | None) -> list[tuple[str, str]]:
    """The kick-off's query: the site's `[bulk] params` (with `_type` defaulting to Patient and Observation),
    then `_since`. A site may not set `_since` or `_outputFormat`: the watermark and NDJSON are ours."""
    own = sorted(OWN_PARAMS & set(params))
    if own:
        raise BulkProtocolError(f"[bulk] params may not set {', '.join(own)}: glucobridge sets it")
    pairs = [("_type", params.get("_type") or DEFAULT_TYPES)]
    pairs += [(name, value) for name, value in params.items() if name != "_type"]
    if since is not None:
        pairs.append(("_since", format_instant(since)))
    return pairs


def kickoff_url(base: str, scope: ExportScope, params: Mapping[str, str], since: datetime | None) -> str:
    """The kick-off request, every value percent-encoded (some proxies collapse `//` in `http://loinc.org|…`)."""
    query = "&".join(f"{quote(k, safe='')}={quote(v, safe=',')}" for k, v in export_params(params, since))
    return f"{base.rstrip('/')}/{scope.path()}?{query}"


def requested_types(url: str) -> frozenset[str]:
    """The `_type` values of a kick-off URL (empty: every type)."""
    pairs = parse_qsl(urlsplit(url).query, keep_blank_values=True)
    return frozenset(t.strip() for name, value in pairs if name == "_type" for t in value.split(",") if t.strip())


# MARK: polling


def is_transient(status: int, body: Any) -> bool:
    """A response that asks to be tried again later: 429, a gateway's 502/503/504, or an OperationOutcome whose
    every issue has a transient code."""
    if status in (429, 502, 503, 504):
        return True
    if not isinstance(body, Mapping) or body.get("resourceType") != "OperationOutcome":
        return False
    issues = body.get("issue")
    if not isinstance(issues, list) or not issues:
        return False
    return all(isinstance(i, Mapping) and i.get("code") in TRANSIENT_CODES for i in issues)


def diagnostics(body: Any) -> str:
    """An OperationOutcome's issues in one line ("error processing: an internal timeout"), or ""."""
    if not isinstance(body, Mapping) or not isinstance(body.get("issue"), list):
        return ""
    parts = []
    for issue in body["issue"][:5]:
        if not isinstance(issue, Mapping):
            continue
        details = issue.get("details") if isinstance(issue.get("details"), Mapping) else {}
        text = issue.get("diagnostics") or (details or {}).get("text") or ""
        parts.append(
            " ".join(str(p) for p in (issue.get("severity"), issue.get("code")) if p) + (f": {text}" if text else "")
        )
    return "; ".join(parts)[:1000]


def poll_delay(
    retry_after: str | None, now: datetime, *, floor_s: float, waits: int, cap_s: float = MAX_POLL_S
) -> float:
    """Seconds before the next request: the server's `Retry-After` (three forms) when it gave one, else a backoff
    of 1.5^waits from the floor (waits counts answers without one); never under the floor, never over `cap_s`."""
    asked = parse_retry_after(retry_after, now, minimum_s=floor_s, maximum_s=cap_s)
    if asked is not None:
        return asked
    return min(cap_s, floor_s * 1.5 ** min(max(waits, 0), 40))


def in_run_window(window: str, zone: str, now: datetime) -> bool:
    """Whether `now` is inside the site's `[bulk] run_window` ("HH:MM-HH:MM" in the site's zone, may wrap past
    midnight; "" any time). A site without a zone reads the window in UTC."""
    if not window:
        return True
    start_text, _, end_text = window.partition("-")
    start, end = time.fromisoformat(start_text), time.fromisoformat(end_text)
    local = now.astimezone(ZoneInfo(zone) if zone else UTC).time().replace(tzinfo=None)
    if start <= end:
        return start <= local < end
    return local >= start or local < end


def next_window_start(window: str, zone: str, now: datetime) -> datetime | None:
    """When the run window opens next (None: no window)."""
    if not window:
        return None
    tz = ZoneInfo(zone) if zone else UTC
    start = time.fromisoformat(window.partition("-")[0])
    local = now.astimezone(tz)
    candidate = local.replace(hour=start.hour, minute=start.minute, second=0, microsecond=0)
    if candidate <= local:
        candidate += timedelta(days=1)
    return candidate.astimezone(UTC)


# MARK: the manifest


@dataclass(frozen=True, slots=True)
class ManifestFile:
    type: str
    url: str
    count: int | None = None


@dataclass(frozen=True, slots=True)
class Manifest:
    transaction_time: datetime
    request: str
    requires_access_token: bool
    output: tuple[ManifestFile, ...]
    error: tuple[ManifestFile, ...]
    deleted: tuple[ManifestFile, ...] = ()


def _operation(path: str) -> tuple[str, ...]:
    """The operation part of an `$export` path: (Group, id, $export), (Patient, $export) or ($export,)."""
    segments = [unquote(s) for s in path.rstrip("/").split("/")]
    if len(segments) >= 3 and segments[-3] == "Group":
        return tuple(segments[-3:])
    if len(segments) >= 2 and segments[-2] == "Patient":
        return tuple(segments[-2:])
    return tuple(segments[-1:])


def _same_request(sent: str, answered: str) -> bool:
    """The manifest's `request` names our kick-off: the same operation and the same parameters (a server may spell
    its own base differently, e.g. behind a proxy, and may order or encode the query differently)."""
    a, b = urlsplit(sent), urlsplit(answered)
    if _operation(a.path) != _operation(b.path):
        return False
    return sorted(parse_qsl(a.query, keep_blank_values=True)) == sorted(parse_qsl(b.query, keep_blank_values=True))


def _origin(url: str) -> tuple[str, str, int | None]:
    parts = urlsplit(url)
    port = parts.port or {"http": 80, "https": 443}.get(parts.scheme)
    return parts.scheme, (parts.hostname or "").lower(), port


def _files(
    body: Mapping[str, Any], key: str, status_url: str, *, types: frozenset[str] | None
) -> tuple[ManifestFile, ...]:
    items = body.get(key, [])
    if items is None:
        return ()
    if not isinstance(items, list):
        raise BulkProtocolError(f"manifest {key} must be a list")
    out = []
    for number, item in enumerate(items):
        where = f"manifest {key}[{number}]"
        if not isinstance(item, Mapping):
            raise BulkProtocolError(f"{where} must be an object")
        rtype, url, count = item.get("type"), item.get("url"), item.get("count")
        if not isinstance(rtype, str) or not rtype:
            raise BulkProtocolError(f"{where}.type must be a resource type")
        if types is not None and types and rtype not in types:
            raise BulkProtocolError(f"{where}.type {rtype} was not asked for (_type={','.join(sorted(types))})")
        if not isinstance(url, str) or not url:
            raise BulkProtocolError(f"{where}.url must be a URL")
        absolute = urljoin(status_url, url)
        if urlsplit(absolute).scheme not in ("http", "https"):
            raise BulkProtocolError(f"{where}.url must be an http(s) URL, got {url!r}")
        if count is not None and (not isinstance(count, int) or isinstance(count, bool) or count < 0):
            raise BulkProtocolError(f"{where}.count must be a whole number, got {count!r}")
        out.append(ManifestFile(rtype, absolute, count))
    return tuple(out)


def parse_manifest(body: Any, *, kickoff: str, status_url: str, base: str) -> Manifest:
    """The completed export's manifest, checked against the kick-off (`BulkProtocolError` naming what is wrong)."""
    if not isinstance(body, Mapping):
        raise BulkProtocolError("the completed export answered no JSON object (a manifest was expected)")
    moment = parse_instant(body.get("transactionTime"))
    if moment is None:
        raise BulkProtocolError(f"manifest transactionTime must be a FHIR instant, got {body.get('transactionTime')!r}")
    request = body.get("request")
    if not isinstance(request, str) or not _same_request(kickoff, request):
        raise BulkProtocolError(f"manifest request {request!r} is not the kick-off that was sent ({kickoff})")
    token = body.get("requiresAccessToken")
    if not isinstance(token, bool):
        raise BulkProtocolError(f"manifest requiresAccessToken must be true or false, got {token!r}")
    output = _files(body, "output", status_url, types=requested_types(kickoff))
    errors = _files(body, "error", status_url, types=None)
    for item in errors:
        if item.type != "OperationOutcome":
            raise BulkProtocolError(f"manifest error files must be OperationOutcome, got {item.type}")
    deleted = _files(body, "deleted", status_url, types=None)
    if token:
        home = _origin(base)
        for item in (*output, *errors, *deleted):
            if _origin(item.url) != home:
                raise BulkProtocolError(
                    f"manifest file {item.url} is not on the FHIR server's origin but requiresAccessToken is true: "
                    "the site's token is never sent elsewhere"
                )
    return Manifest(moment, request, token, output, errors, deleted)


def manifest_json(manifest: Manifest) -> dict[str, Any]:
    """The manifest as kept in the job record (and read back by `manifest_from_json`)."""

    def files(items: Sequence[ManifestFile]) -> list[dict[str, Any]]:
        return [{"type": f.type, "url": f.url, **({"count": f.count} if f.count is not None else {})} for f in items]

    return {
        "transactionTime": format_instant(manifest.transaction_time),
        "request": manifest.request,
        "requiresAccessToken": manifest.requires_access_token,
        "output": files(manifest.output),
        "error": files(manifest.error),
        "deleted": files(manifest.deleted),
    }


__all__ = [
    "DEFAULT_TYPES",
    "MAX_POLL_S",
    "TRANSIENT_CODES",
    "BulkProtocolError",
    "ExportScope",
    "Level",
    "Manifest",
    "ManifestFile",
    "diagnostics",
    "export_params",
    "format_instant",
    "in_run_window",
    "is_transient",
    "kickoff_url",
    "manifest_json",
    "next_window_start",
    "parse_instant",
    "parse_manifest",
    "poll_delay",
    "requested_types",
]

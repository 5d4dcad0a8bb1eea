"""The EHR broker: one interface that sends a planned write to any site and reads it back.

    broker.send(caps, write)       -> SendResult   (guard first: a write the site does not allow never leaves)
    broker.read_back(caps, write)  -> True | False | None   (found, certainly absent, cannot tell)

FHIR writes go over HTTP with a SMART Backend Services system token for the site's FHIR base (`[smart] iss`,
`token_endpoint` from its smart-configuration); HL7 v2 messages go over MLLP to `[hl7v2] host:port`. What a
response *means* (confirmed, retry, unknown, failed) is decided by `bff.outbox.retry.classify`, not here.
Vendor differences in *what* is sent live in `bff.broker.plan` (by the site's vendor profile, `bff.vendors`); the
transport is the same for every vendor, except the scopes a system token asks for, which the profile gives (Epic:
none, by registration; Oracle: each scope listed, SMART v1; others one per resource type, v2) unless the site's
`[backend] scopes` lists them.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol
from urllib.parse import urlencode

import httpx

from bff.broker.guard import check
from bff.broker.plan import PlannedWrite
from bff.capabilities import SiteCapabilities
from bff.hl7 import AckError, MllpClient, MllpConnectionError
from bff.vendors import profile_for, system_scopes

FHIR_JSON = "application/fhir+json"
#: What an Oracle Health site that takes results and documents asks for (`scopes_for` computes each site's).
ORACLE_SCOPES = system_scopes((), ("Observation", "DocumentReference"), "v1")


class TokenSource(Protocol):
    async def __call__(self, caps: SiteCapabilities, scopes: Sequence[str]) -> str: ...


@dataclass(frozen=True, slots=True)
class SendResult:
    """What came back from one attempt. `status` None: no response; `sent` False: nothing left this process."""

    status: int | None
    sent: bool
    error: str | None = None
    body: Any = None
    headers: Mapping[str, str] = field(default_factory=dict)
    remote_id: str | None = None

    @property
    def retry_after(self) -> str | None:
        return self.headers.get("retry-after")


def scopes_for(caps: SiteCapabilities) -> tuple[str, ...]:
    """The scopes a system token for this site asks for (`[backend] scopes`, else the vendor profile's)."""
    return profile_for(caps).backend_scopes()


def _json(response: httpx.Response) -> Any:
    try:
        return response.json()
    except (json.JSONDecodeError, UnicodeDecodeError):
        return None


def _remote_id(response: httpx.Response, body: Any) -> str | None:
    location = response.headers.get("location") or response.headers.get("content-location")
    if location:
        parts = location.split("/_history/")[0].rstrip("/").split("/")
        return "/".join(parts[-2:]) if len(parts) >= 2 else location
    if isinstance(body, Mapping) and body.get("id") and body.get("resourceType"):
        return f"{body['resourceType']}/{body['id']}"
    return None


def _failed_entries(body: Any) -> list[str]:
    """The entries of a response Bundle whose status is not 2xx ("entry 3: 400 <diagnostics>")."""
    if not isinstance(body, Mapping) or body.get("resourceType") != "Bundle":
        return []
    out = []
    for number, entry in enumerate(body.get("entry") or []):
        response = entry.get("response") if isinstance(entry, Mapping) else None
        status = str(response.get("status", "")) if isinstance(response, Mapping) else ""
        if status and not status.startswith("2"):
            outcome = response.get("outcome") if isinstance(response, Mapping) else None
            issues = outcome.get("issue", []) if isinstance(outcome, Mapping) else []
            text = "; ".join(str(i.get("diagnostics", "")) for i in issues if isinstance(i, Mapping))
            out.append(f"entry {number}: {status} {text}".strip())
    return out


class Broker:
    """Sends and reads back planned writes. One per process; safe to share between sites."""

    def __init__(
        self,
        http: httpx.AsyncClient,
        token: TokenSource,
        *,
        timeout_s: float = 30.0,
        mllp: Callable[[str, int, float], MllpClient] | None = None,
        on_request: Callable[[SiteCapabilities, PlannedWrite], None] | None = None,
    ) -> None:
        self._http = http
        self._token = token
        self.timeout_s = timeout_s
        self._mllp = mllp or (lambda host, port, timeout: MllpClient(host, port, timeout_s=timeout))
        self._on_request = on_request  # called for every request that passed the guard, just before it leaves

    def base(self, caps: SiteCapabilities) -> str:
        if not caps.iss:
            raise ValueError(f"site {caps.key} has no FHIR base ([smart] iss)")
        return caps.iss.rstrip("/")

    async def send(self, caps: SiteCapabilities, write: PlannedWrite) -> SendResult:
        """Guard, then send. Raises WriteRefusedError (nothing sent) when the site's matrix does not allow it."""
        check(caps, write)
        if self._on_request is not None:
            self._on_request(caps, write)
        if write.channel == "hl7v2":
            return await asyncio.to_thread(self._send_mllp, caps, write)
        return await self._send_fhir(caps, write)

    async def _headers(self, caps: SiteCapabilities) -> dict[str, str] | SendResult:
        try:
            token = await self._token(caps, scopes_for(caps))
        except Exception as exc:  # the token endpoint failed: nothing was sent
            return SendResult(None, sent=False, error=f"no system token: {type(exc).__name__}: {exc}")
        return {"Authorization": f"Bearer {token}", "Accept": FHIR_JSON, "Content-Type": FHIR_JSON}

    async def _send_fhir(self, caps: SiteCapabilities, write: PlannedWrite) -> SendResult:
        headers = await self._headers(caps)
        if isinstance(headers, SendResult):
            return headers
        headers.update(write.headers)
        url = f"{self.base(caps)}/{write.path}" if write.path else self.base(caps)
        content = json.dumps(write.body, separators=(",", ":")).encode()
        try:
            response = await self._http.post(url, content=content, headers=headers, timeout=self.timeout_s)
        except (httpx.ConnectError, httpx.ConnectTimeout) as exc:
            return SendResult(None, sent=False, error=f"{type(exc).__name__}: {exc}")
        except httpx.HTTPError as exc:  # read timeout, reset after sending, protocol error: it may have landed
            return SendResult(None, sent=True, error=f"{type(exc).__name__}: {exc}")
        body = _json(response)
        failed = _failed_entries(body) if response.is_success else []
        if failed:  # a batch-style answer: HTTP 200, but entries refused; a person must look
            return SendResult(422, sent=True, body=body, headers={k.lower(): v for k, v in response.headers.items()},
                              error="entries refused: " + "; ".join(failed[:5]))  # fmt: skip
        return SendResult(
            response.status_code, sent=True, body=body, headers={k.lower(): v for k, v in response.headers.items()},
            remote_id=_remote_id(response, body) if response.is_success else None,
            error=None if response.is_success else f"HTTP {response.status_code}",
        )  # fmt: skip

    def _send_mllp(self, caps: SiteCapabilities, write: PlannedWrite) -> SendResult:
        assert write.message is not None
        client = self._mllp(caps.hl7v2.host, caps.hl7v2.port, self.timeout_s)
        try:
            ack = client.send(write.message)
        except MllpConnectionError as exc:
            # Connection refused before anything went out is safe to resend; anything later may have landed.
            sent = not isinstance(exc.__cause__, ConnectionRefusedError)
            return SendResult(None, sent=sent, error=str(exc))
        except AckError as exc:
            return SendResult(502, sent=True, error=f"unreadable ACK: {exc}")
        finally:
            client.close()
        status = {"AA": 201, "AE": 422, "AR": 400}[ack.code]
        return SendResult(status, sent=True, body={"ack": ack.code, "text": ack.text}, remote_id=ack.control_id,
                          error=None if ack.code == "AA" else f"{ack.code}: {ack.text}")  # fmt: skip

    async def read_back(self, caps: SiteCapabilities, write: PlannedWrite) -> bool | None:
        """Whether the EHR has the write: True found, False certainly not, None unknown (cannot search, error)."""
        spec = write.readback
        if write.channel != "fhir" or not spec:
            return None
        headers = await self._headers(caps)
        if isinstance(headers, SendResult):
            return None
        query = urlencode({**dict(spec["params"]), "_summary": "count"})
        url = f"{self.base(caps)}/{spec['type']}?{query}"
        try:
            response = await self._http.get(url, headers=headers, timeout=self.timeout_s)
        except httpx.HTTPError:
            return None
        body = _json(response)
        if response.status_code != 200 or not isinstance(body, Mapping):
            return None
        total = body.get("total")
        if isinstance(total, int):
            return total > 0
        return bool(body.get("entry"))


def backend_token_source(auth: Any) -> TokenSource:
    """A TokenSource from a `BackendAuth` (a system token per site FHIR base and scope set)."""

    async def token(caps: SiteCapabilities, scopes: Sequence[str]) -> str:
        return str(await auth.token(caps.iss, scopes))

    return token


def launch_token_source(smart: Any, handle: str) -> TokenSource:
    """The clinician's own access token of a live launch (`SmartClient.access_token`, refreshed when due), for a
    write made in context; the EHR then records the clinician, not the app, as the author."""

    async def token(caps: SiteCapabilities, scopes: Sequence[str]) -> str:
        del caps, scopes
        return str(await smart.access_token(handle))

    return token


def scopes_allow_create(granted: Sequence[str], resource_types: Sequence[str]) -> bool:
    """Whether user/ or patient/ scopes (SMART v1 `.write`/`.*`, v2 `.c…`) let a launch create every type listed."""

    def allows(rtype: str) -> bool:
        for scope in granted:
            context, _, rest = scope.partition("/")
            if context not in ("user", "patient") or "." not in rest:
                continue
            target, _, ops = rest.split("?")[0].partition(".")
            if target in ("*", rtype) and (ops in ("write", "*") or ("c" in ops and set(ops) <= set("cruds"))):
                return True
        return False

    return all(allows(rtype) for rtype in resource_types)


def static_token_source(tokens: Mapping[str, str] | Callable[[str], Awaitable[str]]) -> TokenSource:
    """For tests and rehearsals: a fixed token per site key."""

    async def token(caps: SiteCapabilities, scopes: Sequence[str]) -> str:
        del scopes
        if callable(tokens):
            return await tokens(caps.key)
        return tokens[caps.key]

    return token


__all__ = [
    "Broker",
    "SendResult",
    "TokenSource",
    "backend_token_source",
    "launch_token_source",
    "scopes_allow_create",
    "scopes_for",
    "static_token_source",
]

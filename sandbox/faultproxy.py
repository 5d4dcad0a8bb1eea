"""A fault-injecting HTTP/1.1 reverse proxy, to put in front of any FHIR server (the sandbox EHR or a third-party one).

Tests point the code under test at `proxy.url` instead of the server's base URL and make the "EHR" misbehave the
way real ones do (ehr-realities.md; test-peers.md "Behaviours of the reference servers to design for"):

    with FaultProxy("http://127.0.0.1:8081") as proxy:          # start() / stop() also work
        proxy.add_rule({"match": {"method": "POST", "path_prefix": "/sites/epic-like/fhir/Observation"},
                        "action": "reset_after_commit", "times": 1})
        proxy.set_rate("/sites/oracle-like/fhir", rps=2, burst=3, retry_after_form="http-date")
        ...                                                     # the client writes through proxy.url
        writes = proxy.journal(writes=True)                     # what the EHR really received, in order

The proxy runs its own asyncio event loop in a daemon thread (usable from synchronous tests). It speaks HTTP/1.1
with keep-alive (h11 over asyncio streams) and forwards each request with httpx to the upstream origin: method,
path and query string unchanged, headers except hop-by-hop ones and `Host`, and the body. The upstream's answer is
passed back byte for byte (its `Content-Encoding` kept, hop-by-hop headers dropped). `Location` headers and bundle
links still name the upstream: the proxy rewrites nothing.

Rules (JSON, also accepted by `add_rule` as a mapping or a `Rule`):

    {"match": {"method": "POST", "path_prefix": "/sites/epic-like/fhir/Observation", "resource_type": "Observation"},
     "action": "status", "status": 503, "retry_after": {"form": "seconds", "value": 2},
     "body": {...OperationOutcome...}, "headers": {"X-Extra": "1"}, "seconds": 0.5, "times": 1}

Every `match` key is optional (absent = any); `resource_type` is the request body's JSON `resourceType`. `times`
is how many matching requests the rule applies to before it is used up (default 1; null = forever). The first
rule that matches and is not used up applies; a request no rule matches is passed through. Actions:

| action | what the client sees | upstream |
| --- | --- | --- |
| `pass` | the upstream's answer | forwarded |
| `status` | `status` (default 503) with an OperationOutcome (or `body`), optional `Retry-After` | not forwarded |
| `reset_before` | a TCP reset (RST) after it sent the request | not forwarded |
| `reset_after_commit` | a TCP reset instead of the answer | forwarded, committed |
| `hang_after_commit` | nothing for `seconds` (default 30), then the connection closes | forwarded, committed |
| `delay_after_commit` | the answer after `seconds` (default 1) | forwarded, committed |
| `delay_before` | the answer, late | forwarded after `seconds` (default 1) |

`retry_after` is `{"form": "seconds" | "http-date" | "epoch", "value": N}` (delta seconds, an IMF-fixdate N
seconds from now, absolute epoch seconds N seconds from now) or a string sent verbatim (e.g. a malformed one).

Rate limits (`set_rate`, `POST /__faults__/rate`): a token bucket per path prefix (`rps`, `burst`); the longest
prefix matching a request applies. A request over the limit gets 429 with an OperationOutcome (`throttled`) and a
`Retry-After` in the configured form, counting the seconds until a token is back, and is not forwarded. The limit
is checked before the rules, so a throttled request uses up no rule.

Journal: every request the proxy receives except control requests, in order, with what happened to it
(`JournalEntry`). An entry is added when the request has been read and completed as it goes on (`done`).

Control over HTTP under `/__faults__/` (JSON; not journaled):

    POST   /__faults__/rules     a rule, a list of rules or {"rules": [...]}: appended; answers the rule list
    GET    /__faults__/rules     the rules with their `remaining` uses
    DELETE /__faults__/rules
    POST   /__faults__/rate      {"path_prefix": P, "rps": R, "burst": B, "retry_after_form": F} (or a list);
                                 "rps": null removes the limit of P
    DELETE /__faults__/rate      every limit
    GET    /__faults__/journal   the journal as a JSON list (`?writes=1`: forwarded POST/PUT/PATCH/DELETE only)
    DELETE /__faults__/journal

CLI: `python -m sandbox faultproxy --upstream http://127.0.0.1:8081 --port 8090`.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import json
import math
import socket
import struct
import threading
import time
from collections.abc import Iterable, Mapping
from dataclasses import asdict, dataclass, field, replace
from datetime import UTC, datetime
from email.utils import format_datetime
from typing import Any, Literal, cast, get_args
from urllib.parse import parse_qs, urlsplit

import h11
import httpx

Action = Literal[
    "pass", "status", "reset_before", "reset_after_commit", "hang_after_commit", "delay_after_commit", "delay_before"
]
RetryAfterForm = Literal["seconds", "http-date", "epoch"]
ACTIONS: tuple[str, ...] = get_args(Action)
RETRY_AFTER_FORMS: tuple[str, ...] = get_args(RetryAfterForm)
CONTROL_PREFIX = "/__faults__/"
WRITE_METHODS = frozenset({"POST", "PUT", "PATCH", "DELETE"})
_DEFAULT_SECONDS = {"hang_after_commit": 30.0, "delay_after_commit": 1.0, "delay_before": 1.0}
_FORWARDING = frozenset({"pass", "reset_after_commit", "hang_after_commit", "delay_after_commit", "delay_before"})
#: RFC 9110 §7.6.1 hop-by-hop headers (and Host, which httpx sets for the upstream).
_HOP_BY_HOP = frozenset(
    {
        "connection",
        "keep-alive",
        "proxy-authenticate",
        "proxy-authorization",
        "proxy-connection",
        "te",
        "trailer",
        "transfer-encoding",
        "upgrade",
        "host",
    }
)
_MAX_JSON_SNIFF = 10 * 1024 * 1024


class RuleError(ValueError):
    """A rule or rate limit that cannot be used (the message names the field)."""


# MARK: rules and rates


@dataclass(frozen=True, slots=True)
class RetryAfter:
    form: RetryAfterForm
    value: float

    def header(self, now: float | None = None) -> str:
        """The header value: delta seconds, an IMF-fixdate `value` seconds from now, or epoch seconds."""
        now = time.time() if now is None else now
        if self.form == "seconds":
            return str(math.ceil(self.value))
        if self.form == "epoch":
            return str(math.ceil(now + self.value))
        moment = datetime.fromtimestamp(math.ceil(now + self.value), UTC)
        return format_datetime(moment, usegmt=True)

    @classmethod
    def parse(cls, data: Any) -> RetryAfter | str | None:
        if data is None or isinstance(data, RetryAfter | str):
            return data
        if isinstance(data, int | float) and not isinstance(data, bool):
            return cls("seconds", float(data))
        if not isinstance(data, Mapping):
            raise RuleError("retry_after must be {form, value}, a number of seconds or a string")
        form = data.get("form", "seconds")
        if form not in RETRY_AFTER_FORMS:
            raise RuleError(f"retry_after.form must be one of {', '.join(RETRY_AFTER_FORMS)}, got {form!r}")
        value = data.get("value")
        if not isinstance(value, int | float) or isinstance(value, bool) or value < 0:
            raise RuleError("retry_after.value must be a number of seconds >= 0")
        return cls(cast(RetryAfterForm, form), float(value))


@dataclass(frozen=True, slots=True)
class Match:
    method: str | None = None
    path_prefix: str | None = None
    resource_type: str | None = None

    def matches(self, method: str, path: str, resource_type: str | None) -> bool:
        return (
            (self.method is None or self.method.upper() == method)
            and (self.path_prefix is None or path.startswith(self.path_prefix))
            and (self.resource_type is None or self.resource_type == resource_type)
        )

    @classmethod
    def parse(cls, data: Any) -> Match:
        if data is None:
            return cls()
        if isinstance(data, Match):
            return data
        if not isinstance(data, Mapping):
            raise RuleError("match must be an object")
        unknown = set(data) - {"method", "path_prefix", "resource_type"}
        if unknown:
            raise RuleError(f"match has unknown keys: {', '.join(sorted(unknown))}")
        for key in ("method", "path_prefix", "resource_type"):
            if data.get(key) is not None and not isinstance(data[key], str):
                raise RuleError(f"match.{key} must be a string")
        method = data.get("method")
        return cls(method.upper() if method else None, data.get("path_prefix"), data.get("resource_type"))


@dataclass(slots=True)
class Rule:
    """One fault: what it matches, what it does, how many more times (`remaining`; None = forever)."""

    action: Action
    match: Match = field(default_factory=Match)
    status: int = 503
    retry_after: RetryAfter | str | None = None
    body: Any = None
    headers: dict[str, str] = field(default_factory=dict)
    seconds: float | None = None
    times: int | None = 1
    id: int = 0
    remaining: int | None = None

    def __post_init__(self) -> None:
        if self.action not in ACTIONS:
            raise RuleError(f"action must be one of {', '.join(ACTIONS)}, got {self.action!r}")
        if not 100 <= self.status <= 599:
            raise RuleError(f"status must be an HTTP status code, got {self.status!r}")
        if self.times is not None and self.times < 1:
            raise RuleError("times must be at least 1 (or null for forever)")
        if self.seconds is not None and self.seconds < 0:
            raise RuleError("seconds must be >= 0")
        if self.remaining is None:
            self.remaining = self.times

    @property
    def wait_s(self) -> float:
        return self.seconds if self.seconds is not None else _DEFAULT_SECONDS.get(self.action, 0.0)

    @classmethod
    def parse(cls, data: Rule | Mapping[str, Any]) -> Rule:
        if isinstance(data, Rule):
            return replace(data, remaining=data.times)
        if not isinstance(data, Mapping):
            raise RuleError("a rule must be an object")
        unknown = set(data) - {"match", "action", "status", "retry_after", "body", "headers", "seconds", "times"}
        if unknown:
            raise RuleError(f"rule has unknown keys: {', '.join(sorted(unknown))}")
        status = data.get("status", 503)
        times = data.get("times", 1)
        seconds = data.get("seconds")
        headers = data.get("headers") or {}
        if not isinstance(status, int) or isinstance(status, bool):
            raise RuleError("status must be an integer")
        if times is not None and (not isinstance(times, int) or isinstance(times, bool)):
            raise RuleError("times must be an integer or null")
        if seconds is not None and (not isinstance(seconds, int | float) or isinstance(seconds, bool)):
            raise RuleError("seconds must be a number")
        if not isinstance(headers, Mapping) or not all(isinstance(v, str) for v in headers.values()):
            raise RuleError("headers must be an object of strings")
        return cls(
            action=cast(Action, data.get("action")),
            match=Match.parse(data.get("match")),
            status=status,
            retry_after=RetryAfter.parse(data.get("retry_after")),
            body=data.get("body"),
            headers={str(k): v for k, v in headers.items()},
            seconds=float(seconds) if seconds is not None else None,
            times=times,
        )

    def to_json(self) -> dict[str, Any]:
        match = {k: v for k, v in asdict(self.match).items() if v is not None}
        retry_after = asdict(self.retry_after) if isinstance(self.retry_after, RetryAfter) else self.retry_after
        return {
            "id": self.id,
            "match": match,
            "action": self.action,
            "status": self.status,
            "retry_after": retry_after,
            "body": self.body,
            "headers": self.headers,
            "seconds": self.seconds,
            "times": self.times,
            "remaining": self.remaining,
        }


@dataclass(slots=True)
class RateLimit:
    """A token bucket: `burst` requests at once, refilled at `rps` per second."""

    path_prefix: str
    rps: float
    burst: int
    retry_after_form: RetryAfterForm = "seconds"
    tokens: float = -1.0
    updated: float = 0.0

    def __post_init__(self) -> None:
        if self.rps <= 0 or self.burst < 1:
            raise RuleError("a rate limit needs rps > 0 and burst >= 1")
        if self.retry_after_form not in RETRY_AFTER_FORMS:
            raise RuleError(f"retry_after_form must be one of {', '.join(RETRY_AFTER_FORMS)}")
        if self.tokens < 0:
            self.tokens = float(self.burst)
            self.updated = time.monotonic()

    def take(self, now: float) -> float | None:
        """None when a token was taken, else the seconds until one is back."""
        self.tokens = min(float(self.burst), self.tokens + (now - self.updated) * self.rps)
        self.updated = now
        if self.tokens >= 1.0:
            self.tokens -= 1.0
            return None
        return (1.0 - self.tokens) / self.rps

    def to_json(self) -> dict[str, Any]:
        return {
            "path_prefix": self.path_prefix,
            "rps": self.rps,
            "burst": self.burst,
            "retry_after_form": self.retry_after_form,
        }


# MARK: journal


@dataclass(slots=True)
class JournalEntry:
    """One request the proxy received and what became of it.

    `client_status` is the status answered to the client, "reset" (TCP reset), "hang" (nothing answered before
    the connection closed), "gone" (the client left before the answer) or None while the request is in flight.
    `body_sha256` is None for an empty body; `resource_type` and `identifier` (the first `identifier` value) come
    from a JSON body.
    """

    seq: int
    monotonic: float
    wall: float
    method: str
    path: str
    query: str
    action: str
    rule_id: int | None
    forwarded: bool = False
    upstream_status: int | None = None
    client_status: int | str | None = None
    body_sha256: str | None = None
    resource_type: str | None = None
    identifier: str | None = None
    upstream_error: str | None = None
    done: bool = False

    @property
    def is_write(self) -> bool:
        return self.method in WRITE_METHODS

    def to_json(self) -> dict[str, Any]:
        return asdict(self)


def _sniff(body: bytes) -> tuple[str | None, str | None]:
    """resourceType and the first identifier value of a JSON body (None, None when it is not JSON)."""
    if not body or len(body) > _MAX_JSON_SNIFF or body.lstrip()[:1] != b"{":
        return None, None
    try:
        document = json.loads(body)
    except (ValueError, UnicodeDecodeError):
        return None, None
    if not isinstance(document, dict):
        return None, None
    resource_type = document.get("resourceType")
    identifier = document.get("identifier")
    if isinstance(identifier, list):
        identifier = identifier[0] if identifier else None
    value = identifier.get("value") if isinstance(identifier, dict) else None
    return (
        resource_type if isinstance(resource_type, str) else None,
        value if isinstance(value, str) else None,
    )


def operation_outcome(status: int, diagnostics: str) -> dict[str, Any]:
    code = {429: "throttled", 503: "transient", 502: "transient", 504: "timeout"}.get(status, "exception")
    return {
        "resourceType": "OperationOutcome",
        "issue": [{"severity": "error", "code": code, "diagnostics": diagnostics}],
    }


# MARK: the proxy


@dataclass(slots=True)
class _Answer:
    status: int
    headers: list[tuple[bytes, bytes]]
    body: bytes
    reason: bytes = b""


class _ResetConnectionError(Exception):
    """Abort the client connection with a TCP reset."""


class _CloseConnectionError(Exception):
    """Close the client connection without answering."""


class _ClientGoneError(_CloseConnectionError):
    """The client left before the answer (already journaled)."""


class FaultProxy:
    """The proxy. `start()` returns once it listens; `url` is the upstream base URL as seen through the proxy."""

    def __init__(
        self, upstream_base: str, host: str = "127.0.0.1", port: int = 0, *, upstream_timeout_s: float = 30.0
    ) -> None:
        parts = urlsplit(upstream_base)
        if parts.scheme not in ("http", "https") or not parts.netloc:
            raise ValueError(f"upstream_base must be an absolute http(s) URL, got {upstream_base!r}")
        self.upstream_base = upstream_base.rstrip("/")
        self.upstream_origin = f"{parts.scheme}://{parts.netloc}"
        self._base_path = parts.path.rstrip("/")
        self.host = host
        self.port = port
        self._timeout = upstream_timeout_s
        self._lock = threading.Lock()
        self._rules: list[Rule] = []
        self._rates: dict[str, RateLimit] = {}
        self._journal: list[JournalEntry] = []
        self._next_rule = 1
        self._next_seq = 1
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None
        self._server: asyncio.Server | None = None
        self._http: httpx.AsyncClient | None = None
        self._tasks: set[asyncio.Task[None]] = set()
        self._ready = threading.Event()
        self._startup_error: BaseException | None = None

    # -- lifecycle

    @property
    def origin(self) -> str:
        """`http://host:port` of the proxy (the control API is under `{origin}/__faults__/`)."""
        return f"http://{self.host}:{self.port}"

    @property
    def url(self) -> str:
        """The upstream base URL through the proxy: use it wherever the upstream base URL would be used."""
        return self.origin + self._base_path

    @property
    def running(self) -> bool:
        return self._thread is not None and self._thread.is_alive()

    def start(self, timeout_s: float = 10.0) -> FaultProxy:
        if self.running:
            return self
        self._ready.clear()
        self._startup_error = None
        self._thread = threading.Thread(target=self._run, name=f"faultproxy->{self.upstream_origin}", daemon=True)
        self._thread.start()
        if not self._ready.wait(timeout_s):
            raise RuntimeError("the fault proxy did not start")
        if self._startup_error is not None:
            self._thread.join(timeout_s)
            raise RuntimeError(f"the fault proxy did not start: {self._startup_error!r}") from self._startup_error
        return self

    def stop(self, timeout_s: float = 10.0) -> None:
        loop, thread = self._loop, self._thread
        if loop is None or thread is None:
            return
        with contextlib.suppress(RuntimeError):  # the loop already ended
            asyncio.run_coroutine_threadsafe(self._shutdown(), loop).result(timeout_s)
        thread.join(timeout_s)
        self._thread = None

    def __enter__(self) -> FaultProxy:
        return self.start()

    def __exit__(self, *_: object) -> None:
        self.stop()

    def _run(self) -> None:
        loop = asyncio.new_event_loop()
        self._loop = loop
        try:
            loop.run_until_complete(self._startup())
        except BaseException as exc:  # reported to start()
            self._startup_error = exc
            self._ready.set()
            loop.close()
            self._loop = None
            return
        self._ready.set()
        try:
            loop.run_forever()
        finally:
            loop.run_until_complete(loop.shutdown_asyncgens())
            loop.close()
            self._loop = None

    async def _startup(self) -> None:
        self._http = httpx.AsyncClient(timeout=self._timeout, follow_redirects=False, trust_env=False)
        self._server = await asyncio.start_server(self._connection, self.host, self.port)
        self.port = int(self._server.sockets[0].getsockname()[1])

    async def _shutdown(self) -> None:
        if self._server is not None:
            self._server.close()
        for task in list(self._tasks):
            task.cancel()
        if self._tasks:
            await asyncio.gather(*self._tasks, return_exceptions=True)
        if self._server is not None:
            await self._server.wait_closed()
        if self._http is not None:
            await self._http.aclose()
        asyncio.get_running_loop().call_soon(asyncio.get_running_loop().stop)

    # -- control (thread-safe)

    def add_rule(self, rule: Rule | Mapping[str, Any]) -> Rule:
        """Append a rule (a `Rule` or its JSON form); returns it with its id."""
        parsed = Rule.parse(rule)
        with self._lock:
            parsed.id = self._next_rule
            self._next_rule += 1
            self._rules.append(parsed)
        return replace(parsed)

    def add_rules(self, rules: Iterable[Rule | Mapping[str, Any]]) -> list[Rule]:
        parsed = [Rule.parse(r) for r in rules]  # all or nothing
        return [self.add_rule(r) for r in parsed]

    def rules(self) -> list[Rule]:
        """Snapshots of the rules, with the uses they have left."""
        with self._lock:
            return [replace(r) for r in self._rules]

    def clear_rules(self) -> None:
        with self._lock:
            self._rules.clear()

    def set_rate(
        self, path_prefix: str, rps: float | None, burst: int = 1, retry_after_form: RetryAfterForm = "seconds"
    ) -> None:
        """Throttle requests under `path_prefix` (a full bucket to begin with); `rps=None` removes the limit."""
        if not path_prefix.startswith("/"):
            raise RuleError("path_prefix must start with /")
        if rps is None:
            with self._lock:
                self._rates.pop(path_prefix, None)
            return
        limit = RateLimit(path_prefix, float(rps), int(burst), retry_after_form)
        with self._lock:
            self._rates[path_prefix] = limit

    def rates(self) -> list[dict[str, Any]]:
        with self._lock:
            return [r.to_json() for r in self._rates.values()]

    def clear_rates(self) -> None:
        with self._lock:
            self._rates.clear()

    def journal(self, *, writes: bool = False) -> list[JournalEntry]:
        """Snapshots of the journal in order; `writes`: only POST/PUT/PATCH/DELETE that reached the upstream."""
        with self._lock:
            entries = [replace(e) for e in self._journal]
        if writes:
            entries = [e for e in entries if e.is_write and e.forwarded]
        return entries

    def clear_journal(self) -> None:
        with self._lock:
            self._journal.clear()

    def reset(self) -> None:
        """No rules, no rate limits, an empty journal."""
        with self._lock:
            self._rules.clear()
            self._rates.clear()
            self._journal.clear()

    def _pick(self, method: str, path: str, resource_type: str | None) -> tuple[Rule | None, float | None, str]:
        """(rule applied, seconds until a rate token is back when throttled, retry-after form) — one lock."""
        with self._lock:
            prefixes = [p for p in self._rates if path.startswith(p)]
            if prefixes:
                limit = self._rates[max(prefixes, key=len)]
                wait = limit.take(time.monotonic())
                if wait is not None:
                    return None, wait, limit.retry_after_form
            for rule in self._rules:
                if rule.remaining != 0 and rule.match.matches(method, path, resource_type):
                    if rule.remaining is not None:
                        rule.remaining -= 1
                    return replace(rule), None, "seconds"
        return None, None, "seconds"

    def _record(self, **fields: Any) -> JournalEntry:
        with self._lock:
            entry = JournalEntry(seq=self._next_seq, monotonic=time.monotonic(), wall=time.time(), **fields)
            self._next_seq += 1
            self._journal.append(entry)
            return entry

    def _update(self, entry: JournalEntry, **fields: Any) -> None:
        with self._lock:
            for name, value in fields.items():
                setattr(entry, name, value)

    # -- connections

    async def _connection(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        self._tasks.add(task)
        conn = h11.Connection(h11.SERVER)
        aborted = False
        try:
            while True:
                received = await self._read_request(conn, reader, writer)
                if received is None:
                    break
                request, body = received
                try:
                    answer = await self._serve(request, body, reader, writer)
                except _ResetConnectionError:
                    _abort(writer)
                    aborted = True
                    break
                except _CloseConnectionError:
                    break
                await _send(conn, writer, request, answer)
                if conn.our_state is not h11.DONE or conn.their_state is not h11.DONE:
                    break
                conn.start_next_cycle()
        except h11.RemoteProtocolError as exc:
            with contextlib.suppress(Exception):
                bad = _Answer(exc.error_status_hint, [(b"content-type", b"text/plain")], str(exc).encode())
                await _send(conn, writer, None, bad)
        except (ConnectionError, asyncio.IncompleteReadError, h11.LocalProtocolError):
            pass
        except asyncio.CancelledError:
            aborted = True
            _abort(writer)
        finally:
            self._tasks.discard(task)
            if not aborted:
                writer.close()
                with contextlib.suppress(Exception):
                    await writer.wait_closed()

    async def _read_request(
        self, conn: h11.Connection, reader: asyncio.StreamReader, writer: asyncio.StreamWriter
    ) -> tuple[h11.Request, bytes] | None:
        request: h11.Request | None = None
        chunks: list[bytes] = []
        while True:
            event = conn.next_event()
            if event is h11.NEED_DATA:
                if conn.they_are_waiting_for_100_continue:  # curl's `Expect: 100-continue` for larger bodies
                    writer.write(conn.send(h11.InformationalResponse(status_code=100, headers=[])) or b"")
                conn.receive_data(await reader.read(65536))
            elif isinstance(event, h11.Request):
                request = event
            elif isinstance(event, h11.Data):
                chunks.append(bytes(event.data))
            elif isinstance(event, h11.EndOfMessage):
                assert request is not None
                return request, b"".join(chunks)
            elif isinstance(event, h11.ConnectionClosed) or event is h11.PAUSED:
                return None

    async def _serve(
        self, request: h11.Request, body: bytes, reader: asyncio.StreamReader, writer: asyncio.StreamWriter
    ) -> _Answer:
        target = request.target.decode("ascii", "replace")
        path, _, query = target.partition("?")
        method = request.method.decode("ascii").upper()
        if path.startswith(CONTROL_PREFIX):
            return self._control(method, path, query, body)
        resource_type, identifier = _sniff(body)
        rule, throttled_for, form = self._pick(method, path, resource_type)
        action = "rate_limit" if throttled_for is not None else (rule.action if rule else "pass")
        entry = self._record(
            method=method,
            path=path,
            query=query,
            action=action,
            rule_id=rule.id if rule else None,
            body_sha256=hashlib.sha256(body).hexdigest() if body else None,
            resource_type=resource_type,
            identifier=identifier,
        )
        try:
            return await self._apply(entry, rule, throttled_for, form, request, target, body, reader, writer)
        except _ResetConnectionError:
            self._update(entry, client_status="reset", done=True)
            raise
        except _ClientGoneError:
            raise
        except _CloseConnectionError:
            self._update(entry, client_status="hang", done=True)
            raise
        except asyncio.CancelledError:
            self._update(entry, client_status=entry.client_status or "reset", done=True)
            raise

    async def _apply(
        self,
        entry: JournalEntry,
        rule: Rule | None,
        throttled_for: float | None,
        form: str,
        request: h11.Request,
        target: str,
        body: bytes,
        reader: asyncio.StreamReader,
        writer: asyncio.StreamWriter,
    ) -> _Answer:
        if throttled_for is not None:
            retry = RetryAfter(cast(RetryAfterForm, form), max(1.0, throttled_for))
            answer = _json_answer(
                429, operation_outcome(429, "rate limit exceeded (fault proxy)"), {"Retry-After": retry.header()}
            )
            self._update(entry, client_status=429, done=True)
            return answer
        if rule is not None and rule.action == "status":
            headers = dict(rule.headers)
            if rule.retry_after is not None:
                ra = rule.retry_after
                headers["Retry-After"] = ra.header() if isinstance(ra, RetryAfter) else ra
            document = rule.body if rule.body is not None else operation_outcome(rule.status, "injected fault")
            self._update(entry, client_status=rule.status, done=True)
            return _json_answer(rule.status, document, headers)
        if rule is not None and rule.action == "reset_before":
            raise _ResetConnectionError
        if rule is not None and rule.action == "delay_before":
            await asyncio.sleep(rule.wait_s)
        answer = await self._forward(entry, request, target, body)
        if rule is not None and entry.forwarded:
            if rule.action == "reset_after_commit":
                raise _ResetConnectionError
            if rule.action == "hang_after_commit":
                await asyncio.sleep(rule.wait_s)
                raise _CloseConnectionError
            if rule.action == "delay_after_commit":
                await asyncio.sleep(rule.wait_s)
                if reader.at_eof() or writer.is_closing():
                    self._update(entry, client_status="gone", done=True)
                    raise _ClientGoneError
        self._update(entry, client_status=answer.status, done=True)
        return answer

    async def _forward(self, entry: JournalEntry, request: h11.Request, target: str, body: bytes) -> _Answer:
        assert self._http is not None
        headers = [
            (name.decode("latin-1"), value.decode("latin-1"))
            for name, value in request.headers  # h11 gives lower-case names
            if name.decode("latin-1") not in _HOP_BY_HOP and name not in (b"content-length", b"expect")
        ]
        upstream = httpx.Request(
            request.method.decode("ascii"), self.upstream_origin + target, headers=headers, content=body
        )
        try:
            response = await self._http.send(upstream, stream=True)
            try:
                raw = b"".join([chunk async for chunk in response.aiter_raw()])
            finally:
                await response.aclose()
        except httpx.HTTPError as exc:
            self._update(entry, upstream_error=f"{type(exc).__name__}: {exc}")
            return _json_answer(502, operation_outcome(502, f"upstream failed: {type(exc).__name__}"), {})
        self._update(entry, forwarded=True, upstream_status=response.status_code)
        out = [
            (name.encode("latin-1"), value.encode("latin-1"))
            for name, value in response.headers.multi_items()
            if name.lower() not in _HOP_BY_HOP and name.lower() != "content-length"
        ]
        length = response.headers.get("content-length")
        if not raw and length is not None:  # HEAD, 304: keep the declared length
            out.append((b"content-length", length.encode("latin-1")))
        return _Answer(response.status_code, out, raw, response.reason_phrase.encode("latin-1"))

    # -- the control API

    def _control(self, method: str, path: str, query: str, body: bytes) -> _Answer:
        what = path[len(CONTROL_PREFIX) :].strip("/")
        try:
            data = json.loads(body) if body.strip() else None
        except ValueError:
            return _json_answer(400, {"error": "the body is not JSON"}, {})
        try:
            if what == "rules":
                if method == "GET":
                    return _json_answer(200, [r.to_json() for r in self.rules()], {})
                if method == "DELETE":
                    self.clear_rules()
                    return _json_answer(200, [], {})
                if method == "POST":
                    if isinstance(data, Mapping) and "rules" in data:
                        data = data["rules"]
                    items: list[Any] = data if isinstance(data, list) else [data]
                    self.add_rules(items)
                    return _json_answer(200, [r.to_json() for r in self.rules()], {})
            elif what == "rate":
                if method == "GET":
                    return _json_answer(200, self.rates(), {})
                if method == "DELETE":
                    self.clear_rates()
                    return _json_answer(200, [], {})
                if method == "POST":
                    for item in data if isinstance(data, list) else [data]:
                        if not isinstance(item, Mapping) or not isinstance(item.get("path_prefix"), str):
                            raise RuleError("a rate limit needs a path_prefix")
                        rps = item.get("rps")
                        if rps is not None and (not isinstance(rps, int | float) or isinstance(rps, bool)):
                            raise RuleError("rps must be a number or null")
                        burst = item.get("burst", 1)
                        if not isinstance(burst, int) or isinstance(burst, bool):
                            raise RuleError("burst must be an integer")
                        form = item.get("retry_after_form", "seconds")
                        self.set_rate(item["path_prefix"], rps, burst, form)
                    return _json_answer(200, self.rates(), {})
            elif what == "journal":
                if method == "GET":
                    writes = parse_qs(query).get("writes", ["0"])[-1] in ("1", "true")
                    return _json_answer(200, [e.to_json() for e in self.journal(writes=writes)], {})
                if method == "DELETE":
                    self.clear_journal()
                    return _json_answer(200, [], {})
            else:
                return _json_answer(404, {"error": f"no control endpoint {path}"}, {})
        except RuleError as exc:
            return _json_answer(400, {"error": str(exc)}, {})
        return _json_answer(405, {"error": f"{method} is not allowed on {path}"}, {})


# MARK: wire helpers


def _json_answer(status: int, document: Any, headers: Mapping[str, str]) -> _Answer:
    body = json.dumps(document).encode()
    media = "application/fhir+json" if isinstance(document, dict) and "resourceType" in document else "application/json"
    out = [(b"content-type", media.encode()), (b"date", _http_date().encode())]
    out += [(k.lower().encode("latin-1"), v.encode("latin-1")) for k, v in headers.items()]
    return _Answer(status, out, body)


def _http_date() -> str:
    return format_datetime(datetime.now(UTC), usegmt=True)


async def _send(conn: h11.Connection, writer: asyncio.StreamWriter, request: h11.Request | None, a: _Answer) -> None:
    headers = list(a.headers)
    no_body = (request is not None and request.method == b"HEAD") or a.status in (204, 304) or a.status < 200
    if not no_body:
        headers.append((b"content-length", str(len(a.body)).encode()))
    wire = [conn.send(h11.Response(status_code=a.status, headers=headers, reason=a.reason)) or b""]
    if a.body and not no_body:
        wire.append(conn.send(h11.Data(data=a.body)) or b"")
    wire.append(conn.send(h11.EndOfMessage()) or b"")
    writer.write(b"".join(wire))
    await writer.drain()


def _abort(writer: asyncio.StreamWriter) -> None:
    """Close with RST (SO_LINGER 0), so the client sees a connection reset rather than a clean close."""
    sock = writer.get_extra_info("socket")
    if sock is not None:
        with contextlib.suppress(OSError):
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    writer.transport.abort()


def serve_forever(upstream: str, host: str = "127.0.0.1", port: int = 8090) -> int:
    """The CLI: run a proxy until interrupted."""
    proxy = FaultProxy(upstream, host, port).start()
    print(f"fault proxy at {proxy.url} -> {proxy.upstream_base} (control: {proxy.origin}{CONTROL_PREFIX})", flush=True)
    try:
        threading.Event().wait()
    except KeyboardInterrupt:
        pass
    finally:
        proxy.stop()
    return 0


__all__ = [
    "ACTIONS",
    "CONTROL_PREFIX",
    "FaultProxy",
    "JournalEntry",
    "Match",
    "RateLimit",
    "RetryAfter",
    "Rule",
    "RuleError",
    "serve_forever",
]

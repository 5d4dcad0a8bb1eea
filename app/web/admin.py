"""Admin pages for integration engineers: each site's effective capability matrix and its write queue.

    GET  /admin/login                              the sign-in form (name and password of a named account)
    POST /admin/login                              sign in: a new session (cookie) with its own CSRF token
    POST /admin/logout                             sign out (CSRF)
    GET  /admin/                                   sites: vendor, file and effective write mode (and who degraded
                                                   it, when, why), queue depth by state
    GET  /admin/sites/{key}                        the effective matrix (table and JSON), overrides with who and
                                                   why, history, queue depth, last errors, open writes, and what
                                                   the EHR answered to sign-ins and discovery (OAuth `error` and
                                                   `error_description`: `launch.denied`, `smart.error`)
    GET  /admin/sites/{key}/intents/{id}           one write and its attempts
    POST /admin/sites/{key}/intents/{id}/retry     a failed or unknown write, again (reason required; audited)
    POST /admin/sites/{key}/intents/{id}/cancel    withdraw a write that is not confirmed (reason required; audited)
    POST /admin/sites/{key}/capabilities           set or clear an override (path, JSON value, reason; audited):
                                                   how a degraded site is switched back

Named accounts only (`glucobridge admin add-user NAME`; `bff/admin/`): the account's name is the actor recorded
in the audit trail, and no account may carry a reserved system actor's name (`bff/actors.py`). Sign-in follows
the lockout rules of `bff.admin.accounts` (20 wrong passwords lock an account for 15 minutes; a client with too
many failures waits; failures are audited counted, a lockout once). The session lives in the store; the
browser holds a random token in a cookie (HttpOnly, SameSite=Strict, Path=/admin, Secure over HTTPS). Every POST
carries the session's CSRF token (random, made at sign-in). The pages are never framed, and show no patient
identifiers.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, TypeVar
from urllib.parse import quote

import anyio
from litestar import Request, Response, Router, get, post
from litestar.exceptions import HTTPException
from litestar.response import Redirect, Template
from sqlalchemy import or_, select

from app.web.common import AppContext, client_of, context_of, headers_for
from app.web.security import over_https
from bff.actors import SystemActor
from bff.admin import ActiveSession, SignIn
from bff.audit import NEWEST_FIRST, audit
from bff.capabilities import CapabilityError, as_dict, lookup
from bff.outbox import queue
from bff.store.models import AuditEvent, SiteOverride, WriteAttempt, WriteIntent
from engine import ENGINE_VERSION

T = TypeVar("T")
COOKIE = "gb_admin"
ATTENTION = ("failed", "unknown")
WAITING = ("awaiting_signoff", "deferred", "queued", "sending")
RETRYABLE = frozenset({"failed", "unknown"})
CANCELLABLE = frozenset({"queued", "deferred", "failed", "unknown", "awaiting_signoff"})
HISTORY_EVENTS = ("site.degraded", "outbox.retry", "outbox.cancel")
SMART_EVENTS = ("smart.error", "launch.denied")


def admin_headers() -> dict[str, str]:
    """Never framed: these pages are not part of any EHR."""
    return {**headers_for(()), "X-Frame-Options": "DENY"}


def _page(name: str, status: int = 200, headers: Mapping[str, str] | None = None, **context: Any) -> Template:
    context.setdefault("engine_version", ENGINE_VERSION)
    return Template(name, context=context, status_code=status, headers={**admin_headers(), **(headers or {})})


async def _thread(fn: Callable[[], T]) -> T:
    return await anyio.to_thread.run_sync(fn)


# MARK: signing in


async def require_admin(request: Request[Any, Any, Any]) -> Response[Any] | None:
    """before_request of /admin (but the sign-in form): the session behind the cookie, else to the sign-in form
    (GET) or 401 (POST)."""
    ctx = context_of(request)
    token = request.cookies.get(COOKIE)
    active = await _thread(lambda: ctx.admin_sessions.resolve(token)) if token else None
    if active is None:
        if request.method == "GET":
            return Redirect(f"/admin/login?next={quote(request.url.path)}", status_code=303, headers=admin_headers())
        return _page("errors/message.html", 401, title="Sign in", kind="error",
                     message="Your admin session has ended: sign in again.")  # fmt: skip
    request.state.admin = active
    return None


def _session(request: Request[Any, Any, Any]) -> ActiveSession:
    active: ActiveSession = request.state.admin
    return active


def _user(request: Request[Any, Any, Any]) -> str:
    return _session(request).user


def _next(target: str) -> str:
    """Where to go after signing in: an /admin page of this app, nothing else (no open redirect)."""
    ok = target.startswith("/admin/") and "//" not in target and "\\" not in target and target.isprintable()
    return target if ok else "/admin/"


def _login_page(status: int = 200, *, target: str = "/admin/", account: str = "", error: str = "",
                no_accounts: bool = False, headers: Mapping[str, str] | None = None) -> Template:  # fmt: skip
    return _page("admin/login.html", status, headers=headers, title="Sign in", user=None, next=_next(target),
                 account=account, error=error, no_accounts=no_accounts)  # fmt: skip


@get("/login")
async def login_form(request: Request[Any, Any, Any]) -> Response[Any]:
    ctx = context_of(request)
    next_ = request.query_params.get("next") or "/admin/"
    token = request.cookies.get(COOKIE)
    if token and await _thread(lambda: ctx.admin_sessions.resolve(token)) is not None:
        return Redirect(_next(next_), status_code=303, headers=admin_headers())
    no_accounts = not await _thread(ctx.admin_accounts.any_enabled)
    return _login_page(target=next_, no_accounts=no_accounts)


FAILED = ("The name or the password is wrong, or the account is disabled or locked for a while after too many "
          "wrong passwords.")  # fmt: skip


@post("/login")
async def login(request: Request[Any, Any, Any]) -> Response[Any]:
    ctx = context_of(request)
    form = await request.form()
    name, password, target = (str(form.get(k) or "") for k in ("name", "password", "next"))
    client = client_of(request)
    result = await anyio.to_thread.run_sync(lambda: ctx.admin_accounts.sign_in(name, password, client),
                                            limiter=ctx.password_work)  # fmt: skip
    if result.outcome is SignIn.THROTTLED:
        return _login_page(429, target=target, account=name, headers={"Retry-After": str(result.retry_after_s)},
                           error=f"Too many failed sign-ins from your address: try again in "
                                 f"{(result.retry_after_s + 59) // 60} min.")  # fmt: skip
    if result.outcome is not SignIn.OK or result.user_id is None:
        return _login_page(401, target=target, account=name, error=FAILED)
    user_id, old = result.user_id, request.cookies.get(COOKIE)

    def open_session() -> str:
        ctx.admin_sessions.close(old)  # whatever session the browser had ends: a new one, a new CSRF token
        return ctx.admin_sessions.open(user_id).token

    token = await _thread(open_session)
    response = Redirect(_next(target), status_code=303, headers=admin_headers())
    response.set_cookie(COOKIE, token, path="/admin", httponly=True, samesite="strict",
                        secure=over_https(request.scope, ctx.settings.trusted_proxies))  # fmt: skip
    return response


@post("/logout")
async def logout(request: Request[Any, Any, Any]) -> Response[Any]:
    ctx = context_of(request)
    await _form(request, "admin/logout", None)
    token = request.cookies.get(COOKIE)
    await _thread(lambda: ctx.admin_sessions.close(token))
    response = Redirect("/admin/login", status_code=303, headers=admin_headers())
    response.delete_cookie(COOKIE, path="/admin")
    return response


# MARK: what the pages show


@dataclass(frozen=True)
class Degradation:
    at: datetime
    reason: str


@dataclass
class SiteRow:
    key: str
    vendor: str = ""
    file_mode: str = ""
    mode: str = ""
    channel: str = ""
    degraded: Degradation | None = None
    counts: dict[str, int] = field(default_factory=dict)
    error: str | None = None

    @property
    def open(self) -> int:
        return sum(self.counts.get(s, 0) for s in ("awaiting_signoff", "deferred", "queued", "sending", "unknown"))


@dataclass(frozen=True)
class IntentRow:
    id: int
    kind: str
    state: str
    attempts: int
    updated_at: datetime
    summary: str
    last_error: str | None
    signoff_id: int | None

    @property
    def retryable(self) -> bool:
        return self.state in RETRYABLE

    @property
    def cancellable(self) -> bool:
        return self.state in CANCELLABLE


def _overrides(ctx: AppContext, site: str) -> list[SiteOverride]:
    with ctx.store.transaction() as session:
        query = select(SiteOverride).where(SiteOverride.site_key == site).order_by(SiteOverride.path)
        return list(session.scalars(query))


def _site_row(ctx: AppContext, site: str) -> SiteRow:
    row = SiteRow(site, counts=queue.counts_by_state(ctx.store, site))
    try:
        caps = ctx.capabilities.get(site)
        file_mode = lookup(ctx.capabilities.file_data(site), "write.mode")
    except CapabilityError as exc:
        row.error = str(exc)
        return row
    row.vendor, row.mode, row.channel = caps.vendor.value, caps.write.mode.value, caps.write.channel.value
    row.file_mode = str(file_mode or "read_only")
    for override in _overrides(ctx, site):
        if override.path == "write.mode" and override.who == SystemActor.OUTBOX_WORKER:
            row.degraded = Degradation(override.set_at, override.reason)
    return row


def _intents(ctx: AppContext, site: str, states: tuple[str, ...], newest_first: bool, limit: int) -> list[IntentRow]:
    order = WriteIntent.updated_at.desc() if newest_first else WriteIntent.id.asc()
    with ctx.store.transaction() as session:
        rows = session.scalars(
            select(WriteIntent).where(WriteIntent.site_key == site, WriteIntent.state.in_(states))
            .order_by(order).limit(limit)
        )  # fmt: skip
        return [
            IntentRow(r.id, r.kind, r.state, r.attempts, r.updated_at, str(r.payload.get("summary", "deferred plan")),
                      r.last_error, r.signoff_id)
            for r in rows
        ]  # fmt: skip


def _history(ctx: AppContext, site: str) -> list[AuditEvent]:
    """Matrix changes (CapabilityService.history) and the queue's audited events, newest first."""
    events = ctx.capabilities.history(site, limit=100)
    with ctx.store.transaction() as session:
        events += list(
            session.scalars(
                select(AuditEvent)
                .where(AuditEvent.site_key == site, or_(*(AuditEvent.event == e for e in HISTORY_EVENTS)))
                .order_by(AuditEvent.id.desc())
                .limit(100)
            )
        )
    return sorted(events, key=lambda e: e.id, reverse=True)[:100]


@dataclass(frozen=True)
class SmartErrorRow:
    """What the EHR answered to a sign-in or a discovery, as audited (no patient identifiers in it)."""

    at: datetime
    last_at: datetime | None
    count: int
    event: str
    where: str
    error: str
    description: str


def _smart_errors(ctx: AppContext, site: str, limit: int = 20) -> list[SmartErrorRow]:
    """The site's latest OAuth and discovery errors (`smart.error`, `launch.denied`), newest first."""
    with ctx.store.transaction() as session:
        rows = session.scalars(
            select(AuditEvent)
            .where(AuditEvent.site_key == site, or_(*(AuditEvent.event == e for e in SMART_EVENTS)))
            .order_by(*NEWEST_FIRST)
            .limit(limit)
        )
        out = []
        for row in rows:
            d = row.detail or {}
            where = str(d.get("where") or ("authorize" if row.event == "launch.denied" else ""))
            description = d.get("error_description") or d.get("message") or ""
            out.append(SmartErrorRow(row.at, row.last_at, row.count or 1, row.event, where,
                                     str(d.get("error") or d.get("kind") or ""), str(description)))  # fmt: skip
        return out


def _flatten(data: Mapping[str, Any], prefix: str = "") -> list[tuple[str, Any]]:
    out: list[tuple[str, Any]] = []
    for key, value in data.items():
        path = f"{prefix}{key}"
        if isinstance(value, Mapping) and value:
            out += _flatten(value, path + ".")
        else:
            out.append((path, value))
    return out


def _detail(ctx: AppContext, site: str) -> dict[str, Any]:
    row = _site_row(ctx, site)
    overrides = _overrides(ctx, site)
    matrix: list[tuple[str, str, bool]] = []
    matrix_json = ""
    if row.error is None:
        data = as_dict(ctx.capabilities.get(site))
        paths = [o.path for o in overrides]
        matrix = [
            (path, json.dumps(value), any(path == o or path.startswith(o + ".") for o in paths))
            for path, value in _flatten(data)
        ]
        matrix_json = json.dumps(data, indent=2)
    return {
        "site": row,
        "overrides": [(o, json.dumps(o.value)) for o in overrides],
        "matrix": matrix,
        "matrix_json": matrix_json,
        "history": _history(ctx, site),
        "smart_errors": _smart_errors(ctx, site),
        "attention": _intents(ctx, site, ATTENTION, newest_first=True, limit=20),
        "waiting": _intents(ctx, site, WAITING, newest_first=False, limit=50),
        "states": queue.STATES,
    }


def _known(ctx: AppContext, key: str) -> None:
    if key not in ctx.capabilities.sites():
        raise HTTPException(status_code=404, detail=f"no site {key!r}")


def _utc(moment: datetime | None) -> str:
    if moment is None:
        return ""
    aware = moment if moment.tzinfo else moment.replace(tzinfo=UTC)
    return aware.astimezone(UTC).strftime("%Y-%m-%d %H:%M:%S UTC")


def _site_page(
    request: Request[Any, Any, Any], key: str, detail: dict[str, Any], *, notice: str = "", error: str = "",
    status: int = 200, form: Mapping[str, str] | None = None,
) -> Template:  # fmt: skip
    return _page("admin/site.html", status, user=_user(request), key=key, csrf=_session(request).csrf_token,
                 notice=notice, error=error, form=form or {}, utc=_utc, **detail)  # fmt: skip


# MARK: pages


@get("/")
async def admin_index(request: Request[Any, Any, Any]) -> Template:
    ctx = context_of(request)
    rows = await _thread(lambda: [_site_row(ctx, site) for site in ctx.capabilities.sites()])
    return _page("admin/index.html", user=_user(request), csrf=_session(request).csrf_token, sites=rows,
                 states=queue.STATES, utc=_utc)  # fmt: skip


DONE = {
    "retry": "Write {id} is queued again.",
    "cancel": "Write {id} is cancelled.",
    "set": "Override saved: it applies from the worker's next pass.",
    "clear": "Override cleared: the site's file applies again.",
}


@get("/sites/{key:str}")
async def admin_site(request: Request[Any, Any, Any], key: str, done: str = "", intent: int = 0) -> Template:
    ctx = context_of(request)
    _known(ctx, key)
    detail = await _thread(lambda: _detail(ctx, key))
    notice = DONE.get(done, "").format(id=intent)
    return _site_page(request, key, detail, notice=notice)


@get("/sites/{key:str}/intents/{intent_id:int}")
async def admin_intent(request: Request[Any, Any, Any], key: str, intent_id: int) -> Template:
    ctx = context_of(request)
    _known(ctx, key)

    def load() -> tuple[IntentRow, list[WriteAttempt]] | None:
        with ctx.store.transaction() as session:
            r = session.get(WriteIntent, intent_id)
            if r is None or r.site_key != key:
                return None
            row = IntentRow(r.id, r.kind, r.state, r.attempts, r.updated_at,
                            str(r.payload.get("summary", "deferred plan")), r.last_error, r.signoff_id)  # fmt: skip
        return row, queue.attempts_of(ctx.store, intent_id)

    found = await _thread(load)
    if found is None:
        raise HTTPException(status_code=404, detail=f"no write {intent_id} at site {key}")
    return _page("admin/intent.html", user=_user(request), csrf=_session(request).csrf_token, key=key,
                 intent=found[0], attempts=found[1], utc=_utc)  # fmt: skip


# MARK: actions


async def _form(request: Request[Any, Any, Any], where: str, key: str | None) -> dict[str, str]:
    """The posted form, after its CSRF token was checked against the session's (403, audited)."""
    ctx = context_of(request)
    form = await request.form()
    fields = {k: v.strip() for k, v in form.items() if isinstance(v, str)}
    user = _user(request)
    if not _session(request).csrf_ok(fields.get("csrf_token")):
        client = client_of(request)
        await _thread(lambda: audit(ctx.store, "csrf.refused", outcome="refused", site=key, actor=user, path=where,
                                    client=client))  # fmt: skip
        raise HTTPException(status_code=403, detail="the form is missing its CSRF token: reload the page")
    return fields


async def _by_person(request: Request[Any, Any, Any], key: str, intent_id: int, action: str) -> Response[Any]:
    ctx = context_of(request)
    _known(ctx, key)
    fields = await _form(request, f"admin/{action}", key)
    reason = fields.get("reason", "")
    if not reason:
        detail = await _thread(lambda: _detail(ctx, key))
        return _site_page(request, key, detail, status=400, error=f"A {action} needs a reason (it is audited).")
    user = _user(request)
    act = queue.retry_by_person if action == "retry" else queue.cancel_by_person

    def run() -> str | None:
        with ctx.store.transaction() as session:
            intent = session.get(WriteIntent, intent_id)
            if intent is None or intent.site_key != key:
                return "missing"
        try:
            act(ctx.store, intent_id, datetime.now(UTC), who=user, reason=reason)
        except queue.TransitionError as exc:
            return str(exc)
        return None

    problem = await _thread(run)
    if problem == "missing":
        raise HTTPException(status_code=404, detail=f"no write {intent_id} at site {key}")
    if problem is not None:
        detail = await _thread(lambda: _detail(ctx, key))
        return _site_page(request, key, detail, status=409, error=problem)
    return Redirect(f"/admin/sites/{key}?done={action}&intent={intent_id}", status_code=303, headers=admin_headers())


@post("/sites/{key:str}/intents/{intent_id:int}/retry")
async def admin_retry(request: Request[Any, Any, Any], key: str, intent_id: int) -> Response[Any]:
    return await _by_person(request, key, intent_id, "retry")


@post("/sites/{key:str}/intents/{intent_id:int}/cancel")
async def admin_cancel(request: Request[Any, Any, Any], key: str, intent_id: int) -> Response[Any]:
    return await _by_person(request, key, intent_id, "cancel")


def parse_value(text: str) -> Any:
    """A value as JSON (`"full"`, `5`, `true`, `["a"]`), else the plain string (as `glucobridge site set`)."""
    try:
        return json.loads(text)
    except ValueError:
        return text


@post("/sites/{key:str}/capabilities")
async def admin_capability(request: Request[Any, Any, Any], key: str) -> Response[Any]:
    ctx = context_of(request)
    _known(ctx, key)
    fields = await _form(request, "admin/capabilities", key)
    action, path, reason = fields.get("action", "set"), fields.get("path", ""), fields.get("reason", "")
    user = _user(request)
    problem = ""
    if action not in ("set", "clear"):
        problem = "action must be set or clear"
    elif not path or not reason:
        problem = f"A {action} needs a path (such as write.mode) and a reason (it is audited)."
    elif action == "set" and not fields.get("value"):
        problem = 'A set needs a value, as JSON (for example "full") or a plain string.'

    def run() -> str:
        try:
            if action == "set":
                ctx.capabilities.set(key, path, parse_value(fields["value"]), who=user, reason=reason)
            else:
                ctx.capabilities.clear(key, path, who=user, reason=reason)
        except CapabilityError as exc:
            return str(exc)
        return ""

    problem = problem or await _thread(run)
    if problem:
        detail = await _thread(lambda: _detail(ctx, key))
        return _site_page(request, key, detail, status=400, error=problem, form=fields)
    return Redirect(f"/admin/sites/{key}?done={action}", status_code=303, headers=admin_headers())


router = Router(
    path="/admin",
    route_handlers=[admin_index, admin_site, admin_intent, admin_retry, admin_cancel, admin_capability, logout],
    before_request=require_admin,
)
sign_in = Router(path="/admin", route_handlers=[login_form, login])

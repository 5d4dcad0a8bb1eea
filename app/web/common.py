"""What the web modules share: the app's context, response headers, message pages, the launch check."""

from __future__ import annotations

import hashlib
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any, NoReturn

import anyio
import httpx
import jinja2
import orjson
import redis
from litestar import Request
from litestar.exceptions import HTTPException
from litestar.plugins.htmx import HTMXRequest
from litestar.response import Template
from sqlalchemy.orm import Session

from app.web.charts import ChartCache, ExpiringLru
from app.web.security import SECURITY_HEADERS, client_address, content_security_policy, csrf_ok
from bff.admin import AdminAccounts, AdminSessions
from bff.audit import audit
from bff.capabilities import CapabilityError, CapabilityService
from bff.clinical import PatientOutcomesView
from bff.jobs.context import token_cipher
from bff.jobs.launch_read import LaunchReads
from bff.jobs.queue import JobQueue
from bff.outbox.worker import OutboxWorker
from bff.settings import Settings
from bff.smart import (
    BackendAuth,
    LaunchContext,
    LaunchNotFoundError,
    SiteBackends,
    SmartClient,
    TokenCipher,
    TokenCipherError,
)
from bff.store.db import Store
from bff.writeback import WritebackService
from engine import ENGINE_VERSION

PERIODS = (14, 30, 90)

Banner = dict[str, str]


class BannerCache:
    """The patient banner (name, birth date, sex, MRN) read from the EHR, per launch handle, so that the pages of
    one launch read it once: at most `max_entries` launches, each for `ttl_s` seconds (least recently used out
    first). PHI: nothing keeps it longer; the next page after that reads it again (a banner that could not be
    read, None, is kept as long, so an EHR that refuses is not asked on every page).

    With `shared` (Redis, when the app runs several processes) a banner one process read is found by the others for
    what is left of its `ttl_s`, instead of each process reading it from the EHR again (`SharedBanners`)."""

    def __init__(self, *, ttl_s: float = 300.0, max_entries: int = 1024,
                 clock: Callable[[], float] = time.monotonic, shared: SharedBanners | None = None) -> None:  # fmt: skip
        self._held: ExpiringLru[Banner | None] = ExpiringLru(ttl=ttl_s, max_entries=max_entries, clock=clock)
        self.ttl_s = ttl_s
        self.shared = shared

    def __len__(self) -> int:
        return len(self._held)

    def cached(self, handle: str) -> Banner | None:
        """The banner if one is held and fresh, else None (nothing is read)."""
        return self._held.lookup(handle)[1]

    async def get(self, handle: str, read: Callable[[], Awaitable[Banner | None]]) -> Banner | None:
        """The launch's banner: the held one while fresh, else the shared one while fresh, else `read()` (and held,
        and shared)."""
        found, banner = self._held.lookup(handle)
        if found:
            return banner
        shared = self.shared
        if shared is not None:
            left, banner = await anyio.to_thread.run_sync(shared.get, handle)
            if left > 0:
                self._held.put(handle, banner, ttl=left)
                return banner
        banner = await read()
        self._held.put(handle, banner)
        if shared is not None:
            await anyio.to_thread.run_sync(shared.put, handle, banner, self.ttl_s)
        return banner


class SharedBanners:
    """The banner cache's level shared by the app's processes, in Redis. A banner is PHI: it is sealed with the
    token cipher (never in Redis in the clear), keyed by the launch handle's SHA-256 (the handle is not in Redis
    either), and expires with Redis's own TTL. Redis failing is a miss: the banner is then read from the EHR."""

    def __init__(self, client: redis.Redis, cipher: TokenCipher, *, prefix: str = "glucobridge:banner:") -> None:
        self.client, self.cipher, self.prefix = client, cipher, prefix

    @classmethod
    def from_url(cls, url: str, cipher: TokenCipher) -> SharedBanners:
        return cls(redis.Redis.from_url(url, socket_timeout=1.0, socket_connect_timeout=1.0), cipher)

    def _key(self, handle: str) -> str:
        return self.prefix + hashlib.sha256(handle.encode()).hexdigest()

    def get(self, handle: str) -> tuple[float, Banner | None]:
        """(seconds left, the banner) of a shared entry; (0, None) when there is none or it cannot be read."""
        try:
            key = self._key(handle)
            with self.client.pipeline(transaction=False) as pipe:
                pipe.get(key)
                pipe.pttl(key)
                raw, left_ms = pipe.execute()
            if raw is None or left_ms is None or left_ms <= 0:
                return 0.0, None
            value = orjson.loads(self.cipher.decrypt(raw.decode()))
        except (redis.RedisError, TokenCipherError, ValueError):
            return 0.0, None
        if value is not None and not (isinstance(value, dict) and all(isinstance(v, str) for v in value.values())):
            return 0.0, None
        return left_ms / 1000.0, value

    def put(self, handle: str, banner: Banner | None, ttl_s: float) -> None:
        try:
            self.client.set(self._key(handle), self.cipher.encrypt(orjson.dumps(banner).decode()),
                            px=max(1, int(ttl_s * 1000)))  # fmt: skip
        except redis.RedisError:
            return


def banner_cache(settings: Settings) -> BannerCache:
    """The app process's banner cache; with Redis (`REDIS_URL`), over a level the app's processes share."""
    if not settings.redis_url:
        return BannerCache()
    return BannerCache(shared=SharedBanners.from_url(settings.redis_url, token_cipher(settings)))


@dataclass
class AppContext:
    """What every handler needs, built once by create_app (explicit seams for tests)."""

    settings: Settings
    store: Store
    smart: SmartClient
    http: httpx.AsyncClient
    backend: BackendAuth | None
    view: PatientOutcomesView
    capabilities: CapabilityService
    writeback: WritebackService
    secret: bytes
    any_site_frame_ancestors: tuple[str, ...]  # every configured EHR origin, for pages outside a known launch
    banners: BannerCache
    admin_accounts: AdminAccounts
    admin_sessions: AdminSessions
    password_work: anyio.CapacityLimiter | None = None  # password checks at once (scrypt: CPU and 16 MiB each)
    jobs: JobQueue | None = None  # where launch-time EHR reads are queued (bff.jobs)
    reads: LaunchReads | None = None  # what the view shows of them
    handle_cipher: TokenCipher | None = None  # seals a launch handle into a read job
    backends: SiteBackends | None = None  # Backend Services per site (their keys are in the JWKS too)
    charts: ChartCache | None = None  # the view's charts by outcome digest (app.web.charts)
    outbox: OutboxWorker | None = None  # this process's one worker for the clinician's in-context send
    templates: jinja2.Environment | None = None  # the app's Jinja environment (set when Litestar builds it)


def context_of(request: Request[Any, Any, Any]) -> AppContext:
    context: AppContext = request.app.state.ctx
    return context


def client_of(request: Request[Any, Any, Any]) -> str:
    """The client's IP address (behind the proxies the settings trust)."""
    return client_address(request.scope, context_of(request).settings.trusted_proxies)


def headers_for(frame_ancestors: tuple[str, ...]) -> dict[str, str]:
    """Security headers; `frame_ancestors` () means the page may not be framed at all."""
    return {**SECURITY_HEADERS, "Content-Security-Policy": content_security_policy(frame_ancestors)}


def wants_fragment(request: Request[Any, Any, Any]) -> bool:
    """One place decides fragment or full page (htmx 4 will say it with HX-Request-Type)."""
    if not isinstance(request, HTMXRequest):
        return False
    details = request.htmx
    return bool(details) and not details.boosted and not details.history_restore_request


def message(
    ctx: AppContext,
    status: int,
    title: str,
    text: str,
    kind: str,
    frame_ancestors: tuple[str, ...] | None = None,
    *,
    fragment: bool = False,
    headers: dict[str, str] | None = None,
) -> Template:
    """A message page (or, for htmx, the message alone). Where the launch (and so its site) is unknown, any
    configured EHR may frame it, so the clinician sees the reason instead of a blank frame."""
    ancestors = ctx.any_site_frame_ancestors if frame_ancestors is None else frame_ancestors
    return Template(
        "errors/_message.html" if fragment else "errors/message.html",
        context={"title": title, "message": text, "kind": kind, "engine_version": ENGINE_VERSION},
        status_code=status,
        headers={**headers_for(ancestors), **(headers or {})},
    )


async def launch_for(ctx: AppContext, handle: str, patient: str | None, *, site_filter: bool = True) -> LaunchContext:
    """The launch behind a handle; a patient other than the launch's is refused and audited, and so is one the site's
    filter hides. `site_filter=False` only where the caller checks the filter itself, in the transaction that reads
    what it shows (`app.web.app.summary_context`: `shows_patient` and `refuse_filtered`)."""
    try:
        found = await ctx.smart.launch(handle)
    except LaunchNotFoundError:
        raise HTTPException(status_code=404, detail="this launch has ended: open the app again from the EHR") from None
    if patient is not None and patient != found.patient:
        await anyio.to_thread.run_sync(
            lambda: audit(ctx.store, "patient.mismatch", outcome="refused", site=found.site_key, actor=found.fhir_user,
                          handle=handle, launch_patient=found.patient, requested_patient=patient)
        )  # fmt: skip
        raise HTTPException(status_code=403, detail="this launch is for another patient")
    if (
        found.patient is not None
        and site_filter
        and not await anyio.to_thread.run_sync(lambda: shows_patient(ctx, found))
    ):
        await refuse_filtered(ctx, handle, found)
    return found


def shows_patient(ctx: AppContext, found: LaunchContext, session: Session | None = None) -> bool:
    """The site's `[filter]` (capability matrix): whether the app may show the launch's patient or department there
    (its overrides read in the caller's transaction when it gives its session)."""
    try:
        caps = ctx.capabilities.get(found.site_key, session)
    except CapabilityError:
        return True  # a site without a usable matrix restricts nothing here (its writes are refused elsewhere)
    department = found.context.get("department")
    return caps.shows_patient(str(found.patient), department if isinstance(department, str) else None)


async def refuse_filtered(ctx: AppContext, handle: str, found: LaunchContext) -> NoReturn:
    """A patient the site's filter hides: audited, and 403."""
    await anyio.to_thread.run_sync(
        lambda: audit(ctx.store, "patient.filtered", outcome="refused", site=found.site_key, actor=found.fhir_user,
                      handle=handle)
    )  # fmt: skip
    raise HTTPException(
        status_code=403,
        detail="glucobridge is not enabled for this patient or department at this site (the site's filter)",
    )


def check_days(days: int) -> int:
    if days not in PERIODS:
        raise HTTPException(status_code=400, detail=f"days must be one of {', '.join(map(str, PERIODS))}")
    return days


def check_unit(unit: str | None) -> str | None:
    """The display unit asked for in the URL (per tab, so it holds across workers); None: the patient's own."""
    if unit in (None, ""):
        return None
    if unit not in ("mg/dL", "mmol/L"):
        raise HTTPException(status_code=400, detail="unit must be mg/dL or mmol/L")
    return unit


async def require_csrf(ctx: AppContext, request: Request[Any, Any, Any], form: Any, handle: str, site: str,
                       path: str) -> None:  # fmt: skip
    """A launch's state-changing request carries its CSRF token (header for htmx, form field otherwise); a
    missing or wrong one is audited and answered 403."""
    presented = request.headers.get("x-csrf-token") or form.get("csrf_token")
    if not csrf_ok(ctx.secret, handle, presented if isinstance(presented, str) else None):
        await anyio.to_thread.run_sync(
            lambda: audit(ctx.store, "csrf.refused", outcome="refused", site=site, handle=handle, path=path)
        )
        raise HTTPException(status_code=403, detail="the form is missing its CSRF token: reload the page")

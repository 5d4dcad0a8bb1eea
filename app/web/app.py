"""The clinician app: SMART launch through the BFF, then the patient's AGP/TIR view.

    GET  /launch?iss=…&launch=…          EHR launch: checks iss, redirects (same frame) to the EHR's authorize, or
                                         posts it there (a form) where the EHR offers POST (bff.smart.launch)
    GET  /standalone?iss=…               standalone launch (the EHR asks for the patient)
    GET  /callback?code=…&state=…        the code is redeemed server-side; → /v/{handle}/patients/{id}/
    GET  /v/{handle}/patients/{id}/      the view (?days=14|30|90[&page=n]); `…/summary` is its htmx partial,
                                         `…/daily?days=…&page=n` a page of its daily profiles (page 1: the latest);
                                         opening it asks for a launch-time read of the patient's CGM from the EHR,
                                         which `…/ehr-read` follows (app/web/freshness.py)
    POST /v/{handle}/patients/{id}/display-unit   (CSRF)
    GET  /api/v/{handle}/patients/{id}/agp        the AGP figure as JSON (data API, apart from the pages)
    GET  /.well-known/jwks.json          the app's public keys (SMART Backend Services)
    …/chart/…                            send to chart: review, sign, follow (app/web/writeback.py)
    /admin/…                             sites and the write queue, for integration engineers (app/web/admin.py)

Every patient-scoped request is checked against its launch: another patient is a 403, audited. Tokens stay in
the BFF; the browser holds only the launch handle in the URL (one per tab), so two patients in two tabs never mix
and nothing depends on cookies. Refused launches and callbacks (anybody can send them) are audited counted per
client and minute (`bff.audit.audit_counted`), so a flood cannot fill the audit table. What the EHR said when it
refused (its OAuth `error` and `error_description`, a discovery problem) is audited under the site
(`launch.denied`, `smart.error`) and shown on /admin; the clinician gets a plain message.

Every response, whatever produced it, carries the security headers (`app.web.security.security_headers`, the
app's before_send hook; HSTS over HTTPS). Row ids in paths are positive 64-bit integers: any other number names no
row and is a 404 (`ids_in_range`, an app-wide guard). An unexpected error is logged without PHI (its type, the
route's template and the code's frames; not its message, not the URL) and answered with a 500 page.
"""

from __future__ import annotations

import functools
import hashlib
import json
import logging
import os
import traceback
from collections.abc import Callable, Mapping
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Annotated, Any
from urllib.parse import quote

import anyio
import httpx
import jinja2
import orjson
from litestar import Litestar, MediaType, Request, Response, get, post
from litestar.connection import ASGIConnection
from litestar.datastructures import State
from litestar.exceptions import HTTPException, NotFoundException
from litestar.handlers import BaseRouteHandler
from litestar.params import Parameter
from litestar.plugins.htmx import HTMXPlugin, HTMXRequest
from litestar.plugins.jinja import JinjaTemplateEngine
from litestar.response import Redirect, Template
from litestar.static_files import create_static_files_router
from litestar.template.config import TemplateConfig
from markupsafe import Markup

from app.web import admin, freshness, writeback
from app.web.charts import AUTO_UNIT, chart_cache, charts_key, etag, figures_key, matches
from app.web.common import (
    AppContext,
    banner_cache,
    check_days,
    check_unit,
    client_of,
    context_of,
    headers_for,
    launch_for,
    message,
    refuse_filtered,
    require_csrf,
    shows_patient,
    wants_fragment,
)
from app.web.presenters import (
    SummaryView,
    ZoneView,
    age_text,
    charts_of,
    display_unit,
    last_reading,
    page_entry,
    summary_of_entry,
    summary_view,
)
from app.web.security import csrf_token, security_headers
from bff import bootstrap
from bff.admin import AdminAccounts, AdminSessions, LockoutPolicy
from bff.audit import audit, audit_counted
from bff.broker.broker import Broker
from bff.clinical import PatientOutcomesView, ShownOutcome
from bff.ehr_read import patient_banner
from bff.jobs.context import token_cipher
from bff.jobs.launch_read import LaunchReads, ReadStatus, queue_read
from bff.jobs.queue import JobQueue
from bff.jobs.requests import recompute_request
from bff.settings import ROOT, Settings, get_settings
from bff.smart import (
    AuthorizeRedirect,
    DiscoveryError,
    IssNotAllowedError,
    LaunchContext,
    LaunchRequestError,
    SmartClient,
    SmartError,
    SmartSettings,
    StateError,
    TokenEndpointError,
    create_backend_auth,
    create_site_backends,
)
from bff.store.db import Store
from bff.store.zones import Zone
from engine import ENGINE_VERSION

log = logging.getLogger("glucobridge.app")
TEMPLATES = ROOT / "templates"
STATIC = ROOT / "static"


def _static_url(path: str) -> str:
    """The file's URL with a version from its content (cache-busting), hashed once per change of the file (plotly.js
    is 4.8 MB: hashing it for every page cost more than the rest of the view)."""
    file = STATIC / path
    try:
        info = file.stat()
    except OSError:
        return f"/static/{path}?v=missing"
    return f"/static/{path}?v={_static_version(file, info.st_mtime_ns, info.st_size)}"


@functools.lru_cache(maxsize=64)
def _static_version(file: Path, mtime_ns: int, size: int) -> str:
    del mtime_ns, size  # part of the cache key: a rebuilt file is hashed again
    return hashlib.sha256(file.read_bytes()).hexdigest()[:10] if file.is_file() else "missing"


def _tojson(value: Any, **kwargs: Any) -> str:
    """Jinja's `tojson` serialiser: orjson (several times faster for the charts' figures; NaN as null, which the
    browser's JSON.parse accepts where json's NaN fails), the standard library for what orjson cannot write."""
    try:
        return orjson.dumps(value).decode()
    except TypeError:
        return json.dumps(value, **kwargs)


# MARK: launch


@get("/launch")
async def launch(request: Request[Any, Any, Any], iss: str = "", launch: str = "") -> Response[Any]:
    return await _begin(request, iss, launch or None, standalone=False)


@get("/standalone")
async def standalone(request: Request[Any, Any, Any], iss: str = "") -> Response[Any]:
    return await _begin(request, iss, None, standalone=True)


async def _noise(request: Request[Any, Any, Any], event: str, *, site: str | None = None, **detail: Any) -> None:
    """A refusal anybody can cause without signing in: audited counted (per client and minute)."""
    ctx, client = context_of(request), client_of(request)
    await anyio.to_thread.run_sync(
        lambda: audit_counted(ctx.store, event, outcome="refused", site=site, client=client, **detail)
    )


async def _smart_error(request: Request[Any, Any, Any], where: str, exc: SmartError) -> None:
    """What the EHR (or its configuration) said, under its site, for /admin: `smart.error`."""
    detail: dict[str, Any] = {"where": where, "kind": type(exc).__name__, "message": str(exc)}
    if isinstance(exc, TokenEndpointError):
        detail.update(error=exc.error, error_description=exc.description, status=exc.status_code)
    await _noise(request, "smart.error", site=exc.site_key, **detail)


async def _begin(request: Request[Any, Any, Any], iss: str, launch_id: str | None, *, standalone: bool
                 ) -> Response[Any]:  # fmt: skip
    ctx = context_of(request)
    try:
        redirect = await ctx.smart.begin(iss, launch_id, standalone=standalone)
    except IssNotAllowedError:
        await _noise(request, "launch.iss_not_allowed", iss=iss)
        return message(ctx, 403, "This EHR is not allowed", "The launching server is not on this app's allow-list.",
                       "error")  # fmt: skip
    except LaunchRequestError as exc:
        return message(ctx, 400, "This launch cannot start", str(exc), "error")
    except DiscoveryError as exc:
        log.warning("smart discovery failed: %s", type(exc).__name__)
        await _smart_error(request, "discovery", exc)
        return message(
            ctx, 502, "The EHR did not answer", "Its SMART configuration could not be read. Try again.", "error"
        )
    if redirect.method == "POST":
        return _authorize_post(redirect)
    return Redirect(redirect.url, status_code=302, headers=headers_for(redirect.frame_ancestors))


def _authorize_post(redirect: AuthorizeRedirect) -> Template:
    """The authorize request as a form the browser posts at once (static/authorize-post.js; a button without
    JavaScript), in the same frame. The page may post only to the EHR's authorize endpoint."""
    headers = headers_for(redirect.frame_ancestors)
    origin = str(httpx.URL(redirect.endpoint).copy_with(path="/", query=None, fragment=None)).rstrip("/")
    headers["Content-Security-Policy"] = headers["Content-Security-Policy"].replace(
        "form-action 'self'", f"form-action {origin}"
    )
    return Template("launch/authorize_post.html", headers=headers,
                    context={"endpoint": redirect.endpoint, "params": dict(redirect.params),
                             "engine_version": ENGINE_VERSION})  # fmt: skip


#: What the clinician reads when the EHR refused the sign-in; the EHR's own words are on /admin.
SIGN_IN_FAILED = ("The EHR did not complete the sign-in. Open the app again from the EHR; if this keeps happening, "
                  "your EHR team can see the reason on glucobridge's admin page.")  # fmt: skip
SIGN_IN_STALE = "This sign-in has expired or was already used: open the app again from the EHR."


@get("/callback")
async def callback(
    request: Request[Any, Any, Any],
    oauth_state: Annotated[str, Parameter(query="state")] = "",
    code: str = "",
    error: str = "",
    error_description: str = "",
) -> Response[Any]:
    ctx = context_of(request)
    if error:
        site = await ctx.smart.abandon(oauth_state)
        await _noise(request, "launch.denied", site=site, error=error,
                     **({"error_description": error_description} if error_description else {}))  # fmt: skip
        declined = error == "access_denied"
        return message(ctx, 400, "Sign-in did not complete",
                       "The sign-in was declined." if declined else SIGN_IN_FAILED, "error")  # fmt: skip
    try:
        done = await ctx.smart.complete(oauth_state, code)
    except SmartError as exc:
        await _noise(request, "launch.refused", site=exc.site_key, reason=type(exc).__name__)
        if not isinstance(exc, StateError):
            await _smart_error(request, "callback", exc)
        text = SIGN_IN_STALE if isinstance(exc, StateError) else SIGN_IN_FAILED
        return message(ctx, 400, "This launch cannot be completed", text, "error")
    if done.context.encounter_missing:  # the site's launches carry an encounter; this one did not
        await anyio.to_thread.run_sync(
            lambda: audit(ctx.store, "launch.no_encounter", outcome="allowed", site=done.context.site_key,
                          actor=done.context.fhir_user, handle=done.handle)
        )  # fmt: skip
    if not done.patient:
        return Redirect(f"/v/{done.handle}/", status_code=303, headers=headers_for(done.frame_ancestors))
    return Redirect(f"/v/{done.handle}/patients/{done.patient}/", status_code=303,
                    headers=headers_for(done.frame_ancestors))  # fmt: skip


# MARK: the view


@get("/v/{handle:str}/")
async def launch_home(request: Request[Any, Any, Any], handle: str) -> Response[Any]:
    ctx = context_of(request)
    found = await launch_for(ctx, handle, None)
    if not found.patient:
        hint = "Open the app from a patient's chart to see their CGM outcomes."
        return message(ctx, 200, "No patient in context", hint, "info", found.frame_ancestors)
    return Redirect(
        f"/v/{handle}/patients/{found.patient}/", status_code=303, headers=headers_for(found.frame_ancestors)
    )


async def summary_context(
    ctx: AppContext, handle: str, found: LaunchContext, days: int, unit: str | None, page: int = 1,
    *, request_read: bool = False, figures: bool = False,
) -> dict[str, Any]:  # fmt: skip
    """What the summary shows; with `request_read` (the view opening) a launch-time EHR read is asked for first;
    with `figures` the summary carries the charts' data (the chart data API), else their rendered HTML.

    The document is the stored outcome (`PatientOutcomesView.outcome`); a stale one is shown with its age while the
    recompute job, asked for here, writes the next; its charts come from the chart cache by the outcome's digest.

    The caller has the launch without the site's filter checked (`launch_for(..., site_filter=False)`): the filter,
    the EHR read's status (and request) and the patient's stored outcome are read here in one transaction. Where
    that finds no stored outcome or no earlier read, the longer paths follow, in transactions of their own."""
    banner = await _banner(ctx, handle, found)
    empty: dict[str, Any] = {"metrics": {"readings_used": 0}}
    reads = ctx.reads if found.patient else None
    ask = request_read and ctx.jobs is not None and ctx.handle_cipher is not None
    # The page's cache entry, looked up by the stored outcome's digest before its document is read: with it the
    # view needs the outcome's row without its document (the chart data API needs the figures, so the document).
    entry: dict[str, Any] | None = None

    def needs_document(digest: str) -> bool:
        nonlocal entry
        if figures or ctx.charts is None or ctx.templates is None:
            return True
        entry = ctx.charts.get(charts_key(digest, days, unit or AUTO_UNIT, page))
        return entry is None

    def read() -> tuple[bool, tuple[bool, ReadStatus | None] | None, tuple[str, Zone, ShownOutcome | None] | None]:
        """(shown, the read's (due, status), what the view shows); None where the longer path must follow."""
        now = datetime.now(UTC)
        with ctx.store.transaction() as session:
            if not shows_patient(ctx, found, session):
                return False, None, None
            asked: tuple[bool, ReadStatus | None] | None = (False, None)
            if reads is not None and found.patient:
                if ask:
                    asked = reads.request_in(session, found.site_key, found.patient, now)
                else:
                    asked = False, reads.status(found.site_key, found.patient, session)
            # What the EHR says of the patient (banner) is kept: names for the chart artefacts, and the zone.
            seen: tuple[str, Zone, ShownOutcome | None] | None = ctx.view.for_launch_in(
                session, found.site_key, found.patient or "", banner, days, needs_document=needs_document
            )
        if seen is None:
            seen = ctx.view.for_launch(found.site_key, found.patient or "", banner, days)
        return True, asked, seen

    shown, asked, seen = await anyio.to_thread.run_sync(read)
    if not shown:
        await refuse_filtered(ctx, handle, found)
    if asked is None:  # never read before: the request adds the read's row (and queues the read)
        read_status = await freshness.launch_read_status(ctx, handle, found, request=True)
    else:
        due, read_status = asked
        if due and ctx.jobs is not None and ctx.handle_cipher is not None and found.patient:
            await queue_read(ctx.jobs, ctx.handle_cipher, site=found.site_key, patient=found.patient, handle=handle)

    def compute() -> tuple[ShownOutcome | None, ZoneView | None, SummaryView, dict[str, Markup] | None, str]:
        if seen is None:
            return None, None, summary_view(empty, days, display_unit(empty, unit), None, page=page), None, ""
        _public_id, zone, shown_outcome = seen
        zone_view = ZoneView(zone.name, zone.source)
        if shown_outcome is None:
            return None, zone_view, summary_view(empty, days, display_unit(empty, unit), zone_view, page=page), None, ""
        key = charts_key(shown_outcome.digest, days, unit or AUTO_UNIT, page)
        document = shown_outcome.document
        if document is None:  # the page's entry was found by the digest (`needs_document`)
            assert entry is not None
            return shown_outcome, zone_view, summary_of_entry(entry, zone_view), _markup(entry["html"]), key
        shown = display_unit(document, unit)
        if figures:  # the chart data API: the figures' entry, by the unit shown
            key = charts_key(shown_outcome.digest, days, shown, page)
            charts = ctx.charts.get(figures_key(key)) if ctx.charts is not None else None
            if charts is None:
                charts = charts_of(document, days, shown, page)
                if ctx.charts is not None:
                    ctx.charts.put(figures_key(key), charts)
            return shown_outcome, zone_view, summary_view(document, days, shown, zone_view, page=page,
                                                          charts=charts), None, key  # fmt: skip
        charts = charts_of(document, days, shown, page)
        summary = summary_view(document, days, shown, zone_view, page=page, charts=charts)
        if ctx.charts is None or ctx.templates is None:
            return shown_outcome, zone_view, summary, None, key
        ctx.charts.put(figures_key(charts_key(shown_outcome.digest, days, shown, page)), charts)
        html = chart_html(ctx.templates, summary)
        ctx.charts.put(key, page_entry(summary, html, last_reading(document) if summary.has_data else None))
        return shown_outcome, zone_view, summary, _markup(html), key

    outcome, zone, summary, html, key = await anyio.to_thread.run_sync(compute)
    if outcome is not None and outcome.stale and ctx.jobs is not None:
        await ctx.jobs.enqueue(recompute_request())  # one key: every view of every stale outcome meets on it
    unit_query = f"&unit={quote(unit)}" if unit else ""
    base = f"/v/{handle}/patients/{found.patient}/"
    return {
        "summary": summary,
        "chart_html": html,
        "outcome_freshness": outcome_freshness(outcome),
        "charts_key": key,
        "unit_query": unit_query,
        "base": base,
        "ehr_read": freshness.read_view(read_status, zone.name if zone else "UTC"),
        "ehr_read_status": read_status,
        **freshness.poll_context(days, unit_query, base),
        "csrf_token": csrf_token(ctx.secret, handle),
        "engine_version": ENGINE_VERSION,
        "method": "time",
    }


def _markup(html: Mapping[str, str]) -> dict[str, Markup]:
    return {k: Markup(v) for k, v in html.items()}


def chart_html(templates: jinja2.Environment, summary: SummaryView) -> dict[str, str]:
    """The view's heaviest HTML (the AGP figure and table, a page of daily profiles and their table), rendered once
    per outcome version and display choice: it depends on `summary` only (no launch, patient or token in it), so it
    is cached with the charts and shared by every clinician and launch. The templates include the same partials
    when it is not there, so the page is the same either way (tests/web/test_presenters.py)."""
    html = {"agp": templates.get_template("patient/_agp_chart.html").render(summary=summary)}
    if summary.daily is not None:
        html["daily"] = templates.get_template("patient/_daily_panels.html").render(summary=summary)
    return html


def outcome_freshness(outcome: ShownOutcome | None, now: datetime | None = None) -> str:
    """How fresh the shown outcome is, in words, when it is not (never silently stale)."""
    if outcome is None or not outcome.stale or outcome.computed_at is None:
        return ""
    return (f"These outcomes were computed {age_text(outcome.computed_at, now or datetime.now(UTC))}; newer readings "
            "are being computed and will show when you reload.")  # fmt: skip


def _not_modified(request: Request[Any, Any, Any], tag: str, headers: dict[str, str]) -> Response[Any] | None:
    if matches(request.headers.get("if-none-match"), tag):
        return Response(b"", status_code=304, headers={**headers, "ETag": tag})
    return None


def _page(page: int) -> int:
    if page < 1:
        raise HTTPException(status_code=400, detail="page must be 1 or more")
    return page


@get("/v/{handle:str}/patients/{patient:str}/")
async def patient_view(
    request: HTMXRequest, handle: str, patient: str, days: int = 14, unit: str | None = None, page: int = 1
) -> Template:
    ctx = context_of(request)
    found = await launch_for(ctx, handle, patient, site_filter=False)  # checked in summary_context
    context = await summary_context(ctx, handle, found, check_days(days), check_unit(unit), _page(page),
                                    request_read=True)  # fmt: skip
    context.update(await _page_banner(ctx, handle, found))
    context["smart_style_url"] = found.smart_style_url
    return Template(
        "patient/view.html", context=context, headers={**headers_for(found.frame_ancestors), "Vary": "HX-Request"}
    )


@get("/v/{handle:str}/patients/{patient:str}/summary")
async def patient_summary(
    request: HTMXRequest, handle: str, patient: str, days: int = 14, unit: str | None = None
) -> Template:
    ctx = context_of(request)
    found = await launch_for(ctx, handle, patient, site_filter=False)  # checked in summary_context
    context = await summary_context(ctx, handle, found, check_days(days), check_unit(unit))
    headers = {**headers_for(found.frame_ancestors), "Vary": "HX-Request"}
    if wants_fragment(request):
        return Template("patient/_summary.html", context=context, headers=headers)
    context.update(await _page_banner(ctx, handle, found))
    return Template("patient/view.html", context=context, headers=headers)


@get("/v/{handle:str}/patients/{patient:str}/daily")
async def patient_daily(
    request: HTMXRequest, handle: str, patient: str, days: int = 14, unit: str | None = None, page: int = 1
) -> Response[Any]:
    """A page of the daily profiles: the fragment for htmx, the whole view at that page otherwise."""
    ctx = context_of(request)
    found = await launch_for(ctx, handle, patient, site_filter=False)  # checked in summary_context
    context = await summary_context(ctx, handle, found, check_days(days), check_unit(unit), _page(page))
    headers = {**headers_for(found.frame_ancestors), "Vary": "HX-Request"}
    if wants_fragment(request):
        # The fragment is the daily charts of one outcome version and display choice, and its own links.
        tag = etag("daily", context["charts_key"], context["base"], context["unit_query"])
        return _not_modified(request, tag, headers) or Template(
            "patient/_daily.html", context=context, headers={**headers, "ETag": tag}
        )
    context.update(await _page_banner(ctx, handle, found))
    return Template("patient/view.html", context=context, headers=headers)


@post("/v/{handle:str}/patients/{patient:str}/display-unit")
async def set_display_unit(request: Request[Any, Any, Any], handle: str, patient: str) -> Response[Any]:
    ctx = context_of(request)
    found = await launch_for(ctx, handle, patient)
    form = await request.form()
    await require_csrf(ctx, request, form, handle, found.site_key, "display-unit")
    chosen = form.get("unit")
    unit = check_unit(chosen if isinstance(chosen, str) else "?")
    raw_days = form.get("days")
    days = check_days(int(raw_days) if isinstance(raw_days, str) and raw_days.isdigit() else 14)
    return Redirect(f"/v/{handle}/patients/{patient}/?days={days}&unit={quote(unit or '')}", status_code=303,
                    headers=headers_for(found.frame_ancestors))  # fmt: skip


async def _page_banner(ctx: AppContext, handle: str, found: LaunchContext) -> dict[str, Any]:
    """The patient's name for the page's title (the frame must name its patient whatever the EHR shows), and the
    banner itself where the EHR asked the app to show one (`need_patient_banner`)."""
    banner = await _banner(ctx, handle, found)
    return {"banner": banner if found.need_patient_banner else None,
            "patient_name": banner.get("name") if banner else None}  # fmt: skip


async def _banner(ctx: AppContext, handle: str, found: LaunchContext) -> dict[str, str] | None:
    return await ctx.banners.get(handle, lambda: patient_banner(ctx.smart, ctx.http, handle))


# MARK: data API


@get("/api/v/{handle:str}/patients/{patient:str}/agp", media_type=MediaType.JSON)
async def agp_api(request: Request[Any, Any, Any], handle: str, patient: str, days: int = 14) -> Response[Any]:
    ctx = context_of(request)
    found = await launch_for(ctx, handle, patient, site_filter=False)  # checked in summary_context
    context = await summary_context(ctx, handle, found, check_days(days), None, figures=True)
    summary = context["summary"]
    headers = headers_for(found.frame_ancestors)
    tag = etag("agp", context["charts_key"])
    return _not_modified(request, tag, headers) or Response(
        {"days": summary.days, "unit": summary.unit, "figure": summary.agp_figure}, headers={**headers, "ETag": tag}
    )


@get("/.well-known/jwks.json", media_type=MediaType.JSON, sync_to_thread=False)
def jwks(request: Request[Any, Any, Any]) -> dict[str, Any]:
    """Every public key the app signs with: Backend Services (the deployment's and each site's own, `[backend]`)
    and the user launch's client assertions (`[smart] client_auth = "private_key_jwt"`)."""
    ctx = context_of(request)
    keys = [*(ctx.backend.jwks()["keys"] if ctx.backend is not None else []),
            *(ctx.backends.jwks()["keys"] if ctx.backends is not None else []),
            *(ctx.smart.jwks()["keys"] if isinstance(ctx.smart, SmartClient) else [])]  # fmt: skip
    return combined_jwks_of(keys)


def combined_jwks_of(keys: list[dict[str, Any]]) -> dict[str, Any]:
    """One JWKS, each `kid` once."""
    unique: dict[str, dict[str, Any]] = {}
    for key in keys:
        unique.setdefault(str(key.get("kid")), key)
    return {"keys": list(unique.values())}


@get("/healthz", sync_to_thread=False)
def healthz() -> dict[str, str]:
    return {"status": "ok", "engine_version": ENGINE_VERSION}


def _is_admin(request: Request[Any, Any, Any]) -> bool:
    return request.url.path == "/admin" or request.url.path.startswith("/admin/")


def _not_found_or_forbidden(request: Request[Any, Any, Any], exc: HTTPException) -> Response[Any]:
    """The reason as a page (as a fragment for htmx, which swaps it in place); /admin is never framed."""
    kind = "error" if exc.status_code >= 400 else "info"
    title = {403: "Not allowed", 404: "Not found", 400: "Cannot show this"}.get(exc.status_code, "Something went wrong")
    return message(context_of(request), exc.status_code, title, str(exc.detail), kind,
                   () if _is_admin(request) else None, fragment=wants_fragment(request),
                   headers=dict(exc.headers or {}))  # fmt: skip


def _unexpected(request: Request[Any, Any, Any], exc: Exception) -> Response[Any]:
    """A bug or a failed service: logged without PHI (the exception's type, the route's template, the frames; never
    its message or the URL, which may name a patient or hold a launch handle), and a 500 page."""
    frames = "; ".join(f"{os.path.basename(f.filename)}:{f.lineno} {f.name}"
                       for f in traceback.extract_tb(exc.__traceback__)[-10:])  # fmt: skip
    log.error("unexpected %s in %s %s [%s]", type(exc).__name__, request.method,
              request.scope.get("path_template", "?"), frames)  # fmt: skip
    return message(context_of(request), 500, "Something went wrong",
                   "The app could not answer this request. The error has been logged; try again.", "error",
                   () if _is_admin(request) else None, fragment=wants_fragment(request))  # fmt: skip


MAX_ID = 2**63 - 1  # BIGINT


def ids_in_range(connection: ASGIConnection[Any, Any, Any, Any], _: BaseRouteHandler) -> None:
    """An app-wide guard: a whole number in a path is a row id, 1 … 2^63-1; any other names no row (404), instead
    of reaching the database (SQLite cannot even bind it)."""
    for value in connection.path_params.values():
        if isinstance(value, int) and not isinstance(value, bool) and not 0 < value <= MAX_ID:
            raise NotFoundException(detail="no such record")


def _engine_callback(ctx: AppContext) -> Callable[[JinjaTemplateEngine], None]:
    def configure(engine: JinjaTemplateEngine) -> None:
        engine.engine.globals["static"] = _static_url
        engine.engine.policies["json.dumps_function"] = _tojson
        ctx.templates = engine.engine

    return configure


def create_app(
    settings: Settings | None = None,
    *,
    store: Store | None = None,
    smart: SmartClient | None = None,
    http: httpx.AsyncClient | None = None,
    jobs: JobQueue | None = None,
    debug: bool = False,
) -> Litestar:
    """The app; tests pass their own store, SMART service, HTTP transport or job queue. Its services are built by
    `bff.bootstrap`, once per process; no handler builds one."""
    settings = settings or get_settings()
    # Request URLs carry patient ids and launch handles: keep the HTTP client's per-request log lines out.
    logging.getLogger("httpx").setLevel(logging.WARNING)
    core = bootstrap.services(settings, store=store)
    store = core.store
    http = http or httpx.AsyncClient(timeout=httpx.Timeout(10.0))
    smart_settings = SmartSettings.from_env(os.environ)
    smart = smart or bootstrap.smart_client(settings, store, http)
    backend = create_backend_auth(smart_settings, smart_settings.backend_client_id, http=http)
    # Each site's Backend Services registration, its key read now: a missing key stops the app with the reason.
    discovery = smart.discovery if isinstance(smart, SmartClient) else None
    backends = create_site_backends(smart_settings, http=http, registry=smart.registry, discovery=discovery,
                                    environ=os.environ)  # fmt: skip
    origins = tuple(sorted({origin for site in smart.registry for origin in site.frame_ancestors}))
    ctx = AppContext(settings=settings, store=store, smart=smart, http=http, backend=backend, backends=backends,
                     view=PatientOutcomesView(store), capabilities=core.capabilities, writeback=core.writeback,
                     secret=settings.secret(), any_site_frame_ancestors=origins, banners=banner_cache(settings),
                     admin_accounts=AdminAccounts(store, LockoutPolicy.from_settings(settings)),
                     admin_sessions=AdminSessions(store, idle=timedelta(minutes=settings.admin_session_idle_min)),
                     jobs=jobs or bootstrap.job_queue(settings, store), reads=LaunchReads(store),
                     handle_cipher=token_cipher(settings), charts=chart_cache(settings.redis_url),
                     # The in-context send's worker (the clinician's token is its broker, per send); the system
                     # token's broker is there for its type only: this process never works the queue.
                     outbox=bootstrap.outbox_worker(core, Broker(http, backends.token)),
                     )  # fmt: skip

    async def start(app: Litestar) -> None:
        ctx.password_work = anyio.CapacityLimiter(2)  # made in the app's event loop

    async def close_http(app: Litestar) -> None:
        await http.aclose()
        if ctx.outbox is not None:
            ctx.outbox.close()
        if ctx.jobs is not None:
            await ctx.jobs.close()

    return Litestar(
        route_handlers=[
            launch, standalone, callback, launch_home, patient_view, patient_summary, patient_daily, set_display_unit,
            agp_api, freshness.ehr_read,
            jwks, healthz, *writeback.ROUTES, admin.router, admin.sign_in,
            create_static_files_router(path="/static", directories=[STATIC]),
        ],
        template_config=TemplateConfig(
            directory=TEMPLATES, engine=JinjaTemplateEngine, engine_callback=_engine_callback(ctx)
        ),
        plugins=[HTMXPlugin()],
        state=State({"ctx": ctx}),
        guards=[ids_in_range],
        before_send=[security_headers(settings.trusted_proxies)],
        exception_handlers={HTTPException: _not_found_or_forbidden, Exception: _unexpected},
        on_startup=[start],
        on_shutdown=[close_http],
        debug=debug,
    )  # fmt: skip

"""Send to chart: the clinician reviews exactly what will be written, signs it, and follows it into the EHR.

    GET  /v/{handle}/patients/{id}/chart/review?days=14[&unit=…][&correction=1]   the review panel
    POST /v/{handle}/patients/{id}/chart/signoffs        sign (CSRF; digest, days, unit[, correction])
    GET  /v/{handle}/patients/{id}/chart/signoffs        this patient's sign-offs and corrections to sign
    GET  /v/{handle}/patients/{id}/chart/signoffs/{n}    one sign-off
    GET  /v/{handle}/patients/{id}/chart/signoffs/{n}/status   its status badge; polled by htmx until final,
                                                         then answered with 286 (htmx stops polling)

Each answers a fragment to htmx and a whole page otherwise (the same templates). Every request is checked
against its launch like the patient view; the signer is the launch's fhirUser and the encounter the launch's, or,
at a site that looks it up (`encounter_policy = "open_visit_lookup"`), the patient's one open visit, searched with
the clinician's token before the review and again before signing (`bff.encounters`).
The review, the sign-off, its audit and the queue are `bff.writeback.WritebackService`'s.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, TypeVar
from urllib.parse import quote

import anyio
from litestar import Request, Response, get, post
from litestar.exceptions import HTTPException
from litestar.response import Redirect, Template

from app.web.common import (
    AppContext,
    check_days,
    check_unit,
    context_of,
    headers_for,
    launch_for,
    require_csrf,
    wants_fragment,
)
from app.web.presenters import (
    MODE_LABELS,
    STATE_LABELS,
    chart_entries,
    display_unit,
    local_window,
    review_items,
    signed_values,
    utc_text,
)
from app.web.security import csrf_token
from bff.audit import audit
from bff.broker.broker import Broker, launch_token_source, scopes_allow_create
from bff.broker.plan import PlanError
from bff.capabilities import CapabilityError
from bff.encounters import VisitLookup, open_visit
from bff.outbox import queue
from bff.resources.load import NoReadingsError
from bff.smart import LaunchContext, SmartError
from bff.store.outcomes import UnknownPatientError
from bff.vendors import profile_for
from bff.writeback import IntentView, Review, SignOffView, StaleReviewError
from engine import ENGINE_VERSION

log = logging.getLogger("glucobridge.app.writeback")

T = TypeVar("T")
SIGNED_EVENT = "signoff-recorded"  # HX-Trigger after a sign: the sign-off list reloads itself
POLL_ACTIVE = "every 2s"
POLL_WAITING = "every 30s"  # deferred, or held for a signature: nothing moves until the site or a person does


@dataclass(frozen=True)
class Patient:
    """A launch's patient as the write-back pages need it."""

    handle: str
    launch: LaunchContext
    public_id: str | None  # the store's patient (None: no CGM data was ever ingested for them)
    visit: VisitLookup | None = None  # the open visit looked up (open_visit_lookup, a launch without encounter)

    @property
    def site(self) -> str:
        return self.launch.site_key

    @property
    def base(self) -> str:
        return f"/v/{self.handle}/patients/{self.launch.patient}/"

    @property
    def encounter(self) -> str | None:
        """The launch's encounter as a reference ("Encounter/123"), as the plan files it; else the open visit
        looked up, if one was."""
        value = self.launch.encounter
        if not value:
            return self.visit.encounter if self.visit is not None else None
        parts = value.rstrip("/").split("/")
        return "/".join(parts[-2:]) if len(parts) >= 2 else f"Encounter/{value}"

    @property
    def visit_note(self) -> str | None:
        return self.visit.reason if self.visit is not None else None


async def _thread(fn: Callable[[], T]) -> T:
    return await anyio.to_thread.run_sync(fn)


async def _patient(ctx: AppContext, handle: str, patient: str, *, visit: bool = False) -> Patient:
    """The launch's patient; with `visit`, their open visit too where the site looks it up."""
    found = await launch_for(ctx, handle, patient)
    public_id = await _thread(lambda: ctx.view.public_id(found.site_key, found.patient or ""))
    return Patient(handle, found, public_id, await _open_visit(ctx, handle, found) if visit else None)


async def _open_visit(ctx: AppContext, handle: str, found: LaunchContext) -> VisitLookup | None:
    """At a site whose encounter policy is open_visit_lookup, and a launch without an encounter: the lookup."""
    if found.encounter or not found.patient:
        return None
    try:
        caps = await _thread(lambda: ctx.capabilities.get(found.site_key))
    except CapabilityError:
        return None  # the review says why the site's settings cannot be used
    if caps.write.encounter_policy != "open_visit_lookup":
        return None
    try:
        token = await ctx.smart.access_token(handle)
    except SmartError as exc:
        return VisitLookup(None, f"the EHR token could not be renewed ({type(exc).__name__})")
    return await open_visit(ctx.http, profile_for(caps), found.iss, token, found.patient)


def _headers(p: Patient, **extra: str) -> dict[str, str]:
    return {**headers_for(p.launch.frame_ancestors), "Vary": "HX-Request", **extra}


def _render(
    request: Request[Any, Any, Any], p: Patient, fragment: str, context: dict[str, Any], *, status: int = 200,
    title: str = "Send to chart", headers: dict[str, str] | None = None,
) -> Template:  # fmt: skip
    """The fragment for htmx, else the page that includes it (one template either way)."""
    ctx = context_of(request)
    context = {
        "base": p.base, "csrf_token": csrf_token(ctx.secret, p.handle), "engine_version": ENGINE_VERSION,
        "smart_style_url": p.launch.smart_style_url, "state_labels": STATE_LABELS, "poll_active": POLL_ACTIVE,
        "poll_waiting": POLL_WAITING, "utc_text": utc_text,
        "patient_name": (ctx.banners.cached(p.handle) or {}).get("name"),  # the page's title (read by the view)
        **context,
    }  # fmt: skip
    page = not wants_fragment(request)
    context.setdefault("target_id", "send-to-chart")
    context.update(fragment=fragment, title=title, page=page)
    name = "writeback/page.html" if page else fragment
    return Template(name, context=context, status_code=status, headers={**_headers(p), **(headers or {})})


def _refused(request: Request[Any, Any, Any], p: Patient, status: int, title: str, text: str, **extra: Any) -> Template:
    return _render(request, p, "writeback/_refused.html", {"heading": title, "text": text, **extra}, status=status,
                   title=title)  # fmt: skip


def _no_data(request: Request[Any, Any, Any], p: Patient) -> Template:
    text = "No CGM readings are on file for this patient at this site: there is nothing to send to the chart."
    return _refused(request, p, 404, "Nothing to send", text)


def _review_context(p: Patient, review: Review, days: int, note_unit: str, correction: bool) -> dict[str, Any]:
    content = review.content
    return {
        "review": review,
        "days": days,
        "note_unit": note_unit,
        "correction": correction,
        "window_text": local_window(review.window, review.tz),
        "mode_label": MODE_LABELS.get(review.mode, review.mode),
        "values": signed_values(content, note_unit),
        "sufficient": bool(content.get("sufficient", True)),
        "items": review_items(review.writes),
        "entries": chart_entries(review.writes, content, review.tz),
        "signer": p.launch.fhir_user,
        "encounter": p.encounter,
        "encounter_missing": p.launch.encounter_missing and p.encounter is None,
        "target_id": "correction-review" if correction else "send-to-chart",
    }


# MARK: review


@get("/v/{handle:str}/patients/{patient:str}/chart/review")
async def review_panel(
    request: Request[Any, Any, Any], handle: str, patient: str, days: int = 14, unit: str | None = None,
    correction: bool = False,
) -> Template:  # fmt: skip
    ctx = context_of(request)
    p = await _patient(ctx, handle, patient, visit=True)
    days, chosen = check_days(days), check_unit(unit)
    if p.public_id is None:
        return _no_data(request, p)
    public_id = p.public_id

    def build() -> tuple[Review, str, int]:
        # A correction: the held window's current version, whatever period the view shows.
        held = ctx.writeback.held_record(p.site, public_id) if correction else None
        shown = days if held is None else round((held.window_end_ms - held.window_start_ms) / 86_400_000)
        record = held or ctx.writeback.record(p.site, public_id, shown)
        note_unit = display_unit(record.document, chosen)
        review = ctx.writeback.review_record(p.site, record, encounter=p.encounter, note_unit=note_unit,
                                             visit_note=p.visit_note)  # fmt: skip
        return review, note_unit, shown

    try:
        review, note_unit, days = await _thread(build)
    except CapabilityError as exc:
        return _refused(request, p, 503, "This site's settings cannot be used", str(exc))
    except (NoReadingsError, UnknownPatientError):
        return _no_data(request, p)
    context = _review_context(p, review, days, note_unit, correction)
    return _render(request, p, "writeback/_review.html", context)


# MARK: sign


def _form_text(form: Any, name: str) -> str:
    value = form.get(name)
    return value.strip() if isinstance(value, str) else ""


@post("/v/{handle:str}/patients/{patient:str}/chart/signoffs")
async def sign(request: Request[Any, Any, Any], handle: str, patient: str) -> Response[Any]:
    ctx = context_of(request)
    p = await _patient(ctx, handle, patient, visit=True)
    form = await request.form()
    await require_csrf(ctx, request, form, handle, p.site, "chart/signoffs")
    digest = _form_text(form, "digest")
    try:
        days = check_days(int(_form_text(form, "days") or "14"))
    except ValueError:
        raise HTTPException(status_code=400, detail="days must be a whole number") from None
    note_unit = check_unit(_form_text(form, "unit")) or "mg/dL"
    correction = _form_text(form, "correction") == "1"
    if len(digest) != 64 or any(c not in "0123456789abcdef" for c in digest):
        raise HTTPException(status_code=400, detail="the sign form has no plan digest: review again")
    signer = p.launch.fhir_user
    if not signer:
        await _thread(lambda: audit(ctx.store, "writeback.sign", outcome="refused", site=p.site, handle=handle,
                                    reason="no fhirUser"))  # fmt: skip
        return _refused(
            request, p, 403, "Your identity is unknown",
            "This launch did not say who you are (the EHR sent no fhirUser), and a sign-off must name its signer. "
            "Open the app again from the EHR; if this persists, ask your EHR team to grant the app openid and "
            "fhirUser.",
        )  # fmt: skip
    if p.public_id is None:
        return _no_data(request, p)
    public_id = p.public_id

    def signed() -> SignOffView:
        if correction:
            return ctx.writeback.sign_correction(p.site, public_id, digest=digest, signer=signer,
                                                 encounter=p.encounter, note_unit=note_unit, handle=handle,
                                                 visit_note=p.visit_note)  # fmt: skip
        grace = _in_context_grace(p)
        return ctx.writeback.sign(p.site, public_id, digest=digest, signer=signer, days=days, encounter=p.encounter,
                                  note_unit=note_unit, handle=handle, in_context_grace_s=grace,
                                  visit_note=p.visit_note)  # fmt: skip

    review_again = f"{p.base}chart/review?days={days}&unit={quote(note_unit)}" + ("&correction=1" if correction else "")
    try:
        view = await _thread(signed)
    except StaleReviewError as exc:
        return _refused(request, p, 409, "Review again", str(exc), review_url=review_again,
                        target_id="correction-review" if correction else "send-to-chart")  # fmt: skip
    except CapabilityError as exc:
        return _refused(request, p, 503, "This site's settings cannot be used", str(exc))
    except PlanError as exc:
        return _refused(request, p, 422, "This cannot be sent to the chart", str(exc))
    except (NoReadingsError, UnknownPatientError):
        return _no_data(request, p)
    view = await _send_in_context(ctx, p, handle, view)
    if not wants_fragment(request):  # POST, redirect, GET
        return Redirect(f"{p.base}chart/signoffs/{view.id}", status_code=303, headers=_headers(p))
    return _render(request, p, "writeback/_signoff.html", {"s": view, "just_signed": True},
                   headers={"HX-Trigger": SIGNED_EVENT})  # fmt: skip


#: How long the worker leaves a sign-off's writes to the clinician's in-context send (it ends as soon as that
#: send is done; it only matters if the app process dies in between).
IN_CONTEXT_GRACE_S = 30.0
#: The FHIR types each kind of write creates (a transaction Bundle creates several: left to the worker).
_CREATES = {"flowsheet": ("Observation",), "observations": ("Observation",), "note": ("DocumentReference",),
            "pdf": ("DocumentReference",)}  # fmt: skip


async def _send_in_context(ctx: AppContext, p: Patient, handle: str, view: SignOffView) -> SignOffView:
    """When the clinician's own launch may create what was signed, send it now with their token (the EHR then
    shows the clinician as its author); otherwise, or for what fails, the outbox worker sends it with the app's
    system token. Never raises: the sign-off is stored either way.

    The send goes through the process's one outbox worker (`ctx.outbox`, built at start by `bff.bootstrap`: its
    buckets and breakers are the process's), with a broker holding this launch's token; no worker is built here."""
    queued = [i.id for i in view.intents if i.state == "queued"]
    kinds = {i.kind for i in view.intents if i.state == "queued"}
    types = sorted({t for kind in kinds for t in _CREATES.get(kind, ("Bundle",))})
    try:
        if ctx.outbox and queued and kinds <= set(_CREATES) and scopes_allow_create(p.launch.scopes, types):
            broker = Broker(ctx.http, launch_token_source(ctx.smart, handle))
            await ctx.outbox.send_in_context(p.site, queued, broker)
    except Exception:  # the worker will send what is left; the clinician sees the badge move either way
        log.exception("sending a sign-off in context failed at site %s", p.site)
    finally:  # what was not sent in context is the worker's at once
        await _thread(lambda: queue.make_due(ctx.store, queued, datetime.now(UTC)))
    return await _thread(lambda: ctx.writeback.status(view.id))


def _in_context_grace(p: Patient) -> float:
    """Seconds the worker leaves a new sign-off's writes to the clinician's in-context send (0: no such send)."""
    may = scopes_allow_create(p.launch.scopes, ["Observation"]) or scopes_allow_create(
        p.launch.scopes, ["DocumentReference"]
    )
    return IN_CONTEXT_GRACE_S if may else 0.0


# MARK: sign-offs


async def _owned(ctx: AppContext, p: Patient, signoff_id: int) -> SignOffView:
    """The sign-off, if it is this launch's patient's at this launch's site (else 404, audited)."""

    def load() -> SignOffView | None:
        try:
            return ctx.writeback.status(signoff_id)
        except KeyError:
            return None

    view = await _thread(load)
    if view is None or view.site != p.site or view.patient != p.public_id:
        if view is not None:
            await _thread(lambda: audit(ctx.store, "signoff.mismatch", outcome="refused", site=p.site,
                                        handle=p.handle, signoff=signoff_id))  # fmt: skip
        raise HTTPException(status_code=404, detail=f"no sign-off {signoff_id} for this patient")
    return view


@get("/v/{handle:str}/patients/{patient:str}/chart/signoffs")
async def signoff_list(request: Request[Any, Any, Any], handle: str, patient: str) -> Template:
    ctx = context_of(request)
    p = await _patient(ctx, handle, patient)
    public_id = p.public_id
    signoffs: list[SignOffView] = []
    awaiting: list[IntentView] = []
    if public_id is not None:
        signoffs, awaiting = await _thread(lambda: (ctx.writeback.signoffs(p.site, public_id),
                                                    ctx.writeback.awaiting_signoff(p.site, public_id)))  # fmt: skip
    return _render(request, p, "writeback/_signoffs.html", {"signoffs": signoffs, "awaiting": awaiting},
                   title="Sent to chart")  # fmt: skip


@get("/v/{handle:str}/patients/{patient:str}/chart/signoffs/{signoff_id:int}")
async def signoff_detail(request: Request[Any, Any, Any], handle: str, patient: str, signoff_id: int) -> Template:
    ctx = context_of(request)
    p = await _patient(ctx, handle, patient)
    view = await _owned(ctx, p, signoff_id)
    return _render(request, p, "writeback/_signoff.html", {"s": view, "just_signed": False},
                   title=f"Sign-off {view.id}")  # fmt: skip


@get("/v/{handle:str}/patients/{patient:str}/chart/signoffs/{signoff_id:int}/status")
async def signoff_status(request: Request[Any, Any, Any], handle: str, patient: str, signoff_id: int) -> Template:
    """The badge; a final state answers 286, which tells htmx to stop polling (and still swap the badge)."""
    ctx = context_of(request)
    p = await _patient(ctx, handle, patient)
    view = await _owned(ctx, p, signoff_id)
    return _render(request, p, "writeback/_status.html", {"s": view}, status=286 if view.final else 200,
                   title=f"Sign-off {view.id}")  # fmt: skip


ROUTES = [review_panel, sign, signoff_list, signoff_detail, signoff_status]

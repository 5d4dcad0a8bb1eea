"""Clinician write-back: review exactly what will be written, sign it, follow it until the EHR has it.

    review(site, patient)  -> Review       the plan under the site's matrix now, and its digest
    sign(..., digest)      -> SignOffView  an immutable SignOff plus one write intent per request
                                           (or, at a read-only site, one deferred "plan" intent)
    status(signoff)        -> SignOffView  each intent's state; `final` when nothing will change any more

Corrections: when a backfill produces a new outcome version for a window that was signed off,
`propose_corrections` creates the correction writes (referencing the earlier ones) under the first sign-off when
the change is small, or holds them `awaiting_signoff` when a band moved more than the site's threshold
(`[corrections]` in the matrix): the clinician then signs the new version (`sign(..., corrects=...)`).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

from sqlalchemy import func, select

from bff.audit import audit, launch_ref
from bff.broker.plan import PlanError, PlannedWrite, WriteContext, pdf_wanted, plan_digest, plan_writes, signed_content
from bff.capabilities import CapabilityService, SiteCapabilities
from bff.outbox import queue
from bff.resources.load import outcome_record
from bff.resources.record import OutcomeRecord
from bff.resources.report_pdf import agp_report_pdf
from bff.store.db import Store
from bff.store.models import OutcomeWindow, Patient, SignOff, WriteIntent
from bff.store.outcomes import policy_from_dict
from engine import WindowSpec

DEFERRED_SUMMARY = "Deferred: written as the site allows once it takes writes again"
ACTIVE = ("awaiting_signoff", "deferred", "queued", "sending", "unknown")


class StaleReviewError(ValueError):
    """What was reviewed is not what would be written now (new data, a changed matrix): review again."""


@dataclass(frozen=True, slots=True)
class Review:
    site: str
    patient: str
    outcome_window_id: int
    version: int
    window: tuple[int, int]
    tz: str
    mode: str
    channel: str
    deferred: bool  # the site takes no writes now: the sign-off waits in the queue
    writes: tuple[PlannedWrite, ...]
    content: dict[str, Any]
    digest: str
    refusal: str | None = None  # why this cannot be written at all (a person must act first)
    already_signed: int | None = None  # the sign-off of this very version, if there is one


@dataclass(frozen=True, slots=True)
class IntentView:
    id: int
    kind: str
    state: str
    summary: str
    attempts: int
    last_error: str | None
    remote_id: str | None
    corrects_id: int | None
    outcome_window_id: int | None = None


@dataclass(frozen=True, slots=True)
class SignOffView:
    id: int
    site: str
    patient: str
    signer: str
    signed_at: datetime
    version: int
    signer_name: str | None
    write_mode: str
    plan_digest: str
    intents: tuple[IntentView, ...]
    queue_position: int | None  # 1 = next at its site, among the site's open writes; None when nothing is open
    corrects_signoff_id: int | None

    @property
    def state(self) -> str:
        """One word for the badge: the least advanced state of its intents (confirmed only when all are)."""
        states = [i.state for i in self.intents if i.state != "expanded"]
        if not states:
            return "queued"
        for state in ("awaiting_signoff", "unknown", "failed", "sending", "queued", "deferred", "cancelled"):
            if state in states:
                return state  # "cancelled": some (or all) of it was withdrawn; the rest is at the EHR
        return "confirmed"

    @property
    def final(self) -> bool:
        return all(i.state in queue.FINAL_STATES for i in self.intents)


def _utc_now() -> datetime:
    return datetime.now(UTC)


class WritebackService:
    def __init__(
        self,
        store: Store,
        capabilities: CapabilityService,
        *,
        now: Callable[[], datetime] = _utc_now,
        render_pdf: Callable[[OutcomeRecord], bytes] | None = None,
    ) -> None:
        self.store = store
        self.capabilities = capabilities
        self._now = now
        self._pdf = render_pdf or agp_report_pdf

    # --- review and sign ---------------------------------------------------------------------------------------

    def record(self, site: str, patient: str, days: int) -> OutcomeRecord:
        return outcome_record(self.store, patient, WindowSpec(days=days), site=site)

    def _context(
        self, caps: SiteCapabilities, record: OutcomeRecord, encounter: str | None, unit: str, signer: str | None,
        visit_note: str | None = None,
    ) -> WriteContext:  # fmt: skip
        pdf = self._pdf(record) if pdf_wanted(caps) else None
        return WriteContext(encounter=encounter, note_unit=unit, pdf=pdf, signer=signer, visit_note=visit_note)

    def review_record(
        self,
        site: str,
        record: OutcomeRecord,
        *,
        encounter: str | None = None,
        note_unit: str = "mg/dL",
        signer_name: str | None = None,
        visit_note: str | None = None,
    ) -> Review:
        """What would be written, for the clinician `signer_name` (as the EHR names them; in the note).
        `visit_note`: why the patient's open visit was not found (a site that looks it up), for the refusal."""
        caps = self.capabilities.get(site)
        content = signed_content(record)
        content["encounter"] = encounter
        content["note_unit"] = note_unit
        content["glucose_unit"] = caps.write.glucose_unit
        content["signer_name"] = signer_name
        writes: list[PlannedWrite] = []
        refusal = None
        if caps.write.writes:
            try:
                context = self._context(caps, record, encounter, note_unit, signer_name, visit_note)
                writes = plan_writes(caps, record, context)
            except PlanError as exc:
                refusal = str(exc)
        window_id = int(record.extra["outcome_window_id"])
        with self.store.transaction() as session:
            signed = session.scalar(
                select(SignOff.id).where(SignOff.site_key == site, SignOff.outcome_window_id == window_id)
            )
        return Review(
            site=site, patient=record.patient_id, outcome_window_id=window_id, version=record.version,
            window=(record.window_start_ms, record.window_end_ms), tz=record.tz, mode=caps.write.mode.value,
            channel=caps.write.channel.value, deferred=not caps.write.writes, writes=tuple(writes), content=content,
            digest=plan_digest(writes, content), refusal=refusal, already_signed=signed,
        )  # fmt: skip

    def review(
        self,
        site: str,
        patient: str,
        *,
        days: int = 14,
        encounter: str | None = None,
        note_unit: str = "mg/dL",
        signer_name: str | None = None,
        visit_note: str | None = None,
    ) -> Review:
        return self.review_record(
            site, self.record(site, patient, days), encounter=encounter, note_unit=note_unit, signer_name=signer_name,
            visit_note=visit_note,
        )  # fmt: skip

    def sign(
        self,
        site: str,
        patient: str,
        *,
        digest: str,
        signer: str,
        days: int = 14,
        encounter: str | None = None,
        note_unit: str = "mg/dL",
        handle: str | None = None,
        in_context_grace_s: float = 0.0,
        signer_name: str | None = None,
        visit_note: str | None = None,
    ) -> SignOffView:
        """Sign exactly the reviewed plan (`digest`); refused if it changed since. Signing twice returns the first.

        `in_context_grace_s`: the caller sends the writes itself with the clinician's token right away; workers
        leave them alone that long (and send whatever is still queued after)."""
        if not signer.strip():
            raise PlanError("a sign-off needs the signer's identity (the launch has no fhirUser)")
        review = self.review(
            site, patient, days=days, encounter=encounter, note_unit=note_unit, signer_name=signer_name,
            visit_note=visit_note,
        )  # fmt: skip
        if review.already_signed is not None:
            return self.status(review.already_signed)
        if review.digest != digest:
            audit(self.store, "writeback.sign", outcome="refused", site=site, actor=signer, handle=handle,
                  reason="stale review")  # fmt: skip
            raise StaleReviewError(
                "what would be written changed since you reviewed it (new readings or a site change): review again"
            )
        if review.refusal:
            raise PlanError(review.refusal)
        corrects = self._earlier_signoff(site, review)
        signoff_id = self._store_signoff(review, signer, handle, corrects)
        due = self._now() + timedelta(seconds=in_context_grace_s) if in_context_grace_s > 0 else None
        self._enqueue(review, signoff_id, corrects_intents=self._intents_of(corrects) if corrects else {}, due_at=due)
        audit(self.store, "writeback.sign", outcome="allowed", site=site, actor=signer, handle=handle,
              signoff=signoff_id, version=review.version, writes=len(review.writes), deferred=review.deferred,
              digest=review.digest)  # fmt: skip
        return self.status(signoff_id)

    def _earlier_signoff(self, site: str, review: Review) -> int | None:
        """The latest sign-off of an earlier version of the same window (a correction then references it)."""
        with self.store.transaction() as session:
            window = session.get(OutcomeWindow, review.outcome_window_id)
            assert window is not None
            earlier = select(OutcomeWindow.id).where(
                OutcomeWindow.patient_id == window.patient_id, OutcomeWindow.window_start_ms == window.window_start_ms,
                OutcomeWindow.window_end_ms == window.window_end_ms, OutcomeWindow.policy_hash == window.policy_hash,
                OutcomeWindow.version < window.version,
            )  # fmt: skip
            return session.scalar(
                select(SignOff.id)
                .where(SignOff.site_key == site, SignOff.outcome_window_id.in_(earlier))
                .order_by(SignOff.id.desc())
            )

    def _store_signoff(self, review: Review, signer: str, handle: str | None, corrects: int | None) -> int:
        with self.store.transaction() as session:
            row = SignOff(
                site_key=review.site, patient_public_id=review.patient, outcome_window_id=review.outcome_window_id,
                outcome_version=review.version, signer=signer, signed_at=self._now(), launch_ref=launch_ref(handle),
                signer_name=review.content.get("signer_name"),
                write_mode=review.mode, plan_digest=review.digest, corrects_signoff_id=corrects,
                plan={"content": review.content, "writes": [w.as_json() for w in review.writes]},
            )  # fmt: skip
            session.add(row)
            session.flush()
            return int(row.id)

    def _intents_of(self, signoff_id: int) -> dict[tuple[str, tuple[str, ...]], int]:
        with self.store.transaction() as session:
            rows = session.scalars(select(WriteIntent).where(WriteIntent.signoff_id == signoff_id))
            out: dict[tuple[str, tuple[str, ...]], int] = {}
            for row in rows:
                if row.kind != "plan":
                    out[(row.kind, tuple(row.payload.get("metrics", ())))] = row.id
            return out

    def _enqueue(
        self,
        review: Review,
        signoff_id: int,
        *,
        corrects_intents: dict[tuple[str, tuple[str, ...]], int],
        state: str | None = None,
        due_at: datetime | None = None,
    ) -> None:
        window = f"{review.window[0]}-{review.window[1]}"
        now = self._now()
        if review.deferred:
            queue.enqueue(
                self.store, site=review.site, patient_public_id=review.patient,
                outcome_window_id=review.outcome_window_id, kind="plan", metrics=["plan"], window=window,
                version=review.version, payload={"content": review.content}, now=now, state=state or "deferred",
                signoff_id=signoff_id,
            )  # fmt: skip
            return
        for write in review.writes:
            queue.enqueue(
                self.store, site=review.site, patient_public_id=review.patient,
                outcome_window_id=review.outcome_window_id, kind=write.kind, metrics=list(write.metrics),
                window=window, version=review.version, payload=write.as_json(), now=now, state=state or "queued",
                channel=write.channel, signoff_id=signoff_id, due_at=due_at,
                corrects_id=corrects_intents.get((write.kind, write.metrics)),
            )  # fmt: skip

    # --- status ------------------------------------------------------------------------------------------------

    def status(self, signoff_id: int) -> SignOffView:
        with self.store.transaction() as session:
            signoff = session.get(SignOff, signoff_id)
            if signoff is None:
                raise KeyError(f"no sign-off {signoff_id}")
            query = select(WriteIntent).where(WriteIntent.signoff_id == signoff_id).order_by(WriteIntent.id)
            intents = list(session.scalars(query))
            open_ids = [i.id for i in intents if i.state in ACTIVE]
            position = None
            if open_ids:
                ahead = session.scalar(
                    select(func.count()).where(
                        WriteIntent.site_key == signoff.site_key, WriteIntent.state.in_(ACTIVE),
                        WriteIntent.id < min(open_ids),
                    )
                )  # fmt: skip
                position = int(ahead or 0) + 1
            views = tuple(
                IntentView(i.id, i.kind, i.state, str(i.payload.get("summary", DEFERRED_SUMMARY)), i.attempts,
                           i.last_error, i.remote_id, i.corrects_id, i.outcome_window_id)
                for i in intents
            )  # fmt: skip
            return SignOffView(
                id=signoff.id, site=signoff.site_key, patient=signoff.patient_public_id, signer=signoff.signer,
                signer_name=signoff.signer_name,
                signed_at=signoff.signed_at, version=signoff.outcome_version, write_mode=signoff.write_mode,
                plan_digest=signoff.plan_digest, intents=views, queue_position=position,
                corrects_signoff_id=signoff.corrects_signoff_id,
            )  # fmt: skip

    def signoffs(self, site: str, patient: str, limit: int = 20) -> list[SignOffView]:
        with self.store.transaction() as session:
            ids = list(
                session.scalars(
                    select(SignOff.id)
                    .where(SignOff.site_key == site, SignOff.patient_public_id == patient)
                    .order_by(SignOff.id.desc())
                    .limit(limit)
                )
            )
        return [self.status(i) for i in ids]

    def awaiting_signoff(self, site: str, patient: str) -> list[IntentView]:
        """Corrections held for a new sign-off (the clinician view asks for it)."""
        return [
            IntentView(r.id, r.kind, r.state, "A correction with a clinically meaningful change: sign again",
                       r.attempts, r.last_error, r.remote_id, r.corrects_id, r.outcome_window_id)
            for r in self._held(site, patient)
        ]  # fmt: skip

    # --- deferred plans and corrections (called by the worker) -------------------------------------------------

    def window_record(self, site: str, window_id: int) -> OutcomeRecord:
        """The current outcome of a stored window's period (a new version if readings arrived since)."""
        with self.store.transaction() as session:
            window = session.get(OutcomeWindow, window_id)
            if window is None:
                raise KeyError(f"no outcome window {window_id}")
            patient = session.get(Patient, window.patient_id)
            assert patient is not None
            spec = WindowSpec(start=window.window_start_ms, end=window.window_end_ms)
            policy, tz, public_id = policy_from_dict(window.policy), window.tz, patient.public_id
        return outcome_record(self.store, public_id, spec, policy, site=site, tz=tz)

    def expand_plans(self, caps: SiteCapabilities) -> list[int]:
        """Turn the site's deferred sign-offs into requests under its matrix now (in sign-off order).

        A plan whose window has a new version since is expanded to the new version when the change is under the
        site's threshold (the EHR never had the old one), and held for a new sign-off otherwise.
        """
        with self.store.transaction() as session:
            plans = list(
                session.scalars(
                    select(WriteIntent)
                    .where(WriteIntent.site_key == caps.key, WriteIntent.kind == "plan",
                           WriteIntent.state == "deferred")
                    .order_by(WriteIntent.id)
                )
            )  # fmt: skip
        created: list[int] = []
        for plan in plans:
            content = plan.payload["content"]
            record = self.window_record(caps.key, plan.outcome_window_id)
            new_state = None
            changed = record.version != content["outcome_version"]
            if changed and needs_new_signoff(caps, content["values"], signed_content(record)["values"]):
                new_state = "awaiting_signoff"
            record = dataclasses.replace(record, prior=None)  # the EHR never had an earlier version
            review = self.review_record(caps.key, record, encounter=content.get("encounter"),
                                        note_unit=content.get("note_unit", "mg/dL"),
                                        signer_name=content.get("signer_name"))  # fmt: skip
            if review.refusal:
                self._finish_plan(plan.id, "failed", f"cannot be written at {caps.key}: {review.refusal}")
                continue
            assert plan.signoff_id is not None
            self._enqueue(review, plan.signoff_id, corrects_intents={}, state=new_state)
            self._finish_plan(plan.id, "expanded", f"expanded into {len(review.writes)} write(s) v{review.version}")
            created.append(plan.id)
        return created

    def _finish_plan(self, intent_id: int, state: str, detail: str) -> None:
        now = self._now()
        with self.store.transaction() as session:
            intent = session.get(WriteIntent, intent_id)
            assert intent is not None
            intent.state = state
            intent.updated_at = now
            intent.last_error = detail if state == "failed" else None
            queue._attempt(session, intent, now, state, detail=detail)

    def propose_corrections(self, site: str) -> list[int]:
        """For each signed window with a newer current version: the correction writes (see the module docstring).

        Returns the ids of the correction intents created (queued, or awaiting_signoff)."""
        caps = self.capabilities.get(site)
        with self.store.transaction() as session:
            rows = session.execute(
                select(SignOff.id, SignOff.outcome_window_id, SignOff.plan)
                .join(OutcomeWindow, OutcomeWindow.id == SignOff.outcome_window_id)
                .where(SignOff.site_key == site, OutcomeWindow.status != "current")
                .order_by(SignOff.id)
            ).all()
        created: list[int] = []
        for signoff_id, window_id, plan in rows:
            if self._handled(site, window_id):
                continue
            record = self.window_record(site, window_id)
            with self.store.transaction() as session:
                newer = session.scalar(
                    select(func.count()).where(SignOff.site_key == site,
                                               SignOff.outcome_window_id == int(record.extra["outcome_window_id"]))
                )  # fmt: skip
                done = session.scalar(
                    select(func.count()).where(
                        WriteIntent.site_key == site,
                        WriteIntent.outcome_window_id == int(record.extra["outcome_window_id"]),
                    )
                )
            if newer or done or not caps.write.writes:
                continue  # signed again already, corrections made already, or nothing can be written now
            old_values = plan["content"]["values"]
            new_values = signed_content(record)["values"]
            resign = needs_new_signoff(caps, old_values, new_values)
            content = plan["content"]
            review = self.review_record(site, record, encounter=content.get("encounter"),
                                        note_unit=content.get("note_unit", "mg/dL"),
                                        signer_name=content.get("signer_name"))  # fmt: skip
            if review.refusal:
                audit(self.store, "writeback.correction", outcome="refused", site=site, signoff=signoff_id,
                      reason=review.refusal)  # fmt: skip
                continue
            self._enqueue(review, signoff_id, corrects_intents=self._intents_of(signoff_id),
                          state="awaiting_signoff" if resign else "queued")  # fmt: skip
            with self.store.transaction() as session:
                ids = list(
                    session.scalars(
                        select(WriteIntent.id).where(WriteIntent.outcome_window_id == review.outcome_window_id,
                                                     WriteIntent.site_key == site)
                    )
                )  # fmt: skip
            created += ids
            audit(self.store, "writeback.correction", outcome="held" if resign else "queued", site=site,
                  signoff=signoff_id, version=review.version, intents=ids)  # fmt: skip
        return created

    def _handled(self, site: str, window_id: int) -> bool:
        """Cheaply: the window's current version is signed or has writes already (nothing to recompute)."""
        with self.store.transaction() as session:
            window = session.get(OutcomeWindow, window_id)
            if window is None or window.status == "stale":
                return False  # a stale window must be recomputed to know
            current = session.scalar(
                select(OutcomeWindow.id).where(
                    OutcomeWindow.patient_id == window.patient_id, OutcomeWindow.status == "current",
                    OutcomeWindow.window_start_ms == window.window_start_ms,
                    OutcomeWindow.window_end_ms == window.window_end_ms,
                    OutcomeWindow.policy_hash == window.policy_hash,
                )
            )  # fmt: skip
            if current is None:
                return True
            signed = session.scalar(select(func.count()).where(SignOff.site_key == site,
                                                               SignOff.outcome_window_id == current))  # fmt: skip
            written = session.scalar(select(func.count()).where(WriteIntent.site_key == site,
                                                                WriteIntent.outcome_window_id == current))  # fmt: skip
            return bool(signed or written)

    def _held(self, site: str, patient: str) -> list[WriteIntent]:
        with self.store.transaction() as session:
            return list(
                session.scalars(
                    select(WriteIntent)
                    .where(WriteIntent.site_key == site, WriteIntent.patient_public_id == patient,
                           WriteIntent.state == "awaiting_signoff")
                    .order_by(WriteIntent.id)
                )
            )  # fmt: skip

    def held_record(self, site: str, patient: str) -> OutcomeRecord | None:
        """The current version of the window whose corrections await a new signature (None when none do)."""
        held = self._held(site, patient)
        return None if not held else self.window_record(site, held[0].outcome_window_id)

    def review_correction(
        self,
        site: str,
        patient: str,
        *,
        encounter: str | None = None,
        note_unit: str = "mg/dL",
        signer_name: str | None = None,
        visit_note: str | None = None,
    ) -> Review | None:
        """The plan of the corrections held for a new signature: the held window's current version, planned
        under the matrix now and this launch's encounter and unit (None when nothing is held)."""
        record = self.held_record(site, patient)
        if record is None:
            return None
        return self.review_record(site, record, encounter=encounter, note_unit=note_unit, signer_name=signer_name,
                                  visit_note=visit_note)  # fmt: skip

    def sign_correction(
        self,
        site: str,
        patient: str,
        *,
        digest: str,
        signer: str,
        encounter: str | None = None,
        note_unit: str = "mg/dL",
        handle: str | None = None,
        signer_name: str | None = None,
        visit_note: str | None = None,
    ) -> SignOffView:
        """A new sign-off for the corrections held `awaiting_signoff`; exactly the reviewed plan is sent under it.

        The held writes take the reviewed requests (matched by kind and metrics: they were never sent); a reviewed
        request with no held counterpart is queued anew, a held one with no reviewed counterpart is cancelled."""
        if not signer.strip():
            raise PlanError("a sign-off needs the signer's identity (the launch has no fhirUser)")
        review = self.review_correction(
            site, patient, encounter=encounter, note_unit=note_unit, signer_name=signer_name, visit_note=visit_note
        )
        if review is None:
            raise PlanError("no correction is waiting for a signature for this patient")
        if review.digest != digest:
            audit(self.store, "writeback.sign", outcome="refused", site=site, actor=signer, handle=handle,
                  reason="stale review", correction=True)  # fmt: skip
            raise StaleReviewError("the correction changed since you reviewed it: review again")
        if review.refusal:
            raise PlanError(review.refusal)
        held = self._held(site, patient)
        corrects = held[0].signoff_id
        signoff_id = self._store_signoff(review, signer, handle, corrects)
        now = self._now()
        by_item = {(w.kind, tuple(w.metrics)): w for w in review.writes}
        state = "deferred" if review.deferred else "queued"
        with self.store.transaction() as session:
            rows = session.scalars(select(WriteIntent).where(WriteIntent.id.in_([h.id for h in held])))
            for intent in rows:
                write = by_item.pop((intent.kind, tuple(intent.payload.get("metrics", ()))), None)
                intent.signoff_id = signoff_id
                intent.updated_at = now
                intent.next_attempt_at = now
                if write is None:
                    intent.state = "cancelled"
                    queue._attempt(session, intent, now, "cancelled", detail=f"not in sign-off {signoff_id}")
                    continue
                intent.payload = write.as_json()
                intent.state = state
                queue._attempt(session, intent, now, state, detail=f"signed again (sign-off {signoff_id})")
        if by_item:  # the plan has requests the held corrections did not (e.g. the site's matrix grew)
            rest = dataclasses.replace(review, writes=tuple(by_item.values()))
            self._enqueue(rest, signoff_id, corrects_intents={})
        audit(self.store, "writeback.sign", outcome="allowed", site=site, actor=signer, handle=handle,
              signoff=signoff_id, version=review.version, corrects=corrects, digest=review.digest)  # fmt: skip
        return self.status(signoff_id)


def needs_new_signoff(caps: SiteCapabilities, old: dict[str, Any], new: dict[str, Any]) -> bool:
    """Whether a correction changes the picture enough that the clinician must sign it again."""
    c = caps.corrections

    def moved(key: str, limit: float) -> bool:
        a, b = old.get(key), new.get(key)
        if a is None or b is None:
            return a is not b
        return abs(float(a) - float(b)) >= limit

    bands = ("tir", "tar_l1", "tar_l2")
    below = ("tbr_l1", "tbr_l2")
    return (
        any(moved(k, c.resign_pp) for k in bands)
        or any(moved(k, c.resign_tbr_pp) for k in below)
        or moved("mean_glucose", c.resign_mean_mg_dl)
    )


__all__ = [
    "IntentView",
    "Review",
    "SignOffView",
    "StaleReviewError",
    "WritebackService",
    "needs_new_signoff",
]

"""The store's tables (SQLAlchemy 2 typed declarative). Migrations in migrations/ are generated from these.

Times of readings are integer milliseconds since the epoch (UTC), exactly as the engine takes them; times of
records (batches, quarantine, outcomes) are timezone-aware timestamps.
"""

from __future__ import annotations

import uuid
from datetime import datetime
from typing import Any

from sqlalchemy import (
    JSON,
    BigInteger,
    Boolean,
    DateTime,
    Float,
    ForeignKey,
    Index,
    Integer,
    MetaData,
    SmallInteger,
    String,
    Text,
    UniqueConstraint,
    Uuid,
    text,
)
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column

NAMING = {
    "ix": "ix_%(column_0_label)s",
    "uq": "uq_%(table_name)s_%(column_0_N_name)s",
    "ck": "ck_%(table_name)s_%(constraint_name)s",
    "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
    "pk": "pk_%(table_name)s",
}

# BIGINT primary keys on PostgreSQL, INTEGER (rowid) on SQLite.
BigId = BigInteger().with_variant(Integer(), "sqlite")
Timestamp = DateTime(timezone=True)


class Base(DeclarativeBase):
    metadata = MetaData(naming_convention=NAMING)


class Site(Base):
    """A hospital site (its capability matrix comes in sites/NAME.toml)."""

    __tablename__ = "sites"
    key: Mapped[str] = mapped_column(String(64), primary_key=True)
    name: Mapped[str] = mapped_column(String(200), default="")
    created_at: Mapped[datetime] = mapped_column(Timestamp)


class Patient(Base):
    """A person. `public_id` is glucobridge's own key; every feed key is a PatientIdentifier."""

    __tablename__ = "patients"
    id: Mapped[int] = mapped_column(BigId, primary_key=True, autoincrement=True)
    public_id: Mapped[str] = mapped_column(String(128), unique=True)
    tz: Mapped[str] = mapped_column(String(64), default="UTC")  # IANA zone for days, night and the AGP
    created_at: Mapped[datetime] = mapped_column(Timestamp)
    #: The site that first fed this patient: feeds of another site reach it only through an explicit, audited
    #: link (`glucobridge patient link`). None for patients created before sites owned their patients.
    site_key: Mapped[str | None] = mapped_column(String(64), index=True)
    #: How `tz` is known (bff.store.zones): cli | ehr | feed | site | inferred | unknown (then tz is UTC, loudly).
    tz_source: Mapped[str] = mapped_column(String(16), default="unknown", server_default="unknown")
    #: The readings' own UTC offsets seen so far: {"<minutes>": [first ms, last ms]} (what inference reads).
    tz_evidence: Mapped[dict[str, Any] | None] = mapped_column(JSON)
    #: As the EHR or the feed names the patient (for the chart artefacts); None until one has.
    name: Mapped[str | None] = mapped_column(String(200))
    family_name: Mapped[str | None] = mapped_column(String(100))  # the parts, for an HL7 v2 PID-5
    given_names: Mapped[str | None] = mapped_column(String(100))
    birth_date: Mapped[str | None] = mapped_column(String(10))
    mrn: Mapped[str | None] = mapped_column(String(64))


class PatientIdentifier(Base):
    """A key by which a feed knows the patient, always qualified by its issuer (`site:A:mrn`, `dexcom-user`)."""

    __tablename__ = "patient_identifiers"
    __table_args__ = (UniqueConstraint("issuer", "value"),)
    id: Mapped[int] = mapped_column(BigId, primary_key=True, autoincrement=True)
    patient_id: Mapped[int] = mapped_column(ForeignKey("patients.id"), index=True)
    site_key: Mapped[str | None] = mapped_column(ForeignKey("sites.key"))
    issuer: Mapped[str] = mapped_column(String(200))
    value: Mapped[str] = mapped_column(String(256))
    created_at: Mapped[datetime] = mapped_column(Timestamp)


class DeviceStream(Base):
    """A patient's CGM device stream: one per device model (engine.devices key; "" unknown)."""

    __tablename__ = "device_streams"
    __table_args__ = (UniqueConstraint("patient_id", "device_key"),)
    id: Mapped[int] = mapped_column(BigId, primary_key=True, autoincrement=True)
    patient_id: Mapped[int] = mapped_column(ForeignKey("patients.id"))
    device_key: Mapped[str] = mapped_column(String(32))
    created_at: Mapped[datetime] = mapped_column(Timestamp)


class SensorSession(Base):
    """A sensor session of a stream, when a feed names it; `started_ms` when its start is known."""

    __tablename__ = "sensor_sessions"
    __table_args__ = (UniqueConstraint("stream_id", "session_key"),)
    id: Mapped[int] = mapped_column(BigId, primary_key=True, autoincrement=True)
    stream_id: Mapped[int] = mapped_column(ForeignKey("device_streams.id"))
    session_key: Mapped[str] = mapped_column(String(128))
    started_ms: Mapped[int | None] = mapped_column(BigInteger)


class IngestBatch(Base):
    """One ingested input (a file or a message). Written in the same transaction as its readings."""

    __tablename__ = "ingest_batches"
    id: Mapped[int] = mapped_column(BigId, primary_key=True, autoincrement=True)
    site_key: Mapped[str] = mapped_column(ForeignKey("sites.key"))
    feed: Mapped[str] = mapped_column(String(16))
    source_name: Mapped[str] = mapped_column(String(500))
    content_sha256: Mapped[str] = mapped_column(String(64), index=True)
    #: SHA-256 of the content digest and everything that decides how the input is read (site, feed, --patient,
    #: parse options, the site's zone): an input already ingested whole under the same key is skipped
    #: (`bff.store.ingest`). NULL when the digest was not known before reading (a stream that cannot seek).
    input_sha256: Mapped[str | None] = mapped_column(String(64), index=True)
    started_at: Mapped[datetime] = mapped_column(Timestamp)
    finished_at: Mapped[datetime | None] = mapped_column(Timestamp)
    received: Mapped[int] = mapped_column(Integer, default=0)
    added: Mapped[int] = mapped_column(Integer, default=0)
    already_present: Mapped[int] = mapped_column(Integer, default=0)
    conflicts: Mapped[int] = mapped_column(Integer, default=0)
    quarantined: Mapped[int] = mapped_column(Integer, default=0)
    skipped: Mapped[dict[str, Any]] = mapped_column(JSON, default=dict)


class Reading(Base):
    """One glucose reading with its unit provenance. Never updated in value; never deleted.

    `reading_key` is deterministic (128 bits of a SHA-256 of site, feed, sender, patient and the feed's record
    key, or of the reading's identity), so re-ingesting an input adds nothing. A copy of the same reading from
    another feed is kept too, marked `duplicate_of` the copy that the precedence rule keeps, with the reason.

    `patient_id`, `stream_id`, `session_id` and `batch_id` carry no foreign-key constraint: on PostgreSQL each is
    a trigger per inserted row (the two on patient and stream were 40 % of a chunk's merge). Only the ingestor
    writes readings: the batch and the sessions are rows its own transaction creates, and before each chunk's
    merge one statement checks that every staged stream is a stream *of the reading's patient*
    (`bff.store.ingest`), which the two keys would not. Patients and device streams are never deleted.
    """

    __tablename__ = "readings"
    __table_args__ = (
        Index("ix_readings_stream_time", "patient_id", "stream_id", "observed_ms"),
        Index(
            "ix_readings_record_hash",
            "record_hash",
            postgresql_where=text("record_hash IS NOT NULL"),
            sqlite_where=text("record_hash IS NOT NULL"),
        ),
    )
    id: Mapped[int] = mapped_column(BigId, primary_key=True, autoincrement=True)
    reading_key: Mapped[uuid.UUID] = mapped_column(Uuid(), unique=True)
    patient_id: Mapped[int] = mapped_column(BigId)
    stream_id: Mapped[int] = mapped_column(BigId)
    session_id: Mapped[int | None] = mapped_column(BigInteger)
    observed_ms: Mapped[int] = mapped_column(BigInteger)
    value_mg_dl: Mapped[float] = mapped_column(Float)
    value_original: Mapped[float] = mapped_column(Float)
    unit_original: Mapped[str] = mapped_column(String(8))
    factor: Mapped[float] = mapped_column(Float)
    flag: Mapped[int] = mapped_column(SmallInteger, default=0)
    kind: Mapped[str] = mapped_column(String(16), default="cgm")  # cgm | scan
    ambiguous_time: Mapped[bool] = mapped_column(Boolean, default=False)
    source_feed: Mapped[str] = mapped_column(String(16))
    source_rank: Mapped[int] = mapped_column(SmallInteger)
    source_record_key: Mapped[str] = mapped_column(String(300), default="")
    #: 64 bits of SHA-256 of site, feed, sender and the feed's record key (NULL without a record key): finds the
    #: same record already filed for another patient (`bff.store.ingest`), which is quarantined, never merged.
    record_hash: Mapped[int | None] = mapped_column(BigInteger)
    stream_label: Mapped[str] = mapped_column(String(128), default="")
    batch_id: Mapped[int] = mapped_column(BigInteger)
    received_at: Mapped[datetime] = mapped_column(Timestamp)
    duplicate_of: Mapped[int | None] = mapped_column(ForeignKey("readings.id"))
    duplicate_reason: Mapped[str | None] = mapped_column(Text)
    extra: Mapped[dict[str, Any] | None] = mapped_column(JSON)


class ReadingConflict(Base):
    """The same reading key arrived with a different value: recorded, never a silent overwrite."""

    __tablename__ = "reading_conflicts"
    __table_args__ = (UniqueConstraint("reading_id", "incoming_value", "incoming_unit"),)
    id: Mapped[int] = mapped_column(BigId, primary_key=True, autoincrement=True)
    reading_id: Mapped[int] = mapped_column(ForeignKey("readings.id"), index=True)
    batch_id: Mapped[int] = mapped_column(ForeignKey("ingest_batches.id"))
    incoming_value: Mapped[float] = mapped_column(Float)
    incoming_unit: Mapped[str] = mapped_column(String(8))
    detected_at: Mapped[datetime] = mapped_column(Timestamp)
    resolved_at: Mapped[datetime | None] = mapped_column(Timestamp)


class QuarantineItem(Base):
    """A record that could not be ingested, with the reason and everything needed to retry it."""

    __tablename__ = "quarantine"
    __table_args__ = (UniqueConstraint("site_key", "feed", "payload_sha256"),)
    id: Mapped[int] = mapped_column(BigId, primary_key=True, autoincrement=True)
    site_key: Mapped[str] = mapped_column(ForeignKey("sites.key"))
    feed: Mapped[str] = mapped_column(String(16))
    batch_id: Mapped[int | None] = mapped_column(ForeignKey("ingest_batches.id"))
    locator: Mapped[str] = mapped_column(String(200), default="")
    reason: Mapped[str] = mapped_column(Text)
    payload: Mapped[str] = mapped_column(Text)
    context: Mapped[str] = mapped_column(Text, default="")
    payload_sha256: Mapped[str] = mapped_column(String(64))
    patient_public_id: Mapped[str | None] = mapped_column(String(128))
    first_seen: Mapped[datetime] = mapped_column(Timestamp)
    last_seen: Mapped[datetime] = mapped_column(Timestamp)
    seen_count: Mapped[int] = mapped_column(Integer, default=1)
    resolved_at: Mapped[datetime | None] = mapped_column(Timestamp)
    resolution: Mapped[str | None] = mapped_column(Text)


class OutcomeWindow(Base):
    """An outcome computed for a patient and window under a policy: versioned, never deleted.

    `status`: current (the latest for its window and policy), superseded (a later version replaced it), or
    stale (readings arrived for its window since; `glucobridge recompute --stale` writes the next version).
    `input_digest` is the SHA-256 of the canonical NDJSON of exactly the readings used.
    """

    __tablename__ = "outcome_windows"
    __table_args__ = (
        UniqueConstraint("patient_id", "window_start_ms", "window_end_ms", "policy_hash", "version"),
        Index("ix_outcome_windows_lookup", "patient_id", "status"),
    )
    id: Mapped[int] = mapped_column(BigId, primary_key=True, autoincrement=True)
    patient_id: Mapped[int] = mapped_column(ForeignKey("patients.id"))
    window_start_ms: Mapped[int] = mapped_column(BigInteger)
    window_end_ms: Mapped[int] = mapped_column(BigInteger)
    window_spec: Mapped[dict[str, Any]] = mapped_column(JSON)
    tz: Mapped[str] = mapped_column(String(64))
    policy_hash: Mapped[str] = mapped_column(String(64))
    policy: Mapped[dict[str, Any]] = mapped_column(JSON)
    engine_version: Mapped[str] = mapped_column(String(16))
    method: Mapped[str] = mapped_column(String(8))
    metrics: Mapped[dict[str, Any]] = mapped_column(JSON)
    document: Mapped[dict[str, Any]] = mapped_column(JSON)
    input_digest: Mapped[str] = mapped_column(String(64))
    readings_used: Mapped[int] = mapped_column(Integer)
    version: Mapped[int] = mapped_column(Integer)
    status: Mapped[str] = mapped_column(String(16))
    supersedes_id: Mapped[int | None] = mapped_column(ForeignKey("outcome_windows.id"))
    created_at: Mapped[datetime] = mapped_column(Timestamp)
    stale_since: Mapped[datetime | None] = mapped_column(Timestamp)
    #: Why it went stale ("readings arrived …", "zone changed from … to …"), and why this version exists.
    stale_reason: Mapped[str | None] = mapped_column(Text)
    reason: Mapped[str | None] = mapped_column(Text)


class OutcomeArtifact(Base):
    """A resource or message made from an outcome window (an Observation identifier, an MSH-10, a PDF digest).

    `glucobridge verify` finds the window behind an artefact that does not carry its own raw data (a single
    Observation, an ORU^R01 message) by this key; the write path (issue 6) records its writes against it.
    """

    __tablename__ = "outcome_artifacts"
    __table_args__ = (UniqueConstraint("key"),)
    id: Mapped[int] = mapped_column(BigId, primary_key=True, autoincrement=True)
    key: Mapped[str] = mapped_column(String(200))  # "<identifier system>|<value>" or "hl7v2|<MSH-10>"
    outcome_window_id: Mapped[int] = mapped_column(ForeignKey("outcome_windows.id"), index=True)
    kind: Mapped[str] = mapped_column(String(32))  # fhir-observation, hl7v2-message, pdf, note, bundle
    metric: Mapped[str] = mapped_column(String(64), default="")
    created_at: Mapped[datetime] = mapped_column(Timestamp)


class AuditEvent(Base):
    """A security-relevant event (a refused launch, a request for another patient, a missing CSRF token, ...).

    Kept in the database, never in the logs: `detail` may name a patient, the logs must not. Events that may come
    in floods (wrong passwords, unauthenticated launch noise) are counted (`bff.audit.audit_counted`): identical
    ones within a minute share one row, named by `bucket`, whose `count` goes up and `last_at` moves on; every
    other event is a row of its own (`count` 1, no `bucket`).
    """

    __tablename__ = "audit_events"
    id: Mapped[int] = mapped_column(BigId, primary_key=True, autoincrement=True)
    at: Mapped[datetime] = mapped_column(Timestamp, index=True)
    event: Mapped[str] = mapped_column(String(64))
    outcome: Mapped[str] = mapped_column(String(16))  # allowed | refused
    site_key: Mapped[str | None] = mapped_column(String(64))
    actor: Mapped[str | None] = mapped_column(String(200))
    launch: Mapped[str | None] = mapped_column(String(64))  # a hash of the launch handle, never the handle
    detail: Mapped[dict[str, Any]] = mapped_column(JSON, default=dict)
    client: Mapped[str | None] = mapped_column(String(64))  # the client's IP address, where it matters
    count: Mapped[int] = mapped_column(Integer, default=1, server_default=text("1"))
    last_at: Mapped[datetime | None] = mapped_column(Timestamp)  # a counted row: its latest occurrence
    bucket: Mapped[str | None] = mapped_column(String(64), unique=True)  # a counted row: digest of what it counts


class SiteOverride(Base):
    """A run-time change to a site's capability matrix (sites/NAME.toml): one value per dotted key path.

    Set and cleared only through `bff.capabilities.CapabilityService`, which validates the merged matrix first
    and audits the change (old and new value, who, why).
    """

    __tablename__ = "site_overrides"
    __table_args__ = (UniqueConstraint("site_key", "path"),)
    id: Mapped[int] = mapped_column(BigId, primary_key=True, autoincrement=True)
    site_key: Mapped[str] = mapped_column(String(64), index=True)
    path: Mapped[str] = mapped_column(String(200))
    value: Mapped[Any] = mapped_column(JSON)
    who: Mapped[str] = mapped_column(String(200))
    reason: Mapped[str] = mapped_column(Text)
    set_at: Mapped[datetime] = mapped_column(Timestamp)


class WriteIntent(Base):
    """A clinician-signed write waiting to reach an EHR exactly once (the outbox, issue 6).

    `idempotency_key` is site|patient|kind|metric-set|window|version: enqueueing the same write again returns the
    existing intent. `state`: queued → sending → confirmed | failed | unknown (reconcile by reading back) |
    queued again (retry at `next_attempt_at`); queued ↔ deferred while the site is read-only; awaiting_signoff
    (a correction that needs a new sign-off) and cancelled (by a person, audited). `payload` is exactly the
    request the clinician reviewed and signed (`signoff_id`); `lease_expires_at` bounds a claim: a worker that
    died mid-send leaves an expired lease, and the intent becomes unknown (read back before any resend).
    """

    __tablename__ = "write_intents"
    __table_args__ = (
        UniqueConstraint("idempotency_key"),
        Index("ix_write_intents_due", "site_key", "state", "next_attempt_at"),
    )
    id: Mapped[int] = mapped_column(BigId, primary_key=True, autoincrement=True)
    idempotency_key: Mapped[str] = mapped_column(String(500))
    site_key: Mapped[str] = mapped_column(String(64))
    patient_public_id: Mapped[str] = mapped_column(String(128))
    outcome_window_id: Mapped[int] = mapped_column(ForeignKey("outcome_windows.id"), index=True)
    kind: Mapped[str] = mapped_column(String(16))  # flowsheet | observations | note | pdf | hl7v2
    payload: Mapped[dict[str, Any]] = mapped_column(JSON)
    state: Mapped[str] = mapped_column(String(16))  # queued | sending | confirmed | failed | unknown | deferred
    attempts: Mapped[int] = mapped_column(Integer, default=0)
    next_attempt_at: Mapped[datetime] = mapped_column(Timestamp)
    last_error: Mapped[str | None] = mapped_column(Text)
    created_at: Mapped[datetime] = mapped_column(Timestamp)
    updated_at: Mapped[datetime] = mapped_column(Timestamp)
    confirmed_at: Mapped[datetime | None] = mapped_column(Timestamp)
    remote_id: Mapped[str | None] = mapped_column(String(200))
    channel: Mapped[str] = mapped_column(String(8), default="fhir", server_default="fhir")  # fhir | hl7v2
    signoff_id: Mapped[int | None] = mapped_column(ForeignKey("signoffs.id"), index=True)
    corrects_id: Mapped[int | None] = mapped_column(ForeignKey("write_intents.id"))
    lease_expires_at: Mapped[datetime | None] = mapped_column(Timestamp)


class SignOff(Base):
    """A clinician's signature on exactly what will be written (who, when, what). Immutable once stored.

    `plan` is the reviewed write plan (every request body or message, as sent) and `plan_digest` its SHA-256 over
    canonical JSON; the database refuses UPDATE and DELETE on this table (triggers in the migration).
    """

    __tablename__ = "signoffs"
    id: Mapped[int] = mapped_column(BigId, primary_key=True, autoincrement=True)
    site_key: Mapped[str] = mapped_column(String(64), index=True)
    patient_public_id: Mapped[str] = mapped_column(String(128), index=True)
    outcome_window_id: Mapped[int] = mapped_column(ForeignKey("outcome_windows.id"), index=True)
    outcome_version: Mapped[int] = mapped_column(Integer)
    signer: Mapped[str] = mapped_column(String(300))  # the launch's fhirUser (e.g. Practitioner/123)
    signer_name: Mapped[str | None] = mapped_column(String(300))  # as the fhirUser resource names them ("…, MD")
    signed_at: Mapped[datetime] = mapped_column(Timestamp)
    launch_ref: Mapped[str | None] = mapped_column(String(64))  # a digest of the launch handle, never the handle
    write_mode: Mapped[str] = mapped_column(String(16))  # the site's effective mode when signed
    plan: Mapped[dict[str, Any]] = mapped_column(JSON)
    plan_digest: Mapped[str] = mapped_column(String(64))
    corrects_signoff_id: Mapped[int | None] = mapped_column(ForeignKey("signoffs.id"))


class WriteAttempt(Base):
    """One transition of a write intent (claimed, retry, unknown, confirmed, failed, deferred, released)."""

    __tablename__ = "write_attempts"
    id: Mapped[int] = mapped_column(BigId, primary_key=True, autoincrement=True)
    intent_id: Mapped[int] = mapped_column(ForeignKey("write_intents.id"), index=True)
    at: Mapped[datetime] = mapped_column(Timestamp)
    outcome: Mapped[str] = mapped_column(String(16))
    status_code: Mapped[int | None] = mapped_column(Integer)
    detail: Mapped[str | None] = mapped_column(Text)


class AdminUser(Base):
    """A named account of the /admin pages (`bff.admin`): there is no shared password.

    `password_hash` is scrypt with a per-user salt (`bff.admin.passwords`). `failed_count` counts wrong passwords
    in a row; reaching the lockout threshold sets `locked_until` (and starts the count again). A disabled account
    cannot sign in; its sessions are gone.
    """

    __tablename__ = "admin_users"
    id: Mapped[int] = mapped_column(BigId, primary_key=True, autoincrement=True)
    name: Mapped[str] = mapped_column(String(64), unique=True)
    password_hash: Mapped[str] = mapped_column(String(255))
    created_at: Mapped[datetime] = mapped_column(Timestamp)
    password_changed_at: Mapped[datetime] = mapped_column(Timestamp)
    disabled_at: Mapped[datetime | None] = mapped_column(Timestamp)
    failed_count: Mapped[int] = mapped_column(Integer, default=0, server_default=text("0"))
    locked_until: Mapped[datetime | None] = mapped_column(Timestamp)
    last_login_at: Mapped[datetime | None] = mapped_column(Timestamp)


class AdminSession(Base):
    """A signed-in /admin browser: named by the SHA-256 of its cookie (the cookie itself is never stored), with
    its own CSRF token. It ends after `idle` without a request, at `expires_at`, at sign-out, or when its account
    is disabled or its password reset. Nothing about patients is kept here."""

    __tablename__ = "admin_sessions"
    token_sha256: Mapped[str] = mapped_column(String(64), primary_key=True)
    user_id: Mapped[int] = mapped_column(ForeignKey("admin_users.id", ondelete="CASCADE"), index=True)
    csrf_token: Mapped[str] = mapped_column(String(64))
    created_at: Mapped[datetime] = mapped_column(Timestamp)
    last_seen_at: Mapped[datetime] = mapped_column(Timestamp)
    expires_at: Mapped[datetime] = mapped_column(Timestamp, index=True)


class AdminLoginFailures(Base):
    """Failed /admin sign-ins per client address and fixed time window: the per-client throttle, shared by every
    app process."""

    __tablename__ = "admin_login_failures"
    client: Mapped[str] = mapped_column(String(64), primary_key=True)
    window_start: Mapped[datetime] = mapped_column(Timestamp, primary_key=True)
    count: Mapped[int] = mapped_column(Integer, default=0)


class BulkJob(Base):
    """One Bulk Data `$export` of a site (bff.bulk), from kick-off to the last file ingested.

    `state`: kicking_off → exporting (polling `status_url`) → downloading (`manifest` kept) → complete | failed |
    cancelled. `slot` is the site's concurrent-job slot (0 … `[bulk] max_concurrent` − 1) held while the job is
    active, NULL once it ends: the unique (site_key, slot) makes "at most max_concurrent jobs" hold across processes.
    `scope` names what the `_since` watermark is kept for ("group:<id>", "patient", "system"). `exports` counts
    kick-offs (a job whose files expired exports again). The lease (`lease_owner` = host:pid) keeps two processes
    from driving one job; a lease whose process is gone (`kill -9`) is taken over by `glucobridge bulk resume`.
    """

    __tablename__ = "bulk_jobs"
    __table_args__ = (UniqueConstraint("site_key", "slot"), Index("ix_bulk_jobs_site_state", "site_key", "state"))
    id: Mapped[int] = mapped_column(BigId, primary_key=True, autoincrement=True)
    site_key: Mapped[str] = mapped_column(String(64))
    scope: Mapped[str] = mapped_column(String(200))
    state: Mapped[str] = mapped_column(String(16))
    slot: Mapped[int | None] = mapped_column(Integer)
    kickoff_url: Mapped[str] = mapped_column(Text)
    since: Mapped[datetime | None] = mapped_column(Timestamp)
    status_url: Mapped[str | None] = mapped_column(Text)
    progress: Mapped[str | None] = mapped_column(String(200))
    manifest: Mapped[dict[str, Any] | None] = mapped_column(JSON)
    transaction_time: Mapped[datetime | None] = mapped_column(Timestamp)
    exports: Mapped[int] = mapped_column(Integer, default=1)
    error: Mapped[str | None] = mapped_column(Text)
    lease_owner: Mapped[str | None] = mapped_column(String(200))
    lease_expires_at: Mapped[datetime | None] = mapped_column(Timestamp)
    created_at: Mapped[datetime] = mapped_column(Timestamp)
    updated_at: Mapped[datetime] = mapped_column(Timestamp)
    finished_at: Mapped[datetime | None] = mapped_column(Timestamp)


class BulkFile(Base):
    """A file of a Bulk Data manifest and how far it got: pending → done (ingested, or quarantined for an error
    file), expired (the server dropped it: the job exported again), failed (after every retry). `export_no` is
    the kick-off whose manifest listed it; `kind` output | error | deleted; `position` its index in that list."""

    __tablename__ = "bulk_files"
    __table_args__ = (UniqueConstraint("job_id", "export_no", "kind", "position"),)
    id: Mapped[int] = mapped_column(BigId, primary_key=True, autoincrement=True)
    job_id: Mapped[int] = mapped_column(ForeignKey("bulk_jobs.id", ondelete="CASCADE"), index=True)
    export_no: Mapped[int] = mapped_column(Integer)
    kind: Mapped[str] = mapped_column(String(8))
    position: Mapped[int] = mapped_column(Integer)
    resource_type: Mapped[str] = mapped_column(String(64))
    url: Mapped[str] = mapped_column(Text)
    expected_count: Mapped[int | None] = mapped_column(Integer)
    state: Mapped[str] = mapped_column(String(16))
    attempts: Mapped[int] = mapped_column(Integer, default=0)
    lines: Mapped[int | None] = mapped_column(Integer)
    sha256: Mapped[str | None] = mapped_column(String(64))
    batch_id: Mapped[int | None] = mapped_column(Integer)
    added: Mapped[int] = mapped_column(Integer, default=0)
    already_present: Mapped[int] = mapped_column(Integer, default=0)
    quarantined: Mapped[int] = mapped_column(Integer, default=0)
    error: Mapped[str | None] = mapped_column(Text)
    done_at: Mapped[datetime | None] = mapped_column(Timestamp)


class BulkWatermark(Base):
    """The `_since` of a site's next export of `scope`: the `transactionTime` of the last export that completed
    (advanced only then, so a failed or cancelled job never skips data)."""

    __tablename__ = "bulk_watermarks"
    site_key: Mapped[str] = mapped_column(String(64), primary_key=True)
    scope: Mapped[str] = mapped_column(String(200), primary_key=True)
    since: Mapped[datetime] = mapped_column(Timestamp)
    job_id: Mapped[int] = mapped_column(Integer)
    updated_at: Mapped[datetime] = mapped_column(Timestamp)


class Job(Base):
    """A job of the embedded queue (`bff.jobs.queue.StoreQueue`, used when there is no Redis): one row per job key.

    `key` names one job ("launch-read:<site>:<digest>", "nightly-bulk:<site>:<night>"): while it is queued or
    running, enqueueing the same key again changes nothing; once it is done or failed, enqueueing it again queues it
    anew on the same row, except `once` jobs, which a finished run closes for good. A worker claims a due job
    (PostgreSQL: FOR UPDATE SKIP LOCKED; SQLite: one guarded UPDATE under its single writer) with a lease it renews
    while the job runs; a lease that expires (its worker died) lets another worker take the job as a new attempt.
    `attempts` is the fencing token: a worker finishes a job only while the attempt it claimed is the current one.
    """

    __tablename__ = "jobs"
    __table_args__ = (
        UniqueConstraint("key"),
        Index("ix_jobs_due", "state", "run_at"),
    )
    id: Mapped[int] = mapped_column(BigId, primary_key=True, autoincrement=True)
    key: Mapped[str] = mapped_column(String(200))
    kind: Mapped[str] = mapped_column(String(32))
    payload: Mapped[dict[str, Any]] = mapped_column(JSON)
    state: Mapped[str] = mapped_column(String(16))  # queued | running | done | failed
    once: Mapped[bool] = mapped_column(Boolean, default=False)
    run_at: Mapped[datetime] = mapped_column(Timestamp)
    attempts: Mapped[int] = mapped_column(Integer, default=0)
    max_attempts: Mapped[int] = mapped_column(Integer, default=3)
    timeout_s: Mapped[float] = mapped_column(Float, default=60.0)
    worker: Mapped[str | None] = mapped_column(String(64))
    lease_expires_at: Mapped[datetime | None] = mapped_column(Timestamp)
    result: Mapped[dict[str, Any] | None] = mapped_column(JSON)
    error: Mapped[str | None] = mapped_column(Text)
    created_at: Mapped[datetime] = mapped_column(Timestamp)
    updated_at: Mapped[datetime] = mapped_column(Timestamp)
    started_at: Mapped[datetime | None] = mapped_column(Timestamp)
    finished_at: Mapped[datetime | None] = mapped_column(Timestamp)


class EhrRead(Base):
    """The launch-time reads of a patient's CGM Observations from a site's EHR (`bff.jobs.launch_read`), whatever
    queue runs them: what the view shows ("read from the EHR at 10:42"), polls while a read runs, and where the
    next read starts when the last one stopped at its time budget.

    `state`: queued | running | done (the EHR had nothing more) | incomplete (stopped at the time budget or the
    page limit: the next read continues) | failed (`error` says why, without PHI). `resume_from_ms`: where the next
    read starts when the last one stopped early over pages that were not in date order (else it starts after the
    last stored reading). `fhir_patient` is the EHR's `Patient/<id>`.
    """

    __tablename__ = "ehr_reads"
    __table_args__ = (UniqueConstraint("site_key", "fhir_patient"),)
    id: Mapped[int] = mapped_column(BigId, primary_key=True, autoincrement=True)
    site_key: Mapped[str] = mapped_column(String(64))
    fhir_patient: Mapped[str] = mapped_column(String(256))
    state: Mapped[str] = mapped_column(String(16))
    requested_at: Mapped[datetime] = mapped_column(Timestamp)
    started_at: Mapped[datetime | None] = mapped_column(Timestamp)
    finished_at: Mapped[datetime | None] = mapped_column(Timestamp)
    last_read_at: Mapped[datetime | None] = mapped_column(Timestamp)  # the last read that finished (done/incomplete)
    since_ms: Mapped[int | None] = mapped_column(BigInteger)  # where the latest read started
    resume_from_ms: Mapped[int | None] = mapped_column(BigInteger)
    pages: Mapped[int] = mapped_column(Integer, default=0)
    received: Mapped[int] = mapped_column(Integer, default=0)
    added: Mapped[int] = mapped_column(Integer, default=0)
    error: Mapped[str | None] = mapped_column(Text)


class StandardOutcome(Base):
    """A patient's standard window (the last 14, 30 or 90 local days up to the midnight after the last reading),
    materialized: what the view, export and cohorts read instead of computing it per request (bff.store.windows).

    One row per patient and period; `version` counts the computations whose document differed (0: never computed,
    `document` NULL). `readings_count`/`readings_max_id` are the watermark the document was computed from (the
    patient's CGM readings, which are never updated in value, moved or deleted: a new reading changes one of them),
    with `tz` and `engine_version`. `stale_since` set: newer readings, a zone change or a new engine; the row is
    shown with its age until the recompute job (claimed by `claimed_by` until `claim_expires_at`) writes it again.
    `digest` is the SHA-256 of the document's canonical JSON: chart caches and ETags are keyed by it.
    `raw_sha256`/`raw_sha1`/`raw_size` name the window's raw data (bff.store.rawdata: the canonical NDJSON of the
    readings used; its SHA-256 is the input digest) without storing it: an export references it by these.
    """

    __tablename__ = "standard_outcomes"
    __table_args__ = (
        UniqueConstraint("patient_id", "days"),
        Index("ix_standard_outcomes_stale", "stale_since"),
    )
    id: Mapped[int] = mapped_column(BigId, primary_key=True, autoincrement=True)
    patient_id: Mapped[int] = mapped_column(ForeignKey("patients.id"))
    days: Mapped[int] = mapped_column(SmallInteger)
    version: Mapped[int] = mapped_column(Integer, default=0)
    policy_hash: Mapped[str | None] = mapped_column(String(64))
    window_start_ms: Mapped[int | None] = mapped_column(BigInteger)
    window_end_ms: Mapped[int | None] = mapped_column(BigInteger)
    tz: Mapped[str | None] = mapped_column(String(64))
    document: Mapped[dict[str, Any] | None] = mapped_column(JSON)
    digest: Mapped[str | None] = mapped_column(String(64))
    engine_version: Mapped[str | None] = mapped_column(String(16))
    readings_count: Mapped[int | None] = mapped_column(Integer)
    readings_max_id: Mapped[int | None] = mapped_column(BigInteger)
    raw_sha256: Mapped[str | None] = mapped_column(String(64))
    raw_sha1: Mapped[str | None] = mapped_column(String(28))
    raw_size: Mapped[int | None] = mapped_column(BigInteger)
    computed_at: Mapped[datetime | None] = mapped_column(Timestamp)
    stale_since: Mapped[datetime | None] = mapped_column(Timestamp)
    stale_reason: Mapped[str | None] = mapped_column(Text)
    claimed_by: Mapped[str | None] = mapped_column(String(64))
    claim_expires_at: Mapped[datetime | None] = mapped_column(Timestamp)


class OutcomeSweep(Base):
    """How far the recompute job's watermark sweep has looked through `readings` (by id): readings above it that
    no ingestion hook reported still make their patient's standard outcomes stale (bff.store.windows.sweep)."""

    __tablename__ = "outcome_sweeps"
    name: Mapped[str] = mapped_column(String(32), primary_key=True)
    readings_id: Mapped[int] = mapped_column(BigInteger)
    pending_id: Mapped[int] = mapped_column(BigInteger)  # the high mark seen last time: the next sweep starts there
    updated_at: Mapped[datetime] = mapped_column(Timestamp)

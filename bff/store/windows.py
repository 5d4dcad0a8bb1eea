"""Standard outcomes, materialized: each patient's 14, 30 and 90 local days, computed once per change, read by all.

The view (bff.clinical), the chart fragments and the data API read a `StandardOutcome` row instead of computing
the document per request. A row is exactly what `OutcomeService.compute(public_id, WindowSpec(days=N),
save=False, include_traces=True)` gives at the time (tests/store/test_windows.py proves it on SQLite and
PostgreSQL), as canonical JSON, with its SHA-256 (`digest`: chart caches and ETags are keyed by it), the engine
version, the patient's zone, the readings watermark it was computed from and the digest of its raw data (the
SHA-256, SHA-1 and size of the canonical NDJSON of the readings used: bff.store.rawdata), so an export names the
raw data without reading it again.

How a row goes stale, three ways, any one enough:

1. **a hook**: ingestion calls `mark_stale(session, patient_ids)` in the transaction that stores the readings
   (zone changes do it in `bff.store.zones.apply`); a patient's first readings make its rows (pending: no document);
2. **the watermark sweep** (`sweep`, each recompute job): readings whose id is above the sweep mark name their
   patients; a patient whose rows were computed from fewer readings (`readings_max_id` below theirs) is stale. The
   mark lags one sweep behind the highest id seen, so a transaction still open at one sweep is seen by the next;
3. **at read time**: a row of another engine version or another zone than the patient's is shown as stale.

`refresh` recomputes stale rows in chunks, one `engine.compute_cohort` per chunk and period: it claims rows
(PostgreSQL `FOR UPDATE SKIP LOCKED`; SQLite a guarded UPDATE under its single writer) with a lease, so two
workers never compute one row, and a worker that died mid-chunk leaves rows that another claims when the lease ends.
A row is written back only by the claim that holds it, and it stays stale when readings arrived after the claim.
"""

from __future__ import annotations

import hashlib
import math
import os
import socket
import uuid
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

import numpy as np
import orjson
from numpy.typing import NDArray
from sqlalchemy import String, Table, and_, bindparam, cast, func, or_, select, text, update
from sqlalchemy.dialects.postgresql import insert as pg_insert
from sqlalchemy.dialects.sqlite import insert as sqlite_insert
from sqlalchemy.orm import Session

from bff.store.db import Store
from bff.store.models import OutcomeSweep, Patient, Reading, StandardOutcome
from bff.store.rawdata import RawDigest, canonical_lines, ndjson_of_lines
from engine import ENGINE_VERSION, NO_TIME, OutcomePolicy, ReadingTable, WindowSpec, compute_cohort, resolve_window
from engine.report import build_report

#: The periods the view offers (app.web.common.PERIODS), each materialized.
STANDARD_DAYS = (14, 30, 90)
#: Patients per `compute_cohort` call.
CHUNK = 200
#: How long a claim holds its rows (a chunk takes well under a second per hundred patients).
CLAIM = timedelta(minutes=5)
SWEEP = "readings"


@dataclass(frozen=True, slots=True)
class Materialized:
    """A stored standard outcome as the view reads it."""

    days: int
    version: int
    document: dict[str, Any] | None  # None: not read (`read(..., document=False)`); `document_of` reads it
    digest: str
    computed_at: datetime
    stale_since: datetime | None
    stale_reason: str | None

    @property
    def stale(self) -> bool:
        return self.stale_since is not None


@dataclass(frozen=True, slots=True)
class RefreshReport:
    claimed: int = 0  # rows this worker claimed
    computed: int = 0  # rows written
    changed: int = 0  # rows whose document changed (a new version)
    still_stale: int = 0  # written, but readings arrived after the claim: stale again


def canonical_json(document: Mapping[str, Any]) -> bytes:
    """The document as canonical JSON (keys sorted, no spaces; orjson: 13x json's speed on a 42 KiB document). A
    non-finite number in the metrics is refused, as json's allow_nan=False did (orjson would write null); the
    traces hold stored readings, which ingestion holds finite."""
    for key, value in document.get("metrics", {}).items():
        if isinstance(value, float) and not math.isfinite(value):
            raise ValueError(f"metric {key} is {value}: a document holds finite numbers only")
    return orjson.dumps(document, option=orjson.OPT_SORT_KEYS)


def document_digest(document: Mapping[str, Any]) -> str:
    return hashlib.sha256(canonical_json(document)).hexdigest()


def worker_name() -> str:
    return f"{socket.gethostname()[:40]}:{os.getpid()}"


def _utc(moment: datetime | None) -> datetime | None:
    """SQLite gives timestamps back naive (in UTC)."""
    if moment is None or moment.tzinfo is not None:
        return moment
    return moment.replace(tzinfo=UTC)


# MARK: staleness


def _insert(session: Session) -> Any:
    return pg_insert if session.get_bind().dialect.name == "postgresql" else sqlite_insert


def mark_stale(
    session: Session, patient_ids: Iterable[int], *, now: datetime | None = None, reason: str = "readings arrived"
) -> int:
    """The patients' standard outcomes are stale (made, pending, for a patient that has none yet). Call it in the
    transaction that stores their readings. Returns the rows it made stale."""
    ids = sorted({int(p) for p in patient_ids})
    if not ids:
        return 0
    now = now or datetime.now(UTC)
    insert = _insert(session)
    marked = 0
    for part in _parts(ids, 500):
        rows = [{"patient_id": p, "days": d, "version": 0, "stale_since": now, "stale_reason": reason}
                for p in part for d in STANDARD_DAYS]  # fmt: skip
        session.execute(insert(StandardOutcome).values(rows).on_conflict_do_nothing())
        # Every row of these patients: the stale mark moves on, so a recompute that claimed before it stays stale.
        result = session.execute(
            update(StandardOutcome)
            .where(StandardOutcome.patient_id.in_(part))
            .values(stale_since=now, stale_reason=reason)
        )
        marked += int(result.rowcount or 0)  # type: ignore[attr-defined]
    return marked


def sweep(session: Session, *, now: datetime | None = None) -> int:
    """Readings no hook reported (see the module): their patients' rows are made stale. Returns the patients."""
    now = now or datetime.now(UTC)
    mark = session.get(OutcomeSweep, SWEEP, with_for_update=True)
    high = int(session.scalar(select(func.max(Reading.id))) or 0)
    if mark is None:
        mark = OutcomeSweep(name=SWEEP, readings_id=0, pending_id=high, updated_at=now)
        session.add(mark)
        start = 0
    else:
        start = mark.readings_id
    latest = dict(
        session.execute(
            select(Reading.patient_id, func.max(Reading.id))
            .where(Reading.id > start, Reading.kind == "cgm")
            .group_by(Reading.patient_id)
        ).all()
    )
    stale: set[int] = set()
    if latest:
        known: dict[int, int | None] = {}
        for part in _parts(sorted(latest), 1000):
            known.update(
                session.execute(
                    select(StandardOutcome.patient_id, func.min(func.coalesce(StandardOutcome.readings_max_id, -1)))
                    .where(StandardOutcome.patient_id.in_(part), StandardOutcome.stale_since.is_(None))
                    .group_by(StandardOutcome.patient_id)
                ).all()
            )
        have = _patients_with_rows(session, latest)
        stale = {p for p, high_id in latest.items() if p not in have or (p in known and (known[p] or -1) < high_id)}
        mark_stale(session, stale, now=now, reason="readings arrived (found by the watermark sweep)")
    # A new engine: every fresh row of another version is stale.
    session.execute(
        update(StandardOutcome)
        .where(StandardOutcome.stale_since.is_(None), StandardOutcome.engine_version != ENGINE_VERSION)
        .values(stale_since=now, stale_reason=f"engine {ENGINE_VERSION}")
    )
    mark.readings_id, mark.pending_id, mark.updated_at = max(start, mark.pending_id), max(high, start), now
    return len(stale)


def _patients_with_rows(session: Session, patients: Iterable[int]) -> set[int]:
    have: set[int] = set()
    for part in _parts(sorted(patients), 1000):
        have.update(
            session.scalars(select(StandardOutcome.patient_id).where(StandardOutcome.patient_id.in_(part)).distinct())
        )
    return have


def _parts(items: Sequence[int], size: int) -> Iterable[Sequence[int]]:
    for start in range(0, len(items), size):
        yield items[start : start + size]


def pending(session: Session) -> bool:
    """Whether the recompute job has work: a stale row, or readings past the sweep mark."""
    if session.scalar(select(StandardOutcome.id).where(StandardOutcome.stale_since.is_not(None)).limit(1)):
        return True
    mark = session.get(OutcomeSweep, SWEEP)
    high = session.scalar(select(func.max(Reading.id)))
    return high is not None and (mark is None or high > mark.pending_id or mark.readings_id < mark.pending_id)


def stale_count(session: Session) -> int:
    return int(session.scalar(select(func.count()).where(StandardOutcome.stale_since.is_not(None))) or 0)


# MARK: reading


def read(session: Session, patient: Patient, days: int, *, document: bool = True) -> Materialized | None:
    """The stored standard outcome (None when it was never computed); stale also when the patient's zone or the
    engine changed since. Without `document` the document (most of the row's size) is not read: a caller that
    has what it shows cached by the digest needs the rest only."""
    row = session.execute(
        select(*outcome_columns(document=document))
        .where(StandardOutcome.patient_id == patient.id, StandardOutcome.days == days)
    ).first()  # fmt: skip
    return None if row is None else materialized(row, days, patient.tz, document=document)


def outcome_columns(*, document: bool) -> tuple[Any, ...]:
    """The columns `materialized` reads (labelled `so_*`), for a caller that selects them with others (the view
    reads the patient and its outcome in one statement: `bff.clinical`)."""
    t = StandardOutcome.__table__.c
    body = t.document if document else t.document.is_not(None)
    return (t.version.label("so_version"), body.label("so_document"), t.digest.label("so_digest"),
            t.computed_at.label("so_computed_at"), t.stale_since.label("so_stale_since"),
            t.stale_reason.label("so_stale_reason"), t.tz.label("so_tz"),
            t.engine_version.label("so_engine_version"))  # fmt: skip


def materialized(row: Any, days: int, patient_tz: str | None, *, document: bool) -> Materialized | None:
    """A row of `outcome_columns` as the view shows it: None when never computed (or outer-joined and absent);
    stale also when the patient's zone or the engine changed since it was computed."""
    if (row.so_document is None if document else not row.so_document) or row.so_computed_at is None:
        return None
    stale_since, reason = _utc(row.so_stale_since), row.so_stale_reason
    if stale_since is None and row.so_tz != patient_tz:
        stale_since, reason = _utc(row.so_computed_at), f"zone changed from {row.so_tz} to {patient_tz}"
    if stale_since is None and row.so_engine_version != ENGINE_VERSION:
        stale_since, reason = _utc(row.so_computed_at), f"engine {row.so_engine_version} → {ENGINE_VERSION}"
    computed_at = _utc(row.so_computed_at)
    assert computed_at is not None
    kept = row.so_document if document else None
    return Materialized(days, row.so_version, kept, str(row.so_digest), computed_at, stale_since, reason)


def document_of(session: Session, patient_id: int, days: int, digest: str) -> dict[str, Any] | None:
    """The stored document of the patient's period while its digest is `digest` (None once it changed)."""
    found = session.scalar(
        select(StandardOutcome.document).where(StandardOutcome.patient_id == patient_id,
                                               StandardOutcome.days == days, StandardOutcome.digest == digest)
    )  # fmt: skip
    return found if isinstance(found, dict) else None


@dataclass(frozen=True, slots=True)
class StoredSummary:
    """A stored standard outcome without its daily traces: what an export or a cohort list needs of it."""

    row_id: int
    public_id: str
    days: int
    version: int
    digest: str
    window_start_ms: int | None
    window_end_ms: int | None
    tz: str | None
    engine_version: str | None
    policy_hash: str | None
    stale: bool
    document: dict[str, Any]  # the document's `metrics` and `sufficiency` only
    site: str | None  # the patient's site
    computed_at: datetime
    raw: RawDigest | None  # None only for a row computed before raw digests were stored (it is stale)


def summaries(session: Session, days: int, *, after: int = 0, limit: int = 500) -> list[StoredSummary]:
    """One page of computed standard outcomes of a period, by row id after `after`. Only the document's metrics
    and sufficiency are read from the database (not the traces, which are most of its size)."""
    rows = session.execute(
        select(StandardOutcome.id, Patient.public_id, StandardOutcome.version, StandardOutcome.digest,
               StandardOutcome.window_start_ms, StandardOutcome.window_end_ms, StandardOutcome.tz,
               StandardOutcome.engine_version, StandardOutcome.policy_hash, StandardOutcome.stale_since,
               StandardOutcome.document["metrics"], StandardOutcome.document["sufficiency"], Patient.site_key,
               StandardOutcome.computed_at, StandardOutcome.raw_sha256, StandardOutcome.raw_sha1,
               StandardOutcome.raw_size)
        .join(Patient, Patient.id == StandardOutcome.patient_id)
        .where(StandardOutcome.days == days, StandardOutcome.id > after, StandardOutcome.digest.is_not(None))
        .order_by(StandardOutcome.id)
        .limit(limit)
    ).all()  # fmt: skip
    return [
        StoredSummary(row_id=r[0], public_id=r[1], days=days, version=r[2], digest=str(r[3]), window_start_ms=r[4],
                      window_end_ms=r[5], tz=r[6], engine_version=r[7], policy_hash=r[8], stale=r[9] is not None,
                      document={"metrics": r[10], "sufficiency": r[11]}, site=r[12],
                      computed_at=_utc(r[13]) or datetime.now(UTC),
                      raw=None if r[14] is None else RawDigest(r[14], r[15], int(r[16])))
        for r in rows
    ]  # fmt: skip


# MARK: recomputing


def claim(
    session: Session,
    owner: str,
    limit: int,
    *,
    now: datetime | None = None,
    before: datetime | None = None,
    among: Sequence[int] | None = None,
) -> list[int]:
    """Claim up to `limit` stale rows nobody holds (or whose holder's lease ended), stale since `before` at the
    latest when given, of the rows `among` when given. Returns their ids."""
    now = now or datetime.now(UTC)
    claimable = and_(
        StandardOutcome.stale_since.is_not(None),
        or_(StandardOutcome.claim_expires_at.is_(None), StandardOutcome.claim_expires_at < now),
    )
    if before is not None:
        claimable = and_(claimable, StandardOutcome.stale_since <= before)
    if among is not None:
        claimable = and_(claimable, StandardOutcome.id.in_(among))
    query = select(StandardOutcome.id).where(claimable).order_by(StandardOutcome.stale_since).limit(limit)
    if session.get_bind().dialect.name == "postgresql":
        query = query.with_for_update(skip_locked=True)
    ids = list(session.scalars(query))
    if not ids:
        return []
    session.execute(
        update(StandardOutcome)
        .where(StandardOutcome.id.in_(ids), claimable)  # re-checked: a row another claim took since is left alone
        .values(claimed_by=owner, claim_expires_at=now + CLAIM)
    )
    return list(session.scalars(select(StandardOutcome.id).where(StandardOutcome.id.in_(ids),
                                                                   StandardOutcome.claimed_by == owner)))  # fmt: skip


def _token(owner: str) -> str:
    """One claim's holder: the worker and a random part (a worker's claims never share a token)."""
    return f"{owner}:{uuid.uuid4().hex[:8]}"[:64]


def refresh(store: Store, *, limit: int | None = None, chunk: int = CHUNK, owner: str | None = None) -> RefreshReport:
    """Recompute stale standard outcomes, a chunk at a time, until none is left to claim (or `limit` rows). Rows
    that went stale after the call began are left for the next call, so readings arriving all the time cannot keep
    one call going."""
    total = RefreshReport()
    owner_base = owner or worker_name()
    began = datetime.now(UTC)
    while limit is None or total.claimed < limit:
        token = _token(owner_base)
        claimed_at = datetime.now(UTC)
        size = chunk * len(STANDARD_DAYS) if limit is None else min(chunk * len(STANDARD_DAYS), limit - total.claimed)
        with store.transaction() as session:
            ids = claim(session, token, size, now=claimed_at, before=began)
        if not ids:
            break
        with store.transaction() as session:
            done = _recompute(session, ids, token, claimed_at)
        total = RefreshReport(
            total.claimed + len(ids),
            total.computed + done.computed,
            total.changed + done.changed,
            total.still_stale + done.still_stale,
        )
    return total


def sweep_and_refresh(store: Store, *, chunk: int = CHUNK) -> tuple[int, RefreshReport]:
    """What the recompute job does: the watermark sweep, then every stale row (patients found, rows refreshed)."""
    with store.transaction() as session:
        found = sweep(session)
    return found, refresh(store, chunk=chunk)


def refresh_patients(store: Store, patient_ids: Iterable[int]) -> RefreshReport:
    """Mark and recompute these patients' rows now (a view of a patient never computed; the CLI)."""
    ids = sorted(set(patient_ids))
    with store.transaction() as session:
        mark_stale(session, ids, reason="asked for")
        rows = list(session.scalars(select(StandardOutcome.id).where(StandardOutcome.patient_id.in_(ids))))
    token = _token(worker_name())
    claimed_at = datetime.now(UTC)
    with store.transaction() as session:  # rows another worker has made fresh meanwhile are not computed again
        mine = claim(session, token, len(rows), now=claimed_at, among=rows)
    if not mine:
        return RefreshReport()
    with store.transaction() as session:
        done = _recompute(session, mine, token, claimed_at)
    return RefreshReport(len(mine), done.computed, done.changed, done.still_stale)


def _recompute(session: Session, ids: Sequence[int], token: str, claimed_at: datetime) -> RefreshReport:
    rows = session.execute(
        select(StandardOutcome.id, StandardOutcome.patient_id, StandardOutcome.days, StandardOutcome.digest,
               StandardOutcome.version)
        .where(StandardOutcome.id.in_(ids), StandardOutcome.claimed_by == token)
    ).all()  # fmt: skip
    patient_ids = sorted({r.patient_id for r in rows})
    if not patient_ids:
        return RefreshReport()
    patients = {p.id: p for p in session.scalars(select(Patient).where(Patient.id.in_(patient_ids)))}
    # The watermark first: readings stored after it are at worst computed again, never missed.
    marks = watermarks(session, patient_ids)
    policy = OutcomePolicy()
    wanted = {days: [patients[r.patient_id] for r in rows if r.days == days] for days in STANDARD_DAYS}
    documents = compute_documents(session, {d: ps for d, ps in wanted.items() if ps}, policy, marks)
    now = datetime.now(UTC)
    table: Table = StandardOutcome.__table__  # type: ignore[assignment]  # a declarative class's table is a Table
    written = []
    changed = 0
    for row in rows:
        computed = documents[(row.patient_id, row.days)]
        canonical = canonical_json(computed.document)
        digest = hashlib.sha256(canonical).hexdigest()
        count, max_id, _last = marks.get(row.patient_id, (0, None, None))
        changed += int(digest != row.digest)
        written.append({"row_id": row.id, "version": row.version + (1 if digest != row.digest else 0),
                        "policy_hash": policy.policy_hash, "window_start_ms": computed.start_ms,
                        "window_end_ms": computed.end_ms, "raw_sha256": computed.raw.sha256,
                        "raw_sha1": computed.raw.sha1, "raw_size": computed.raw.size,
                        "tz": patients[row.patient_id].tz, "document": canonical.decode(), "digest": digest,
                        "engine_version": ENGINE_VERSION, "readings_count": count, "readings_max_id": max_id,
                        "computed_at": now, "claimed_by": None, "claim_expires_at": None})  # fmt: skip
    # One statement for the chunk (executemany), each row only while this claim holds it; the document goes as the
    # canonical JSON text its digest was taken of (serialised once; PostgreSQL reads the text as json).
    values: dict[str, Any] = {k: bindparam(k) for k in written[0] if k not in ("row_id", "document")}
    document_text = bindparam("document", type_=String)
    postgres = session.get_bind().dialect.name == "postgresql"  # SQLite keeps JSON as the text itself
    values["document"] = cast(document_text, table.c.document.type) if postgres else document_text
    session.connection().execute(
        table.update().where(table.c.id == bindparam("row_id"), table.c.claimed_by == token).values(values), written
    )
    # Fresh unless readings (or a zone) arrived after the claim: then it stays stale for the next round.
    ids = [row.id for row in rows]
    session.execute(
        update(StandardOutcome)
        .where(StandardOutcome.id.in_(ids), StandardOutcome.stale_since <= claimed_at)
        .values(stale_since=None, stale_reason=None)
    )
    still = session.scalar(
        select(func.count()).where(StandardOutcome.id.in_(ids), StandardOutcome.stale_since.is_not(None))
    )
    return RefreshReport(len(rows), len(rows), changed, int(still or 0))


def watermarks(session: Session, patient_ids: Sequence[int]) -> dict[int, tuple[int, int | None, int | None]]:
    """Per patient: how many CGM readings, the highest reading id, the last reading's time."""
    out: dict[int, tuple[int, int | None, int | None]] = {}
    for part in _parts(list(patient_ids), 1000):
        for p, n, high, last in session.execute(
            select(Reading.patient_id, func.count(), func.max(Reading.id), func.max(Reading.observed_ms))
            .where(Reading.patient_id.in_(part), Reading.kind == "cgm")
            .group_by(Reading.patient_id)
        ):
            out[int(p)] = (int(n), int(high), int(last))
    return out


@dataclass(frozen=True, slots=True)
class Computed:
    """A standard window computed: its document, bounds (None: no readings) and raw data's digest."""

    document: dict[str, Any]
    start_ms: int | None
    end_ms: int | None
    raw: RawDigest


def compute_documents(
    session: Session,
    periods: Mapping[int, Sequence[Patient]],
    policy: OutcomePolicy,
    marks: Mapping[int, tuple[int, int | None, int | None]],
) -> dict[tuple[int, int], Computed]:
    """The view's document of each patient's last `days` days for each period, one `compute_cohort` call per period
    (as the single patient path computes it: the window resolved in the patient's zone from their last CGM
    reading), with the digest of the readings each used. The readings are read once, for the widest window of each
    patient, and shared by the periods; so is each reading's canonical NDJSON line."""
    bounds: dict[int, dict[int, tuple[int, int]]] = {}
    for days, patients in periods.items():
        spec = WindowSpec(days=days)
        bounds[days] = {}
        for patient in patients:
            last = marks.get(patient.id, (0, None, None))[2]
            window = resolve_window(spec, patient.tz, last)
            if window is not None:
                bounds[days][patient.id] = (window.start_ms, window.end_ms)
    columns = _fetch(session, [b for period in bounds.values() for b in period.items()])
    lines = _lines(columns)
    out: dict[tuple[int, int], Computed] = {}
    for days, patients in periods.items():
        table, picked = _load_table(columns, patients, bounds[days])
        result = compute_cohort(table, policy, WindowSpec(days=days))
        report = build_report(result, include_traces=True)
        used = picked[result.used_index]  # rows of `columns`
        used_patient = table.patient[result.used_index]
        order = np.lexsort((columns[11][used], columns[2][used], used_patient))  # per patient: time, then key
        used, used_patient = used[order], used_patient[order]
        cuts = np.searchsorted(used_patient, np.arange(len(patients) + 1))
        for i, patient in enumerate(patients):
            start, end = bounds[days].get(patient.id, (None, None))
            raw = RawDigest.of(ndjson_of_lines(lines[used[cuts[i] : cuts[i + 1]]].tolist()))
            out[(patient.id, days)] = Computed(dict(report.patients[i].document), start, end, raw)
    return out


def _lines(columns: Sequence[Any]) -> NDArray[np.object_]:
    """The canonical NDJSON line (bff.store.rawdata) of each fetched reading (`_fetch`'s columns), made once for all
    the periods."""
    c = columns
    made = canonical_lines(c[11].tolist(), c[2], c[3], c[4].tolist(), c[5], c[6].tolist(), c[12].tolist(),
                           c[13].tolist())  # fmt: skip
    return np.array(made, dtype=object)


def _fetch(session: Session, windows: Sequence[tuple[int, tuple[int, int]]]) -> list[Any]:
    """The columns of every CGM reading (every copy) of the patients from the earliest start to the latest end of
    their windows (patient id, window), one query: (patient, id, time, value, unit, flag, device, stream, source,
    ambiguous, session start, reading key (hex), feed, feed's record key), as numpy arrays (object arrays for text
    and nullable columns)."""
    names = (np.int64, np.int64, np.int64, np.float64, object, np.int8, object, np.int64, np.int8, np.bool_, object,
             object, object, object)  # fmt: skip
    if not windows:
        return [np.zeros(0, dtype=t) for t in names]
    ids = sorted({p for p, _w in windows})
    low = min(w[0] for _p, w in windows)
    high = max(w[1] for _p, w in windows)
    statement = text(
        "SELECT r.patient_id, r.id, r.observed_ms, r.value_original, r.unit_original, r.flag, d.device_key, "
        "r.stream_id, r.source_rank, r.ambiguous_time, s.started_ms, CAST(r.reading_key AS TEXT), r.source_feed, "
        "r.source_record_key FROM readings r "
        "JOIN device_streams d ON d.id = r.stream_id LEFT JOIN sensor_sessions s ON s.id = r.session_id "
        "WHERE r.patient_id IN :p AND r.kind = 'cgm' AND r.observed_ms >= :a AND r.observed_ms < :b "
        "ORDER BY r.patient_id, r.stream_id, r.observed_ms, r.id"
    ).bindparams(bindparam("p", expanding=True))
    result = session.connection().execute(statement, {"p": ids, "a": low, "b": high})
    # The driver's tuples, straight from its cursor: SQLAlchemy's Row objects (no type processing is needed for these
    # plain columns) cost more than the driver's own fetch.
    rows = result.cursor.fetchall() if result.cursor is not None else []
    result.close()
    if not rows:
        return [np.zeros(0, dtype=t) for t in names]
    columns: list[Any] = [np.array(col, dtype=t) for col, t in zip(zip(*rows, strict=True), names, strict=True)]
    # The key as its 32 hex digits (UUID.hex): PostgreSQL writes a uuid as text with dashes, SQLite keeps the hex.
    columns[11] = np.array([k.replace("-", "") for k in columns[11].tolist()], dtype=object)
    return columns


def _load_table(
    columns: Sequence[Any], patients: Sequence[Patient], bounds: Mapping[int, tuple[int, int]]
) -> tuple[ReadingTable, NDArray[np.int64]]:
    """The readings of `columns` (`_fetch`) that fall in each patient's own window, as the engine's table, and the
    row of `columns` of each of its readings."""
    index = {p.id: i for i, p in enumerate(patients)}
    patient_col, time_col = columns[0], columns[2]
    keep = np.zeros(len(patient_col), dtype=np.bool_)
    if bounds and len(patient_col):  # each patient's own window; rows of other patients (other periods) left out
        order = np.array(sorted(bounds), dtype=np.int64)
        lookup = np.minimum(np.searchsorted(order, patient_col), len(order) - 1)
        member = order[lookup] == patient_col
        starts = np.array([bounds[int(p)][0] for p in order], dtype=np.int64)[lookup]
        ends = np.array([bounds[int(p)][1] for p in order], dtype=np.int64)[lookup]
        keep = member & (time_col >= starts) & (time_col < ends)
    picked = np.flatnonzero(keep)

    def col(k: int, dtype: Any = None) -> Any:
        return columns[k][picked] if dtype is None else columns[k][picked].astype(dtype, copy=False)

    patient_rows = col(0, np.int64)
    stream_ids = col(7, np.int64)
    patient_code = np.array([index[p.id] for p in patients], dtype=np.int32)
    patient_order = np.array([p.id for p in patients], dtype=np.int64)
    sort = np.argsort(patient_order)
    row_code = patient_code[sort][np.searchsorted(patient_order[sort], patient_rows)].astype(np.int32)
    # The streams, by patient then id (as the single-patient path codes them); a stream has one patient.
    streams, first = np.unique(stream_ids, return_index=True)
    stream_code = row_code[first]
    by_patient = np.lexsort((streams, stream_code))
    stream_order, stream_patient = streams[by_patient], stream_code[by_patient]
    stream_sort = np.argsort(stream_order, kind="stable")
    device_of = dict(zip(stream_ids.tolist(), col(6).tolist(), strict=True))
    sessions = col(10)
    missing = np.array([v is None for v in sessions.tolist()], dtype=np.bool_)
    units = col(4)
    table = ReadingTable(
        patient=row_code,
        time_ms=time_col[picked],
        value=col(3, np.float64),
        unit=(units != "mg/dL").astype(np.int8),
        flag=col(5, np.int8),
        stream=stream_sort[np.searchsorted(stream_order[stream_sort], stream_ids)].astype(np.int32),
        session_start_ms=np.where(missing, NO_TIME, sessions).astype(np.int64),
        source=col(8, np.int8),
        received=col(1, np.int64),
        ambiguous=col(9, np.bool_),
        patient_ids=tuple(p.public_id for p in patients),
        zones=tuple(p.tz for p in patients),
        stream_patient=stream_patient.astype(np.int32),
        stream_device=tuple(device_of[int(s)] for s in stream_order.tolist()),
    )
    return table, picked.astype(np.int64)

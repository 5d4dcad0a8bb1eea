"""A patient's time zone and how it is known: never a silent UTC.

Days, nights and the AGP's time of day are local to the patient, so every patient has a zone with its source, in
order of precedence:

1. **cli**: set by a person (`glucobridge patient set ID --tz ZONE --who … --reason …`);
2. **ehr**: read from the EHR's Patient resource at launch (the `tz-code` or `timezone` extension);
3. **feed**: given by the feed itself (an engine CSV `tz` column, a file's `--input-tz`);
4. **site**: the site's default zone (`time_zone` in sites/NAME.toml), unless the readings' own UTC offsets
   contradict it;
5. **inferred**: from the readings' own UTC offsets, when exactly one zone's rules explain every offset seen
   (DST changes included), preferring the site's zone and then the most widely used zone of a group of zones
   that agree over the data (America/New_York over America/Detroit);
6. **unknown**: nothing says: UTC is used, and every surface says so (the view, the note, the PDF); a write to
   the chart is refused until the zone is known.

A change of zone marks the patient's current outcome windows stale with the reason ("zone changed from UTC
(unknown) to America/Chicago (ehr)"); the next computation is a new version that records it.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from functools import lru_cache
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError, available_timezones

from sqlalchemy import update
from sqlalchemy.orm import Session

from bff.store import windows
from bff.store.models import OutcomeWindow, Patient

#: Sources from the strongest to the weakest.
ZONE_SOURCES = ("cli", "ehr", "feed", "site", "inferred", "unknown")
#: When several zones agree over the data, the one most people there use (by region).
PREFERRED = (
    "America/New_York", "America/Chicago", "America/Denver", "America/Phoenix", "America/Los_Angeles",
    "America/Anchorage", "Pacific/Honolulu", "America/Toronto", "America/Vancouver", "America/Halifax",
    "America/Mexico_City", "America/Sao_Paulo", "America/Bogota", "America/Lima", "America/Santiago",
    "America/Argentina/Buenos_Aires", "Europe/London", "Europe/Dublin", "Europe/Lisbon", "Europe/Paris",
    "Europe/Berlin", "Europe/Madrid", "Europe/Rome", "Europe/Amsterdam", "Europe/Stockholm", "Europe/Helsinki",
    "Europe/Athens", "Europe/Istanbul", "Europe/Moscow", "Africa/Johannesburg", "Africa/Lagos", "Africa/Cairo",
    "Africa/Nairobi", "Asia/Dubai", "Asia/Karachi", "Asia/Kolkata", "Asia/Dhaka", "Asia/Bangkok",
    "Asia/Singapore", "Asia/Shanghai", "Asia/Hong_Kong", "Asia/Tokyo", "Asia/Seoul", "Australia/Sydney",
    "Australia/Melbourne", "Australia/Brisbane", "Australia/Adelaide", "Australia/Perth", "Pacific/Auckland",
)  # fmt: skip
#: Evidence is kept per offset as [first ms, last ms]; inference checks each zone at these instants.
Evidence = Mapping[str, list[int]]


@dataclass(frozen=True)
class Zone:
    name: str
    source: str

    @property
    def known(self) -> bool:
        return self.source != "unknown"


def is_zone(name: str) -> bool:
    """An IANA zone name (Region/City, or UTC) that this machine's zone database knows."""
    if name != "UTC" and "/" not in name:
        return False
    try:
        ZoneInfo(name)
    except (ZoneInfoNotFoundError, ValueError):
        return False
    return True


def rank(source: str) -> int:
    return ZONE_SOURCES.index(source) if source in ZONE_SOURCES else len(ZONE_SOURCES)


def merge_evidence(old: Evidence | None, new: Evidence) -> dict[str, list[int]]:
    out = {k: list(v) for k, v in (old or {}).items()}
    for offset, (lo, hi) in new.items():
        span = out.setdefault(offset, [lo, hi])
        span[0], span[1] = min(span[0], lo), max(span[1], hi)
    return out


@lru_cache(maxsize=1)
def _candidates() -> tuple[str, ...]:
    names = [n for n in available_timezones() if "/" in n and not n.startswith(("Etc/", "SystemV/", "posix/"))]
    legacy = ("US/", "Canada/", "Mexico/", "Brazil/", "Chile/")
    return tuple(sorted(n for n in names if not n.startswith(legacy)))


@lru_cache(maxsize=1024)
def _zone(name: str) -> ZoneInfo:
    """The zone's rules, loaded once per process. ZoneInfo itself keeps only a few zones it is not given back:
    inference tries every candidate (about 400) for each patient, and each try read the zone's file again."""
    return ZoneInfo(name)


@lru_cache(maxsize=1)
def _candidate_set() -> frozenset[str]:
    return frozenset(_candidates())


def _offset_min(zone: str, ms: int) -> int:
    offset = datetime.fromtimestamp(ms / 1000, UTC).astimezone(_zone(zone)).utcoffset()
    assert offset is not None
    return int(offset.total_seconds() // 60)


def consistent(zone: str, evidence: Evidence) -> bool:
    """Whether the zone's rules give every offset seen at the instants it was seen (first and last of each)."""
    return all(_offset_min(zone, ms) == int(offset) for offset, span in evidence.items() for ms in span)


def infer(evidence: Evidence | None, prefer: Iterable[str] = ()) -> str | None:
    """The zone the readings' own offsets point to, or None when they point to none (or there is no evidence)."""
    if not evidence:
        return None
    for name in prefer:
        if name and consistent(name, evidence):
            return name
    # The first preferred zone that fits is the answer whatever else fits: the rest are tried only without one.
    candidates = _candidate_set()
    for name in PREFERRED:
        if name in candidates and consistent(name, evidence):
            return name
    return next((n for n in _candidates() if consistent(n, evidence)), None)


def resolve(
    patient: Patient,
    *,
    explicit: tuple[str, str] | None = None,
    site_zone: str | None = None,
    evidence: Evidence | None = None,
) -> Zone:
    """The zone the patient should have now, from what is known (the stronger source wins; see the module)."""
    current = Zone(patient.tz or "UTC", patient.tz_source or "unknown")
    if explicit is not None and rank(explicit[1]) <= rank(current.source):
        return Zone(*explicit)
    if rank(current.source) <= rank("feed"):
        return current
    merged = merge_evidence(patient.tz_evidence, evidence or {})
    if site_zone and (not merged or consistent(site_zone, merged)):
        return Zone(site_zone, "site")
    inferred = infer(merged, prefer=(site_zone or "", current.name if current.source == "inferred" else ""))
    if inferred is not None:
        return Zone(inferred, "inferred")
    return Zone("UTC", "unknown")


def apply(session: Session, patient: Patient, zone: Zone, now: datetime) -> str | None:
    """Give the patient this zone; when it changes, mark its current outcome windows stale with the reason, which
    is returned (None when nothing changed)."""
    if (patient.tz, patient.tz_source) == (zone.name, zone.source):
        return None
    reason = f"zone changed from {patient.tz} ({patient.tz_source}) to {zone.name} ({zone.source})"
    moved = patient.tz != zone.name
    patient.tz, patient.tz_source = zone.name, zone.source
    if moved:
        session.execute(
            update(OutcomeWindow)
            .where(OutcomeWindow.patient_id == patient.id, OutcomeWindow.status == "current")
            .values(status="stale", stale_since=now, stale_reason=reason)
        )
        if patient.id is not None:  # the materialized standard outcomes
            windows.mark_stale(session, [patient.id], now=now, reason=reason)
    return reason if moved else None

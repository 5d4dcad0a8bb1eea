"""Checks that need the clock or the device table: impossible times and values a sensor cannot report.

Each returns None for a usable reading, or the reason (for quarantine) in words that say what to check.
"""

from __future__ import annotations

from datetime import UTC, datetime

from bff.ingest.records import FeedReading
from engine import GlucoseUnit, SensorFlag, device_profile
from engine.units import MMOL_L_TO_MG_DL

EARLIEST_MS = int(datetime(2000, 1, 1, tzinfo=UTC).timestamp() * 1000)
#: What any CGM can report when the device is not known (mg/dL); known devices use their own bounds.
GENERIC_RANGE_MG_DL = (20.0, 600.0)


def _iso(ms: int) -> str:
    """The instant as ISO 8601; one outside what a datetime holds (years 1–9999) as its raw milliseconds."""
    try:
        return datetime.fromtimestamp(ms / 1000, UTC).isoformat(timespec="seconds")
    except (OverflowError, OSError, ValueError):
        return f"{ms} ms since 1970"


def check_time(reading: FeedReading, now_ms: int, future_tolerance_ms: int) -> str | None:
    if reading.time_ms < EARLIEST_MS:
        return f"time {_iso(reading.time_ms)} is before 2000: a device clock that was never set, or a wrong date format"
    if reading.time_ms > now_ms + future_tolerance_ms:
        ahead = (reading.time_ms - now_ms) / 60_000
        return (
            f"time {_iso(reading.time_ms)} is {ahead:,.0f} minutes in the future (tolerance "
            f"{future_tolerance_ms // 60_000} min): check the device clock or the time zone of the feed"
        )
    return None


def reportable_range(device: str, unit: GlucoseUnit) -> tuple[float, float]:
    profile = device_profile(device)
    low = profile.bound(unit, high=False)
    high = profile.bound(unit, high=True)
    if low is not None and high is not None:
        return low, high
    factor = 1.0 if unit is GlucoseUnit.MG_DL else 1 / MMOL_L_TO_MG_DL
    return GENERIC_RANGE_MG_DL[0] * factor, GENERIC_RANGE_MG_DL[1] * factor


def check_value(reading: FeedReading) -> str | None:
    """A measured value must lie within what the device reports; outside it a sensor says LOW or HIGH."""
    return plausibility(reading.value, reading.unit, reading.flag, reading.device)


def plausibility(value: float | None, unit: GlucoseUnit, flag: SensorFlag, device: str) -> str | None:
    """None for a value the device (or, unknown, any CGM: 20–600 mg/dL) can report; else the reason. A LOW/HIGH
    reading keeps its meaning: its value is the bound the sensor reported."""
    if value is None:
        return None
    low, high = reportable_range(device, unit)
    label = unit.label
    who = device or "a CGM"
    if flag is not SensorFlag.NONE:
        return None if 0 < value <= high * 1.5 else f"{flag.name} bound {value:g} {label} is implausible"
    if low <= value <= high:
        return None
    hint = ""
    if unit is GlucoseUnit.MMOL_L and low * MMOL_L_TO_MG_DL <= value <= high * MMOL_L_TO_MG_DL:
        hint = "; it looks like mg/dL: check the unit the feed declares"
    elif unit is GlucoseUnit.MG_DL and low / MMOL_L_TO_MG_DL <= value <= high / MMOL_L_TO_MG_DL:
        hint = "; it looks like mmol/L: check the unit the feed declares"
    return f"value {value:g} {label} is outside what {who} can report ({low:g}–{high:g} {label}){hint}"

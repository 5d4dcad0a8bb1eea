"""The CGM device table: nominal sampling interval, warm-up, session-break gap and reportable bounds.

Sources and caveats are in docs/outcomes-method.md §2. A stream with no device is "unknown": 5-minute interval,
no warm-up, no bounds.
"""

from __future__ import annotations

from dataclasses import dataclass

from engine.errors import UnknownDeviceError
from engine.units import GlucoseUnit

_MIN = 60_000
_HOUR = 60 * _MIN


@dataclass(frozen=True, slots=True)
class DeviceProfile:
    """What the engine needs to know about a CGM model. Durations are in milliseconds."""

    key: str
    name: str
    interval_ms: int
    warmup_ms: int
    session_break_ms: int | None
    low_mg_dl: float | None = None
    high_mg_dl: float | None = None
    low_mmol_l: float | None = None
    high_mmol_l: float | None = None

    def bound(self, unit: GlucoseUnit, *, high: bool) -> float | None:
        """The value a LOW (high=False) or HIGH (high=True) reading stands for, in `unit`; None if unknown."""
        if unit is GlucoseUnit.MG_DL:
            return self.high_mg_dl if high else self.low_mg_dl
        return self.high_mmol_l if high else self.low_mmol_l


def _dexcom(key: str, name: str, warmup_ms: int, session_break_ms: int) -> DeviceProfile:
    return DeviceProfile(key, name, 5 * _MIN, warmup_ms, session_break_ms, 40.0, 400.0, 2.2, 22.2)


def _libre(key: str, name: str, interval_ms: int) -> DeviceProfile:
    return DeviceProfile(key, name, interval_ms, 1 * _HOUR, 2 * _HOUR, 40.0, 500.0, 2.2, 27.8)


UNKNOWN_DEVICE = DeviceProfile("", "unknown device", 5 * _MIN, 0, None)

DEVICES: dict[str, DeviceProfile] = {
    p.key: p
    for p in (
        _dexcom("dexcom-g4", "Dexcom G4", 2 * _HOUR, 2 * _HOUR),
        _dexcom("dexcom-g5", "Dexcom G5", 2 * _HOUR, 2 * _HOUR),
        _dexcom("dexcom-g6", "Dexcom G6", 2 * _HOUR, 2 * _HOUR),
        _dexcom("dexcom-g7", "Dexcom G7", 30 * _MIN, 1 * _HOUR),
        _libre("libre-1", "FreeStyle Libre", 15 * _MIN),
        _libre("libre-2", "FreeStyle Libre 2", 15 * _MIN),
        _libre("libre-3", "FreeStyle Libre 3", 5 * _MIN),
        DeviceProfile("guardian-3", "Guardian Sensor 3", 5 * _MIN, 2 * _HOUR, 2 * _HOUR, 40.0, 400.0, 2.2, 22.2),
        DeviceProfile("guardian-4", "Guardian 4", 5 * _MIN, 2 * _HOUR, 2 * _HOUR, 40.0, 400.0, 2.2, 22.2),
        DeviceProfile("eversense", "Eversense", 5 * _MIN, 24 * _HOUR, 24 * _HOUR, 40.0, 400.0, 2.2, 22.2),
    )
}


def device_profile(key: str | None) -> DeviceProfile:
    """The profile for a device key; None or "" is the unknown device. Keys are case-insensitive."""
    if not key:
        return UNKNOWN_DEVICE
    profile = DEVICES.get(key.strip().lower())
    if profile is None:
        known = ", ".join(sorted(DEVICES))
        raise UnknownDeviceError(f"unknown device {key!r}: use one of {known}, or leave it empty")
    return profile

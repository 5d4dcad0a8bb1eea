"""glucobridge's canonical outcomes engine: pure functions over numpy arrays, no I/O, no ORM, no web.

The rules are written down in docs/outcomes-method.md; every output carries ENGINE_VERSION.
"""

from engine.bands import Band, classify_bands, classify_target
from engine.cohort import CohortResult, compute_cohort
from engine.dedupe import group_winners
from engine.devices import DEVICES, UNKNOWN_DEVICE, DeviceProfile, device_profile
from engine.errors import (
    EngineError,
    InvalidReadingError,
    LocalTimeError,
    NonexistentLocalTimeError,
    PolicyError,
    UnknownDeviceError,
    UnknownUnitError,
    UnknownZoneError,
)
from engine.policy import TARGET_SETS, Goal, Method, OutcomePolicy, Smoothing, TargetSet, target_set
from engine.readings import NO_TIME, Reading, ReadingTable, SensorFlag, Source
from engine.report import METRIC_KEYS, PCT_KEYS, OutcomeReport, PatientOutcome, canonical_json, compute_outcomes
from engine.timezones import isoformat_local, localize, to_local_ms
from engine.units import MMOL_L_TO_MG_DL, GlucoseUnit, parse_unit
from engine.version import ENGINE_VERSION
from engine.windows import Window, WindowSpec, resolve_window

__all__ = [
    "DEVICES",
    "ENGINE_VERSION",
    "METRIC_KEYS",
    "MMOL_L_TO_MG_DL",
    "NO_TIME",
    "PCT_KEYS",
    "TARGET_SETS",
    "UNKNOWN_DEVICE",
    "Band",
    "CohortResult",
    "DeviceProfile",
    "EngineError",
    "GlucoseUnit",
    "Goal",
    "InvalidReadingError",
    "LocalTimeError",
    "Method",
    "NonexistentLocalTimeError",
    "OutcomePolicy",
    "OutcomeReport",
    "PatientOutcome",
    "PolicyError",
    "Reading",
    "ReadingTable",
    "SensorFlag",
    "Smoothing",
    "Source",
    "TargetSet",
    "UnknownDeviceError",
    "UnknownUnitError",
    "UnknownZoneError",
    "Window",
    "WindowSpec",
    "canonical_json",
    "classify_bands",
    "classify_target",
    "compute_cohort",
    "compute_outcomes",
    "device_profile",
    "group_winners",
    "isoformat_local",
    "localize",
    "parse_unit",
    "resolve_window",
    "target_set",
    "to_local_ms",
]

"""Band classification in each reading's own unit (docs/outcomes-method.md §5)."""

from __future__ import annotations

from enum import IntEnum

import numpy as np
from numpy.typing import NDArray

from engine.policy import TargetSet
from engine.readings import SensorFlag
from engine.units import GlucoseUnit


class Band(IntEnum):
    VERY_LOW = 0
    LOW = 1
    IN_RANGE = 2
    HIGH = 3
    VERY_HIGH = 4


#: Consensus thresholds per unit: (very-low/low, low/in-range, in-range/high, high/very-high).
#: The first two are "below" bounds (v < x); the last two are "above" bounds (v > x).
BAND_THRESHOLDS: dict[GlucoseUnit, tuple[float, float, float, float]] = {
    GlucoseUnit.MG_DL: (54.0, 70.0, 180.0, 250.0),
    GlucoseUnit.MMOL_L: (3.0, 3.9, 10.0, 13.9),
}


def classify_bands(value: NDArray[np.float64], unit: NDArray[np.int8], flag: NDArray[np.int8]) -> NDArray[np.int8]:
    """Band code (Band) per reading: thresholds of the reading's unit, LOW → very low, HIGH → very high."""
    out = _bands_for(value, BAND_THRESHOLDS[GlucoseUnit.MG_DL])
    mmol = np.flatnonzero(unit == GlucoseUnit.MMOL_L)
    if mmol.size:
        out[mmol] = _bands_for(value[mmol], BAND_THRESHOLDS[GlucoseUnit.MMOL_L])
    out[flag == SensorFlag.LOW] = Band.VERY_LOW
    out[flag == SensorFlag.HIGH] = Band.VERY_HIGH
    return out


def _bands_for(value: NDArray[np.float64], thresholds: tuple[float, float, float, float]) -> NDArray[np.int8]:
    very_low, low, high, very_high = thresholds
    band = (value >= very_low).astype(np.int8)
    band += value >= low
    band += value > high
    band += value > very_high
    return band


def classify_target(
    value: NDArray[np.float64], unit: NDArray[np.int8], flag: NDArray[np.int8], target: TargetSet
) -> NDArray[np.int8]:
    """0 below the target range, 1 in it (bounds inclusive), 2 above; in the reading's own unit."""
    out = (value >= target.low_mg_dl).astype(np.int8) + (value > target.high_mg_dl)
    mmol = np.flatnonzero(unit == GlucoseUnit.MMOL_L)
    if mmol.size:
        v = value[mmol]
        out[mmol] = (v >= target.low_mmol_l).astype(np.int8) + (v > target.high_mmol_l)
    out[flag == SensorFlag.LOW] = 0
    out[flag == SensorFlag.HIGH] = 2
    return out

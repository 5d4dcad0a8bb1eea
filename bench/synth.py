"""A deterministic synthetic CGM cohort, built column-wise with numpy.

Each patient wears one sensor (`dexcom-g6` or `libre-3`) for the whole period and has one device stream. Glucose
is a per-patient level with a slow day-to-day drift, a daily sinusoid, three meal responses a day, occasional
hypoglycaemic dips and AR(1) noise; it is clipped to the sensor range 40–400 mg/dL, where the sensor reports
LOW / HIGH at the bound. About 10 % of patients report mmol/L with one decimal, the rest integer mg/dL.
Readings come every `interval_min` minutes with a few seconds of jitter; a few dropouts per patient (10 min to
3 h) remove readings, and about 0.5 % of readings arrive twice (a second copy through FHIR a few seconds later).

Everything comes from one `numpy.random.Generator(PCG64(seed))`, so a call is reproducible bit for bit.
Patients are generated in chunks, so the temporary memory stays small whatever the cohort size.
"""

from __future__ import annotations

from datetime import datetime
from zoneinfo import ZoneInfo

import numpy as np
from numpy.typing import NDArray

from engine.readings import NO_TIME, ReadingTable, SensorFlag, Source

__all__ = ["DEVICES", "synth_cohort"]

#: The devices patients are given, with equal probability.
DEVICES = ("dexcom-g6", "libre-3")

_MIN_MS = 60_000
_DAY_MIN = 1440
_CHUNK = 1024  # patients per chunk: fixed, so the output does not depend on memory
_MMOL_SHARE = 0.10
_DUPLICATE_SHARE = 0.005
_DROPOUTS_PER_DAY = 0.25
_DIPS_PER_DAY = 0.3
_MEAL_MINUTES = (450.0, 750.0, 1140.0)  # 07:30, 12:30, 19:00 local
_LOW_MG_DL, _HIGH_MG_DL = 40.0, 400.0
_MMOL_L_PER_MG_DL = 1.0 / 18.0156


def _parse_start(start: str) -> int:
    moment = datetime.fromisoformat(start)
    if moment.tzinfo is None:
        raise ValueError(f"start {start!r} needs an offset, e.g. 2024-03-01T00:00:00Z")
    return int(moment.timestamp()) * 1000 + moment.microsecond // 1000


def _utc_offset_min(zone: str, instant_ms: int) -> int:
    offset = datetime.fromtimestamp(instant_ms // 1000, ZoneInfo(zone)).utcoffset()
    return 0 if offset is None else int(offset.total_seconds()) // 60


def _bumps(
    n_rows: int,
    n_slots: int,
    interval_min: int,
    row: NDArray[np.int64],
    at_min: NDArray[np.float64],
    amplitude: NDArray[np.float64],
    tau_min: NDArray[np.float64],
) -> NDArray[np.float64]:
    """Sum of gamma-shaped responses `A (x/τ) e^(1 − x/τ)` (peak A at x = τ), one per event, on the slot grid.

    `at_min` is each event's time in minutes after its row's first slot. Returns a flat (n_rows × n_slots) array.
    """
    if row.size == 0:
        return np.zeros(n_rows * n_slots)
    span = int(np.ceil(7.0 * float(tau_min.max()) / interval_min)) + 1
    k = np.ceil(at_min / interval_min).astype(np.int64)[:, None] + np.arange(span, dtype=np.int64)
    x = (k * interval_min - at_min[:, None]) / tau_min[:, None]
    shape = amplitude[:, None] * x * np.exp(1.0 - x)
    inside = (k >= 0) & (k < n_slots)
    flat = row[:, None] * n_slots + k
    summed = np.bincount(flat[inside], weights=shape[inside], minlength=n_rows * n_slots)
    return summed.astype(np.float64, copy=False)


def _chunk(
    rng: np.random.Generator,
    first_ms: NDArray[np.int64],
    offset_min: NDArray[np.int64],
    params: dict[str, NDArray[np.float64]],
    days: int,
    interval_min: int,
) -> tuple[NDArray[np.int64], NDArray[np.int64], NDArray[np.float64]]:
    """Glucose (mg/dL, unclipped) and reading times for a chunk of patients.

    Returns (row of each kept reading, its time in ms, its glucose), sorted by row, then time.
    """
    c = first_ms.shape[0]
    n_slots = days * _DAY_MIN // interval_min
    interval_ms = interval_min * _MIN_MS
    slot_min = np.arange(n_slots, dtype=np.float64) * interval_min

    # Local minute of day of each slot, from the patient's UTC offset at the start (DST ignored: synthetic).
    first_local_min = ((first_ms // _MIN_MS) + offset_min) % _DAY_MIN  # (c,)
    tod = (first_local_min[:, None] + slot_min[None, :]) % _DAY_MIN
    glucose = params["level"][:, None] + params["amplitude"][:, None] * np.sin(
        2.0 * np.pi * (tod - params["phase"][:, None]) / _DAY_MIN
    )
    del tod

    # Day-to-day drift of the level.
    drift = rng.normal(0.0, 10.0, size=(c, days + 1))
    glucose += drift[:, (slot_min // _DAY_MIN).astype(np.int64)]

    # Meals: three a day at about 07:30, 12:30 and 19:00 local, 10 % skipped; one local day before the first
    # slot too, so a late dinner reaches past midnight.
    n_local_days = days + 2
    day_start = -first_local_min.astype(np.float64)[:, None] + _DAY_MIN * (np.arange(n_local_days) - 1.0)[None, :]
    meal_at = day_start[:, :, None] + np.array(_MEAL_MINUTES)[None, None, :]
    meal_at = meal_at + rng.normal(0.0, 30.0, size=meal_at.shape)
    meal_amp = params["meal"][:, None, None] * rng.uniform(0.5, 1.5, size=meal_at.shape)
    meal_amp *= rng.random(meal_at.shape) >= 0.10
    meal_tau = rng.uniform(35.0, 60.0, size=meal_at.shape)
    meal_row = np.broadcast_to(np.arange(c, dtype=np.int64)[:, None, None], meal_at.shape)
    glucose += _bumps(
        c, n_slots, interval_min, meal_row.ravel(), meal_at.ravel(), meal_amp.ravel(), meal_tau.ravel()
    ).reshape(c, n_slots)

    # Hypoglycaemic dips: a negative response of 50–130 mg/dL.
    n_dips = rng.poisson(_DIPS_PER_DAY * days, size=c)
    dip_row = np.repeat(np.arange(c, dtype=np.int64), n_dips)
    dip_at = rng.uniform(0.0, days * _DAY_MIN, size=dip_row.size)
    dip_depth = -rng.uniform(50.0, 130.0, size=dip_row.size)
    dip_tau = rng.uniform(15.0, 35.0, size=dip_row.size)
    glucose += _bumps(c, n_slots, interval_min, dip_row, dip_at, dip_depth, dip_tau).reshape(c, n_slots)

    # AR(1) noise, stationary from the first slot: x[k] = φ x[k−1] + σ √(1 − φ²) ε[k].
    phi = np.exp(-interval_min / params["noise_tau"])
    noise = rng.standard_normal((n_slots, c))
    noise[1:] *= np.sqrt(1.0 - phi * phi)
    for k in range(1, n_slots):
        noise[k] += phi * noise[k - 1]
    glucose += (noise * params["noise_sd"]).T
    del noise

    # Dropouts: each removes the readings of 10 min to 3 h (log-uniform), never crossing a patient.
    n_drop = rng.poisson(_DROPOUTS_PER_DAY * days, size=c)
    drop_row = np.repeat(np.arange(c, dtype=np.int64), n_drop)
    gap_min = np.exp(rng.uniform(np.log(10.0), np.log(180.0), size=drop_row.size))
    drop_slots = np.maximum(1, np.rint(gap_min / interval_min).astype(np.int64) - 1)
    drop_first = rng.integers(0, n_slots, size=drop_row.size)
    drop_end = np.minimum(drop_first + drop_slots, n_slots)
    marks = np.bincount(drop_row * n_slots + drop_first, minlength=c * n_slots + 1) - np.bincount(
        drop_row * n_slots + drop_end, minlength=c * n_slots + 1
    )
    keep = (np.cumsum(marks)[:-1] == 0).reshape(c, n_slots)

    jitter_ms = min(5_000, interval_ms // 8)
    rows, slots = np.nonzero(keep)
    times = first_ms[rows] + slots * interval_ms + rng.integers(-jitter_ms, jitter_ms + 1, size=rows.size)
    return rows.astype(np.int64), times.astype(np.int64), glucose[rows, slots]


def synth_cohort(
    n_patients: int,
    days: int = 14,
    *,
    seed: int = 0,
    interval_min: int = 5,
    start: str = "2024-03-01T00:00:00Z",
    zones: tuple[str, ...] = ("America/New_York", "Europe/Berlin", "UTC"),
) -> ReadingTable:
    """A synthetic cohort of `n_patients` over `days` days from `start`, sorted by patient, stream and time."""
    if n_patients < 0 or days <= 0 or interval_min <= 0 or _DAY_MIN % interval_min:
        raise ValueError("need n_patients ≥ 0, days > 0 and an interval that divides a day")
    if not zones:
        raise ValueError("need at least one time zone")
    rng = np.random.Generator(np.random.PCG64(seed))
    start_ms = _parse_start(start)
    interval_ms = interval_min * _MIN_MS

    zone_of = rng.integers(0, len(zones), size=n_patients)
    device_of = rng.integers(0, len(DEVICES), size=n_patients)
    mmol = rng.random(n_patients) < _MMOL_SHARE
    first_ms = start_ms + rng.integers(0, interval_ms, size=n_patients, dtype=np.int64)
    offsets = {z: _utc_offset_min(z, start_ms) for z in zones}
    offset_min = np.array([offsets[zones[z]] for z in zone_of.tolist()], dtype=np.int64)
    poor = (rng.random(n_patients) < 0.10).astype(np.float64)
    params = {
        # About one patient in ten is poorly controlled: a higher level, bigger meal responses, some HIGH readings.
        "level": np.clip(rng.normal(145.0, 25.0, size=n_patients), 95.0, 230.0) + poor * 80.0,
        "amplitude": rng.uniform(8.0, 35.0, size=n_patients),
        "phase": rng.uniform(240.0, 540.0, size=n_patients) - _DAY_MIN / 4,  # peak around 04:00–09:00 local
        "meal": rng.uniform(25.0, 90.0, size=n_patients) * (1.0 + poor),
        "noise_sd": rng.uniform(8.0, 22.0, size=n_patients),
        "noise_tau": rng.uniform(25.0, 90.0, size=n_patients),
    }

    parts: dict[str, list[NDArray[np.generic]]] = {k: [] for k in ("patient", "time", "value", "flag")}
    for lo in range(0, n_patients, _CHUNK):
        hi = min(n_patients, lo + _CHUNK)
        rows, times, glucose = _chunk(
            rng, first_ms[lo:hi], offset_min[lo:hi], {k: v[lo:hi] for k, v in params.items()}, days, interval_min
        )
        patient = rows + lo
        flag = np.zeros(glucose.size, dtype=np.int8)
        flag[glucose < _LOW_MG_DL] = SensorFlag.LOW
        flag[glucose > _HIGH_MG_DL] = SensorFlag.HIGH
        mg = np.clip(glucose, _LOW_MG_DL, _HIGH_MG_DL)
        del glucose
        value = np.where(mmol[patient], np.round(mg * _MMOL_L_PER_MG_DL, 1), np.rint(mg))
        parts["patient"].append(patient.astype(np.int32))
        parts["time"].append(times)
        parts["value"].append(value)
        parts["flag"].append(flag)

    def column(name: str) -> NDArray[np.generic]:
        chunks = parts.pop(name)
        out = np.concatenate(chunks) if chunks else np.zeros(0)
        chunks.clear()
        return out

    patient_col = column("patient").astype(np.int32, copy=False)
    time_col = column("time").astype(np.int64, copy=False)
    value_col = column("value").astype(np.float64, copy=False)
    flag_col = column("flag").astype(np.int8, copy=False)

    # A few readings arrive twice: a FHIR copy 1–20 s later (and received later), kept in time order.
    duplicate = rng.random(time_col.size) < _DUPLICATE_SHARE
    if duplicate.any():
        take = np.repeat(np.arange(time_col.size), 1 + duplicate.astype(np.int64))
        second = np.zeros(take.size, dtype=np.bool_)
        second[1:] = take[1:] == take[:-1]
        patient_col, value_col, flag_col = patient_col[take], value_col[take], flag_col[take]
        time_col = time_col[take]
        delay_ms = min(20_000, interval_ms // 4)
        time_col[second] += rng.integers(1_000, max(1_001, delay_ms) + 1, size=int(second.sum()))
        del take
    else:
        second = np.zeros(time_col.size, dtype=np.bool_)
    n = time_col.size

    width = max(5, len(str(max(n_patients - 1, 0))))
    patient_ids = tuple(f"p{p:0{width}d}" for p in range(n_patients))
    return ReadingTable(
        patient=patient_col,
        time_ms=time_col,
        value=value_col,
        unit=mmol[patient_col].astype(np.int8),
        flag=flag_col,
        stream=patient_col,
        # Constant columns as zero-stride views: the table makes its own contiguous copy once.
        session_start_ms=np.broadcast_to(np.int64(NO_TIME), (n,)),
        source=np.where(second, np.int8(Source.FHIR), np.int8(Source.VENDOR)).astype(np.int8),
        received=second.astype(np.int8),
        ambiguous=np.broadcast_to(np.False_, (n,)),
        patient_ids=patient_ids,
        zones=tuple(zones[z] for z in zone_of.tolist()),
        stream_patient=np.arange(n_patients, dtype=np.int32),
        stream_device=tuple(DEVICES[d] for d in device_of.tolist()),
        stream_labels=("",) * n_patients,
    )

"""A deterministic CGM trace for one person: sensor sessions, warm-ups, gaps and glucose, built with numpy.

simglucose is too slow to run at start-up (5–9 s per patient-day), so the seed uses this instead; it is the
per-person cousin of `bench/synth.py` (same glucose model: level, meals, dips, AR(1) noise) with what a
sandbox EHR needs on top:

- **Sensor sessions.** A sensor lasts its labelled life (Dexcom G6/G7 10 days, FreeStyle Libre 2/3 14 days)
  and is replaced after a short, random delay (10 min to 4 h; now and then 8 to 30 h). Each session starts
  with the device's warm-up (engine.devices: G6 2 h, G7 30 min, Libre 1 h) without readings, and becomes its
  own FHIR Device with a serial number. A sensor may fail early (`failed_sensor_at_ms`): that session ends
  there and the next starts 30 h later, a long gap.
- **Readings** every nominal interval of the device (5 min; Libre 2 15 min) with ±2 s of jitter (whole
  seconds), and a few dropouts (15 min to 3 h, log-uniform) where the phone lost the sensor.
- **Glucose (mg/dL).** A person's level with a smooth day-to-day drift, a dawn rise around 06:30 local, three
  meal responses a day at about 07:30, 12:30 and 19:00 local (10 % skipped), hypoglycaemic dips and AR(1)
  noise; then a per-sensor calibration bias of ±6 %. Local time follows the person's zone through DST changes
  (offsets per hour from zoneinfo), so meals stay at local clock times across a change.
- **Sensor range.** Values outside the device's reportable range are reported at the bound with a LOW/HIGH
  flag (FHIR: `valueQuantity.comparator` < or >). mmol/L values have one decimal (mg/dL ÷ 18.0156).

Everything comes from the `numpy.random.Generator` passed in, in a fixed order, so a trace is reproducible bit
for bit from (seed, person, window).
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime
from zoneinfo import ZoneInfo

import numpy as np
from numpy.typing import NDArray

from engine.devices import DEVICES
from engine.units import MMOL_L_TO_MG_DL

MINUTE_MS = 60_000
HOUR_MS = 60 * MINUTE_MS
DAY_MS = 24 * HOUR_MS
_GRID_MS = 5 * MINUTE_MS
_MEAL_MINUTES = (450.0, 750.0, 1140.0)  # 07:30, 12:30, 19:00 local
FLAG_NONE, FLAG_LOW, FLAG_HIGH = 0, 1, 2

#: Labelled sensor life in days, by engine device key.
SESSION_DAYS = {"dexcom-g6": 10.0, "dexcom-g7": 10.0, "libre-2": 14.0, "libre-3": 14.0}
MANUFACTURERS = {"dexcom": "Dexcom, Inc.", "libre": "Abbott Diabetes Care"}


@dataclass(frozen=True, slots=True)
class TraceProfile:
    """A person's glucose behaviour (mg/dL, minutes)."""

    level_mg_dl: float = 150.0
    drift_sd_mg_dl: float = 12.0
    dawn_mg_dl: float = 20.0
    meal_mg_dl: float = 60.0
    dips_per_day: float = 0.25
    dip_depth_mg_dl: tuple[float, float] = (50.0, 110.0)
    noise_sd_mg_dl: float = 12.0
    noise_tau_min: float = 45.0
    dropouts_per_day: float = 0.15


@dataclass(frozen=True, slots=True)
class SensorSession:
    """One sensor from insertion to its end (expiry, removal or failure); readings start after the warm-up."""

    start_ms: int
    end_ms: int
    serial: str


@dataclass(frozen=True, slots=True)
class Trace:
    """Readings of one person, sorted by time. `value` is in `unit`; `session` indexes `sessions`."""

    device: str
    unit: str  # "mg/dL" or "mmol/L"
    time_ms: NDArray[np.int64]
    value: NDArray[np.float64]
    flag: NDArray[np.int8]
    session: NDArray[np.int32]
    offset_min: NDArray[np.int32]  # the local UTC offset at each reading, in minutes
    sessions: tuple[SensorSession, ...]

    def __len__(self) -> int:
        return int(self.time_ms.size)


def utc_offsets_min(zone: str, times_ms: NDArray[np.int64]) -> NDArray[np.int32]:
    """The UTC offset (minutes) of `zone` at each instant, looked up once per hour (zone changes fall on hours)."""
    if times_ms.size == 0:
        return np.zeros(0, dtype=np.int32)
    tz = ZoneInfo(zone)
    hours = times_ms // HOUR_MS
    first, last = int(hours.min()), int(hours.max())
    table = np.empty(last - first + 1, dtype=np.int32)
    for i in range(table.size):
        offset = datetime.fromtimestamp((first + i) * 3600, tz).utcoffset()
        table[i] = 0 if offset is None else int(offset.total_seconds()) // 60
    return table[hours - first]


def _serial(rng: np.random.Generator, device: str) -> str:
    alphabet = np.array(list("0123456789ABCDEFGHJKLMNPQRSTUVWXYZ"))
    body = "".join(rng.choice(alphabet, size=8).tolist())
    return ("DX" if device.startswith("dexcom") else "FL") + body


def _sessions(
    rng: np.random.Generator, device: str, start_ms: int, end_ms: int, failed_at_ms: int | None
) -> list[SensorSession]:
    life_ms = int(SESSION_DAYS[device] * DAY_MS)
    t = (start_ms - int(rng.uniform(0.1, 0.9) * life_ms)) // 1000 * 1000  # the window opens mid-sensor
    out: list[SensorSession] = []
    while t < end_ms:
        end = t + life_ms
        wait_min = rng.uniform(10.0, 240.0)
        late_min = rng.uniform(8 * 60.0, 30 * 60.0)
        if rng.random() < 0.12:
            wait_min = late_min
        if failed_at_ms is not None and t <= failed_at_ms < end:
            end, wait_min = failed_at_ms, 30 * 60.0
        out.append(SensorSession(t, end, _serial(rng, device)))
        t = (end + int(wait_min * MINUTE_MS)) // 1000 * 1000  # whole seconds
    return out


def _bump(grid: NDArray[np.int64], out: NDArray[np.float64], at_ms: float, amplitude: float, tau_min: float) -> None:
    """Add `A (x/τ) e^(1 − x/τ)` (peak A at x = τ after `at_ms`) to `out` on `grid`, in place."""
    tau_ms = tau_min * MINUTE_MS
    lo = int(np.searchsorted(grid, at_ms))
    hi = int(np.searchsorted(grid, at_ms + 8.0 * tau_ms))
    if hi <= lo:
        return
    x = (grid[lo:hi] - at_ms) / tau_ms
    out[lo:hi] += amplitude * x * np.exp(1.0 - x)


def _glucose_mg_dl(
    rng: np.random.Generator, profile: TraceProfile, zone: str, start_ms: int, end_ms: int
) -> tuple[NDArray[np.int64], NDArray[np.float64]]:
    """(grid, glucose) every 5 min from a day before `start_ms` to `end_ms`."""
    grid = np.arange(start_ms - DAY_MS, end_ms + _GRID_MS, _GRID_MS, dtype=np.int64)
    offset = utc_offsets_min(zone, grid).astype(np.int64)
    local_ms = grid + offset * MINUTE_MS
    tod_min = (local_ms % DAY_MS) / MINUTE_MS
    first_day = int(local_ms[0] // DAY_MS)
    n_days = int(local_ms[-1] // DAY_MS) - first_day + 2

    # Level with a smooth day-to-day drift (daily values at local noon, interpolated).
    noon_local = (first_day + np.arange(n_days)) * DAY_MS + DAY_MS // 2
    drift = rng.normal(0.0, profile.drift_sd_mg_dl, size=n_days)
    glucose = profile.level_mg_dl + np.interp(local_ms, noon_local, drift)
    # Dawn rise around 06:30 local.
    glucose += profile.dawn_mg_dl * np.exp(-0.5 * ((tod_min - 390.0) / 75.0) ** 2)

    # Meals at local clock times; the UTC instant uses the offset at that day's noon.
    meal_at = rng.normal(0.0, 35.0, size=(n_days, len(_MEAL_MINUTES))) + np.array(_MEAL_MINUTES)
    meal_amp = profile.meal_mg_dl * rng.uniform(0.5, 1.5, size=meal_at.shape)
    meal_amp *= rng.random(meal_at.shape) >= 0.10
    meal_tau = rng.uniform(35.0, 60.0, size=meal_at.shape)
    noon_offset = utc_offsets_min(zone, noon_local.astype(np.int64)).astype(np.int64)
    meals = np.zeros(grid.size)
    for d in range(n_days):
        day_utc = (first_day + d) * DAY_MS - int(noon_offset[d]) * MINUTE_MS
        for m in range(meal_at.shape[1]):
            if meal_amp[d, m] > 0:
                _bump(grid, meals, day_utc + meal_at[d, m] * MINUTE_MS, meal_amp[d, m], meal_tau[d, m])
    glucose += meals

    # Hypoglycaemic dips.
    n_dips = int(rng.poisson(profile.dips_per_day * (end_ms - start_ms) / DAY_MS))
    dip_at = rng.uniform(start_ms, end_ms, size=n_dips)
    dip_depth = rng.uniform(*profile.dip_depth_mg_dl, size=n_dips)
    dip_tau = rng.uniform(15.0, 35.0, size=n_dips)
    for at, depth, tau in zip(dip_at.tolist(), dip_depth.tolist(), dip_tau.tolist(), strict=True):
        _bump(grid, glucose, at, -depth, tau)

    # AR(1) noise, stationary from the first grid point.
    phi = float(np.exp(-5.0 / profile.noise_tau_min))
    eps = rng.standard_normal(grid.size)
    eps[1:] *= np.sqrt(1.0 - phi * phi)
    noise = eps.tolist()
    for k in range(1, len(noise)):
        noise[k] += phi * noise[k - 1]
    glucose += np.asarray(noise) * profile.noise_sd_mg_dl
    return grid, glucose


def cgm_trace(
    rng: np.random.Generator,
    *,
    device: str,
    unit: str,
    zone: str,
    start_ms: int,
    end_ms: int,
    profile: TraceProfile,
    failed_sensor_at_ms: int | None = None,
) -> Trace:
    """The readings a person's sensors report in [start_ms, end_ms)."""
    if device not in SESSION_DAYS:
        raise ValueError(f"no sensor life for {device!r}: use one of {', '.join(SESSION_DAYS)}")
    if unit not in ("mg/dL", "mmol/L"):
        raise ValueError(f"unit {unit!r}: use mg/dL or mmol/L")
    model = DEVICES[device]
    sessions = _sessions(rng, device, start_ms, end_ms, failed_sensor_at_ms)

    times: list[NDArray[np.int64]] = []
    session_of: list[NDArray[np.int32]] = []
    for i, s in enumerate(sessions):
        first = s.start_ms + model.warmup_ms
        slots = np.arange(first, s.end_ms, model.interval_ms, dtype=np.int64)
        slots = slots[(slots >= start_ms) & (slots < end_ms)]
        times.append(slots)
        session_of.append(np.full(slots.size, i, dtype=np.int32))
    time_ms = np.concatenate(times)
    session = np.concatenate(session_of)
    time_ms = time_ms + rng.integers(-2, 3, size=time_ms.size) * 1000  # whole seconds, as FHIR shows them

    # Dropouts: the phone lost the sensor for 15 min to 3 h.
    n_drop = int(rng.poisson(profile.dropouts_per_day * (end_ms - start_ms) / DAY_MS))
    drop_at = rng.uniform(start_ms, end_ms, size=n_drop)
    drop_len = np.exp(rng.uniform(np.log(15.0), np.log(180.0), size=n_drop)) * MINUTE_MS
    keep = np.ones(time_ms.size, dtype=bool)
    for at, length in zip(drop_at.tolist(), drop_len.tolist(), strict=True):
        keep &= ~((time_ms >= at) & (time_ms < at + length))
    time_ms, session = time_ms[keep], session[keep]

    grid, glucose = _glucose_mg_dl(rng, profile, zone, start_ms, end_ms)
    bias = rng.uniform(0.94, 1.06, size=len(sessions))
    mg = np.interp(time_ms.astype(np.float64), grid.astype(np.float64), glucose) * bias[session]
    low, high = float(model.low_mg_dl or 40.0), float(model.high_mg_dl or 400.0)
    flag = np.zeros(mg.size, dtype=np.int8)
    flag[mg < low] = FLAG_LOW
    flag[mg > high] = FLAG_HIGH
    if unit == "mg/dL":
        value = np.rint(np.clip(mg, low, high))
    else:
        low_mmol, high_mmol = float(model.low_mmol_l or 2.2), float(model.high_mmol_l or 22.2)
        value = np.clip(np.round(mg / MMOL_L_TO_MG_DL, 1), low_mmol, high_mmol)
    return Trace(
        device=device,
        unit=unit,
        time_ms=time_ms,
        value=value.astype(np.float64),
        flag=flag,
        session=session,
        offset_min=utc_offsets_min(zone, time_ms),
        sessions=tuple(sessions),
    )


def local_midnight_ms(zone: str, day: datetime) -> int:
    """The instant (ms) local midnight starts `day`'s date in `zone`."""
    tz = ZoneInfo(zone)
    local = datetime(day.year, day.month, day.day, tzinfo=tz)
    return int(local.astimezone(UTC).timestamp() * 1000)


def dst_changes_ms(zone: str, start_ms: int, end_ms: int) -> list[int]:
    """Hours in [start_ms, end_ms) at which `zone`'s UTC offset changes."""
    hours = np.arange(start_ms // HOUR_MS, end_ms // HOUR_MS + 1, dtype=np.int64) * HOUR_MS
    offsets = utc_offsets_min(zone, hours)
    changed = np.nonzero(np.diff(offsets))[0] + 1
    return [int(hours[i]) for i in changed if start_ms <= hours[i] < end_ms]

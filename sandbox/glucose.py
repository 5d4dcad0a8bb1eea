"""A deterministic CGM trace for one person: sensor sessions, warm-ups, gaps and glucose, built with numpy.

simglucose is too slow to run at start-up (5–9 s per patient-day), so the seed uses this instead. It is a
cousin of `bench/synth.py` (level, meals, dips, AR(1) noise), with what a sandbox EHR needs on top: a day
shaped like a real person's (the AGP of Battelino et al., Diabetes Care 2019;42:1593), lows where the person's
story puts them, sensor sessions and the device's quirks.

- **Glucose (mg/dL)**, on a 5-min grid, in the person's local time (`TraceProfile` holds each person's numbers):
  - *Level.* An overnight level that differs from day to day (log-normal, AR(1) across days with φ ≈ 0.24)
    times a slow wander within the day (log-normal AR(1), correlation time 2–3 h).
  - *Dawn rise.* From about 04:00 to its top at 07:00 local, with a size that varies from day to day.
  - *Meals.* Breakfast, lunch and dinner at the person's local clock times (±25 min; weekend breakfast 45–120
    min later; some skipped), and a few snacks. Each meal is a response `A (x/τ)² e^(2(1 − x/τ))`: it rises
    over 30–60 min, peaks τ = 60–120 min after the meal (per person), and is back within 2–4 h. The median
    rise is per meal (breakfast and dinner bigger than lunch), spread log-normally from meal to meal and day to
    day.
  - *Bolus misses and corrections.* Some meals are bolused late, short or not at all: a rise 1.5–2.2 times
    as big and 1.5 times slower (at most 250 mg/dL), often followed by a correction bolus 2.5–4 h after the
    meal. A correction is dosed on the glucose seen and brings it down fast to 45–110 mg/dL, so now and then
    too far (the rollercoaster of type 1).
  - *Exercise.* Dips of 15–70 mg/dL (per person) on weekday evenings (17:00–19:00) or weekend mornings.
  - *Lows.* Hypoglycaemia is placed by its nadir, not by a depth: at night (nadir 00:30–05:30 local, at most
    one a night, a slow fall of 1.5–3 h unnoticed in sleep, recovery with a small rebound) and in the day (a
    fall of 25–50 min, treated, with the over-treatment's rebound). The nadir is 50–67 mg/dL (a share at 40–52,
    level 2).
  - *Sensor noise* (AR(1), 10 min), then soft bounds: below 50 mg/dL glucose bends towards 38, above 300
    towards 450, as real traces do; then a per-sensor calibration bias of ±6 %.
  Local time follows the person's zone through DST changes (offsets per hour from zoneinfo), so meals and
  nights stay at local clock times across a change.
- **Sensor sessions.** A sensor lasts its labelled life (Dexcom G6/G7 10 days, FreeStyle Libre 2/3 14 days)
  and is replaced after a short, random delay (10 min to 4 h; now and then 8 to 30 h). Each session starts
  with the device's warm-up (engine.devices: G6 2 h, G7 30 min, Libre 1 h) without readings, and becomes its
  own FHIR Device with a serial number. A sensor may fail early (`failed_sensor_at_ms`): that session ends
  there and the next starts 30 h later, a long gap.
- **Readings** every nominal interval of the device (5 min; Libre 2 15 min) with ±2 s of jitter (whole
  seconds), and a few dropouts (15 min to 3 h, log-uniform) where the phone lost the sensor.
- **Sensor range.** Values outside the device's reportable range are reported at the bound with a LOW/HIGH
  flag (FHIR: `valueQuantity.comparator` < or >). mmol/L values have one decimal (mg/dL ÷ 18.0156).

Everything comes from the `numpy.random.Generator` passed in, in a fixed order, so a trace is reproducible bit
for bit from (seed, person, window). No loop runs per reading: responses are summed with `numpy.bincount` and
the AR(1) processes are cumulative sums in blocks (about 15 ms for a person's 90 days).
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
_GRID_MIN = 5.0
_GRID_MS = 5 * MINUTE_MS
#: Drawn until x = 6 τ, where a response `(x/τ)² e^(2(1 − x/τ))` is below 0.2 % of its peak.
_SPAN_TAU = 6.0
_MAX_RISE_MG_DL = 250.0  # a meal's rise, however big the meal and however late the bolus
_FLOOR_KNEE_MG_DL, _FLOOR_MG_DL = 50.0, 38.0
_CEILING_KNEE_MG_DL, _CEILING_MG_DL = 300.0, 450.0
FLAG_NONE, FLAG_LOW, FLAG_HIGH = 0, 1, 2

#: Labelled sensor life in days, by engine device key.
SESSION_DAYS = {"dexcom-g6": 10.0, "dexcom-g7": 10.0, "libre-2": 14.0, "libre-3": 14.0}
MANUFACTURERS = {"dexcom": "Dexcom, Inc.", "libre": "Abbott Diabetes Care"}


@dataclass(frozen=True, slots=True)
class TraceProfile:
    """A person's glucose behaviour: mg/dL, minutes, local clock times as minutes after midnight.

    The defaults are a middling adult with type 1 diabetes on injections; `sandbox.seed` gives each person theirs.
    """

    level_mg_dl: float = 140.0  # the overnight (fasting) level of a median day
    day_spread: float = 0.15  # log-SD of that level from day to day
    wander_spread: float = 0.18  # log-SD of a slow wander within the day (stress, illness, absorption) ...
    wander_tau_min: float = 150.0  # ... and its correlation time
    dawn_mg_dl: float = 20.0  # the dawn rise at 07:00 on an average day
    meal_minutes: tuple[float, float, float] = (450.0, 750.0, 1140.0)  # breakfast, lunch, dinner on weekdays
    meal_jitter_min: float = 25.0  # day-to-day spread of those times
    meal_skip: tuple[float, float, float] = (0.10, 0.08, 0.03)  # chance each meal is skipped
    meal_mg_dl: tuple[float, float, float] = (70.0, 45.0, 75.0)  # median rise at the peak, per meal
    meal_spread: float = 0.35  # log-SD of one meal's rise
    meal_peak_min: tuple[float, float] = (60.0, 105.0)  # time from a meal to its peak (uniform)
    missed_bolus: float = 0.05  # share of meals bolused late, short or not at all
    correction: float = 0.7  # share of those followed by a correction bolus
    snacks_per_day: float = 0.4  # afternoon or late-evening snacks, about half a lunch
    exercise_per_week: float = 2.0
    exercise_mg_dl: tuple[float, float] = (30.0, 70.0)  # an exercise dip (uniform)
    night_lows_per_week: float = 0.3  # lows with the nadir at 00:30–05:30 local (at most one a night)
    day_lows_per_week: float = 0.7  # lows with the nadir at 09:30–23:30 local
    low_nadir_mg_dl: tuple[float, float] = (50.0, 67.0)  # a low's nadir (uniform) ...
    deep_low_share: float = 0.2  # ... except this share, at 40–52 mg/dL (level 2)
    noise_sd_mg_dl: float = 5.0  # sensor noise (besides each sensor's ±6 % bias)
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
    hours = times_ms // HOUR_MS
    first = int(hours.min())
    return _hourly_offsets_min(zone, first, int(hours.max()))[hours - first]


def _hourly_offsets_min(zone: str, first_hour: int, last_hour: int) -> NDArray[np.int32]:
    tz = ZoneInfo(zone)
    table = np.empty(last_hour - first_hour + 1, dtype=np.int32)
    for i in range(table.size):
        offset = datetime.fromtimestamp((first_hour + i) * 3600, tz).utcoffset()
        table[i] = 0 if offset is None else int(offset.total_seconds()) // 60
    return table


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


# MARK: glucose


def ar1(rng: np.random.Generator, n: int, tau_steps: float) -> NDArray[np.float64]:
    """A stationary AR(1) series of unit variance, `x[k] = φ x[k−1] + √(1 − φ²) ε[k]` with φ = e^(−1/τ).

    Computed without a per-sample loop: within a block, `x[j] = φ^j (x₀ + Σ ε[i] φ^(−i))`, with blocks short
    enough that φ^(−j) stays below e^250 (the rounding error then scales with x, not with φ^(−j)).
    """
    phi = float(np.exp(-1.0 / tau_steps))
    eps = rng.standard_normal(n)
    eps[1:] *= np.sqrt(1.0 - phi * phi)
    out = np.empty(n)
    block = max(1, int(250.0 * tau_steps))
    carry = 0.0
    for lo in range(0, n, block):
        e = eps[lo : lo + block]
        j = np.arange(e.size, dtype=np.float64)
        grow = np.exp(j / tau_steps)  # φ^(−j)
        out[lo : lo + e.size] = (np.cumsum(e * grow) + phi * carry) / grow
        carry = float(out[lo + e.size - 1])
    return out


def _responses(
    n: int, grid0_ms: int, at_ms: NDArray[np.float64], amplitude: NDArray[np.float64], peak_min: NDArray[np.float64]
) -> NDArray[np.float64]:
    """The sum of responses `A (x/τ)² e^(2(1 − x/τ))` starting at `at_ms` (peak A at τ = `peak_min`) on the grid."""
    if at_ms.size == 0:
        return np.zeros(n)
    span = int(np.ceil(_SPAN_TAU * float(peak_min.max()) / _GRID_MIN)) + 1
    k = np.ceil((at_ms - grid0_ms) / _GRID_MS).astype(np.int64)[:, None] + np.arange(span, dtype=np.int64)
    x = ((k * _GRID_MS + grid0_ms) - at_ms[:, None]) / (peak_min[:, None] * MINUTE_MS)
    shape = amplitude[:, None] * (x * x) * np.exp(2.0 * (1.0 - x))
    inside = (k >= 0) & (k < n)
    return np.bincount(k[inside], weights=shape[inside], minlength=n)


def _grid_index(at_ms: NDArray[np.float64], grid0_ms: int, n: int) -> NDArray[np.int64]:
    """The grid point nearest each instant (clipped to the grid)."""
    return np.clip(np.rint((at_ms - grid0_ms) / _GRID_MS).astype(np.int64), 0, n - 1)


def _soft_bounds(mg: NDArray[np.float64]) -> NDArray[np.float64]:
    """Bend glucose below 50 mg/dL towards 38 and above 300 towards 450 (smoothly: slope 1 at each knee)."""
    low_room = _FLOOR_KNEE_MG_DL - _FLOOR_MG_DL
    high_room = _CEILING_MG_DL - _CEILING_KNEE_MG_DL
    out = mg.copy()
    low = mg < _FLOOR_KNEE_MG_DL
    out[low] = _FLOOR_MG_DL + low_room * np.exp((mg[low] - _FLOOR_KNEE_MG_DL) / low_room)
    high = mg > _CEILING_KNEE_MG_DL
    out[high] = _CEILING_MG_DL - high_room * np.exp(-(mg[high] - _CEILING_KNEE_MG_DL) / high_room)
    return out


def _glucose_mg_dl(
    rng: np.random.Generator, profile: TraceProfile, zone: str, start_ms: int, end_ms: int
) -> tuple[NDArray[np.int64], NDArray[np.float64]]:
    """(grid, glucose) every 5 min from a day before `start_ms` to `end_ms` (the day before lets the first
    morning carry the previous evening's responses)."""
    grid = np.arange(start_ms - DAY_MS, end_ms + _GRID_MS, _GRID_MS, dtype=np.int64)
    n, grid0 = grid.size, int(grid[0])
    # One table of hourly offsets for the grid and every event (events may fall a day either side).
    first_hour = (grid0 - 2 * DAY_MS) // HOUR_MS
    offsets = _hourly_offsets_min(zone, first_hour, (int(grid[-1]) + 2 * DAY_MS) // HOUR_MS).astype(np.int64)

    def offset_ms(instant_ms: NDArray[np.int64]) -> NDArray[np.int64]:
        return offsets[instant_ms // HOUR_MS - first_hour] * MINUTE_MS

    local_ms = grid + offset_ms(grid)
    first_day = int(local_ms[0] // DAY_MS)
    n_days = int(local_ms[-1] // DAY_MS) - first_day + 1
    day_no = first_day + np.arange(n_days)  # local dates as days since 1970-01-01 (a Thursday)
    weekend = (day_no + 3) % 7 >= 5
    grid_day = local_ms // DAY_MS - first_day
    tod_min = (local_ms % DAY_MS) / MINUTE_MS

    def utc(day: NDArray[np.int64], minute: NDArray[np.float64]) -> NDArray[np.float64]:
        """The instant of local `minute` (after midnight) on local day `day` (index), through DST changes."""
        local = (day_no[day] * DAY_MS).astype(np.float64) + minute * MINUTE_MS
        guess = local.astype(np.int64) - offset_ms(local.astype(np.int64))
        return local - offset_ms(guess)

    every_day = np.arange(n_days)

    # Level: day to day and a slow wander within the day, both log-normal (glucose is skewed: highs wander
    # further than lows); the dawn rise.
    slow = profile.day_spread * ar1(rng, n_days, 0.7)[grid_day]
    slow += profile.wander_spread * ar1(rng, n, profile.wander_tau_min / _GRID_MIN)
    glucose = profile.level_mg_dl * np.exp(slow)
    dawn = profile.dawn_mg_dl * rng.uniform(0.4, 1.6, size=n_days)
    glucose += dawn[grid_day] * np.exp(-0.5 * ((tod_min - 420.0) / 80.0) ** 2)

    # Meals at local clock times, with day-to-day appetite; bolus misses and their corrections.
    shape = (n_days, 3)
    meal_min = np.array(profile.meal_minutes) + rng.normal(0.0, profile.meal_jitter_min, size=shape)
    meal_min[:, 0] += weekend * rng.uniform(45.0, 120.0, size=n_days)
    eaten = rng.random(shape) >= np.array(profile.meal_skip)
    appetite = np.exp(rng.normal(0.0, 0.15, size=n_days))[:, None]
    rise = np.array(profile.meal_mg_dl) * appetite * np.exp(rng.normal(0.0, profile.meal_spread, size=shape))
    peak = rng.uniform(*profile.meal_peak_min, size=shape)
    missed = eaten & (rng.random(shape) < profile.missed_bolus)
    rise[missed] *= rng.uniform(1.5, 2.2, size=int(missed.sum()))
    rise = np.minimum(rise, _MAX_RISE_MG_DL)
    peak[missed] *= 1.5
    corrected = missed & (rng.random(shape) < profile.correction)
    correction_after = rng.uniform(150.0, 240.0, size=shape)
    correction_depth = rise * rng.uniform(0.5, 1.0, size=shape)
    correction_peak = rng.uniform(60.0, 90.0, size=shape)
    lands_at = rng.uniform(45.0, 110.0, size=shape)  # where the correction alone would bring glucose
    meal_day = np.broadcast_to(every_day[:, None], shape)
    at = utc(meal_day[eaten], meal_min[eaten])
    glucose += _responses(n, grid0, at, rise[eaten], peak[eaten])
    at = utc(meal_day[corrected], meal_min[corrected] + correction_after[corrected])
    # A correction is dosed on the glucose seen: it takes off at most what lies above where it lands.
    seen = glucose[_grid_index(at + correction_peak[corrected] * MINUTE_MS, grid0, n)]
    depth = np.clip(seen - lands_at[corrected], 0.0, correction_depth[corrected])
    glucose -= _responses(n, grid0, at, depth, correction_peak[corrected])

    n_snacks = int(rng.poisson(profile.snacks_per_day * n_days))
    snack_day = rng.integers(0, n_days, size=n_snacks)
    snack_min = np.where(rng.random(n_snacks) < 0.5, 900.0, 1260.0) + rng.uniform(0.0, 90.0, size=n_snacks)
    snack_rise = 0.5 * profile.meal_mg_dl[1] * np.exp(rng.normal(0.0, profile.meal_spread, size=n_snacks))
    glucose += _responses(n, grid0, utc(snack_day, snack_min), snack_rise, rng.uniform(45.0, 75.0, size=n_snacks))

    # Exercise: weekday evenings, weekend mornings.
    active = rng.random(n_days) < profile.exercise_per_week / 7.0
    ex_min = np.where(weekend, 540.0, 1020.0) + rng.uniform(0.0, 120.0, size=n_days)
    ex_depth = rng.uniform(*profile.exercise_mg_dl, size=n_days)
    ex_peak = rng.uniform(40.0, 70.0, size=n_days)
    glucose -= _responses(n, grid0, utc(every_day[active], ex_min[active]), ex_depth[active], ex_peak[active])

    # Lows, placed by their nadir: night (slow, long) and day (quick, treated), each with its rebound.
    night_of = every_day[rng.random(n_days) < profile.night_lows_per_week / 7.0]  # at most one a night
    n_day_lows = int(rng.poisson(profile.day_lows_per_week / 7.0 * n_days))
    low_day = np.concatenate([night_of, rng.integers(0, n_days, size=n_day_lows)])
    n_low = low_day.size
    night = np.arange(n_low) < night_of.size
    low_min = np.where(night, rng.uniform(30.0, 330.0, size=n_low), rng.uniform(570.0, 1410.0, size=n_low))
    fall_min = np.where(night, rng.uniform(90.0, 180.0, size=n_low), rng.uniform(25.0, 50.0, size=n_low))
    nadir = rng.uniform(*profile.low_nadir_mg_dl, size=n_low)
    deep = rng.random(n_low) < profile.deep_low_share
    nadir[deep] = rng.uniform(40.0, 52.0, size=int(deep.sum()))
    rebound = np.where(night, rng.uniform(15.0, 60.0, size=n_low), rng.uniform(30.0, 90.0, size=n_low))
    rebound *= rng.random(n_low) < np.where(night, 0.7, 0.9)
    rebound_peak = rng.uniform(40.0, 70.0, size=n_low)
    at = utc(low_day, low_min)
    depth = np.maximum(glucose[_grid_index(at, grid0, n)] - nadir, 0.0)
    glucose -= _responses(n, grid0, at - fall_min * MINUTE_MS, depth, fall_min)
    glucose += _responses(n, grid0, at, rebound, rebound_peak)

    # Sensor noise, then the body's soft bounds.
    glucose += profile.noise_sd_mg_dl * ar1(rng, n, 10.0 / _GRID_MIN)
    return grid, _soft_bounds(glucose)


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

"""Outcome windows: the default "last N local days" window, or explicit bounds (docs/outcomes-method.md §3)."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import date, datetime, timedelta

import numpy as np

from engine.errors import PolicyError
from engine.timezones import DAY_MS, local_date, local_midnight_ms, to_local_ms

Bound = int | date  # an instant in ms since the epoch (UTC), or a local date meaning its local midnight


@dataclass(frozen=True, slots=True)
class WindowSpec:
    """Either `days` local days ending with the day of each patient's last reading, or [start, end)."""

    days: int = 14
    start: Bound | None = None
    end: Bound | None = None

    def __post_init__(self) -> None:
        if (self.start is None) != (self.end is None):
            raise PolicyError("give both the start and the end of the window, or neither")
        if self.days <= 0:
            raise PolicyError(f"a window needs at least one day, got {self.days}")

    @property
    def explicit(self) -> bool:
        return self.start is not None

    def as_dict(self) -> dict[str, object]:
        def show(b: Bound | None) -> object:
            return b.isoformat() if isinstance(b, date) else b

        return {"days": self.days, "start": show(self.start), "end": show(self.end)}


@dataclass(frozen=True, slots=True)
class Window:
    """A resolved window for one patient: [start_ms, end_ms) and its wall-clock length in days."""

    start_ms: int
    end_ms: int
    days: float

    @property
    def duration_ms(self) -> int:
        return self.end_ms - self.start_ms


def _instant(bound: Bound, zone: str) -> int:
    if isinstance(bound, date) and not isinstance(bound, datetime):
        return local_midnight_ms(zone, bound)
    if isinstance(bound, int):
        return bound
    raise PolicyError(f"a window bound must be an instant (ms) or a date, got {bound!r}")


def wall_clock_days(zone: str, start_ms: int, end_ms: int) -> float:
    """Local end − local start, in days: a 14-local-day window across a DST change is 14.0."""
    local = to_local_ms(zone, np.array([start_ms, end_ms], dtype=np.int64))
    return float(local[1] - local[0]) / DAY_MS


def resolve_window(spec: WindowSpec, zone: str, last_reading_ms: int | None) -> Window | None:
    """The patient's window, or None when the default window is asked for and the patient has no reading."""
    if spec.start is not None and spec.end is not None:
        start, end = _instant(spec.start, zone), _instant(spec.end, zone)
        if end <= start:
            raise PolicyError("the window end must be after its start")
    else:
        if last_reading_ms is None:
            return None
        last_day = local_date(zone, last_reading_ms)
        start = local_midnight_ms(zone, last_day - timedelta(days=spec.days - 1))
        end = local_midnight_ms(zone, last_day + timedelta(days=1))
    return Window(start, end, wall_clock_days(zone, start, end))

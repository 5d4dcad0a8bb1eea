"""The outcome policy: every choice that changes a number, in one frozen, hashable object."""

from __future__ import annotations

import hashlib
import json
from dataclasses import asdict, dataclass, field
from enum import StrEnum
from functools import lru_cache

from engine.errors import PolicyError
from engine.version import ENGINE_VERSION


class Method(StrEnum):
    """How the percentage metrics weigh readings (docs/outcomes-method.md §7)."""

    TIME = "time"
    COUNT = "count"


class Smoothing(StrEnum):
    NONE = "none"
    ONE_FOUR_ONE = "1-4-1"


@dataclass(frozen=True, slots=True)
class Goal:
    """A consensus goal on one percentage metric, e.g. time_in_range_pct > 70."""

    metric: str
    op: str  # ">" or "<"
    value: float

    def met(self, actual: float | None) -> bool | None:
        if actual is None:
            return None
        return actual > self.value if self.op == ">" else actual < self.value


@dataclass(frozen=True, slots=True)
class TargetSet:
    """A target range (in both units) and its goals. The five consensus bands never change with it."""

    name: str
    low_mg_dl: float
    high_mg_dl: float
    low_mmol_l: float
    high_mmol_l: float
    goals: tuple[Goal, ...] = field(default=())


_STANDARD_GOALS = (
    Goal("time_in_range_pct", ">", 70.0),
    Goal("time_below_70_pct", "<", 4.0),
    Goal("time_below_54_pct", "<", 1.0),
    Goal("time_above_180_pct", "<", 25.0),
    Goal("time_above_250_pct", "<", 5.0),
)

TARGET_SETS: dict[str, TargetSet] = {
    "standard": TargetSet("standard", 70.0, 180.0, 3.9, 10.0, _STANDARD_GOALS),
    "older": TargetSet(
        "older",
        70.0,
        180.0,
        3.9,
        10.0,
        (
            Goal("time_in_range_pct", ">", 50.0),
            Goal("time_below_70_pct", "<", 1.0),
            Goal("time_above_250_pct", "<", 10.0),
        ),
    ),
    "pregnancy": TargetSet(
        "pregnancy",
        63.0,
        140.0,
        3.5,
        7.8,
        (
            Goal("time_in_range_pct", ">", 70.0),
            Goal("time_below_target_pct", "<", 4.0),
            Goal("time_below_54_pct", "<", 1.0),
            Goal("time_above_target_pct", "<", 25.0),
        ),
    ),
}


def target_set(name: str) -> TargetSet:
    found = TARGET_SETS.get(name)
    if found is None:
        raise PolicyError(f"unknown target set {name!r}: use one of {', '.join(TARGET_SETS)}")
    return found


@dataclass(frozen=True, slots=True)
class OutcomePolicy:
    """Every parameter of the method. Defaults are the documented glucobridge defaults."""

    method: Method = Method.TIME
    targets: str = "standard"
    long_gap_min: int = 120
    short_gap_min: int = 15
    agp_bin_min: int = 15
    agp_smoothing: Smoothing = Smoothing.NONE
    infer_sessions: bool = False
    sufficient_days: int = 14
    sufficient_active_pct: float = 70.0
    hypo_min_minutes: int = 15
    hypo_recovery_minutes: int = 15

    def __post_init__(self) -> None:
        object.__setattr__(self, "method", Method(self.method))
        object.__setattr__(self, "agp_smoothing", Smoothing(self.agp_smoothing))
        target_set(self.targets)
        if self.agp_bin_min <= 0 or 1440 % self.agp_bin_min:
            raise PolicyError(f"agp_bin_min must divide 1440 minutes, got {self.agp_bin_min}")
        if self.short_gap_min <= 0 or self.long_gap_min < self.short_gap_min:
            raise PolicyError("gaps must satisfy 0 < short_gap_min <= long_gap_min")
        if self.hypo_min_minutes <= 0 or self.hypo_recovery_minutes <= 0:
            raise PolicyError("hypoglycaemia durations must be positive")
        if self.sufficient_days <= 0 or not 0 <= self.sufficient_active_pct <= 100:
            raise PolicyError("sufficiency needs days > 0 and an active percentage in 0..100")

    @property
    def target(self) -> TargetSet:
        return target_set(self.targets)

    def as_dict(self) -> dict[str, object]:
        data = asdict(self)
        data["method"] = str(self.method)
        data["agp_smoothing"] = str(self.agp_smoothing)
        return data

    @property
    def policy_hash(self) -> str:
        """SHA-256 of the canonical policy JSON together with the engine version."""
        return _policy_hash(self)


@lru_cache(maxsize=64)
def _policy_hash(policy: OutcomePolicy) -> str:
    """`OutcomePolicy.policy_hash`, once per policy (a policy is immutable; an export names it in every resource)."""
    payload = {"engine_version": ENGINE_VERSION, "policy": policy.as_dict()}
    text = json.dumps(payload, sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(text.encode()).hexdigest()

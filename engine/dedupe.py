"""Which copy of a reading counts: the duplicate rule of docs/outcomes-method.md §4.4, shared by the engine and
by the store's reconciliation (which records the choice), so there is one rule in one place: the engine's compiled
exclusion pass (`engine.kernels._front`), here with no window and no session.
"""

from __future__ import annotations

import numpy as np
from numpy.typing import NDArray

from engine.kernels import compiled
from engine.readings import NO_TIME
from engine.units import MMOL_L_TO_MG_DL, GlucoseUnit

I64 = NDArray[np.int64]


def group_winners(
    t: I64,
    stream: NDArray[np.integer],
    interval_ms: I64,
    source: NDArray[np.integer],
    received: I64,
    value_mg_dl: NDArray[np.float64],
) -> I64:
    """For readings sorted by (stream, time): the position of the reading each one is a copy of (itself if kept).

    Within a stream a group starts at the earliest reading and takes every later reading with
    `t − t_start < interval / 2`; the group keeps one reading by source precedence (lower code first), then the
    latest received, then the larger value, then the earlier time, then input order. `interval_ms` is each
    reading's stream's nominal interval (one per stream: a stream is one device).
    """
    n = t.shape[0]
    if n < 2:
        return np.arange(n, dtype=np.int64)
    stream = np.asarray(stream)
    run_start = np.concatenate(([True], stream[1:] != stream[:-1]))
    code = (np.cumsum(run_start) - 1).astype(np.int32)
    interval_of = np.asarray(interval_ms, dtype=np.int64)[run_start]
    copy_of = np.empty(n, dtype=np.int64)
    compiled().front(
        np.zeros(n, dtype=np.int32), np.asarray(t, dtype=np.int64), code, np.asarray(value_mg_dl, dtype=np.float64),
        np.full(n, GlucoseUnit.MG_DL, dtype=np.int8), np.full(n, NO_TIME, dtype=np.int64),
        np.asarray(source, dtype=np.int8), np.asarray(received, dtype=np.int64), np.zeros(n, dtype=np.bool_),
        np.array([np.iinfo(np.int64).min]), np.array([np.iinfo(np.int64).max]), interval_of,
        np.zeros(interval_of.shape[0], dtype=np.int64), np.zeros(interval_of.shape[0], dtype=np.int64),
        int(GlucoseUnit.MMOL_L), MMOL_L_TO_MG_DL, int(NO_TIME), False, False,
        np.empty(n, dtype=np.int8), np.empty(n, dtype=np.int64), copy_of, np.zeros((1, 4), dtype=np.int64),
        np.zeros(1, dtype=np.int64),
    )  # fmt: skip
    return copy_of

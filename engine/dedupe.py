"""Which copy of a reading counts: the duplicate rule of docs/outcomes-method.md §4.4, shared by the engine and
by the store's reconciliation (which records the choice), so there is one rule in one place.
"""

from __future__ import annotations

import numpy as np
from numpy.typing import NDArray

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
    latest received, then the larger value, then the earlier time, then input order. Chains of close readings
    are rare, so pairs are decided vectorised and only longer chains are walked.
    """
    n = t.shape[0]
    winner = np.arange(n, dtype=np.int64)
    if n < 2:
        return winner
    close = (stream[1:] == stream[:-1]) & (2 * (t[1:] - t[:-1]) < interval_ms[1:])
    if not close.any():
        return winner
    pair = np.flatnonzero(close)  # reading pair[k] is close to reading pair[k] + 1
    chain_start = np.flatnonzero(np.diff(np.concatenate(([-2], pair))) != 1)
    chain_end = np.append(chain_start[1:], pair.size)
    single = chain_end - chain_start == 1
    a = pair[chain_start[single]]
    b = a + 1
    b_wins = (source[b] < source[a]) | (
        (source[b] == source[a])
        & ((received[b] > received[a]) | ((received[b] == received[a]) & (value_mg_dl[b] > value_mg_dl[a])))
    )
    best = np.where(b_wins, b, a)
    winner[a] = best
    winner[b] = best
    for c0, c1 in zip(chain_start[~single].tolist(), chain_end[~single].tolist(), strict=True):
        first, last = int(pair[c0]), int(pair[c1 - 1]) + 1
        group = [first]
        anchor = int(t[first])
        for i in range(first + 1, last + 1):
            if 2 * (int(t[i]) - anchor) < int(interval_ms[i]):
                group.append(i)
            else:
                _settle(group, winner, t, source, received, value_mg_dl)
                group, anchor = [i], int(t[i])
        _settle(group, winner, t, source, received, value_mg_dl)
    return winner


def _settle(
    group: list[int],
    winner: I64,
    t: I64,
    source: NDArray[np.integer],
    received: I64,
    value: NDArray[np.float64],
) -> None:
    best = min(group, key=lambda i: (int(source[i]), -int(received[i]), -float(value[i]), int(t[i]), i))
    winner[group] = best

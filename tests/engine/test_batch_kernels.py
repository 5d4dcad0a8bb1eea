"""The batch engine's exact kernels: value ranks (for the AGP's sort) against plain sorting."""

from __future__ import annotations

import numpy as np
from hypothesis import given, settings
from hypothesis import strategies as st

from engine.cohort import _value_ranks, _whole_values

values = st.one_of(
    st.integers(1, 450).map(float),
    st.integers(10, 250).map(lambda x: x / 10 * 18.0156),
    st.floats(1e-3, 1e7, allow_nan=False, allow_infinity=False),
    st.sampled_from([0.5, 65535.0, 65536.0, 65536.5, 70000.0, 1e12]),
)


@settings(max_examples=300, deadline=None)
@given(st.lists(values, min_size=1, max_size=200))
def test_value_ranks_are_the_ranks_among_the_distinct_values(data: list[float]) -> None:
    mg = np.array(data, dtype=np.float64)
    distinct, rank = _value_ranks(mg, *_whole_values(mg))
    assert np.array_equal(distinct, np.unique(mg))
    assert np.array_equal(distinct[rank], mg)

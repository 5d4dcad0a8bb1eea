"""A short soak (the full one is `python -m bench soak`): queued writes across 3 sites with different throttles
drain within each site's rate, every write confirmed, none doubled at the EHR (sandbox and proxy as processes)."""

from __future__ import annotations

from bench.soak_bench import soak


def test_queued_writes_drain_within_each_sites_rate_each_once() -> None:
    rates = {"epic-like": (60.0, 5), "oracle-like": (30.0, 3), "cgm-receiver": (90.0, 10)}
    result = soak(360, rates, quiet=True)
    assert result.duplicates == 0
    for site, numbers in result.per_site.items():
        assert numbers["confirmed"] == numbers["writes"] == 120, (site, numbers)
        assert numbers["committed"] == 120, (site, numbers)
        rps, burst = rates[site]
        assert numbers["busiest_second"] <= rps + burst, (site, numbers)
    for counts in result.states.values():
        assert counts["queued"] + counts["sending"] + counts["unknown"] + counts["failed"] == 0
    # The slowest site bounds the drain: 120 writes at 30/s (less its burst) take at least 3.9 s.
    assert result.drain_s >= (120 - 3) / 30 * 0.95

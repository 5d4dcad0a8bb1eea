"""The outcomes engine: the batch path on synthetic cohorts against the plain per-patient baseline.

Both run the same rules (docs/outcomes-method.md; the differential tests hold them equal). The baseline is
timed on a sample of the same cohort (it runs at about 0.2 M readings/s, so the whole 10k cohort would take
minutes); its readings/s are what the ratio is taken against.
"""

from __future__ import annotations

from bench.baseline import baseline_report
from bench.measure import best_of, max_rss_mb, median_of, peak_memory, table
from bench.synth import synth_cohort
from engine import OutcomePolicy, ReadingTable, compute_cohort, compute_outcomes
from engine.report import build_report

BASELINE_PATIENTS = 40


def synth_subset(full: ReadingTable, n: int) -> ReadingTable:
    """The first n patients of a cohort sorted by patient, as their own table (views, no copy)."""
    end = int((full.patient < n).sum())
    streams = int(full.stream[:end].max()) + 1 if end else 0
    return ReadingTable(
        patient=full.patient[:end],
        time_ms=full.time_ms[:end],
        value=full.value[:end],
        unit=full.unit[:end],
        flag=full.flag[:end],
        stream=full.stream[:end],
        session_start_ms=full.session_start_ms[:end],
        source=full.source[:end],
        received=full.received[:end],
        ambiguous=full.ambiguous[:end],
        patient_ids=full.patient_ids[:n],
        zones=full.zones[:n],
        stream_patient=full.stream_patient[:streams],
        stream_device=full.stream_device[:streams],
        stream_labels=full.stream_labels[:streams],
    )


def run(*, quick: bool = False) -> None:
    policy = OutcomePolicy()
    sizes = (200, 1000) if quick else (1_000, 10_000)
    print("\n## engine: batch outcomes, 14 days of 5-minute readings per patient, one core\n")
    rows = []
    for n in sizes:
        cohort = synth_cohort(n, 14, seed=n)
        readings = len(cohort)
        compute_cohort(synth_subset(cohort, 10), policy)  # warm caches (zone rules, imports)
        batch_s = best_of(lambda c=cohort: compute_cohort(c, policy), 2 if n > 2000 else 3)
        full_s = best_of(lambda c=cohort: build_report(compute_cohort(c, policy)), 1)
        _, peak = peak_memory(lambda c=cohort: compute_cohort(c, policy))
        sample = synth_subset(cohort, BASELINE_PATIENTS)
        base_s = best_of(lambda s=sample: baseline_report(s, policy), 1)
        base_rate = len(sample) / base_s
        batch_rate = readings / batch_s
        rows.append(
            (
                f"{n:,}",
                f"{readings:,}",
                f"{batch_s:.2f} s",
                f"{batch_rate / 1e6:.2f} M/s",
                f"{readings / full_s / 1e6:.2f} M/s",
                f"{base_rate / 1e6:.3f} M/s",
                f"{batch_rate / base_rate:.0f}x",
                f"{peak / 2**20:,.0f} MiB",
                f"{readings * 8 * 10 / 2**20:,.0f} MiB",
            )
        )
        del cohort
    print(
        table(
            rows,
            (
                "patients",
                "readings",
                "batch",
                "batch rate",
                "with report",
                "baseline",
                "ratio",
                "peak alloc",
                "input size",
            ),
        )
    )
    one = synth_cohort(1, 14, seed=3)
    compute_outcomes(one, policy)
    single = median_of(lambda: compute_outcomes(one, policy), 200)
    batch_only = median_of(lambda: compute_cohort(one, policy), 200)
    base_one = median_of(lambda: baseline_report(one, policy), 5)
    print(
        f"\none 14-day patient ({len(one):,} readings): {single * 1e3:.2f} ms with its report "
        f"({batch_only * 1e3:.2f} ms batch path); baseline {base_one * 1e3:.0f} ms; ratio {base_one / single:.0f}x"
    )
    print(
        f"goals: >= 20 M readings/s on the batch path; <= 5 ms for one 14-day patient. max RSS {max_rss_mb():,.0f} MiB"
    )
    print(
        "'with report' adds building every patient's outcome document; 'peak alloc' is tracemalloc's peak during "
        "the batch path; 'input size' is the table's columns."
    )

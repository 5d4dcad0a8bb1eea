"""The outcomes engine: the batch path on synthetic cohorts, against the plain per-patient baseline and against
the machine's memory bandwidth.

Both paths run the same rules (docs/outcomes-method.md; the differential tests hold them equal). Rates are
readings per second of this thread's CPU time ("per core"): on a machine shared with other work, wall time
counts the time the process waited for a core, CPU time does not (cache and memory contention still show).
Wall-clock rates are printed beside them.

- ratio to the baseline: the baseline (bench/baseline.py, the iglu-equivalent plain implementation) is timed in
  this run on the first patients of the same cohort (it runs at about 0.03 M readings/s, so the whole cohort
  would take hours);
- ratio to the physical limit: the bytes of the reading columns the engine reads per reading, against the memory
  bandwidth measured in this run (summing a large array that is far bigger than the caches). 100 % would be a
  single pass reading each input byte once at the machine's streaming speed.

    python -m bench engine            # 200 and 1,000 patients × 14 days
    python -m bench engine --quick    # 200 patients only
    python -m bench engine --full     # 200 and 10,000 patients × 14 days (about 40 M readings; minutes, ~6 GB)
"""

from __future__ import annotations

import gc
import statistics
import sys
import time
from collections.abc import Callable

import numpy as np

from bench.baseline import baseline_report
from bench.measure import max_rss_mb, peak_memory, table
from bench.synth import synth_cohort
from engine import OutcomePolicy, ReadingTable, compute_cohort, compute_outcomes
from engine.report import build_report

BASELINE_PATIENTS = 40
#: The reading columns compute_cohort reads, with their widths in bytes.
COLUMN_BYTES = {
    "patient": 4,
    "time_ms": 8,
    "value": 8,
    "unit": 1,
    "flag": 1,
    "stream": 4,
    "session_start_ms": 8,
    "source": 1,
    "received": 8,
    "ambiguous": 1,
}
BYTES_PER_READING = sum(COLUMN_BYTES.values())


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


def timed(fn: Callable[[], object], repeat: int) -> tuple[float, float]:
    """The fastest (CPU seconds of this thread, wall seconds) of `repeat` runs."""
    cpu, wall = [], []
    for _ in range(repeat):
        gc.collect()
        c0, w0 = time.thread_time(), time.perf_counter()
        fn()
        cpu.append(time.thread_time() - c0)
        wall.append(time.perf_counter() - w0)
    return min(cpu), min(wall)


def median_timed(fn: Callable[[], object], repeat: int) -> tuple[float, float]:
    """The median (CPU seconds, wall seconds) of `repeat` runs."""
    cpu, wall = [], []
    for _ in range(repeat):
        c0, w0 = time.thread_time(), time.perf_counter()
        fn()
        cpu.append(time.thread_time() - c0)
        wall.append(time.perf_counter() - w0)
    return statistics.median(cpu), statistics.median(wall)


def memory_bandwidth(mib: int = 512) -> float:
    """Bytes per second of one core streaming through a large, already-touched array (`numpy.sum`; best of 5)."""
    data = np.ones(mib * 2**20 // 8)
    data.sum()  # touch every page first
    best = min(timed(data.sum, 5))
    bandwidth = data.nbytes / max(best, 1e-9)
    del data
    return bandwidth


def _busy() -> str:
    try:
        with open("/proc/loadavg") as f:
            return f.read().split()[0]
    except OSError:
        return "?"


def run(*, quick: bool = False, full: bool | None = None) -> None:
    if full is None:  # `python -m bench engine --full`: the flag the command line already has for bulk
        full = "--full" in sys.argv[1:]
    policy = OutcomePolicy()
    sizes = (200,) if quick else (200, 10_000) if full else (200, 1_000)
    bandwidth = memory_bandwidth()
    limit = bandwidth / BYTES_PER_READING
    print("\n## engine: batch outcomes, 14 days of 5-minute readings per patient, one core\n")
    print(
        f"load average at start {_busy()} on this machine; memory bandwidth {bandwidth / 1e9:.1f} GB/s (numpy sum of "
        f"512 MiB); the engine reads {BYTES_PER_READING} bytes per reading, so the physical limit is "
        f"{limit / 1e6:.0f} M readings/s\n"
    )
    rows = []
    base_rate = 0.0
    for n in sizes:
        cohort = synth_cohort(n, 14, seed=n)
        readings = len(cohort)
        compute_cohort(synth_subset(cohort, 10), policy)  # warm caches (zone rules, imports)
        batch_cpu, batch_wall = timed(lambda c=cohort: compute_cohort(c, policy), 2 if n > 2000 else 5)
        if n <= 2000:
            report_cpu, _ = timed(lambda c=cohort: build_report(compute_cohort(c, policy)), 1)
            with_report = f"{readings / report_cpu / 1e6:.2f} M/s"
            _, peak = peak_memory(lambda c=cohort: compute_cohort(c, policy))
            peak_text = f"{peak / 2**20:,.0f} MiB"
        else:
            with_report, peak_text = "-", "-"
        if not base_rate:
            sample = synth_subset(cohort, BASELINE_PATIENTS)
            base_cpu, _ = timed(lambda s=sample: baseline_report(s, policy), 1)
            base_rate = len(sample) / base_cpu
        rate = readings / batch_cpu
        rows.append(
            (
                f"{n:,}",
                f"{readings:,}",
                f"{batch_cpu:.3f} s",
                f"{rate / 1e6:.2f} M/s",
                f"{readings / batch_wall / 1e6:.2f} M/s",
                with_report,
                f"{base_rate / 1e3:.1f} k/s",
                f"{rate / base_rate:,.0f}x",
                f"{100 * rate / limit:.1f} %",
                peak_text,
                f"{readings * BYTES_PER_READING / 2**20:,.0f} MiB",
            )
        )
        del cohort
        gc.collect()
    print(
        table(
            rows,
            (
                "patients",
                "readings",
                "batch CPU",
                "readings/s/core",
                "wall rate",
                "with report",
                "baseline",
                "x baseline",
                "of limit",
                "peak alloc",
                "input",
            ),
        )
    )
    one = synth_cohort(1, 14, seed=3)
    compute_outcomes(one, policy)
    single_cpu, single_wall = median_timed(lambda: compute_outcomes(one, policy), 200)
    batch_cpu, _ = median_timed(lambda: compute_cohort(one, policy), 200)
    base_one, _ = median_timed(lambda: baseline_report(one, policy), 3)
    print(
        f"\none 14-day patient ({len(one):,} readings), metrics + AGP + report: {single_cpu * 1e3:.2f} ms CPU "
        f"({single_wall * 1e3:.2f} ms wall; {batch_cpu * 1e3:.2f} ms CPU the batch path alone); baseline "
        f"{base_one * 1e3:.0f} ms; ratio {base_one / single_cpu:.0f}x"
    )
    print(
        f"goals: >= 20 M readings/s/core on the batch path; <= 5 ms for one 14-day patient. load average at end "
        f"{_busy()}; max RSS {max_rss_mb():,.0f} MiB"
    )
    print(
        "'readings/s/core' is per second of this thread's CPU time (best of several runs); 'wall rate' the same run "
        "by the clock; 'with report' adds building every patient's outcome document; 'baseline' is the plain "
        f"implementation on the first {BASELINE_PATIENTS} patients; 'of limit' is the rate against memory bandwidth "
        f"/ {BYTES_PER_READING} bytes; 'peak alloc' is tracemalloc's peak during the batch path; 'input' the "
        "table's columns."
    )

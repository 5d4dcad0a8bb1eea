"""`make bench`: speed and memory, as ratios against a baseline run in the same process.

    python -m bench                 # every section at its default size (the goal: under 10 minutes)
    python -m bench --full          # the acceptance sizes of issue 13 (1 M readings per feed, 10k patients,
                                    # 10k soak writes, 1,000 Bulk patients): about half an hour
    python -m bench engine --quick  # one section, smoke sizes

| section | --quick | default | --full |
| --- | --- | --- | --- |
| engine | 200 patients × 14 d | 200 and 1,000 patients | 200 and 10,000 |
| ingest | 100k readings per file | 100k (the section's quick size) | 1 M |
| export | 500 windows | 2,000 windows | 10,000 |
| view | 20 + 6 patients, 5 s per load run | 200 + 6 patients, 15 s | 1,000 + 6 patients, 15 s |
| outcomes | 50 patients | 100 patients | the 10,000-patient backfill |
| soak | 600 writes | 3,000 writes | 10,000 |
| bulk | 20 patients | 100 patients | 1,000 |

Each section prints a table; numbers are measured on this machine in this run (never asserted in tests). A rate
(readings/s, windows/s) is comparable between sizes; a total time is not.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
import traceback
from collections.abc import Callable

# One core: numpy's element-wise work is single-threaded; keep any BLAS the same.
for _var in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
    os.environ.setdefault(_var, "1")

from bench import (  # noqa: E402
    bulk_bench,
    engine_bench,
    export_bench,
    ingest_bench,
    outcomes_bench,
    soak_bench,
    view_bench,
)

#: section -> run(quick, full). ingest's default here is its quick size and --full its full size; outcomes runs
#: 100 patients by default (50 with --quick) and the 10,000-patient backfill with --full.
SECTIONS: dict[str, Callable[[bool, bool], None]] = {
    "engine": lambda quick, full: engine_bench.run(quick=quick, full=full),
    "ingest": lambda quick, full: ingest_bench.run(quick=not full, full=full),
    "export": lambda quick, full: export_bench.run(quick=quick, full=full),
    "view": lambda quick, full: view_bench.run(quick=quick and not full, full=full),
    "outcomes": lambda quick, full: outcomes_bench.run(patients=None if full else 50 if quick else 100, backfill=full),
    "soak": lambda quick, full: soak_bench.run(quick=quick, full=full),
    "bulk": lambda quick, full: bulk_bench.run(quick=quick, full=full),
}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)  # fmt: skip
    parser.add_argument("sections", nargs="*", choices=[*SECTIONS, []], help="sections to run (default: all)")
    sizes = parser.add_mutually_exclusive_group()
    sizes.add_argument("--quick", action="store_true", help="smoke sizes")
    sizes.add_argument("--full", action="store_true", help="the acceptance sizes of issue 13 (about half an hour)")
    args = parser.parse_args(argv)
    began = time.perf_counter()
    failed = []
    for name in args.sections or list(SECTIONS):
        started = time.perf_counter()
        try:
            SECTIONS[name](args.quick, args.full)
        except Exception:  # one section that cannot run (a stack that did not start) does not hide the others
            traceback.print_exc()
            failed.append(name)
        print(f"\n[{name}: {time.perf_counter() - started:.0f} s{' FAILED' if name in failed else ''}]", flush=True)
    print(f"\n[bench: {time.perf_counter() - began:.0f} s in all{'; failed: ' + ', '.join(failed) if failed else ''}]")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())

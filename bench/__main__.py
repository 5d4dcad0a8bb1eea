"""`make bench`: speed and memory, as ratios against a baseline run in the same process.

    python -m bench                 # every section
    python -m bench engine --quick  # one section, smaller sizes
    python -m bench bulk --full     # Bulk Data ingest of 1,000 patients × 14 days (behind the flag: minutes)
    python -m bench ingest --full   # 1 million readings per feed into SQLite and PostgreSQL (minutes)

Each section prints a table; numbers are measured on this machine in this run (never asserted in tests).
"""

from __future__ import annotations

import argparse
import os
import sys

# One core: numpy's element-wise work is single-threaded; keep any BLAS the same.
for _var in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
    os.environ.setdefault(_var, "1")

from bench import bulk_bench, engine_bench, export_bench, ingest_bench, soak_bench, view_bench  # noqa: E402

SECTIONS = {
    "engine": engine_bench.run,
    "ingest": ingest_bench.run,
    "export": export_bench.run,
    "view": view_bench.run,
    "soak": soak_bench.run,
    "bulk": bulk_bench.run,
}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench", description=__doc__)
    parser.add_argument("sections", nargs="*", choices=[*SECTIONS, []], help="sections to run (default: all)")
    parser.add_argument("--quick", action="store_true", help="smaller sizes, for a smoke run")
    parser.add_argument(
        "--full", action="store_true", help="bulk: 1,000 patients × 14 days; ingest: 1 M readings a file (minutes)"
    )
    args = parser.parse_args(argv)
    for name in args.sections or list(SECTIONS):
        if name == "bulk":
            bulk_bench.run(quick=args.quick, full=args.full)
        elif name == "ingest":
            ingest_bench.run(quick=args.quick, full=args.full)
        else:
            SECTIONS[name](quick=args.quick)
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""`glucobridge worker`: runs the jobs (launch-time EHR reads, stale recomputes, corrections, nightly Bulk
exports) and the scheduler, on SAQ over Redis when REDIS_URL is set, else on the embedded queue in the store
(docs/jobs.md). Several may run at once, on one machine or many: none runs a job twice.

    glucobridge worker [--concurrency N] [--once]

It uses the app's settings (DATABASE_URL, REDIS_URL, SITES_DIR, APP_SECRET_KEY or SMART_TOKEN_KEYS: the launch
handles in read jobs are sealed with the SMART token cipher). SIGTERM or Ctrl-C stop it.
"""

from __future__ import annotations

import argparse
import logging
from typing import Any, TextIO

from app.cli.common import BadInputError, open_store
from app.jobs import serve_forever


def cmd_worker(args: argparse.Namespace, out: TextIO, err: TextIO) -> int:
    del out, err
    if args.concurrency < 1:
        raise BadInputError("--concurrency must be at least 1")
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    store = open_store()  # the schema is checked (and SQLite migrated) before anything runs
    settings = store.settings
    store.dispose()
    serve_forever(settings, concurrency=args.concurrency, once=args.once)
    return 0


def add_parser(sub: Any) -> None:
    worker = sub.add_parser("worker", help="run the jobs (EHR reads at launch, recomputes, corrections, Bulk)")
    worker.add_argument("--concurrency", type=int, default=4, help="jobs run at once by this worker (default 4)")
    worker.add_argument("--once", action="store_true", help="run the jobs that are due, then exit")
    worker.set_defaults(handler=cmd_worker)

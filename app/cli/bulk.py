"""Bulk Data commands: `bulk start | status | cancel | resume SITE` (FHIR `$export` with Backend Services, bff/bulk/).

    glucobridge bulk start SITE [--group G | --level patient|system] [--full]
                                            export per the site's [bulk] matrix and ingest every file (the
                                            `_since` watermark of the last completed export unless --full)
    glucobridge bulk status SITE [--json]   the site's recent jobs, their files and counts, and the watermarks
    glucobridge bulk resume SITE [--job N]  drive unfinished jobs on from their record (after a crash or kill)
    glucobridge bulk cancel SITE [--job N]  DELETE the export at the server; the job is cancelled

Each step is printed as it happens (`job 3: in progress (40% done); next request in 30 s`). Tokens: a Backend
Services system token of `SMART_BACKEND_CLIENT_ID` with the key in SMART_BACKEND_KEY_FILE / SMART_BACKEND_KID.
Downloaded files sit in `--work-dir` (default var/bulk, private) only until they are ingested.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import os
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any, TextIO

import httpx

from app.cli.common import BadInputError, open_store
from bff.broker.broker import backend_token_source
from bff.bulk import BulkClient, BulkError, BulkRunner, JobBusyError, JobReport, Level
from bff.bulk.jobs import JobStore
from bff.capabilities import CapabilityError, CapabilityService
from bff.settings import VAR, SettingsError, get_settings
from bff.smart import SmartSettings, create_backend_auth

EXIT_UNFINISHED = 1


def add_parser(sub: Any) -> None:
    bulk = sub.add_parser(
        "bulk", help="FHIR Bulk Data $export of a site into the store (start, status, resume, cancel)"
    )
    actions = bulk.add_subparsers(dest="bulk_action", required=True)
    start = actions.add_parser("start", help="export per the site's [bulk] matrix and ingest the files")
    start.add_argument("site")
    start.add_argument("--group", help="one of the site's [bulk] group_ids (default: each of them)")
    start.add_argument("--level", choices=[level.value for level in Level],
                       help="export level (default: group when the site has group_ids, else patient)")  # fmt: skip
    start.add_argument("--full", action="store_true", help="ignore the _since watermark: everything again")
    status = actions.add_parser("status", help="the site's recent jobs and _since watermarks")
    status.add_argument("site")
    status.add_argument("--json", action="store_true")
    for name, what in (("resume", "drive unfinished jobs on from their record"), ("cancel", "cancel unfinished jobs")):
        action = actions.add_parser(name, help=what)
        action.add_argument("site")
        action.add_argument("--job", type=int, help="only this job (default: every unfinished job of the site)")
    for action in (start, actions.choices["resume"], actions.choices["cancel"]):
        action.add_argument("--work-dir", type=Path, help="where files wait to be ingested (default var/bulk)")
    bulk.set_defaults(handler=cmd_bulk)


def _line(report: JobReport) -> str:
    parts = [f"job {report.id} {report.site} {report.scope}: {report.state}",
             f"files {report.files_done}/{report.files}", f"readings added {report.added}",
             f"already present {report.already_present}", f"quarantined {report.quarantined}"]  # fmt: skip
    if report.transaction_time:
        parts.append(f"transactionTime {report.transaction_time.isoformat()}")
    if report.state in ("exporting", "kicking_off") and report.progress:
        parts.append(f"progress {report.progress}")
    if report.error:
        parts.append(f"error: {report.error}")
    return ", ".join(parts)


def cmd_bulk(args: argparse.Namespace, out: TextIO, err: TextIO) -> int:
    settings = get_settings()
    store = open_store()
    try:
        capabilities = CapabilityService(store, settings.sites_dir)
        if args.site not in capabilities.sites():
            raise BadInputError(f"no such site {args.site!r} in {capabilities.sites_dir}")
        if args.bulk_action == "status":
            return _status(args, JobStore(store), out)
        try:
            smart = SmartSettings.from_env(os.environ)
        except SettingsError as exc:
            raise BadInputError(str(exc)) from None
        if not smart.backend_key_file:
            raise BadInputError(
                "Bulk Data needs a Backend Services key: set SMART_BACKEND_KEY_FILE and SMART_BACKEND_KID "
                "(the app serves its public key at /.well-known/jwks.json)"
            )
        logging.getLogger("httpx").setLevel(logging.WARNING)  # request URLs name patients: keep them out

        def show(line: str) -> None:
            out.write(line + "\n")
            out.flush()

        async def main() -> list[JobReport]:
            async with httpx.AsyncClient(timeout=httpx.Timeout(60.0)) as http:
                try:
                    auth = create_backend_auth(smart, smart.backend_client_id, http=http)
                except SettingsError as exc:
                    raise BadInputError(str(exc)) from None
                assert auth is not None
                client = BulkClient(http, backend_token_source(auth), forget_token=auth.forget)
                runner = BulkRunner(store, capabilities, client, work_dir=args.work_dir or VAR / "bulk", on_event=show)
                actions: dict[str, Callable[[], Awaitable[list[JobReport]]]] = {
                    "start": lambda: runner.start(args.site, level=Level(args.level) if args.level else None,
                                                  group=args.group, full=args.full),
                    "resume": lambda: runner.resume(args.site, args.job),
                    "cancel": lambda: runner.cancel(args.site, args.job),
                }  # fmt: skip
                return await actions[args.bulk_action]()

        try:
            reports = asyncio.run(main())
        except (BulkError, JobBusyError, CapabilityError, KeyError) as exc:
            raise BadInputError(str(exc)) from None
    finally:
        store.dispose()
    for report in reports:
        out.write(_line(report) + "\n")
    if not reports:
        out.write(f"{args.site}: no unfinished bulk jobs\n")
    wanted = "cancelled" if args.bulk_action == "cancel" else "complete"
    return 0 if all(r.state == wanted for r in reports) else EXIT_UNFINISHED


def _status(args: argparse.Namespace, jobs: JobStore, out: TextIO) -> int:
    recent = jobs.recent(args.site)
    totals = jobs.totals([j.id for j in recent])
    marks = jobs.watermarks(args.site)
    if args.json:
        document = {
            "site": args.site,
            "watermarks": {scope: moment.isoformat() for scope, moment in marks.items()},
            "jobs": [{"id": j.id, "scope": j.scope, "state": j.state, "progress": j.progress, "error": j.error,
                      "exports": j.exports, "created_at": j.created_at.isoformat(), **totals[j.id]}
                     for j in recent],
        }  # fmt: skip
        out.write(json.dumps(document, indent=2) + "\n")
        return 0
    for scope, moment in sorted(marks.items()):
        out.write(f"watermark {scope}: _since {moment.isoformat()}\n")
    for job in recent:
        t = totals[job.id]
        line = (
            f"job {job.id} {job.scope}: {job.state}, files {t['files_done']}/{t['files']}, readings added "
            f"{t['added']}, already present {t['already_present']}, quarantined {t['quarantined']}"
        )
        if job.state == "exporting" and job.progress:
            line += f", progress {job.progress}"
        out.write(line + (f", error: {job.error}" if job.error else "") + "\n")
    if not recent:
        out.write(f"{args.site}: no bulk jobs yet\n")
    return 0

"""Outbox commands: `outbox work | status | retry | cancel | corrections` (the deferred-write queue, bff/outbox/).

    glucobridge outbox work [--site S ...] [--once]     send signed writes as each site allows (Ctrl-C/SIGTERM
                                                        stop it after the write in flight)
    glucobridge outbox status [--site S] [--json]       write intents by state, per site
    glucobridge outbox retry ID --who W --reason R      a failed or unknown write, again (audited)
    glucobridge outbox cancel ID --who W --reason R     withdraw a write that is not confirmed (audited)
    glucobridge outbox corrections [--site S]           correction writes for signed windows that have a newer
                                                        version now (the worker also looks every minute)

The worker uses the app's settings: DATABASE_URL, REDIS_URL (shared rate limits), SITES_DIR, and for FHIR writes a
Backend Services system token per site: the site's `[backend]` client id and key where its file names them, else
the SMART_BACKEND_* key (the keys' JWKS is what the app serves).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import os
import signal
from collections.abc import Sequence
from datetime import UTC, datetime
from typing import Any, TextIO

import httpx

from app.cli.common import BadInputError, open_store
from bff import bootstrap
from bff.broker.broker import Broker
from bff.capabilities import CapabilityError, CapabilityService, SiteCapabilities, WriteChannel
from bff.outbox import queue
from bff.outbox.worker import SiteRun
from bff.settings import SettingsError, get_settings
from bff.smart import SiteBackends, SmartConfigError, SmartSettings
from bff.smart.backends import registration
from bff.store.db import Store
from bff.store.models import WriteIntent


def _sites(capabilities: CapabilityService, wanted: Sequence[str] | None) -> list[str]:
    known = capabilities.sites()
    if not wanted:
        return known
    unknown = [s for s in wanted if s not in known]
    if unknown:
        raise BadInputError(f"no such site {unknown[0]!r} in {capabilities.sites_dir} (known: {', '.join(known)})")
    return list(dict.fromkeys(wanted))


# MARK: work


def _needs_token(capabilities: CapabilityService, smart: SmartSettings, sites: Sequence[str]) -> list[str]:
    """The sites whose writes go over FHIR (they need a system token), by the matrix now, that have no key: neither
    their own ([backend] key_file) nor the deployment's (SMART_BACKEND_KEY_FILE)."""
    out = []
    for site in sites:
        caps = _caps(capabilities, site)  # a matrix that cannot be used: the worker logs it and skips the site
        fhir = caps is not None and caps.write.writes and caps.write.channel is WriteChannel.FHIR
        if caps is not None and fhir and registration(smart, caps.backend, caps.expected_token_lifetime_s) is None:
            out.append(site)
    return out


def _caps(capabilities: CapabilityService, site: str) -> SiteCapabilities | None:
    try:
        return capabilities.get(site)
    except CapabilityError:
        return None


def _run_line(run: SiteRun) -> str:
    names = ("sent", "confirmed", "retried", "unknown", "failed", "deferred", "read_back", "expanded", "corrections")
    parts = [f"{name} {getattr(run, name)}" for name in names if getattr(run, name)]
    if run.degraded:
        parts.append("degraded to read-only")
    return f"{run.site}: {', '.join(parts) or 'nothing to do'}"


def cmd_work(args: argparse.Namespace, out: TextIO, err: TextIO) -> int:
    settings = get_settings()
    try:
        smart = SmartSettings.from_env(os.environ)
    except SettingsError as exc:
        raise BadInputError(str(exc)) from None
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s", stream=err)
    logging.getLogger("httpx").setLevel(logging.WARNING)  # request URLs carry patient references: keep them out
    store = open_store()
    try:
        core = bootstrap.services(settings, store=store)
        capabilities = core.capabilities
        sites = _sites(capabilities, args.site)
        if fhir := _needs_token(capabilities, smart, sites):
            raise BadInputError(
                f"site(s) {', '.join(fhir)} take FHIR writes, which need a Backend Services key: set [backend] "
                "key_file and kid in the site's file, or SMART_BACKEND_KEY_FILE and SMART_BACKEND_KID (the app serves "
                "the public keys at /.well-known/jwks.json)"
            )
        runs = asyncio.run(_work(core, smart, args.site and sites, args.once, out))
    finally:
        store.dispose()
    for run in runs:
        out.write(_run_line(run) + "\n")
    if not args.once:
        out.write("stopped\n")
    return 0


async def _work(
    core: bootstrap.Services, smart: SmartSettings, sites: list[str] | None, once: bool, out: TextIO
) -> list[SiteRun]:
    capabilities = core.capabilities
    async with httpx.AsyncClient(timeout=httpx.Timeout(30.0)) as http:
        backends = SiteBackends(smart, http=http, environ=os.environ)
        usable = [caps for site in (sites or capabilities.sites()) if (caps := _caps(capabilities, site))]
        try:  # every key the worker will sign with, read now: a missing one stops it with the reason
            backends.preload((caps.key, caps.backend, caps.expected_token_lifetime_s) for caps in usable)
        except SmartConfigError as exc:
            raise BadInputError(str(exc)) from None
        broker = Broker(http, backends.token)
        worker = bootstrap.outbox_worker(core, broker)
        if once:
            return [await worker.run_site(site) for site in (sites or capabilities.sites())]
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, stop.set)
        chosen = ", ".join(sites) if sites else "every site"
        out.write(f"outbox worker running for {chosen} (Ctrl-C stops it)\n")
        out.flush()
        await worker.run(sites, stop=stop)
        return []


# MARK: status, retry, cancel, corrections


def cmd_status(args: argparse.Namespace, out: TextIO, err: TextIO) -> int:
    store = open_store()
    try:
        capabilities = CapabilityService(store, get_settings().sites_dir)
        sites = _sites(capabilities, [args.site] if args.site else None)
        report: dict[str, dict[str, Any]] = {}
        for site in sites:
            try:
                mode = capabilities.get(site).write.mode.value
            except CapabilityError:
                mode = "invalid"
            report[site] = {"mode": mode, "counts": queue.counts_by_state(store, site)}
    finally:
        store.dispose()
    if args.json:
        out.write(json.dumps(report, indent=2) + "\n")
        return 0
    out.write("\t".join(["site", "mode", *queue.STATES]) + "\n")
    for site, row in report.items():
        out.write("\t".join([site, row["mode"], *(str(row["counts"][s]) for s in queue.STATES)]) + "\n")
    return 0


def cmd_by_person(args: argparse.Namespace, out: TextIO, err: TextIO) -> int:
    if not args.id:
        raise BadInputError(f"outbox {args.action} needs the write intent's ID")
    who, reason = (args.who or "").strip(), (args.reason or "").strip()
    if not who or not reason:
        raise BadInputError(f"outbox {args.action} needs --who and --reason (the change is audited)")
    act = queue.retry_by_person if args.action == "retry" else queue.cancel_by_person
    store = open_store()
    try:
        intent = act(store, args.id, datetime.now(UTC), who=who, reason=reason)
    except KeyError:
        raise BadInputError(f"no write intent {args.id}") from None
    except queue.TransitionError as exc:
        raise BadInputError(str(exc)) from None
    finally:
        store.dispose()
    out.write(f"write intent {intent.id} at {intent.site_key}: {intent.state}\n")
    return 0


def cmd_corrections(args: argparse.Namespace, out: TextIO, err: TextIO) -> int:
    store = open_store()
    code = 0
    try:
        core = bootstrap.services(get_settings(), store=store)
        capabilities, service = core.capabilities, core.writeback
        for site in _sites(capabilities, [args.site] if args.site else None):
            try:
                created = service.propose_corrections(site)
            except CapabilityError as exc:
                err.write(f"glucobridge: {site}: {exc}\n")
                code = 2 if args.site else code
                continue
            held = sum(1 for i in created if _state(store, i) == "awaiting_signoff")
            out.write(f"{site}: {len(created)} correction write(s)"
                      + (f", {held} awaiting a new sign-off" if held else "") + "\n")  # fmt: skip
    finally:
        store.dispose()
    return code


def _state(store: Store, intent_id: int) -> str:
    with store.transaction() as session:
        intent = session.get(WriteIntent, intent_id)
        return "" if intent is None else intent.state


def add_parser(sub: Any) -> None:
    outbox = sub.add_parser("outbox", help="the write queue: work, status, retry, cancel, corrections")
    actions = outbox.add_subparsers(dest="action", required=True)

    work = actions.add_parser("work", help="send signed writes as each site allows (until Ctrl-C or SIGTERM)")
    work.add_argument("--site", action="append", help="only this site (repeat for several; default: every site)")
    work.add_argument("--once", action="store_true", help="one pass over the sites, then report and stop")
    work.set_defaults(handler=cmd_work)

    status = actions.add_parser("status", help="write intents by state, per site")
    status.add_argument("--site", help="only this site")
    status.add_argument("--json", action="store_true", help="JSON: {site: {mode, counts}}")
    status.set_defaults(handler=cmd_status)

    for name, text in (("retry", "send a failed or unknown write again (audited)"),
                       ("cancel", "withdraw a write that is not confirmed (audited)")):  # fmt: skip
        action = actions.add_parser(name, help=text)
        action.add_argument("id", type=int, help="the write intent's id (glucobridge outbox status, /admin)")
        action.add_argument("--who", help="who does it (recorded in the audit trail)")
        action.add_argument("--reason", help="why (recorded in the audit trail)")
        action.set_defaults(handler=cmd_by_person)

    corrections = actions.add_parser(
        "corrections", help="correction writes for signed windows with a newer version, now (the worker: every minute)"
    )
    corrections.add_argument("--site", help="only this site")
    corrections.set_defaults(handler=cmd_corrections)

"""Store commands: ingest, quarantine, recompute, patient, db."""

from __future__ import annotations

import argparse
import asyncio
import json
import signal
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import IO, TextIO

from sqlalchemy import select
from sqlalchemy.exc import DBAPIError

from app.cli.common import BadInputError, InfrastructureError, open_store
from bff.capabilities import CapabilityError, load_file, parse_capabilities
from bff.ingest.records import Feed, FeedFormatError, FeedItem, ParseOptions, Parser, reading_from_json
from bff.ingest.registry import parser_for
from bff.settings import get_settings
from bff.store.db import Store, make_engine, upgrade
from bff.store.ingest import READING_CONTEXT, IngestError, Ingestor
from bff.store.models import QuarantineItem
from engine import EngineError
from engine.timezones import check_zone


def _options(args: argparse.Namespace) -> ParseOptions:
    if args.input_tz:
        try:
            check_zone(args.input_tz)
        except EngineError as exc:
            raise BadInputError(exc.message) from None
    return ParseOptions(input_tz=args.input_tz, date_order=getattr(args, "date_order", None))


#: The longest --patient (the store's patient id column).
PATIENT_ID_CHARS = 128


def guarded(items: Iterator[FeedItem], feed: str) -> Iterator[FeedItem]:
    """A parser's items; an exception other than FeedFormatError (a defect: every bad input should be a problem
    or a FeedFormatError) becomes a FeedFormatError naming where it happened, so the command ends with one line
    and exit code 2, never a traceback. The batch it happened in is rolled back."""
    where = "at the start"
    try:
        for item in items:
            where = f"after {item.locator}" if item.locator else where
            yield item
    except FeedFormatError:
        raise
    except Exception as exc:
        raise FeedFormatError(
            f"the input could not be read {where} ({type(exc).__name__}): a defect in the {feed} parser, please "
            "report it with the file"
        ) from exc


class _GuardedParser:
    """A parser whose items go through `guarded` (the store reads `feed` and `skipped` from it)."""

    def __init__(self, parser: Parser) -> None:
        self.parser = parser
        self.feed = parser.feed

    @property
    def skipped(self) -> object:
        return getattr(self.parser, "skipped", None)

    def parse(self, stream: IO[bytes], options: ParseOptions) -> Iterator[FeedItem]:
        return guarded(self.parser.parse(stream, options), str(self.feed))

    def parse_quarantined(self, payload: str, context: str, options: ParseOptions) -> Iterator[FeedItem]:
        return guarded(self.parser.parse_quarantined(payload, context, options), str(self.feed))


def cmd_ingest(args: argparse.Namespace, out: TextIO, err: TextIO) -> int:
    path = Path(args.file)
    if not path.is_file():
        raise BadInputError(f"cannot read {args.file}: no such file")
    if args.patient is not None and not 0 < len(args.patient) <= PATIENT_ID_CHARS:
        raise BadInputError(f"--patient must be 1–{PATIENT_ID_CHARS} characters")
    options = _options(args)
    store = open_store()

    def progress(written: int) -> None:
        err.write(f"written {written} readings (not yet committed)\n")
        err.flush()

    try:
        with path.open("rb") as handle:
            report = Ingestor(store, on_chunk=progress if args.progress else None).ingest(
                _GuardedParser(parser_for(args.feed)), handle, site=args.site, source_name=str(path),
                patient=args.patient, options=options, site_zone=site_zone(args.site),
            )  # fmt: skip
    except (FeedFormatError, IngestError) as exc:
        raise BadInputError(f"{args.file}: {exc}; nothing from it was written") from None
    except OSError as exc:
        raise BadInputError(f"cannot read {args.file}: {exc.strerror}") from None
    except DBAPIError as exc:
        raise InfrastructureError(
            f"the database failed during the ingest of {args.file} ({type(exc.orig).__name__}): nothing from this "
            "file was written; run the same command again"
        ) from None
    finally:
        store.dispose()
    out.write(json.dumps(report.as_dict(), sort_keys=True) + "\n")
    if report.quarantined and report.added + report.already_present == 0:
        first = f" (first: {report.problems[0]})" if report.problems else ""
        raise BadInputError(
            f"{args.file}: none of its records could be stored: all {report.quarantined} quarantined{first}; "
            "`glucobridge quarantine list` shows why"
        )
    if report.quarantined:
        err.write(f"{report.quarantined} record(s) quarantined: `glucobridge quarantine list` shows why\n")
    return 0


def cmd_quarantine(args: argparse.Namespace, out: TextIO, err: TextIO) -> int:
    store = open_store()
    try:
        if args.action == "list":
            return _quarantine_list(store, args, out)
        if args.id is None:
            raise BadInputError(f"quarantine {args.action} needs an ID")
        if args.action == "show":
            return _quarantine_show(store, args.id, out)
        return _quarantine_retry(store, args, out)
    finally:
        store.dispose()


def _quarantine_list(store: Store, args: argparse.Namespace, out: TextIO) -> int:
    with store.transaction() as session:
        query = select(QuarantineItem).order_by(QuarantineItem.id)
        if not args.all:
            query = query.where(QuarantineItem.resolved_at.is_(None))
        items = list(session.scalars(query))
    if not items:
        out.write("quarantine is empty\n" if args.all else "no open quarantine items\n")
        return 0
    for item in items:
        state = "resolved" if item.resolved_at else "open"
        out.write(f"{item.id}\t{state}\t{item.site_key}\t{item.feed}\t{item.locator}\t{item.reason}\n")
    return 0


def _quarantine_show(store: Store, item_id: int, out: TextIO) -> int:
    with store.transaction() as session:
        item = session.get(QuarantineItem, item_id)
        if item is None:
            raise BadInputError(f"no quarantine item {item_id}")
        doc = {
            "id": item.id, "site": item.site_key, "feed": item.feed, "batch_id": item.batch_id,
            "locator": item.locator, "reason": item.reason, "first_seen": item.first_seen.isoformat(),
            "last_seen": item.last_seen.isoformat(), "seen_count": item.seen_count,
            "resolved_at": item.resolved_at.isoformat() if item.resolved_at else None, "resolution": item.resolution,
            "patient": item.patient_public_id, "context": item.context, "payload": item.payload,
        }  # fmt: skip
    out.write(json.dumps(doc, indent=2, ensure_ascii=False) + "\n")
    return 0


def _quarantine_retry(store: Store, args: argparse.Namespace, out: TextIO) -> int:
    with store.transaction() as session:
        item = session.get(QuarantineItem, args.id)
        if item is None:
            raise BadInputError(f"no quarantine item {args.id}")
        if item.resolved_at is not None:
            raise BadInputError(f"quarantine item {args.id} is already resolved: {item.resolution}")
        site, feed, payload, context = item.site_key, Feed(item.feed), item.payload, item.context
        patient = args.patient or item.patient_public_id
    options = _options(args)
    items: list[FeedItem]
    try:
        if context == READING_CONTEXT:
            items = [reading_from_json(payload)]
        else:
            items = list(_GuardedParser(parser_for(feed)).parse_quarantined(payload, context, options))
    except FeedFormatError as exc:
        raise BadInputError(f"quarantine item {args.id} still cannot be read: {exc}") from None
    report = Ingestor(store).ingest_items(
        items, site=site, feed=feed, source_name=f"quarantine:{args.id}", patient=patient
    )
    if report.quarantined:
        out.write(f"quarantine item {args.id} is still refused: {'; '.join(report.problems)}\n")
        return 1
    with store.transaction() as session:
        item = session.get(QuarantineItem, args.id)
        assert item is not None
        item.resolved_at = datetime.now(UTC)
        item.resolution = f"retried in batch {report.batch_id}: {report.added} reading(s) added"
    out.write(json.dumps(report.as_dict(), sort_keys=True) + "\n")
    return 0


def cmd_recompute(args: argparse.Namespace, out: TextIO, err: TextIO) -> int:
    if not args.stale:
        raise BadInputError("say what to recompute: --stale")
    store = open_store()
    try:
        from bff.store import windows  # noqa: PLC0415 - only this command needs the engine
        from bff.store.outcomes import OutcomeService  # noqa: PLC0415

        found, standard = windows.sweep_and_refresh(store)
        results = OutcomeService(store).recompute_stale()
    finally:
        store.dispose()
    for result in results:
        row = result.window
        if row is None:
            continue
        out.write(
            f"{result.report.patients[0].patient_id}\twindow {row.window_start_ms}–{row.window_end_ms}\t"
            f"version {row.version}\t{'new version' if result.created else 'unchanged'}\t{row.input_digest[:12]}\n"
        )
    out.write(f"{len(results)} stale outcome window(s) recomputed\n")
    out.write(f"{standard.computed} standard outcome(s) recomputed ({standard.changed} changed; "
              f"{found} patient(s) with readings no ingestion reported)\n")  # fmt: skip
    return 0


def site_zone(site: str) -> str | None:
    """The site's default zone from its capability matrix (sites/SITE.toml `time_zone`), when it has a file."""
    path = Path(get_settings().sites_dir) / f"{site}.toml"
    if not path.exists():
        return None
    try:
        return parse_capabilities(site, load_file(path), source=str(path)).time_zone or None
    except CapabilityError as exc:
        raise BadInputError(str(exc)) from None


def cmd_db(args: argparse.Namespace, out: TextIO, err: TextIO) -> int:
    settings = get_settings()
    engine = make_engine(settings.database_url)
    try:
        upgrade(engine)
    finally:
        engine.dispose()
    out.write(f"database at head ({engine.url.render_as_string(hide_password=True)})\n")
    return 0


def cmd_listen_mllp(args: argparse.Namespace, out: TextIO, err: TextIO) -> int:
    from bff.hl7 import MllpLimits  # noqa: PLC0415 - only this command needs the MLLP server
    from bff.store.mllp import MllpListener  # noqa: PLC0415

    options = _options(args)
    try:
        limits = MllpLimits(idle_timeout_s=args.idle_timeout, max_connections=args.max_connections)
    except ValueError as exc:
        raise BadInputError(str(exc)) from None
    store = open_store()
    listener = MllpListener(
        Ingestor(store), site=args.site, options=options, patient=args.patient, limits=limits,
        site_zone=site_zone(args.site),
    )  # fmt: skip

    async def serve() -> None:
        host, port = await listener.start(args.host, args.port)
        out.write(f"listening for HL7 v2 (MLLP) on {host}:{port} for site {args.site} (idle timeout "
                  f"{limits.idle_timeout_s:g} s, at most {limits.max_connections} connections)\n")  # fmt: skip
        out.flush()
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, stop.set)
        await stop.wait()
        await listener.close()

    try:
        asyncio.run(serve())
    except OSError as exc:
        raise BadInputError(f"cannot listen on {args.host}:{args.port}: {exc.strerror}") from None
    finally:
        store.dispose()
    out.write("stopped\n")
    return 0


def cmd_serve(args: argparse.Namespace, out: TextIO, err: TextIO) -> int:
    """The clinician web app (uvicorn; the app factory reads its settings from the environment)."""
    import uvicorn  # noqa: PLC0415 - only this command needs the web stack; the others start faster without it

    # proxy_headers=False: uvicorn would otherwise believe X-Forwarded-* from 127.0.0.1; the app decides whom to
    # believe (APP_TRUSTED_PROXIES, app.web.security), for the client's address and for HTTPS alike.
    uvicorn.run("app.web.app:create_app", factory=True, host=args.host, port=args.port, workers=args.workers,
                log_level="warning", access_log=False, proxy_headers=False)  # fmt: skip
    return 0

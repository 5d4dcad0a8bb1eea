"""`python -m sandbox`: serve the sandbox EHR, export or send a site's seed readings, or run an MLLP listener.

    python -m sandbox serve --host 127.0.0.1 --port 8081 --public-base http://localhost:8081 \
        --app-launch-url http://127.0.0.1:8000/launch --redirect-uri http://127.0.0.1:8000/callback \
        --backend-jwks-url http://127.0.0.1:8000/.well-known/jwks.json
    python -m sandbox export-seed --site epic-like --out epic-like.ndjson   # for `glucobridge ingest --feed fhir`
    python -m sandbox mllp --port 2575 [--ack AA|AE|AR]
    python -m sandbox hl7-feed --site hl7-only --to 127.0.0.1:2576    # the site's readings as ORU^R01 over MLLP
    python -m sandbox faultproxy --upstream http://127.0.0.1:8081 --port 8090   # sandbox.faultproxy
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import sys
from collections.abc import Sequence
from datetime import UTC, datetime
from pathlib import Path

import orjson
import uvicorn

from sandbox.app import create_app
from sandbox.config import DEFAULT_DAYS, DEFAULT_SEED, DEFAULT_SITES, SandboxConfig
from sandbox.faultproxy import serve_forever
from sandbox.hl7feed import FeedError, oru_messages
from sandbox.hl7feed import send as send_hl7
from sandbox.mllp import serve as serve_mllp
from sandbox.personalities import personality
from sandbox.seed import build_site, people, traces_for


def _now(text: str | None) -> datetime | None:
    if not text:
        return None
    moment = datetime.fromisoformat(text)
    return moment if moment.tzinfo else moment.replace(tzinfo=UTC)


def _sites(text: str | None) -> tuple[str, ...]:
    if not text:
        return DEFAULT_SITES
    keys = tuple(s.strip() for s in text.split(",") if s.strip())
    for key in keys:
        personality(key)  # KeyError naming the known sites
    return keys


def cmd_serve(args: argparse.Namespace) -> int:

    public_base = args.public_base or f"http://{args.host}:{args.port}"
    config = SandboxConfig.local(
        public_base=public_base,
        app_launch_url=args.app_launch_url,
        redirect_uris=tuple(args.redirect_uri or ["http://127.0.0.1:8000/callback"]),
        backend_jwks_url=args.backend_jwks_url,
        sites=_sites(args.sites),
        now=_now(args.now),
        seed=args.seed,
        days=args.days,
        population=args.population,
        frame_ancestors=tuple(args.frame_ancestor or ()),
        auto_approve=args.auto_approve,
        mllp_port=args.mllp_port,
    )
    app = create_app(config)
    ready = f"sandbox EHR at {config.public_base}/ehr/"

    class Server(uvicorn.Server):
        async def startup(self, sockets: list | None = None) -> None:  # type: ignore[type-arg]
            await super().startup(sockets=sockets)
            if self.started:
                print(ready, flush=True)

    server = Server(uvicorn.Config(app, host=args.host, port=args.port, log_level=args.log_level))
    server.run()
    return 0


def cmd_export_seed(args: argparse.Namespace) -> int:
    site = args.site
    p = personality(site)
    now = _now(args.now) or datetime.now(UTC)
    persons = people(args.population, args.seed)
    seed = build_site(site, p, traces_for(persons, now, args.days, args.seed), now, persons)
    out = sys.stdout.buffer if args.out in (None, "-") else Path(args.out).open("wb")  # noqa: SIM115
    count = 0
    try:
        for block in seed.blocks:
            for observation in block.observations():
                out.write(orjson.dumps(observation) + b"\n")
                count += 1
    finally:
        if out is not sys.stdout.buffer:
            out.close()
    print(
        f"{count} Observations of {len(seed.blocks)} patients from {site} written to {args.out or 'stdout'}",
        file=sys.stderr,
    )
    return 0


def _address(text: str) -> tuple[str, int]:
    host, _, port = text.rpartition(":")
    if not host or not port.isdigit():
        raise argparse.ArgumentTypeError(f"{text!r} is not HOST:PORT")
    return host, int(port)


def cmd_hl7_feed(args: argparse.Namespace) -> int:
    """Exit 0 when every message was answered AA, 1 when some were not, 3 when the receiver failed the exchange."""
    site = args.site
    p = personality(site)
    now = _now(args.now) or datetime.now(UTC)
    persons = people(args.population, args.seed)
    seed = build_site(site, p, traces_for(persons, now, args.days, args.seed), now, persons)
    host, port = args.to
    try:
        report = send_hl7(oru_messages(seed, p), host, port)
    except FeedError as exc:
        print(f"{site}: {exc}", file=sys.stderr)
        return 3
    acks = ", ".join(f"{n} {code or '(no MSA)'}" for code, n in sorted(report.acks.items())) or "none"
    print(f"{site}: {report.messages} ORU^R01 messages ({report.readings} readings) to {host}:{port}; ACKs: {acks}")
    for problem in report.problems:
        print(f"  {problem}", file=sys.stderr)
    return 0 if report.accepted else 1


def cmd_mllp(args: argparse.Namespace) -> int:
    with contextlib.suppress(KeyboardInterrupt):
        asyncio.run(serve_mllp(args.host, args.port, args.ack))
    return 0


def cmd_faultproxy(args: argparse.Namespace) -> int:
    return serve_forever(args.upstream, args.host, args.port)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m sandbox", description="A simulated EHR for demos and tests.")
    sub = parser.add_subparsers(dest="command", required=True)

    serve = sub.add_parser("serve", help="run the sandbox EHR (FHIR, SMART, EHR shell)")
    serve.add_argument("--host", default="127.0.0.1")
    serve.add_argument("--port", type=int, default=8081)
    serve.add_argument("--public-base", help="the URL the sandbox is reached at (default http://HOST:PORT)")
    serve.add_argument("--app-launch-url", default="http://127.0.0.1:8000/launch")
    serve.add_argument("--redirect-uri", action="append", help="a redirect URI of the glucobridge client (repeat)")
    serve.add_argument("--backend-jwks-url", default="http://127.0.0.1:8000/.well-known/jwks.json")
    serve.add_argument("--sites", help=f"comma-separated sites (default: {','.join(DEFAULT_SITES)})")
    serve.add_argument("--now", help="the seed's now, ISO date or instant (default: the current time)")
    serve.add_argument("--seed", type=int, default=DEFAULT_SEED)
    serve.add_argument("--days", type=int, default=DEFAULT_DAYS, help="days of CGM readings per patient (>= 14)")
    serve.add_argument("--population", type=int, default=0, help="synthetic people besides the six (a cohort)")
    serve.add_argument("--frame-ancestor", action="append", help="another origin allowed to frame the pages")
    serve.add_argument("--auto-approve", action="store_true", help="skip the consent page in EHR launches")
    serve.add_argument("--mllp-port", type=int, help="also run the hl7-only site's MLLP listener on this port")
    serve.add_argument("--log-level", default="warning")
    serve.set_defaults(func=cmd_serve)

    export = sub.add_parser("export-seed", help="write a site's seeded CGM Observations as NDJSON")
    export.add_argument("--site", default="epic-like", choices=DEFAULT_SITES)
    export.add_argument("--out", help="output file (default: stdout)")
    export.add_argument("--now", help="the seed's now (default: the current time)")
    export.add_argument("--seed", type=int, default=DEFAULT_SEED)
    export.add_argument("--days", type=int, default=DEFAULT_DAYS)
    export.add_argument("--population", type=int, default=0, help="synthetic people besides the six (a cohort)")
    export.set_defaults(func=cmd_export_seed)

    feed = sub.add_parser("hl7-feed", help="send a site's seeded CGM readings as HL7 v2 ORU^R01 over MLLP")
    feed.add_argument("--site", default="hl7-only", choices=DEFAULT_SITES)
    feed.add_argument("--to", required=True, type=_address, metavar="HOST:PORT", help="the receiver's MLLP address")
    feed.add_argument("--now", help="the seed's now (default: the current time)")
    feed.add_argument("--seed", type=int, default=DEFAULT_SEED)
    feed.add_argument("--days", type=int, default=DEFAULT_DAYS)
    feed.add_argument("--population", type=int, default=0, help="synthetic people besides the six (a cohort)")
    feed.set_defaults(func=cmd_hl7_feed)

    mllp = sub.add_parser("mllp", help="run an ACK-only MLLP listener (HL7 v2)")
    mllp.add_argument("--host", default="127.0.0.1")
    mllp.add_argument("--port", type=int, default=2575)
    mllp.add_argument("--ack", default="AA", choices=("AA", "AE", "AR"))
    mllp.set_defaults(func=cmd_mllp)

    proxy = sub.add_parser("faultproxy", help="run a fault-injecting proxy in front of a FHIR server")
    proxy.add_argument("--upstream", required=True, help="the server's base URL, e.g. http://127.0.0.1:8081")
    proxy.add_argument("--host", default="127.0.0.1")
    proxy.add_argument("--port", type=int, default=8090)
    proxy.set_defaults(func=cmd_faultproxy)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    return int(args.func(args))


if __name__ == "__main__":
    raise SystemExit(main())

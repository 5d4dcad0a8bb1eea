"""`make demo`: the sandbox EHR, the clinician app, an outbox worker and a job worker on embedded defaults, with
every sandbox site's CGM data loaded the way that site delivers it. Also used by the end-to-end and browser tests.

The sandbox runs in its own process (it is never imported here): `python -m sandbox serve`. Its sites deliver
their CGM readings as `SITE_FEEDS` says:

- **fhir**: the site's Observations are exported as NDJSON (`python -m sandbox export-seed`) and ingested with
  `glucobridge ingest --feed fhir`, as a site's FHIR export would be;
- **hl7v2** (hl7-only): one `glucobridge listen-mllp` per interface is started for the site, and the sandbox's
  results interface (`python -m sandbox hl7-feed`) sends the site's readings to it as ORU^R01 messages over MLLP,
  one per patient and day, each acknowledged before the next. The listener keeps running, as in production.

Then the app is served with uvicorn. The EHR shell is on a different origin (localhost) than the app
(127.0.0.1), as an embedded app would be. The sandbox's hl7-only site also runs its own MLLP listener (the site's
inbound interface, where glucobridge files results); its port replaces the one in that site's TOML.

Write-back: a Backend Services key (ES384, P-384) is made at start when there is none (`var/` for `make demo`,
the stack's work directory otherwise) and given to the app (`SMART_BACKEND_KEY_FILE`/`KID`), which serves its
public half at /.well-known/jwks.json, where the sandbox's `glucobridge-backend` client reads it
(`--backend-jwks-url`). One `glucobridge outbox work` process with the same environment sends what clinicians
sign. One `glucobridge worker` runs the jobs (the embedded queue in the store: no Redis): a launch reads the
patient's newer CGM Observations from the sandbox EHR, and the scheduler's recomputes and corrections.
`DemoStack(load_sites=())` loads nothing beforehand, so the first launch of a patient reads it all from the EHR.
`/admin` has one named account, made at start with `glucobridge admin add-user` and a generated password; both
are printed.

Processes: every child runs in its own process group and writes its output to `<name>.log` in the work
directory. `DemoStack.stop` sends SIGTERM to each group, waits up to `grace_s` and then kills what is left.
`python -m app.demo` (what `make demo` runs) also:

- takes `var/demo.lock` (an exclusive `flock`, held while it runs, released by the kernel however it ends; the
  file holds the owner's pid, URLs and children as JSON): a second demo on the same checkout says which one runs
  and exits 1;
- checks before it starts anything that its ports are free (so it never reports "ready" while an earlier
  program answers on them), and exits 1 naming the port, and the processes an earlier demo left if it knows them;
- stops everything on SIGTERM, SIGINT or SIGHUP (exit 0), and removes its work directory;
- watches its children: when one dies it says which, with its exit code or signal and the last lines of its log,
  stops the others and exits 3, keeping the work directory (and so the logs).
"""

from __future__ import annotations

import argparse
import contextlib
import fcntl
import json
import os
import re
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import tomllib
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from types import FrameType
from typing import IO, Any

import httpx
from joserfc.jwk import ECKey

from bff.files import private_dir, write_private
from bff.settings import ROOT, VAR

#: How each sandbox site delivers its CGM readings (the sandbox's personalities say the same as `results_feed`;
#: a test keeps the two in step, since nothing imports the sandbox).
SITE_FEEDS: dict[str, str] = {
    "epic-like": "fhir",
    "oracle-like": "fhir",
    "read-only": "fhir",
    "hl7-only": "hl7v2",
    "cgm-receiver": "fhir",
}
SITES = tuple(SITE_FEEDS)
#: `make demo`'s ports: the app, the EHR, glucobridge's MLLP listener for the hl7-only site's results, and the
#: hl7-only site's own MLLP listener (what sites/hl7-only.toml names).
DEFAULT_PORTS = {"app": 8000, "ehr": 8081, "mllp": 2576, "site_mllp": 2575}
LOG_LINES = 20
EXIT_CONFLICT = 1  # another demo runs, or a port is taken: nothing was started
EXIT_FAILED = 3  # a part of the demo failed at start or died while running


def _bin(name: str) -> str:
    return str(Path(sys.executable).parent / name)


def backend_key(directory: Path) -> tuple[Path, str]:
    """The demo's Backend Services key (ES384 on P-384) in `directory`, made on first use; (PEM file, kid)."""
    path = private_dir(directory, tighten=directory == VAR) / "backend-es384.pem"
    if not path.exists():
        write_private(path, ECKey.generate_key("P-384", private=True).as_pem(private=True))
    return path, "demo-" + ECKey.import_key(path.read_bytes()).thumbprint()[:16]


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def port_in_use(port: int, host: str = "127.0.0.1") -> bool:
    """Whether something listens on (or holds) `host:port`; bound as a server would (SO_REUSEADDR, so a socket
    left in TIME_WAIT by the last run does not count)."""
    with socket.socket() as probe:
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            probe.bind((host, port))
        except OSError:
            return True
    return False


def wait_http(url: str, process: subprocess.Popen[Any], timeout_s: float = 60.0) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"the process serving {url} exited with code {process.returncode}")
        try:
            if httpx.get(url, timeout=2.0).status_code < 500:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.2)
    raise RuntimeError(f"{url} did not answer within {timeout_s:.0f} s")


def _command(argv: Sequence[str]) -> str:
    """The program and its subcommand, for messages: "glucobridge serve", "python -m sandbox serve"."""
    words = [Path(argv[0]).name]
    for arg in argv[1:]:
        if arg.startswith("-") and arg != "-m":
            break
        words.append(arg)
    return " ".join(words)


def signal_name(number: int) -> str:
    try:
        return signal.Signals(number).name
    except ValueError:
        return f"signal {number}"


# MARK: children


@dataclass
class Child:
    """A process of the demo, in its own process group, with its output in `log`."""

    name: str
    process: subprocess.Popen[bytes]
    log: Path
    command: str

    @property
    def pid(self) -> int:
        return self.process.pid

    def signal_group(self, number: int) -> None:
        """Send `number` to the child's process group, while the child has not been reaped (so the group id is
        still ours)."""
        if self.process.poll() is None:
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(self.process.pid, number)

    def exit_text(self) -> str:
        code = self.process.returncode
        if code is None:
            return "is running"
        if code < 0:
            return f"was killed by {signal_name(-code)}"
        return f"exited with code {code}"

    def tail(self, lines: int = LOG_LINES) -> list[str]:
        try:
            text = self.log.read_text(encoding="utf-8", errors="replace")
        except OSError:
            return []
        return text.splitlines()[-lines:]

    def report(self, lines: int = LOG_LINES) -> str:
        head = f"the {self.name} ({self.command}, pid {self.pid}) {self.exit_text()}"
        tail = self.tail(lines)
        if not tail:
            return f"{head}; its log {self.log} is empty"
        return f"{head}; the last lines of {self.log}:\n" + "\n".join(f"    {line}" for line in tail)


class DemoError(RuntimeError):
    """The demo could not go on; the message says what happened."""


class ChildError(DemoError):
    """A child died (a server) or failed (a one-shot step such as an ingest)."""

    def __init__(self, child: Child) -> None:
        super().__init__(child.report())
        self.child = child


class Interrupted(DemoError):  # noqa: N818 - it is the event, as KeyboardInterrupt is
    """A stop was asked for (SIGTERM, SIGINT or SIGHUP) while the demo was starting or running."""

    def __init__(self, number: int) -> None:
        super().__init__(f"{signal_name(number)} received")
        self.signal = number


# MARK: the stack


@dataclass
class DemoStack:
    """The sandbox EHR and the app, as child processes, with the sandbox data ingested into a fresh store."""

    app_port: int = 8000
    ehr_port: int = 8081
    app_workers: int = 1
    database_url: str = ""
    workdir: Path = field(default_factory=lambda: Path(tempfile.mkdtemp(prefix="gb-demo-")))
    children: list[Child] = field(default_factory=list)
    env: dict[str, str] = field(default_factory=dict)
    secret: str = field(default_factory=lambda: secrets.token_urlsafe(32))
    admin_user: str = "demo.engineer"
    admin_password: str = field(default_factory=lambda: secrets.token_urlsafe(16))
    key_dir: Path | None = None  # where the Backend Services key is kept (default: the work directory)
    worker: bool = True  # run `glucobridge outbox work` and `glucobridge worker`
    load_sites: Sequence[str] | None = None  # the sites whose data is loaded at start (None: every site)
    mllp_port: int = 0  # glucobridge listen-mllp for the hl7-only site's results (0: a free port)
    site_mllp_port: int = 0  # the sandbox hl7-only site's own MLLP listener (0: a free port)
    days: int = 90  # days of CGM readings per patient in the sandbox (>= 14)
    population: int = 0  # synthetic people besides the sandbox's six (sandbox --population)
    now: datetime | None = None  # the sandbox seed's "now" (default: when the stack starts), the same everywhere
    grace_s: float = 10.0  # after SIGTERM, how long a child may take to stop before it is killed
    on_change: Callable[[DemoStack], None] | None = None  # told after each child starts (the lock's record)
    progress: Callable[[str], None] | None = None  # told what each child is, as it starts
    keep_exports: bool = True  # keep each FHIR site's NDJSON export (about 100 MB for 90 days) in the work dir
    interrupted: int | None = None  # a signal number: the start and the waits end with Interrupted

    @property
    def app_url(self) -> str:
        return f"http://127.0.0.1:{self.app_port}"

    @property
    def ehr_url(self) -> str:
        return f"http://localhost:{self.ehr_port}"

    @property
    def ports(self) -> dict[str, int]:
        return {"app": self.app_port, "ehr": self.ehr_port, "mllp": self.mllp_port, "site_mllp": self.site_mllp_port}

    def _sites_dir(self) -> Path:
        """The sites' TOML files with the sandbox's URL and the hl7-only site's MLLP port of this stack."""
        sites = self.workdir / "sites"
        sites.mkdir(exist_ok=True)
        for site in SITES:
            text = (ROOT / "sites" / f"{site}.toml").read_text(encoding="utf-8")
            text = text.replace("http://localhost:8081", self.ehr_url)
            port = tomllib.loads(text).get("hl7v2", {}).get("port")
            if port is not None:
                text, n = re.subn(rf"(?m)^port\s*=\s*{port}\b", f"port = {self.site_mllp_port}", text)
                if n != 1:
                    raise DemoError(f"sites/{site}.toml: cannot find the one [hl7v2] port line to point at the sandbox")
            (sites / f"{site}.toml").write_text(text, encoding="utf-8")
        return sites

    def _environment(self) -> dict[str, str]:
        key_file, kid = backend_key(self.key_dir or self.workdir)
        return {
            **os.environ,
            "DATABASE_URL": self.database_url or f"sqlite:///{self.workdir / 'glucobridge.db'}",
            "APP_PUBLIC_URL": self.app_url,
            "SITES_DIR": str(self._sites_dir()),
            "APP_SECRET_KEY": self.secret,
            "SMART_BACKEND_KEY_FILE": str(key_file),
            "SMART_BACKEND_KID": kid,
            "SMART_BACKEND_ALG": "ES384",
            "PYTHONUNBUFFERED": "1",
        }

    def _seed_args(self) -> list[str]:
        assert self.now is not None
        return ["--now", self.now.isoformat(), "--days", str(self.days), "--population", str(self.population)]

    def start(self, *, quiet: bool = True, cleanup: bool = True) -> DemoStack:
        """Start everything and load the data. On a failure (or `interrupted`) raise DemoError, having stopped what
        was started unless not `cleanup` (then the caller stops it).

        `quiet` is kept for callers of earlier versions: children always write to their logs in the work dir."""
        del quiet
        self.mllp_port = self.mllp_port or free_port()
        self.site_mllp_port = self.site_mllp_port or free_port()
        self.now = self.now or datetime.now(UTC).replace(microsecond=0)
        try:
            self.env = self._environment()
            sandbox = self.spawn("sandbox EHR", "sandbox", [
                sys.executable, "-m", "sandbox", "serve", "--host", "127.0.0.1", "--port", str(self.ehr_port),
                "--public-base", self.ehr_url, "--app-launch-url", f"{self.app_url}/launch",
                "--redirect-uri", f"{self.app_url}/callback",
                "--backend-jwks-url", f"{self.app_url}/.well-known/jwks.json",
                "--mllp-port", str(self.site_mllp_port), *self._seed_args(),
            ])  # fmt: skip
            self.wait_http(f"{self.ehr_url}/ehr/", sandbox)
            # The schema first, as production deploys (a PostgreSQL database starts empty; SQLite's file too).
            self.run_step("database upgrade", "load", [_bin("glucobridge"), "db", "upgrade"])
            self.load_data(SITES if self.load_sites is None else self.load_sites)
            self.add_admin()
            app = self.spawn("app", "app", [
                _bin("glucobridge"), "serve", "--host", "127.0.0.1", "--port", str(self.app_port),
                "--workers", str(self.app_workers),
            ])  # fmt: skip
            self.wait_http(f"{self.app_url}/healthz", app)
            if self.worker:
                self.start_worker()
        except BaseException:
            if cleanup:
                self.stop()
            raise
        return self

    # MARK: processes

    def spawn(self, name: str, log_name: str, argv: Sequence[str], *, stdin: int | None = None) -> Child:
        """Start a child in its own process group, its output appended to `<log_name>.log` in the work dir."""
        self.checkpoint()
        if self.progress is not None:
            self.progress(f"{name}: {_command(argv)}")
        log = self.workdir / f"{log_name}.log"
        with log.open("ab") as out:
            process = subprocess.Popen(list(argv), cwd=ROOT, env=self.env or None,
                                       stdin=subprocess.DEVNULL if stdin is None else stdin, stdout=out,
                                       stderr=subprocess.STDOUT, process_group=0)  # fmt: skip
        child = Child(name, process, log, _command(argv))
        self.children.append(child)
        if self.on_change is not None:
            self.on_change(self)
        return child

    def run_step(self, name: str, log_name: str, argv: Sequence[str], *, input_text: str | None = None) -> Child:
        """Run a one-shot child to its end (a step of the start); ChildError when it does not exit 0."""
        child = self.spawn(name, log_name, argv, stdin=subprocess.PIPE if input_text is not None else None)
        if input_text is not None:
            assert child.process.stdin is not None
            with child.process.stdin as stdin:
                stdin.write(input_text.encode("utf-8"))
        while child.process.poll() is None:
            self.checkpoint()
            time.sleep(0.1)
        self.children.remove(child)
        if self.on_change is not None:
            self.on_change(self)
        if child.process.returncode != 0:
            raise ChildError(child)
        return child

    def checkpoint(self) -> None:
        """Raise Interrupted when a stop was asked for (the signal handler only sets `interrupted`)."""
        if self.interrupted is not None:
            raise Interrupted(self.interrupted)

    def wait_http(self, url: str, child: Child, timeout_s: float = 120.0) -> None:
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            self.checkpoint()
            if child.process.poll() is not None:
                raise ChildError(child)
            with contextlib.suppress(httpx.HTTPError):
                if httpx.get(url, timeout=2.0).status_code < 500:
                    return
            time.sleep(0.2)
        raise DemoError(f"the {child.name} did not answer at {url} within {timeout_s:.0f} s (log: {child.log})")

    def wait_tcp(self, port: int, child: Child, timeout_s: float = 60.0) -> None:
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            self.checkpoint()
            if child.process.poll() is not None:
                raise ChildError(child)
            with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), timeout=1.0):
                return
            time.sleep(0.2)
        raise DemoError(f"the {child.name} did not listen on port {port} within {timeout_s:.0f} s (log: {child.log})")

    def exited(self) -> Child | None:
        """The first child that is no longer running, if any."""
        return next((c for c in self.children if c.process.poll() is not None), None)

    def start_worker(self) -> Child:
        """One `glucobridge outbox work` for every site and one `glucobridge worker` (the jobs), with the app's
        environment; their logs in the work dir. Returns the outbox worker."""
        outbox = self.spawn("outbox worker", "outbox-worker", [_bin("glucobridge"), "outbox", "work"])
        self.spawn("job worker", "job-worker", [_bin("glucobridge"), "worker"])
        return outbox

    def add_admin(self) -> None:
        """The demo's named /admin account, through the CLI (the password on standard input, never an argument)."""
        self.run_step("admin account", "admin", [
            _bin("glucobridge"), "admin", "add-user", self.admin_user, "--password-file", "-",
        ], input_text=self.admin_password + "\n")  # fmt: skip

    # MARK: data

    def load_data(self, sites: Sequence[str] = SITES) -> None:
        """Each site's CGM readings, the way the site delivers them (`SITE_FEEDS`)."""
        for site in sites:
            if SITE_FEEDS[site] == "hl7v2":
                self.feed_over_mllp(site)
            else:
                self.ingest_fhir(site)

    def ingest_fhir(self, site: str) -> None:
        """The site's CGM Observations, exported by the sandbox, through `glucobridge ingest --feed fhir`."""
        path = self.workdir / f"{site}.ndjson"
        try:
            self.run_step(f"export of {site}", "load", [
                sys.executable, "-m", "sandbox", "export-seed", "--site", site, "--out", str(path),
                *self._seed_args(),
            ])  # fmt: skip
            self.run_step(f"FHIR ingest of {site}", "load", [
                _bin("glucobridge"), "ingest", str(path), "--feed", "fhir", "--site", site,
            ])  # fmt: skip
        finally:
            if not self.keep_exports:
                path.unlink(missing_ok=True)

    def feed_over_mllp(self, site: str) -> Child:
        """`glucobridge listen-mllp` for the site (it keeps running), then the site's readings sent to it as
        ORU^R01 over MLLP by the sandbox's results interface; every message must be answered AA."""
        listener = self.spawn(f"MLLP listener of {site}", f"mllp-{site}", [
            _bin("glucobridge"), "listen-mllp", "--host", "127.0.0.1", "--port", str(self.mllp_port),
            "--site", site,
        ])  # fmt: skip
        self.wait_tcp(self.mllp_port, listener)
        self.run_step(f"HL7 v2 results feed of {site}", "load", [
            sys.executable, "-m", "sandbox", "hl7-feed", "--site", site, "--to", f"127.0.0.1:{self.mllp_port}",
            *self._seed_args(),
        ])  # fmt: skip
        return listener

    # MARK: stop

    def stop(self, grace_s: float | None = None) -> None:
        """SIGTERM to every child's process group, newest first; wait up to the grace; then SIGKILL what is left."""
        grace = self.grace_s if grace_s is None else grace_s
        children = list(reversed(self.children))
        for child in children:
            child.signal_group(signal.SIGTERM)
        deadline = time.monotonic() + grace
        for child in children:
            try:
                child.process.wait(timeout=max(0.0, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                child.signal_group(signal.SIGKILL)
                child.process.wait()
        self.children.clear()


# MARK: python -m app.demo


class DemoLock:
    """`var/demo.lock`: an exclusive flock held while a demo runs; the file says who holds it (JSON)."""

    def __init__(self, directory: Path) -> None:
        self.path = private_dir(directory, tighten=directory == VAR) / "demo.lock"
        self.file: IO[str] | None = None

    def record(self) -> dict[str, Any]:
        """What the file says (the running demo's, or the last one's when nobody holds the lock)."""
        try:
            data = json.loads(self.path.read_text(encoding="utf-8") or "{}")
        except (OSError, ValueError):
            return {}
        return data if isinstance(data, dict) else {}

    def acquire(self) -> bool:
        file = self.path.open("a+", encoding="utf-8")
        try:
            fcntl.flock(file.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            file.close()
            return False
        self.file = file
        return True

    def write(self, record: dict[str, Any]) -> None:
        assert self.file is not None
        self.file.seek(0)
        self.file.truncate()
        self.file.write(json.dumps(record, indent=2) + "\n")
        self.file.flush()

    def release(self) -> None:
        if self.file is not None:
            self.file.close()  # closing the descriptor releases the flock
            self.file = None


def _alive(pid: object) -> bool:
    if not isinstance(pid, int) or pid <= 0:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _record(stack: DemoStack, started: datetime) -> dict[str, Any]:
    return {
        "pid": os.getpid(),
        "started": started.isoformat(timespec="seconds"),
        "app": stack.app_url,
        "ehr": f"{stack.ehr_url}/ehr/",
        "workdir": str(stack.workdir),
        "children": {c.name: c.pid for c in stack.children},
    }


def _say(text: str) -> None:
    print(f"demo: {text}", file=sys.stderr, flush=True)


def conflicts(lock: DemoLock, ports: dict[str, int]) -> str | None:
    """Why this demo cannot start (the lock is held, or a port is taken), or None. Takes the lock when free."""
    if not lock.acquire():
        held = lock.record()
        pid = held.get("pid", "?")
        return (f"another demo is running (pid {pid}, started {held.get('started', '?')}, app {held.get('app', '?')}, "
                f"lock {lock.path}): stop it first (Ctrl-C in its terminal, or kill {pid})")  # fmt: skip
    labels = {"app": "the app", "ehr": "the sandbox EHR", "mllp": "glucobridge's MLLP listener",
              "site_mllp": "the hl7-only site's MLLP listener"}  # fmt: skip
    taken = [f"{port} ({labels[what]})" for what, port in ports.items() if port and port_in_use(port)]
    if not taken:
        return None
    lock.release()
    noun = "port" if len(taken) == 1 else "ports"
    text = f"{noun} {', '.join(taken)} already in use on 127.0.0.1: nothing was started"
    left = {name: pid for name, pid in lock.record().get("children", {}).items() if _alive(pid)}
    if left:
        named = ", ".join(f"{name} pid {pid}" for name, pid in left.items())
        text += f". The last demo's processes still run ({named}): kill {' '.join(str(p) for p in left.values())}"
    else:
        text += ". Stop what holds it, or choose other ports (python -m app.demo --help)"
    return text


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m app.demo", description="The sandbox EHR, the app and a worker.")
    parser.add_argument("--app-port", type=int, default=DEFAULT_PORTS["app"])
    parser.add_argument("--ehr-port", type=int, default=DEFAULT_PORTS["ehr"])
    parser.add_argument("--mllp-port", type=int, default=DEFAULT_PORTS["mllp"],
                        help="glucobridge listen-mllp, fed by the hl7-only site")  # fmt: skip
    parser.add_argument("--site-mllp-port", type=int, default=DEFAULT_PORTS["site_mllp"],
                        help="the hl7-only site's own MLLP listener (its inbound results interface)")  # fmt: skip
    parser.add_argument("--var", type=Path, default=VAR, help="the lock and the Backend Services key (default var/)")
    parser.add_argument("--days", type=int, default=90, help="days of CGM readings per patient (>= 14)")
    parser.add_argument("--grace", type=float, default=10.0, help="seconds a child may take to stop after SIGTERM")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    stack = DemoStack(
        app_port=args.app_port,
        ehr_port=args.ehr_port,
        mllp_port=args.mllp_port,
        site_mllp_port=args.site_mllp_port,
        key_dir=args.var,
        days=args.days,
        grace_s=args.grace,
        keep_exports=False,  # the store has them; a work directory kept after a failure stays small
    )

    def interrupt(number: int, _: FrameType | None) -> None:
        stack.interrupted = number

    for number in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
        signal.signal(number, interrupt)
    lock = DemoLock(args.var)
    refused = conflicts(lock, stack.ports)
    if refused:
        _say(refused)
        shutil.rmtree(stack.workdir, ignore_errors=True)
        return EXIT_CONFLICT
    started = datetime.now(UTC)
    stack.progress = _say
    stack.on_change = lambda s: lock.write(_record(s, started))
    lock.write(_record(stack, started))
    code = EXIT_FAILED
    try:
        _say(f"starting the sandbox EHR, loading {stack.days} days of each site's CGM data (FHIR export, or HL7 v2 "
             "over MLLP for hl7-only; about two minutes for 90 days), starting the app, the outbox worker and the "
             f"job worker; logs in {stack.workdir}")  # fmt: skip
        stack.start(cleanup=False)
        print(f"\n  EHR shell:  {stack.ehr_url}/ehr/   (choose a site and a patient: the app opens in the chart)")
        print(f"  App:        {stack.app_url}   (store: {stack.env['DATABASE_URL']})")
        print(f"  Admin:      {stack.app_url}/admin/   (user {stack.admin_user}, password {stack.admin_password})")
        print(f"  HL7 v2:     glucobridge listen-mllp on 127.0.0.1:{stack.mllp_port} (hl7-only's results feed); "
              f"the hl7-only site listens on 127.0.0.1:{stack.site_mllp_port}")  # fmt: skip
        print(f"  Logs:       {stack.workdir}/*.log")
        print(f"\nready (pid {os.getpid()}). Ctrl-C or SIGTERM stops them all.", flush=True)
        while (dead := stack.exited()) is None:
            stack.checkpoint()
            time.sleep(0.5)
        raise ChildError(dead)
    except Interrupted as stop:
        _say(f"{signal_name(stop.signal)}: stopping {', '.join(c.name for c in stack.children) or 'nothing left'}")
        code = 0
    except DemoError as exc:
        _say(str(exc))
        _say(f"stopping {', '.join(c.name for c in stack.children if c.process.poll() is None) or 'nothing left'}")
    finally:
        for number in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
            signal.signal(number, signal.SIG_IGN)  # the stop below is not interrupted; it ends within the grace
        stack.stop()
        lock.write({**lock.record(), "children": {}, "stopped": datetime.now(UTC).isoformat(timespec="seconds")})
        lock.release()
    if code == 0:
        shutil.rmtree(stack.workdir, ignore_errors=True)
        _say("stopped")
    else:
        _say(f"stopped; the logs are kept in {stack.workdir}")
    return code


if __name__ == "__main__":
    raise SystemExit(main())

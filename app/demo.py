"""`make demo`: the sandbox EHR, the clinician app and an outbox worker on embedded defaults, with the sandbox's
CGM data loaded through the real ingestion path. Also used by the end-to-end and browser tests.

The sandbox runs in its own process (it is never imported here): `python -m sandbox serve`. Its sites' CGM
Observations are exported as NDJSON and ingested with `glucobridge ingest --feed fhir`, exactly as a site's
feed would be; then the app is served with uvicorn. The EHR shell is on a different origin (localhost) than
the app (127.0.0.1), as an embedded app would be.

Write-back: a Backend Services key (ES384, P-384) is made at start when there is none (`var/` for `make demo`,
the stack's work directory otherwise) and given to the app (`SMART_BACKEND_KEY_FILE`/`KID`), which serves its
public half at /.well-known/jwks.json, where the sandbox's `glucobridge-backend` client reads it
(`--backend-jwks-url`). One `glucobridge outbox work` process with the same environment sends what clinicians
sign (its log: `outbox-worker.log` in the work directory). `/admin` has one named account, made at start with
`glucobridge admin add-user` and a generated password; both are printed.
"""

from __future__ import annotations

import os
import secrets
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import httpx
from joserfc.jwk import ECKey

from bff.files import private_dir, write_private
from bff.settings import ROOT, VAR

SITES = ("epic-like", "oracle-like", "read-only")


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


def wait_http(url: str, process: subprocess.Popen[str], timeout_s: float = 60.0) -> None:
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


@dataclass
class DemoStack:
    """The sandbox EHR and the app, as child processes, with the sandbox data ingested into a fresh store."""

    app_port: int = 8000
    ehr_port: int = 8081
    app_workers: int = 1
    database_url: str = ""
    workdir: Path = field(default_factory=lambda: Path(tempfile.mkdtemp(prefix="gb-demo-")))
    processes: list[subprocess.Popen[str]] = field(default_factory=list)
    env: dict[str, str] = field(default_factory=dict)
    secret: str = field(default_factory=lambda: secrets.token_urlsafe(32))
    admin_user: str = "demo.engineer"
    admin_password: str = field(default_factory=lambda: secrets.token_urlsafe(16))
    key_dir: Path | None = None  # where the Backend Services key is kept (default: the work directory)
    worker: bool = True  # run `glucobridge outbox work`

    @property
    def app_url(self) -> str:
        return f"http://127.0.0.1:{self.app_port}"

    @property
    def ehr_url(self) -> str:
        return f"http://localhost:{self.ehr_port}"

    def _environment(self) -> dict[str, str]:
        sites = self.workdir / "sites"
        sites.mkdir(exist_ok=True)
        for site in ("epic-like", "oracle-like", "read-only", "hl7-only"):
            text = (ROOT / "sites" / f"{site}.toml").read_text(encoding="utf-8")
            (sites / f"{site}.toml").write_text(text.replace("http://localhost:8081", self.ehr_url), encoding="utf-8")
        key_file, kid = backend_key(self.key_dir or self.workdir)
        return {
            **os.environ,
            "DATABASE_URL": self.database_url or f"sqlite:///{self.workdir / 'glucobridge.db'}",
            "APP_PUBLIC_URL": self.app_url,
            "SITES_DIR": str(sites),
            "APP_SECRET_KEY": self.secret,
            "SMART_BACKEND_KEY_FILE": str(key_file),
            "SMART_BACKEND_KID": kid,
            "SMART_BACKEND_ALG": "ES384",
            "PYTHONUNBUFFERED": "1",
        }

    def start(self, *, quiet: bool = True) -> DemoStack:
        self.env = self._environment()
        out = subprocess.DEVNULL if quiet else None
        self.processes.append(subprocess.Popen(
            [sys.executable, "-m", "sandbox", "serve", "--host", "127.0.0.1", "--port", str(self.ehr_port),
             "--public-base", self.ehr_url, "--app-launch-url", f"{self.app_url}/launch",
             "--redirect-uri", f"{self.app_url}/callback",
             "--backend-jwks-url", f"{self.app_url}/.well-known/jwks.json"],
            cwd=ROOT, env=self.env, stdout=out, stderr=out, text=True,
        ))  # fmt: skip
        wait_http(f"{self.ehr_url}/ehr/", self.processes[-1])
        self.load_data()
        self.add_admin()
        self.processes.append(subprocess.Popen(
            [_bin("glucobridge"), "serve", "--host", "127.0.0.1", "--port", str(self.app_port),
             "--workers", str(self.app_workers)],
            cwd=ROOT, env=self.env, stdout=out, stderr=out, text=True,
        ))  # fmt: skip
        wait_http(f"{self.app_url}/healthz", self.processes[-1])
        if self.worker:
            self.start_worker()
        return self

    def start_worker(self) -> subprocess.Popen[str]:
        """One `glucobridge outbox work` for every site, with the app's environment; its log in the work dir."""
        with (self.workdir / "outbox-worker.log").open("a", encoding="utf-8") as log:
            process = subprocess.Popen([_bin("glucobridge"), "outbox", "work"], cwd=ROOT, env=self.env, stdout=log,
                                       stderr=subprocess.STDOUT, text=True)  # fmt: skip
        self.processes.append(process)
        return process

    def add_admin(self) -> None:
        """The demo's named /admin account, through the CLI (the password on standard input, never an argument)."""
        subprocess.run([_bin("glucobridge"), "admin", "add-user", self.admin_user, "--password-file", "-"],
                       input=self.admin_password + "\n", cwd=ROOT, env=self.env, check=True, capture_output=True,
                       text=True)  # fmt: skip

    def load_data(self, sites: Sequence[str] = SITES) -> None:
        """Each site's CGM Observations, exported by the sandbox, through `glucobridge ingest --feed fhir`."""
        for site in sites:
            path = self.workdir / f"{site}.ndjson"
            subprocess.run([sys.executable, "-m", "sandbox", "export-seed", "--site", site, "--out", str(path)],
                           cwd=ROOT, env=self.env, check=True, capture_output=True)  # fmt: skip
            subprocess.run([_bin("glucobridge"), "ingest", str(path), "--feed", "fhir", "--site", site],
                           cwd=ROOT, env=self.env, check=True, capture_output=True)  # fmt: skip

    def stop(self) -> None:
        for process in reversed(self.processes):
            if process.poll() is None:
                process.send_signal(signal.SIGTERM)
        for process in self.processes:
            try:
                process.wait(timeout=15)
            except subprocess.TimeoutExpired:
                process.kill()
        self.processes.clear()


def main() -> int:
    stack = DemoStack(key_dir=VAR)
    print("starting the sandbox EHR, loading its CGM data through the ingestion path, starting the app and the "
          "outbox worker ...", flush=True)  # fmt: skip
    stack.start(quiet=True)
    print(f"\n  EHR shell:  {stack.ehr_url}/ehr/   (choose a site and a patient: the app opens in the chart)")
    print(f"  App:        {stack.app_url}   (store: {stack.env['DATABASE_URL']})")
    print(f"  Admin:      {stack.app_url}/admin/   (user {stack.admin_user}, password {stack.admin_password})")
    print(f"  Worker log: {stack.workdir / 'outbox-worker.log'}")
    print("\nCtrl-C stops them all.", flush=True)
    try:
        while all(p.poll() is None for p in stack.processes):
            time.sleep(0.5)
    except KeyboardInterrupt:
        pass
    finally:
        stack.stop()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

"""sekmet-fhir as a test peer: a FHIR R4 server with SMART Backend Services that nobody on this team wrote.

See ../shared/reference/test-peers.md. sekmet pins its own fastapi, pydantic and fhir.resources, so it lives in its
own virtual environment, `<repo>/.peers/sekmet` (gitignored), never in `.venv`:

    venv = ensure_sekmet()                      # installs sekmet-fhir==0.1.1 once; PeerUnavailable if it cannot
    with running_sekmet(tmp_dir, [{"client_id": "gb", "scopes": "system/*.cruds", "jwks": {...}}]) as server:
        server.base_url                         # http://127.0.0.1:{port}/fhir, ready (metadata answered 200)

`ensure_sekmet` holds an exclusive file lock (`.peers/sekmet.lock`) while it checks and installs, so parallel
pytest processes install once and the others wait and reuse it. An installation counts when its interpreter
reports sekmet-fhir 0.1.1 and `sekmet --help` runs; a broken one is removed and made again.

`running_sekmet` writes `settings.yaml` (JSON, which is YAML) with a free port, `data_dir` in the given directory,
the simulator off and `server_auth: {types: [smart], smart_clients: clients}`, starts `sekmet serve` with that
directory as its working directory, waits for `GET {base}/metadata` to answer 200 and stops the server on exit. The
server's output goes to `sekmet.log` in the directory; a server that exits or does not answer in time raises
`PeerUnavailable` with the end of that log. Give each client one key type: sekmet ignores `kid` and answers 500 to
an ES384 assertion of a client whose JWKS also holds an RSA key.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import shutil
import socket
import subprocess
import sys
import time
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx

PACKAGE = "sekmet-fhir"
VERSION = "0.1.1"
REPO = Path(__file__).resolve().parents[2]
INSTALL_TIMEOUT_S = 900.0
LOCK_TIMEOUT_S = 1200.0


class PeerUnavailable(RuntimeError):  # noqa: N818 - a condition the fixtures turn into skip or fail
    """The peer cannot be installed or started here (the message says why)."""


def _tail(text: str, lines: int = 25) -> str:
    return "\n".join(text.strip().splitlines()[-lines:])


@contextlib.contextmanager
def _locked(path: Path, timeout_s: float) -> Iterator[None]:
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("a+") as handle:
        deadline = time.monotonic() + timeout_s
        while True:
            try:
                fcntl.flock(handle.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                if time.monotonic() > deadline:
                    raise PeerUnavailable(f"waited {timeout_s:.0f} s for {path} (another installation)") from None
                time.sleep(0.5)
        try:
            yield
        finally:
            fcntl.flock(handle.fileno(), fcntl.LOCK_UN)


def _installed(venv: Path) -> bool:
    python, command = venv / "bin" / "python", venv / "bin" / "sekmet"
    if not python.exists() or not command.exists():
        return False
    probe = "import importlib.metadata as m, sekmet; print(m.version('sekmet-fhir'))"
    try:
        version = subprocess.run([python, "-c", probe], capture_output=True, text=True, timeout=60, check=False)
        if version.returncode != 0 or version.stdout.strip() != VERSION:
            return False
        helped = subprocess.run([command, "--help"], capture_output=True, text=True, timeout=60, check=False)
    except (OSError, subprocess.TimeoutExpired):
        return False
    return helped.returncode == 0


def ensure_sekmet(root: Path = REPO) -> Path:
    """The virtual environment with sekmet-fhir 0.1.1 (`<root>/.peers/sekmet`), installed when missing."""
    venv = root / ".peers" / "sekmet"
    if _installed(venv):  # the common case, without waiting for the lock
        return venv
    with _locked(root / ".peers" / "sekmet.lock", LOCK_TIMEOUT_S):
        if _installed(venv):
            return venv
        if venv.exists():
            shutil.rmtree(venv)
        python3 = shutil.which("python3") or sys.executable
        steps: list[list[str | Path]] = [
            [python3, "-m", "venv", venv],
            [venv / "bin" / "pip", "install", "--quiet", f"{PACKAGE}=={VERSION}"],
        ]
        for step in steps:
            try:
                done = subprocess.run(step, capture_output=True, text=True, timeout=INSTALL_TIMEOUT_S, check=False)
            except (OSError, subprocess.TimeoutExpired) as exc:
                shutil.rmtree(venv, ignore_errors=True)
                raise PeerUnavailable(f"{PACKAGE}=={VERSION} could not be installed: {exc}") from exc
            if done.returncode != 0:
                shutil.rmtree(venv, ignore_errors=True)
                command = " ".join(str(s) for s in step)
                raise PeerUnavailable(
                    f"{PACKAGE}=={VERSION} could not be installed ({command} exited {done.returncode}):\n"
                    + _tail(done.stderr or done.stdout)
                )
        if not _installed(venv):
            raise PeerUnavailable(f"{PACKAGE}=={VERSION} was installed in {venv} but does not run")
    return venv


@dataclass(frozen=True)
class SekmetServer:
    """A running sekmet: `base_url` is the FHIR base (`iss`), `root` the server root (token endpoint's host)."""

    base_url: str
    root: str
    port: int
    directory: Path
    process: subprocess.Popen[bytes]

    @property
    def log_path(self) -> Path:
        return self.directory / "sekmet.log"

    def log(self) -> str:
        try:
            return self.log_path.read_text(errors="replace")
        except OSError:
            return ""


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def settings(directory: Path, port: int, clients: Sequence[Mapping[str, Any]]) -> dict[str, Any]:
    """sekmet's settings for a server on `port` with the SMART Backend Services `clients`."""
    for client in clients:
        if "client_id" not in client or not ({"jwks", "jwks_url"} & set(client)):
            raise ValueError("each client needs client_id and jwks (or jwks_url)")
    return {
        "base_url": f"http://127.0.0.1:{port}/fhir",
        "host": "127.0.0.1",
        "port": port,
        "data_dir": str(directory / "data"),
        "simulator": {"enabled": False},
        "server_auth": {"types": ["smart"], "smart_clients": [dict(c) for c in clients]},
    }


def _stop(process: subprocess.Popen[bytes]) -> None:
    if process.poll() is None:
        process.terminate()
        try:
            process.wait(10)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(10)


def _start(venv: Path, directory: Path, clients: Sequence[Mapping[str, Any]], timeout_s: float) -> SekmetServer:
    port = _free_port()
    config = directory / "settings.yaml"
    config.write_text(json.dumps(settings(directory, port, clients), indent=2))
    env = {k: v for k, v in os.environ.items() if not k.startswith("SEKMET_")}
    with (directory / "sekmet.log").open("wb") as log:
        process = subprocess.Popen(
            [venv / "bin" / "sekmet", "serve", "--config", config],
            cwd=directory,
            env=env,
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=subprocess.STDOUT,
        )
    root = f"http://127.0.0.1:{port}"
    server = SekmetServer(f"{root}/fhir", root, port, directory, process)
    deadline = time.monotonic() + timeout_s
    with httpx.Client(timeout=2.0, trust_env=False) as http:
        while True:
            if process.poll() is not None:
                raise PeerUnavailable(
                    f"sekmet exited with {process.returncode} before it answered:\n{_tail(server.log())}"
                )
            with contextlib.suppress(httpx.HTTPError):
                if http.get(f"{server.base_url}/metadata").status_code == 200:
                    return server
            if time.monotonic() > deadline:
                _stop(process)
                raise PeerUnavailable(
                    f"sekmet did not answer {server.base_url}/metadata within {timeout_s:.0f} s:\n{_tail(server.log())}"
                )
            time.sleep(0.1)


@contextlib.contextmanager
def running_sekmet(
    tmp_dir: Path, clients: Sequence[Mapping[str, Any]], *, venv: Path | None = None, timeout_s: float = 60.0
) -> Iterator[SekmetServer]:
    """A sekmet server with these SMART clients (`{client_id, scopes, jwks}`), stopped on exit."""
    venv = venv or ensure_sekmet()
    tmp_dir.mkdir(parents=True, exist_ok=True)
    attempts = 3  # the free port can be taken between choosing it and sekmet binding it
    for attempt in range(attempts):
        try:
            server = _start(venv, tmp_dir, clients, timeout_s)
            break
        except PeerUnavailable as exc:
            if attempt == attempts - 1 or "address already in use" not in str(exc).lower():
                raise
    try:
        yield server
    finally:
        _stop(server.process)


__all__ = ["PACKAGE", "VERSION", "PeerUnavailable", "SekmetServer", "ensure_sekmet", "running_sekmet", "settings"]

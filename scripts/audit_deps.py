"""`make audit`: are the dependencies we run exactly the locked ones, and is any of them known to be bad?

1. **Lock integrity** (offline): every entry of `requirements.lock` is pinned (`==`) with at least one SHA-256
   hash, every dependency that `pyproject.toml` declares is in it, and what is installed in this environment is
   exactly the locked version of each package whose markers apply here. `package-lock.json` pins every npm
   package with an integrity hash.
2. **Yanked releases** (PyPI's simple JSON API, PEP 691/592): a locked version whose every file was yanked by its
   maintainers is a finding.
3. **Known vulnerabilities**: pip-audit against OSV for the Python lock. When no vulnerability service can be
   reached (this machine's network reaches the package registries but not OSV or the npm advisory endpoint),
   the run says so and exits 3: the check did not happen, which is never reported as a pass.

Exit codes: 0 all checks ran and found nothing; 1 a finding (drift, an unhashed pin, a yanked release, a
vulnerability); 3 the vulnerability check could not run (every offline check passed).
"""

from __future__ import annotations

import json
import re
import subprocess
import sys
import tomllib
import urllib.error
import urllib.request
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from importlib import metadata
from pathlib import Path

from packaging.markers import Marker
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name, parse_sdist_filename, parse_wheel_filename

ROOT = Path(__file__).resolve().parent.parent
LOCK = ROOT / "requirements.lock"
NPM_LOCK = ROOT / "package-lock.json"
SIMPLE = "https://pypi.org/simple/{name}/"
OSV = "https://api.osv.dev/v1/query"


@dataclass
class Pin:
    name: str
    version: str
    marker: str = ""
    hashes: list[str] = field(default_factory=list)

    def applies(self) -> bool:
        return not self.marker or Marker(self.marker).evaluate()


def read_lock(path: Path = LOCK) -> list[Pin]:
    """The lock's pins (a `uv pip compile --universal --generate-hashes` file: a package may have one pin per
    environment marker, e.g. numpy for Python 3.11 and for 3.12)."""
    pins: list[Pin] = []
    current: Pin | None = None
    for raw in path.read_text(encoding="utf-8").splitlines():
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        if raw[0] not in " \t":
            text = line.removesuffix("\\").strip()
            requirement, _, marker = text.partition(";")
            match = re.fullmatch(r"([A-Za-z0-9_.\-\[\]]+)==([^\s]+)", requirement.strip())
            if match is None:
                raise SystemExit(f"requirements.lock: {text!r} is not pinned with ==")
            name = canonicalize_name(match.group(1).split("[")[0])
            current = Pin(name, match.group(2), marker.strip())
            pins.append(current)
        elif current is not None and line.startswith("--hash=sha256:"):
            current.hashes.append(line.removeprefix("--hash=sha256:").removesuffix("\\").strip())
    return pins


def declared() -> list[Requirement]:
    project = tomllib.loads((ROOT / "pyproject.toml").read_text(encoding="utf-8"))["project"]
    requirements = [Requirement(r) for r in project["dependencies"]]
    for extra in project.get("optional-dependencies", {}).values():
        requirements.extend(Requirement(r) for r in extra)
    return requirements


def integrity(pins: list[Pin]) -> list[str]:
    findings = [f"{p.name}=={p.version} has no hash" for p in pins if not p.hashes]
    here = [p for p in pins if p.applies()]
    for requirement in declared():
        if requirement.marker is not None and not requirement.marker.evaluate():
            continue
        name = canonicalize_name(requirement.name)
        locked = [p for p in here if p.name == name]
        if not locked:
            findings.append(f"{requirement.name} is declared in pyproject.toml but not locked: run `make lock`")
        findings.extend(
            f"{requirement.name}: the lock's {p.version} does not satisfy {requirement.specifier}"
            for p in locked
            if not requirement.specifier.contains(p.version, prereleases=True)
        )
    for pin in here:
        try:
            installed = metadata.version(pin.name)
        except metadata.PackageNotFoundError:
            findings.append(f"{pin.name}=={pin.version} is locked but not installed: run `make setup`")
            continue
        if installed != pin.version:
            findings.append(f"{pin.name}: {installed} is installed, the lock says {pin.version}")
    npm = json.loads(NPM_LOCK.read_text(encoding="utf-8"))
    for path, package in npm.get("packages", {}).items():
        if path and not package.get("integrity", "").startswith("sha512-"):
            findings.append(f"package-lock.json: {path} has no sha512 integrity hash")
    return findings


def _get(url: str, accept: str) -> bytes:
    request = urllib.request.Request(url, headers={"Accept": accept, "User-Agent": "glucobridge-audit"})
    with urllib.request.urlopen(request, timeout=20) as response:
        return bytes(response.read())


def yanked(pin: Pin) -> str | None:
    """A finding when every file of the locked version was yanked; None otherwise (or when PyPI did not answer)."""
    try:
        page = json.loads(_get(SIMPLE.format(name=pin.name), "application/vnd.pypi.simple.v1+json"))
    except (urllib.error.URLError, TimeoutError, ValueError):
        return None
    files = []
    for entry in page.get("files", []):
        filename = entry.get("filename", "")
        try:
            version = (
                parse_wheel_filename(filename)[1] if filename.endswith(".whl") else parse_sdist_filename(filename)[1]
            )
        except ValueError:
            continue
        if str(version) == pin.version:
            files.append(entry)
    if files and all(entry.get("yanked") for entry in files):
        why = files[0]["yanked"]
        return f"{pin.name}=={pin.version} was yanked" + (f": {why}" if isinstance(why, str) and why else "")
    return None


def osv_reachable() -> bool:
    request = urllib.request.Request(
        OSV, data=b'{"package":{"name":"pip","ecosystem":"PyPI"},"version":"0"}', method="POST"
    )
    try:
        with urllib.request.urlopen(request, timeout=10):
            return True
    except (urllib.error.URLError, TimeoutError):
        return False


def main() -> int:
    pins = read_lock()
    findings = integrity(pins)
    print(f"lock integrity: {len(pins)} Python packages pinned with hashes; npm lock checked", flush=True)
    with ThreadPoolExecutor(max_workers=8) as pool:
        findings.extend(f for f in pool.map(yanked, pins) if f)
    print("yanked releases: checked against PyPI's simple API", flush=True)
    for finding in findings:
        print(f"FINDING: {finding}")
    if findings:
        return 1
    if not osv_reachable():
        print(
            f"vulnerabilities: NOT CHECKED: {OSV} cannot be reached from here (nor PyPI's JSON API or npm's "
            "advisory endpoint). Run `make audit` where it can, or `pip-audit -r requirements.lock --require-hashes "
            "--disable-pip --no-deps` against a mirror of the OSV database."
        )
        return 3
    done = subprocess.run(
        [sys.executable, "-m", "pip_audit", "-r", str(LOCK), "--require-hashes", "--disable-pip", "--no-deps",
         "-s", "osv"],
        check=False,
    )  # fmt: skip
    return 0 if done.returncode == 0 else 1


if __name__ == "__main__":
    sys.exit(main())

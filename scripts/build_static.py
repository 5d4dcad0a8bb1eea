"""Install the third-party browser assets into static/vendor/ (never committed): plotly.js from the plotly
Python package's bundled file (its version and hash come with the locked Python package), htmx from the npm
registry through `package-lock.json` (`npm ci` checks each package's integrity hash). Idempotent; run by
`make static` (and so by demo/test).
"""

from __future__ import annotations

import hashlib
import json
import shutil
import subprocess
import sys
from pathlib import Path

import plotly

ROOT = Path(__file__).resolve().parent.parent
VENDOR = ROOT / "static" / "vendor"
LOCK = ROOT / "package-lock.json"
NODE_MODULES = ROOT / "node_modules"


def plotly_js() -> Path:
    source = Path(plotly.__file__).parent / "package_data" / "plotly.min.js"
    target = VENDOR / "plotly.min.js"
    if not target.exists() or target.stat().st_size != source.stat().st_size:
        shutil.copyfile(source, target)
    return target


def npm_packages() -> Path:
    """node_modules exactly as package-lock.json says (integrity-checked), installed again when the lock changes."""
    stamp = NODE_MODULES / ".glucobridge-lock"
    digest = hashlib.sha256(LOCK.read_bytes()).hexdigest()
    if not (stamp.exists() and stamp.read_text().strip() == digest):
        subprocess.run(["npm", "ci", "--ignore-scripts", "--no-audit", "--no-fund", "--silent"], check=True, cwd=ROOT)
        stamp.write_text(digest + "\n")
    return NODE_MODULES


def htmx_js(modules: Path) -> Path:
    target = VENDOR / "htmx.min.js"
    shutil.copyfile(modules / "htmx.org" / "dist" / "htmx.min.js", target)
    return target


def main() -> int:
    VENDOR.mkdir(parents=True, exist_ok=True)
    files = [plotly_js(), htmx_js(npm_packages())]
    manifest = {f.name: hashlib.sha256(f.read_bytes()).hexdigest() for f in files}
    (VENDOR / "manifest.json").write_text(json.dumps(manifest, indent=2) + "\n")
    print("static/vendor:", ", ".join(f"{f.name} ({f.stat().st_size:,} bytes)" for f in files))
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""Install the third-party browser assets into static/vendor/ (never committed): plotly.js from the plotly
Python package's bundled file, htmx from the npm registry. Idempotent; run by `make static` (and so by demo/test).
"""

from __future__ import annotations

import hashlib
import json
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import plotly

ROOT = Path(__file__).resolve().parent.parent
VENDOR = ROOT / "static" / "vendor"
HTMX = "htmx.org@2.0.4"


def plotly_js() -> Path:
    source = Path(plotly.__file__).parent / "package_data" / "plotly.min.js"
    target = VENDOR / "plotly.min.js"
    if not target.exists() or target.stat().st_size != source.stat().st_size:
        shutil.copyfile(source, target)
    return target


def htmx_js() -> Path:
    target = VENDOR / "htmx.min.js"
    stamp = VENDOR / "htmx.version"
    if target.exists() and stamp.exists() and stamp.read_text().strip() == HTMX:
        return target
    with tempfile.TemporaryDirectory() as tmp:
        subprocess.run(["npm", "pack", HTMX, "--silent", "--pack-destination", tmp], check=True, cwd=tmp,
                       stdout=subprocess.DEVNULL)  # fmt: skip
        tarball = next(Path(tmp).glob("htmx.org-*.tgz"))
        subprocess.run(["tar", "-xzf", str(tarball), "-C", tmp], check=True)
        shutil.copyfile(Path(tmp) / "package" / "dist" / "htmx.min.js", target)
    stamp.write_text(HTMX + "\n")
    return target


def main() -> int:
    VENDOR.mkdir(parents=True, exist_ok=True)
    files = [plotly_js(), htmx_js()]
    manifest = {f.name: hashlib.sha256(f.read_bytes()).hexdigest() for f in files}
    (VENDOR / "manifest.json").write_text(json.dumps(manifest, indent=2) + "\n")
    print("static/vendor:", ", ".join(f"{f.name} ({f.stat().st_size:,} bytes)" for f in files))
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""A real sandbox EHR (uvicorn in a thread, a free port) for `site probe`, and a sites directory to change."""

from __future__ import annotations

import shutil
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import uvicorn

from bff.settings import ROOT
from sandbox import SandboxConfig, create_app
from tests.sandbox.support import APP_LAUNCH, NOW, REDIRECT, free_port


@pytest.fixture(scope="session", name="ehr")
def fx_ehr() -> Iterator[str]:
    """The sandbox's public base URL (all five sites)."""
    port = free_port()
    base = f"http://127.0.0.1:{port}"
    config = SandboxConfig.local(public_base=base, app_launch_url=APP_LAUNCH, redirect_uris=(REDIRECT,), now=NOW)
    server = uvicorn.Server(uvicorn.Config(create_app(config), host="127.0.0.1", port=port, log_level="warning"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 15
    while not server.started:
        if time.monotonic() > deadline or not thread.is_alive():
            raise RuntimeError("the sandbox server did not start")
        time.sleep(0.02)
    yield base
    server.should_exit = True
    thread.join(10)


@pytest.fixture(name="sites_dir")
def fx_sites_dir(tmp_path: Path) -> Path:
    """A copy of the repository's sites/ (so tests may edit files)."""
    target = tmp_path / "sites"
    shutil.copytree(ROOT / "sites", target)
    return target

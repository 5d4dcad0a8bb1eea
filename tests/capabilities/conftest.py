"""A real sandbox EHR (uvicorn in a thread, a free port) for `site probe`, and a sites directory to change."""

from __future__ import annotations

import shutil
from collections.abc import Iterator
from pathlib import Path

import pytest

from bff.settings import ROOT
from sandbox import SandboxConfig, create_app
from tests.sandbox.support import APP_LAUNCH, NOW, REDIRECT, free_port, serve_in_thread


@pytest.fixture(scope="session", name="ehr")
def fx_ehr() -> Iterator[str]:
    """The sandbox's public base URL (all five sites)."""
    port = free_port()
    base = f"http://127.0.0.1:{port}"
    config = SandboxConfig.local(public_base=base, app_launch_url=APP_LAUNCH, redirect_uris=(REDIRECT,), now=NOW)
    with serve_in_thread(create_app(config), port):
        yield base


@pytest.fixture(name="sites_dir")
def fx_sites_dir(tmp_path: Path) -> Path:
    """A copy of the repository's sites/ (so tests may edit files)."""
    target = tmp_path / "sites"
    shutil.copytree(ROOT / "sites", target)
    return target

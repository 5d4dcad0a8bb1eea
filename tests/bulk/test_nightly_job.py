"""The nightly Bulk job runs the Bulk client with the app's Backend Services key (bff.jobs.bulk_job): a job worker's
context built from the environment exports the site and fills the store, each reading once."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest

from bff import bootstrap
from bff.jobs.definitions import nightly_bulk
from bff.jobs.queue import StoreQueue
from bff.settings import Settings
from bff.store.db import Store
from tests.bulk.conftest import CLIENT_ID, KID, BulkServer, Harness


def test_the_nightly_job_exports_the_site_with_the_apps_key(
    harness: Harness, bulk_server: BulkServer, sites_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    key = tmp_path / "backend.pem"
    key.write_bytes(bulk_server.key_pem)
    monkeypatch.setenv("SMART_BACKEND_KEY_FILE", str(key))
    monkeypatch.setenv("SMART_BACKEND_KID", KID)
    monkeypatch.setenv("SMART_BACKEND_CLIENT_ID", CLIENT_ID)
    monkeypatch.setenv("SMART_BACKEND_ALG", "RS384")
    store: Store = harness.store
    settings = Settings(database_url=store.engine.url.render_as_string(hide_password=False), sites_dir=str(sites_dir))

    async def run() -> dict[str, object]:
        ctx = bootstrap.job_context(bootstrap.services(settings, store=store), StoreQueue(store))
        try:
            assert ctx.bulk is not None
            return await nightly_bulk(ctx, {"site": "oracle-like", "night": "2026-11-26"})
        finally:
            await ctx.close()

    result = asyncio.run(run())
    exports = result["exports"]
    assert isinstance(exports, list)
    assert [e["state"] for e in exports] == ["complete"]
    total, distinct = harness.readings()
    assert total == distinct == bulk_server.reading_count("oracle-like")


def test_without_a_backend_key_the_nightly_job_says_there_is_no_client(
    harness: Harness, sites_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("SMART_BACKEND_KEY_FILE", raising=False)
    store = harness.store
    settings = Settings(database_url=store.engine.url.render_as_string(hide_password=False), sites_dir=str(sites_dir))

    async def run() -> dict[str, object]:
        ctx = bootstrap.job_context(bootstrap.services(settings, store=store), StoreQueue(store))
        try:
            return await nightly_bulk(ctx, {"site": "oracle-like", "night": "2026-11-26"})
        finally:
            await ctx.close()

    assert asyncio.run(run())["skipped"] == "no Bulk client"

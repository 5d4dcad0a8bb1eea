"""A worker process for the kill -9 test: `python -m tests.broker.worker_proc DB_URL SITES_DIR KEY_PEM SITE`."""

from __future__ import annotations

import asyncio
import sys
from pathlib import Path

import httpx

from bff import bootstrap
from bff.broker.broker import Broker, backend_token_source
from bff.outbox.worker import WorkerConfig
from bff.settings import Settings
from bff.smart.backend import BackendAuth


async def main(db_url: str, sites_dir: str, key_file: str, site: str) -> None:
    core = bootstrap.services(Settings(database_url=db_url, sites_dir=sites_dir))
    async with httpx.AsyncClient(timeout=30) as http:
        auth = BackendAuth("outbox-test", Path(key_file).read_bytes(), "outbox-1", "ES384", http=http)
        worker = bootstrap.outbox_worker(core, Broker(http, backend_token_source(auth), timeout_s=30),
                                         config=WorkerConfig(lease_s=2.0))  # fmt: skip
        print("ready", flush=True)
        await worker.run([site], idle_s=0.1)


if __name__ == "__main__":
    asyncio.run(main(*sys.argv[1:5]))

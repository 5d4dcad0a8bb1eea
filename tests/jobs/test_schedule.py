"""The scheduler: a site's nightly Bulk export inside its run window (the site's local time), once a night however
often it ticks and on however many workers; the nightly job says "no Bulk client" while there is none."""

from __future__ import annotations

import asyncio
import shutil
from datetime import UTC, date, datetime
from pathlib import Path
from types import SimpleNamespace
from typing import cast

from bff.capabilities import CapabilityService
from bff.jobs.context import JobContext
from bff.jobs.queue import JobState, StoreQueue
from bff.jobs.schedule import night_in_window, tick
from bff.jobs.worker import EmbeddedWorker
from bff.settings import ROOT
from bff.store.db import Store
from bff.store.models import Job


def test_the_night_of_a_run_window_in_the_sites_zone() -> None:
    chicago = "America/Chicago"  # UTC-6 in December
    assert night_in_window("01:00-05:00", chicago, datetime(2026, 12, 7, 8, 0, tzinfo=UTC)) == date(2026, 12, 7)
    assert night_in_window("01:00-05:00", chicago, datetime(2026, 12, 7, 12, 0, tzinfo=UTC)) is None
    assert night_in_window("01:00-05:00", chicago, datetime(2026, 12, 7, 6, 59, tzinfo=UTC)) is None  # 00:59
    # Past midnight: the night is the date the window opened.
    assert night_in_window("22:00-04:00", chicago, datetime(2026, 12, 8, 5, 0, tzinfo=UTC)) == date(2026, 12, 7)
    assert night_in_window("22:00-04:00", chicago, datetime(2026, 12, 8, 9, 0, tzinfo=UTC)) == date(2026, 12, 7)
    assert night_in_window("22:00-04:00", chicago, datetime(2026, 12, 8, 10, 0, tzinfo=UTC)) is None  # 04:00
    assert night_in_window("", chicago, datetime(2026, 12, 8, 3, 0, tzinfo=UTC)) == date(2026, 12, 7)  # any time


def test_the_nightly_export_is_queued_once_a_night_inside_the_window(sqlite_store: Store, tmp_path: Path) -> None:
    sites = tmp_path / "sites"
    sites.mkdir()
    shutil.copy(ROOT / "sites" / "epic-like.toml", sites / "epic-like.toml")
    with (sites / "epic-like.toml").open("a", encoding="utf-8") as toml:
        toml.write('\n[bulk]\navailable = true\nrun_window = "01:00-05:00"\n')
    queue = StoreQueue(sqlite_store)
    ctx = cast(JobContext, SimpleNamespace(
        store=sqlite_store, queue=queue, capabilities=CapabilityService(sqlite_store, sites), bulk=None,
        clock=lambda: datetime.now(UTC),
    ))  # fmt: skip
    night = datetime(2026, 12, 7, 8, 0, tzinfo=UTC)  # 02:00 in Chicago

    async def main() -> None:
        assert (await tick(ctx, datetime(2026, 12, 7, 6, 0, tzinfo=UTC))).nightly == ()  # 00:00: not yet
        first = await tick(ctx, night)
        assert first.nightly == ("nightly-bulk:epic-like:2026-12-07",)
        assert (await tick(ctx, night)).nightly == ()  # a second worker's scheduler, the same minute
        worker = EmbeddedWorker(queue, ctx, tick_s=None)
        assert await worker.drain() >= 1
        assert queue.get_state("nightly-bulk:epic-like:2026-12-07") is JobState.DONE
        assert (await tick(ctx, night.replace(hour=9))).nightly == ()  # later that night: it ran already
        assert (await tick(ctx, night.replace(day=8))).nightly == ("nightly-bulk:epic-like:2026-12-08",)

    asyncio.run(main())
    with sqlite_store.transaction() as session:
        job = session.query(Job).filter(Job.key == "nightly-bulk:epic-like:2026-12-07").one()
        assert job.result == {"site": "epic-like", "night": "2026-12-07", "skipped": "no Bulk client"}

"""The nightly Bulk Data export as a job: the Bulk client (`bff/bulk/`) with the app's Backend Services key.

`bulk_starter(settings)` is the `JobContext.bulk` seam (`bff.jobs.seams.BulkStarter`) when a Backend Services key is
configured (SMART_BACKEND_KEY_FILE, SMART_BACKEND_KID); without one a worker has no Bulk client and the nightly
job says so. The job's result names the exports and their counts (no PHI).
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

from bff.broker.broker import backend_token_source
from bff.bulk import BulkClient, BulkError, BulkRunner, JobBusyError
from bff.jobs.seams import BulkStarter
from bff.settings import VAR, Settings, SettingsError
from bff.smart import SmartSettings, create_backend_auth
from bff.smart.errors import SmartError

if TYPE_CHECKING:
    from bff.jobs.context import JobContext


def bulk_starter(settings: Settings) -> BulkStarter | None:
    """The nightly export's starter, or None when this deployment has no Backend Services key."""
    del settings
    smart = SmartSettings.from_env(os.environ)
    if not smart.backend_key_file:
        return None

    async def start(ctx: JobContext, site: str) -> Mapping[str, Any]:
        try:
            auth = create_backend_auth(smart, smart.backend_client_id, http=ctx.http)
        except (SettingsError, SmartError) as exc:
            return {"error": f"the Backend Services key cannot be used: {exc}"}
        assert auth is not None
        client = BulkClient(ctx.http, backend_token_source(auth), forget_token=auth.forget)
        runner = BulkRunner(ctx.store, ctx.capabilities, client, work_dir=VAR / "bulk")
        try:
            reports = await runner.start(site)
        except (BulkError, JobBusyError, SmartError) as exc:
            return {"error": str(exc)}
        return {"exports": [r.as_dict() for r in reports]}

    return start

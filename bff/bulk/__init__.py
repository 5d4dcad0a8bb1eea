"""FHIR Bulk Data (`$export`) with SMART Backend Services: the client, its job record, and resume after a crash.

`protocol` (pure: kick-off URLs, Retry-After and polling, transient errors, the manifest), `client` (HTTP),
`jobs` (the persisted record: state, manifest, per-file progress, slots, leases, the `_since` watermark) and
`runner` (a job from kick-off to the store). docs/bulk.md tells the whole story.
"""

from bff.bulk.client import BulkClient, bulk_scopes
from bff.bulk.jobs import JobBusyError
from bff.bulk.protocol import BulkProtocolError, ExportScope, Level
from bff.bulk.runner import BulkError, BulkRunner, JobReport

__all__ = [
    "BulkClient",
    "BulkError",
    "BulkProtocolError",
    "BulkRunner",
    "ExportScope",
    "JobBusyError",
    "JobReport",
    "Level",
    "bulk_scopes",
]

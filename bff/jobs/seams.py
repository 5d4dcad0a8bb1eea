"""Where other parts plug into the jobs: which FHIR search finds a site's CGM readings, and how a Bulk export starts.

Both are plain values of the `JobContext` (`bff.jobs.context`), set where the context is built
(`bff.bootstrap.job_context`), so a job never decides them itself:

- `JobContext.cgm_search(caps, patient, since)`: the search of the launch-time read, the site's vendor profile's
  (`bff.vendors`: the catalogue's reading codes, the site's `[read]` rows and category).
- `JobContext.bulk(ctx, site)`: starts a site's nightly Bulk Data export (kick-off, poll, download, ingest) and
  says what it did. None while there is no Bulk client (`bff/bulk/`): the nightly job then reports
  "no Bulk client", and everything around it (the window, one run per night, the queue) still runs.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Mapping
from datetime import datetime
from typing import TYPE_CHECKING, Any

from bff.capabilities import SiteCapabilities
from bff.vendors import profile_for
from bff.vendors.base import FhirSearch

if TYPE_CHECKING:
    from bff.jobs.context import JobContext

#: Observations per page asked for (`_count`): FHIR servers cap it at their own maximum (the sandbox at 1000).
PAGE_SIZE = 1000


#: The searches of a patient's CGM readings at a site since an instant (`bff.vendors.SiteProfile.cgm_search`).
CgmSearchRule = Callable[[SiteCapabilities, str, datetime], tuple[FhirSearch, ...]]


def vendor_cgm_search(caps: SiteCapabilities, patient: str, since: datetime) -> tuple[FhirSearch, ...]:
    """The rule of the site's vendor profile: the catalogue's reading codes, the site's reading rows and category."""
    return profile_for(caps).cgm_search(patient, since)


#: Starts a site's nightly Bulk Data export; returns what it did (JSON, no PHI) for the job's result.
BulkStarter = Callable[["JobContext", str], Awaitable[Mapping[str, Any]]]

"""Where other parts plug into the jobs: which FHIR search finds a site's CGM readings, and how a Bulk export starts.

Both are plain values of the `JobContext` (`bff.jobs.context`), set where the context is built
(`bff.jobs.context.build_context`), so a job never decides them itself:

- `JobContext.cgm_search(caps)`: the search of the launch-time read. `generic_cgm_search` is the generic rule,
  the LOINC codes of a CGM sensor reading (`engine.catalogue.READING_UNITS`: 99504-3 mg/dL, 105272-9 mmol/L).
  The vendor profiles (`bff/vendors/`, with the site's matrix) replace it with what each vendor files readings
  under (an Epic flowsheet row's code, a page size the vendor allows, whether it honours `_sort`).
- `JobContext.bulk(ctx, site)`: starts a site's nightly Bulk Data export (kick-off, poll, download, ingest) and
  says what it did. None while there is no Bulk client (`bff/bulk/`): the nightly job then reports
  "no Bulk client", and everything around it (the window, one run per night, the queue) still runs.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from bff.capabilities import SiteCapabilities
from engine.catalogue import LOINC, READING_UNITS

if TYPE_CHECKING:
    from bff.jobs.context import JobContext

#: Observations per page asked for (`_count`): FHIR servers cap it at their own maximum (the sandbox at 1000).
PAGE_SIZE = 1000


@dataclass(frozen=True, slots=True)
class CgmSearch:
    """A FHIR Observation search for a patient's CGM readings (besides `patient` and `date`)."""

    codes: tuple[str, ...]  # token values, "system|code", any of which is a reading
    page_size: int = PAGE_SIZE
    sort_by_date: bool = True  # ask for `_sort=date` (oldest first): a read stopped early leaves no gap


def generic_cgm_search(caps: SiteCapabilities) -> CgmSearch:
    """The generic rule: the LOINC codes of a CGM sensor reading, whatever the vendor."""
    del caps  # the vendor profiles read the site's vendor and matrix here
    return CgmSearch(tuple(f"{LOINC}|{code}" for code in sorted(READING_UNITS)))


#: Starts a site's nightly Bulk Data export; returns what it did (JSON, no PHI) for the job's result.
BulkStarter = Callable[["JobContext", str], Awaitable[Mapping[str, Any]]]

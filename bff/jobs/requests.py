"""The jobs there are, by kind, and the key of each: how a job is asked for, wherever it is asked.

| kind | key | once | attempts | what it does (`bff.jobs.definitions`) |
| --- | --- | --- | --- | --- |
| `launch_read` | `launch-read:<site>:<digest of the patient>` | no | 1 | the patient's CGM from the EHR |
| `recompute_stale` | `recompute-stale` | no | 3 | the next version of every stale outcome window |
| `corrections` | `corrections:<site>` | no | 3 | correction writes of signed windows that changed (to the outbox) |
| `nightly_bulk` | `nightly-bulk:<site>:<local date the window opened>` | yes | 3 | the site's Bulk Data export |

One key per job that must not run twice at once: two launches of a patient, two workers' schedulers, a recompute
asked for by every read, all meet on the same key.
"""

from __future__ import annotations

import hashlib
from datetime import date

from bff.jobs.queue import JobRequest

LAUNCH_READ = "launch_read"
RECOMPUTE_STALE = "recompute_stale"
CORRECTIONS = "corrections"
NIGHTLY_BULK = "nightly_bulk"
KINDS = (LAUNCH_READ, RECOMPUTE_STALE, CORRECTIONS, NIGHTLY_BULK)

#: One attempt of a launch-time read may take at most this long in the queue (the read stops at its budget).
LAUNCH_READ_TIMEOUT_S = 60.0


def fhir_reference(patient: str) -> str:
    return patient if patient.startswith("Patient/") else f"Patient/{patient}"


def read_key(site: str, patient: str) -> str:
    """The patient as a digest: keys reach the queue's logs and Redis, patient ids do not."""
    digest = hashlib.sha256(f"{site}|{fhir_reference(patient)}".encode()).hexdigest()[:24]
    return f"launch-read:{site}:{digest}"


def read_request(site: str, patient: str, sealed: str) -> JobRequest:
    """One attempt: a failed read is read again at the next launch, with that launch's token. `sealed` holds the
    launch handle and the patient, encrypted (`bff.jobs.launch_read.seal`): a payload that reaches a log (SAQ
    logs a failed job whole) names nobody and opens no launch."""
    return JobRequest(LAUNCH_READ, read_key(site, patient), {"site": site, "sealed": sealed}, attempts=1,
                      timeout_s=LAUNCH_READ_TIMEOUT_S)  # fmt: skip


def recompute_request() -> JobRequest:
    return JobRequest(RECOMPUTE_STALE, "recompute-stale", {}, attempts=3, timeout_s=600.0)


def corrections_request(site: str) -> JobRequest:
    return JobRequest(CORRECTIONS, f"corrections:{site}", {"site": site}, attempts=3, timeout_s=300.0)


def nightly_request(site: str, night: date) -> JobRequest:
    day = night.isoformat()
    return JobRequest(NIGHTLY_BULK, f"nightly-bulk:{site}:{day}", {"site": site, "night": day}, attempts=3,
                      timeout_s=6 * 3600.0, once=True)  # fmt: skip

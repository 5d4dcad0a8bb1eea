"""Jobs: launch-time EHR reads, stale recomputes, corrections and the nightly Bulk export, on a real job queue.

    queue.py        the queue's interface (`JobQueue`, `JobRequest`: kind, key, payload) and the embedded backend on
                    the store (`StoreQueue`: the `jobs` table, exclusive claims with leases, survives restarts)
    saq_queue.py    the SAQ backend on Redis (`SaqQueue`), and the job kinds as SAQ functions
    requests.py     every kind of job and its key
    definitions.py  what each kind does (`JOBS`)
    launch_read.py  a patient's CGM Observations from the EHR at launch, and what the view shows of it
    schedule.py     the scheduler (`tick`, every minute on every worker; keys make that safe)
    worker.py       the embedded queue's worker
    context.py      what a job runs with (`JobContext`; built by `bff.bootstrap.job_context`)
    seams.py        where the vendor profiles (which search finds CGM readings) and the Bulk client plug in

`glucobridge worker` runs the jobs (`app/jobs.py` picks the backend: SAQ with litestar-saq's worker when
`REDIS_URL` is set, else the embedded one). The outbox (`bff/outbox/`) stays the transactional queue of writes to
EHRs; no job writes to an EHR. docs/jobs.md describes it all for operators.
"""

from bff.jobs.queue import ClaimedJob, JobQueue, JobRequest, JobState, StoreQueue
from bff.jobs.requests import KINDS

__all__ = ["KINDS", "ClaimedJob", "JobQueue", "JobRequest", "JobState", "StoreQueue"]

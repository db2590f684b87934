"""Jobs: waiting for a job that a real worker runs."""

from __future__ import annotations

from jobs.models import FINISHED_STATES, Job
from tests.celery_support import wait_for


def job_finished(job: Job, timeout: float = 30) -> Job:
    """`job` once a worker has run it to its end (succeeded, failed or cancelled), refreshed."""

    def done() -> Job | None:
        job.refresh_from_db()
        return job if job.state in FINISHED_STATES else None

    return wait_for(done, timeout, f"job #{job.pk} to finish", interval=0.2)

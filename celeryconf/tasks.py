"""The one task behind every Job; the job kinds (handlers) decide what it does."""

from __future__ import annotations

from typing import Any

from celery import shared_task

from celeryconf.jobs import job_run


@shared_task(name="jobs.run", bind=True, max_retries=None)
def run_job(self: Any, job_id: int) -> None:
    """Run Job `job_id` (re-fetched and checked by `job_run`); safe to deliver twice."""

    def retry(countdown: int, exc: BaseException) -> Exception:
        return self.retry(countdown=countdown, exc=exc)  # type: ignore[no-any-return]

    job_run(job_id=job_id, retry=retry)

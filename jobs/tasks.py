"""The one task behind every Job (the job kinds decide what it does), the one place that enqueues
it, and the daily clean-up of result files and old task events (sent by beat to the default queue).

The task names `jobs.run` and `jobs.cleanup_files` are stable: messages already queued and beat's
schedule rows name them.
"""

from __future__ import annotations

from typing import Any

from celery import shared_task

from jobs.cleanup import job_files_cleanup
from jobs.models import Job
from jobs.registry import REGISTRY
from jobs.runner import job_run
from jobs.taskevents import task_events_prune


@shared_task(name="jobs.run", bind=True, max_retries=None)
def run_job(self: Any, job_id: int) -> None:
    """Run Job `job_id` (re-fetched and checked by `job_run`); safe to deliver twice."""

    def retry(countdown: int, exc: BaseException) -> Exception:
        return self.retry(countdown=countdown, exc=exc)  # type: ignore[no-any-return]

    job_run(job_id=job_id, retry=retry)


def job_enqueue(job: Job) -> None:
    """Send `job` to its kind's queue and keep the Celery task id on the row."""
    kind = REGISTRY[job.kind]
    result = run_job.apply_async(args=(job.pk,), queue=kind.queue, routing_key=kind.queue)
    Job.objects.filter(pk=job.pk).update(celery_task_id=result.id)


@shared_task(name="jobs.cleanup_files", time_limit=600, soft_time_limit=570)
def cleanup_files() -> dict[str, int]:
    """Delete task events older than 30 days (jobs.taskevents), then expired result files and orphan
    files (jobs.cleanup); idempotent. (One daily housekeeping run rather than a schedule of its own.)"""
    pruned = task_events_prune()
    result = job_files_cleanup()
    return {"expired": result.expired, "orphans": result.orphans, "task_events": pruned}

"""Launching and retrying jobs from the admin: the Job row is created in the request's transaction
and enqueued once it commits (by jobs.tasks, the one module that enqueues), so nothing is sent to
Redis for a transaction that rolls back.
"""

from __future__ import annotations

from typing import Any

from django.db import transaction

from jobs.models import Job, JobState
from jobs.registry import REGISTRY, JobError
from jobs.tasks import job_enqueue


def job_launch(*, kind: str, acting_user: Any, business: Any = None, params: dict[str, Any] | None = None) -> Job:
    """Create a queued Job and enqueue it once the surrounding transaction commits.

    Nothing is sent to Redis for a transaction that rolls back. Safe to call from admin actions.
    """
    if kind not in REGISTRY:
        raise JobError(f"Unknown job kind {kind!r}.")
    with transaction.atomic():
        job = Job.objects.create(
            kind=kind,
            business=business,
            requested_by=acting_user if getattr(acting_user, "pk", None) else None,
            params=params or {},
            message="Waiting for a worker",
        )
        transaction.on_commit(lambda: job_enqueue(job))
    return job


def job_retry(*, job: Job, acting_user: Any) -> Job:
    """Put a failed job back in the queue, from the start, with its attempts reset."""
    with transaction.atomic():
        locked = Job.objects.select_for_update().get(pk=job.pk)
        if locked.state != JobState.FAILED:
            state = locked.get_state_display().lower()
            raise JobError(f"Only failed jobs can be retried; job #{locked.pk} is {state}.")
        if locked.kind not in REGISTRY:
            raise JobError(f"Job kind {locked.kind!r} no longer exists.")
        locked.state = JobState.QUEUED
        locked.progress = 0
        locked.attempts = 0
        locked.message = f"Retry asked by {acting_user}"
        locked.error = ""
        locked.traceback = ""
        locked.started_at = None
        locked.finished_at = None
        locked.save()
        transaction.on_commit(lambda: job_enqueue(locked))
    return locked

"""Launching and retrying jobs from the admin: the Job row is created in the request's transaction
and enqueued once it commits (by jobs.tasks, the one module that enqueues), so nothing is sent to
Redis for a transaction that rolls back.
"""

from __future__ import annotations

from typing import Any

from django.db import transaction
from django.utils import timezone

from jobs.models import Job, JobState
from jobs.registry import REGISTRY, JobError
from jobs.tasks import job_enqueue
from tenancy.scoping import sees_all_businesses, visible_business_ids


def job_launch(*, kind: str, acting_user: Any, business: Any = None, params: dict[str, Any] | None = None) -> Job:
    """Create a queued Job and enqueue it once the surrounding transaction commits.

    Nothing is sent to Redis for a transaction that rolls back. Safe to call from admin actions.
    """
    if kind not in REGISTRY:
        raise JobError(f"Unknown job kind {kind!r}.")
    scope: list[int] = []
    if business is None and getattr(acting_user, "pk", None) and not sees_all_businesses(acting_user):
        scope = sorted(visible_business_ids(acting_user))
    with transaction.atomic():
        job = Job.objects.create(
            kind=kind,
            business=business,
            scope_business_ids=scope,
            requested_by=acting_user if getattr(acting_user, "pk", None) else None,
            params=params or {},
            message="Waiting for a worker",
        )
        transaction.on_commit(lambda: job_enqueue(job))
    return job


RETRYABLE_STATES = (JobState.FAILED, JobState.CANCELLED)


def job_retry(*, job: Job, acting_user: Any) -> Job:
    """Put a failed or cancelled job back in the queue ("run it again"), from the start.

    Attempts, progress, rows, the error, the cancel request and the notice are reset, so the job
    runs as if just launched and its launcher is told again when it finishes.
    """
    with transaction.atomic():
        locked = Job.objects.select_for_update().get(pk=job.pk)
        if locked.state not in RETRYABLE_STATES:
            state = locked.get_state_display().lower()
            raise JobError(f"Only failed or cancelled jobs can be run again; job #{locked.pk} is {state}.")
        if locked.kind not in REGISTRY:
            raise JobError(f"Job kind {locked.kind!r} no longer exists.")
        locked.state = JobState.QUEUED
        locked.progress = 0
        locked.rows_done = None
        locked.rows_total = None
        locked.attempts = 0
        locked.message = f"Run again by {acting_user}"
        locked.error = ""
        locked.traceback = ""
        locked.started_at = None
        locked.finished_at = None
        locked.cancel_requested_at = None
        locked.cancelled_by = None
        locked.notified_at = None
        locked.save()
        transaction.on_commit(lambda: job_enqueue(locked))
    return locked


def job_cancel(*, job: Job, acting_user: Any) -> Job:
    """Cancel a queued, retrying or running job.

    A job that waits is cancelled at once (the worker skips it when it is delivered). A running job
    is asked to stop: its handler raises at its next progress report and the runner marks it
    cancelled, dropping any partial file. A finished job cannot be cancelled.
    """
    with transaction.atomic():
        locked = Job.objects.select_for_update().get(pk=job.pk)
        if not locked.is_active:
            state = locked.get_state_display().lower()
            raise JobError(f"Job #{locked.pk} is {state}; only queued or running jobs can be cancelled.")
        now = timezone.now()
        locked.cancel_requested_at = locked.cancel_requested_at or now
        locked.cancelled_by = acting_user if getattr(acting_user, "pk", None) else None
        if locked.state == JobState.RUNNING:
            locked.message = f"Cancel asked by {acting_user}; stopping"
        else:
            locked.state = JobState.CANCELLED
            locked.finished_at = now
            locked.message = f"Cancelled by {acting_user} before it ran"
        locked.save()
    return locked

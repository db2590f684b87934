"""The jobs mechanism: how the admin launches background work and how the worker runs it.

A job kind is a function registered with `@job_kind(...)` that receives a `JobContext`: it reads
its parameters, reports progress and saves a result file. `job_launch` creates the Job row and
enqueues it after the transaction commits; the single task `jobs.run` (tasks.py) calls `job_run`,
which moves the row through queued -> running -> (retrying ->) succeeded / failed.

Handlers must be idempotent: with late acknowledgements, a job whose worker died is delivered
again and runs from the start (its attempts count goes up; after `max_attempts` it fails).
"""

from __future__ import annotations

import logging
import traceback
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from django.core.files.base import ContentFile
from django.db import transaction
from django.utils import timezone

from celeryconf.config import QUEUE_REPORTS, QUEUES
from celeryconf.models import Job, JobState

logger = logging.getLogger(__name__)


class JobError(Exception):
    """A job cannot be launched or retried as asked."""


class JobFailed(Exception):  # noqa: N818 - the name reads as the outcome it reports
    """Raised by a handler to fail its job with a message meant for the person who launched it."""


@dataclass(frozen=True)
class JobKind:
    key: str
    label: str
    handler: Callable[[JobContext], None]
    queue: str = QUEUE_REPORTS
    # Exceptions worth another try (network, lock timeouts); anything else fails at once.
    retry_on: tuple[type[BaseException], ...] = field(default=())
    max_attempts: int = 3


REGISTRY: dict[str, JobKind] = {}


def job_kind(
    key: str,
    *,
    label: str,
    queue: str = QUEUE_REPORTS,
    retry_on: tuple[type[BaseException], ...] = (),
    max_attempts: int = 3,
) -> Callable[[Callable[[JobContext], None]], Callable[[JobContext], None]]:
    """Register a job handler under `key` (stable: it is stored in Job rows)."""
    if queue not in QUEUES:
        raise ValueError(f"unknown queue {queue!r}")

    def register(handler: Callable[[JobContext], None]) -> Callable[[JobContext], None]:
        if key in REGISTRY and REGISTRY[key].handler is not handler:
            raise ValueError(f"job kind {key!r} registered twice")
        REGISTRY[key] = JobKind(key, label, handler, queue, retry_on, max_attempts)
        return handler

    return register


def kind_label(key: str) -> str:
    kind = REGISTRY.get(key)
    return kind.label if kind else key


class JobContext:
    """What a handler sees: its job's parameters, progress reporting and the result file."""

    def __init__(self, job: Job) -> None:
        self.job = job
        self.last_message = ""

    @property
    def params(self) -> dict[str, Any]:
        return dict(self.job.params)

    def progress(self, percent: int, message: str = "") -> None:
        """Record progress (0-100) where the admin shows it; committed at once."""
        percent = max(0, min(100, int(percent)))
        self.last_message = message
        Job.objects.filter(pk=self.job.pk).update(progress=percent, message=message[:255], updated_at=timezone.now())

    def save_result(self, filename: str, content: bytes) -> None:
        if self.job.result_file:
            self.job.result_file.delete(save=False)
        self.job.result_file.save(filename, ContentFile(content), save=False)
        Job.objects.filter(pk=self.job.pk).update(result_file=self.job.result_file.name)


def _enqueue(job: Job) -> None:
    from celeryconf.tasks import run_job

    kind = REGISTRY[job.kind]
    result = run_job.apply_async(args=(job.pk,), queue=kind.queue, routing_key=kind.queue)
    Job.objects.filter(pk=job.pk).update(celery_task_id=result.id)


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
        transaction.on_commit(lambda: _enqueue(job))
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
        transaction.on_commit(lambda: _enqueue(locked))
    return locked


def _backoff_seconds(attempt: int, cap: int) -> int:
    return int(min(cap, 5 * 2 ** max(0, attempt - 1)))


def job_run(*, job_id: int, retry: Callable[[int, BaseException], Exception]) -> None:
    """Run one delivery of a job. Safe to call again for the same job.

    `retry(countdown, exc)` asks the task layer to deliver the job again later; it returns the
    exception to raise. A job already finished is left alone (a duplicate delivery).
    """
    with transaction.atomic():
        job = Job.objects.select_for_update().filter(pk=job_id).first()
        if job is None:
            logger.warning("job %s vanished; nothing to run", job_id)
            return
        if job.state in (JobState.SUCCEEDED, JobState.FAILED):
            logger.info("job %s already %s; duplicate delivery ignored", job_id, job.state)
            return
        kind = REGISTRY.get(job.kind)
        job.attempts += 1
        job.started_at = job.started_at or timezone.now()
        if kind is None or job.attempts > (kind.max_attempts if kind else 1):
            job.state = JobState.FAILED
            job.finished_at = timezone.now()
            job.error = (
                f"Unknown job kind {job.kind!r}."
                if kind is None
                else f"Gave up after {kind.max_attempts} attempts (the worker stopped while running it)."
            )
            job.message = job.error[:255]
            job.save()
            return
        job.state = JobState.RUNNING
        job.message = "Running" if job.attempts == 1 else f"Running (attempt {job.attempts})"
        job.save()

    context = JobContext(job)
    try:
        kind.handler(context)
    except JobFailed as exc:
        _finish(job, JobState.FAILED, message=str(exc)[:255], error=str(exc), tb=traceback.format_exc())
    except kind.retry_on as exc:
        if job.attempts >= kind.max_attempts:
            _finish(
                job,
                JobState.FAILED,
                message=f"Failed after {job.attempts} attempts: {exc}"[:255],
                error=repr(exc),
                tb=traceback.format_exc(),
            )
            return
        countdown = _backoff_seconds(job.attempts, _max_countdown())
        Job.objects.filter(pk=job.pk).update(
            state=JobState.RETRYING,
            message=f"Retrying in {countdown}s: {exc}"[:255],
            error=repr(exc),
            traceback=traceback.format_exc(),
            updated_at=timezone.now(),
        )
        raise retry(countdown, exc) from exc
    except Exception as exc:
        _finish(job, JobState.FAILED, message=f"Failed: {exc}"[:255], error=repr(exc), tb=traceback.format_exc())
        logger.exception("job %s failed", job.pk)
    else:
        # The handler's last word stays visible ("Done: 3 matched, 1 not in the books...").
        _finish(job, JobState.SUCCEEDED, message=f"Done: {context.last_message}" if context.last_message else "Done")


def _max_countdown() -> int:
    from celeryconf.app import LIMITS

    return LIMITS.max_countdown


def _finish(job: Job, state: str, *, message: str, error: str = "", tb: str = "") -> None:
    fields: dict[str, Any] = {
        "state": state,
        "message": message,
        "finished_at": timezone.now(),
        "updated_at": timezone.now(),
        "error": error,
        "traceback": tb,
    }
    if state == JobState.SUCCEEDED:
        fields["progress"] = 100
    Job.objects.filter(pk=job.pk).update(**fields)

"""Running one delivery of a job: queued -> running -> (retrying ->) succeeded / failed."""

from __future__ import annotations

import logging
import traceback
from collections.abc import Callable
from typing import Any

from django.db import transaction
from django.utils import timezone

from celeryconf.taskpeak import task_label
from jobs.models import FINISHED_STATES, Job, JobState
from jobs.registry import REGISTRY, JobCancelled, JobContext, JobFailed

logger = logging.getLogger(__name__)


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
        if job.state in FINISHED_STATES:
            logger.info("job %s already %s; duplicate delivery ignored", job_id, job.state)
            return
        if job.cancel_requested_at is not None:  # cancelled while it waited (or before a redelivery)
            job.state = JobState.CANCELLED
            job.finished_at = timezone.now()
            job.message = "Cancelled before it ran"
            job.save()
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
    task_label(job.kind)  # the worker's log names the kind beside the task's peak memory
    try:
        kind.handler(context)
    except JobCancelled:
        # The partial file goes first and the state last, in one update: whoever sees "cancelled"
        # never sees a file that is about to vanish.
        job.refresh_from_db(fields=["result_file"])
        if job.result_file:  # a partial file from an earlier step is not a result
            job.result_file.delete(save=False)
        _finish(
            job,
            JobState.CANCELLED,
            message="Cancelled while running; no result was kept",
            extra={"result_file": "", "result_size": None, "expires_at": None},
        )
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


def _finish(
    job: Job, state: str, *, message: str, error: str = "", tb: str = "", extra: dict[str, Any] | None = None
) -> None:
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
    fields.update(extra or {})
    Job.objects.filter(pk=job.pk).update(**fields)

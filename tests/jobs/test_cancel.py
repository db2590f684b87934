"""Rows, cancel and "run again": JobContext.rows(), cancelling a waiting job (a worker that gets it
skips it) and a running one (a real worker stops it, no file kept), refusals, and retrying a
cancelled job."""

from __future__ import annotations

import uuid
from pathlib import Path
from typing import Any

import pytest
import redis
from django.utils import timezone

from jobs.models import Job, JobState
from jobs.registry import JobContext, JobError
from jobs.services import job_cancel, job_launch, job_retry
from tests.celery_support import WorkerProcess, wait_for, worker_env
from tests.factories.jobs import job_finished
from tests.worker_tasks import runs

pytestmark = [pytest.mark.django_db(transaction=True)]


@pytest.fixture
def media_root(settings: Any, tmp_path: Path) -> Path:
    settings.MEDIA_ROOT = tmp_path / "media"
    return Path(settings.MEDIA_ROOT)


@pytest.fixture
def media_worker(transactional_db: None, clean_broker: redis.Redis, media_root: Path) -> Any:
    """A real worker on every queue whose result files go to this test's MEDIA_ROOT."""
    proc = WorkerProcess("media-worker", env=worker_env(MEDIA_ROOT=str(media_root))).start()
    yield proc
    proc.stop()


def steps(client: redis.Redis, token: str) -> list[str]:
    """What the runs under `token` recorded, without the process ids."""
    return [run.split(":")[0] for run in runs(client, token)]


def test_rows_sets_rows_progress_and_message(owner: Any) -> None:
    import tests.worker_tasks  # noqa: F401 - registers the test job kinds

    job = Job.objects.create(kind="tests.rows", requested_by=owner, state=JobState.RUNNING)
    context = JobContext(job)
    context.rows(12_000, 100_000)
    job.refresh_from_db()
    assert (job.rows_done, job.rows_total, job.progress) == (12_000, 100_000, 12)
    assert job.message == "12,000 of 100,000 rows"
    context.rows(5, 0, "nothing to count")
    job.refresh_from_db()
    assert (job.rows_done, job.rows_total, job.progress, job.message) == (5, 0, 100, "nothing to count")


def test_progress_after_a_cancel_raises_and_changes_nothing(owner: Any) -> None:
    from jobs.registry import JobCancelled

    job = Job.objects.create(kind="tests.rows", requested_by=owner, state=JobState.RUNNING)
    job_cancel(job=job, acting_user=owner)
    with pytest.raises(JobCancelled):
        JobContext(job).rows(10, 100)
    job.refresh_from_db()
    assert job.rows_done is None and job.state == JobState.RUNNING and job.cancelled_by == owner
    assert job.message.startswith("Cancel asked by")


def test_a_cancelled_queued_job_never_runs_when_a_worker_gets_it(
    clean_broker: redis.Redis, owner: Any, media_root: Path
) -> None:
    import tests.worker_tasks  # noqa: F401

    token = uuid.uuid4().hex
    job = job_launch(kind="tests.slow", acting_user=owner, params={"token": token, "steps": 2, "step_seconds": 0.1})
    assert clean_broker.llen("reports") == 1  # sent, nobody has taken it yet
    job = job_cancel(job=job, acting_user=owner)
    assert job.state == JobState.CANCELLED and job.finished_at is not None
    assert job.message == f"Cancelled by {owner} before it ran"

    worker = WorkerProcess("late-worker", env=worker_env(MEDIA_ROOT=str(media_root))).start()
    try:
        wait_for(lambda: "duplicate delivery ignored" in worker.output(), 20, "the worker to take and skip the job")
        assert clean_broker.llen("reports") == 0
    finally:
        worker.stop()
    job.refresh_from_db()
    assert job.state == JobState.CANCELLED and job.attempts == 0 and job.started_at is None
    assert steps(clean_broker, token) == []


@pytest.mark.worker
def test_a_running_job_is_stopped_by_cancel_and_keeps_no_file(
    media_worker: WorkerProcess, owner: Any, media_root: Path, redis_client: redis.Redis
) -> None:
    import tests.worker_tasks  # noqa: F401

    token = uuid.uuid4().hex
    job = job_launch(kind="tests.rows", acting_user=owner, params={"token": token, "total": 2000, "chunk": 10})
    wait_for(
        lambda: (
            Job.objects.filter(pk=job.pk, state=JobState.RUNNING, rows_done__gte=20).exclude(result_file="").first()
        ),
        20,
        "the job to count rows",
    )
    job.refresh_from_db()
    partial = media_root / job.result_file.name
    assert partial.exists() and job.result_size == partial.stat().st_size

    job_cancel(job=job, acting_user=owner)
    job = wait_for(
        lambda: Job.objects.filter(pk=job.pk, state=JobState.CANCELLED).first(), 10, "the worker to stop the job"
    )
    assert job.message == "Cancelled while running; no result was kept"
    assert job.result_file.name == "" and job.result_size is None and job.expires_at is None
    assert not partial.exists()
    assert job.rows_done is not None and job.rows_done < 2000
    assert steps(redis_client, token) == ["start"]  # never reached its end


def test_a_finished_job_cannot_be_cancelled(owner: Any) -> None:
    for state in (JobState.SUCCEEDED, JobState.FAILED, JobState.CANCELLED):
        job = Job.objects.create(kind="tests.rows", requested_by=owner, state=state, finished_at=timezone.now())
        with pytest.raises(JobError, match="only queued or running jobs can be cancelled"):
            job_cancel(job=job, acting_user=owner)
        job.refresh_from_db()
        assert job.state == state and job.cancel_requested_at is None


@pytest.mark.worker
def test_a_cancelled_job_can_be_run_again(media_worker: WorkerProcess, owner: Any, redis_client: redis.Redis) -> None:
    import tests.worker_tasks  # noqa: F401

    token = uuid.uuid4().hex
    job = job_launch(kind="tests.rows", acting_user=owner, params={"token": token, "total": 60, "chunk": 10})
    job_cancel(job=job, acting_user=owner)
    wait_for(lambda: Job.objects.filter(pk=job.pk, state=JobState.CANCELLED).exists(), 10, "the cancel")

    job = job_retry(job=job, acting_user=owner)
    assert job.state == JobState.QUEUED and job.cancel_requested_at is None and job.cancelled_by is None
    assert job.rows_done is None and job.notified_at is None and job.finished_at is None
    job = job_finished(job)
    assert job.state == JobState.SUCCEEDED, job.error
    assert (job.rows_done, job.rows_total, job.progress, job.attempts) == (60, 60, 100, 1)
    assert job.result_file.name.endswith(".csv") and job.expires_at is not None
    assert steps(redis_client, token)[-1] == "done"


def test_only_failed_or_cancelled_jobs_can_be_run_again(owner: Any) -> None:
    for state in (JobState.QUEUED, JobState.RUNNING, JobState.RETRYING, JobState.SUCCEEDED):
        job = Job.objects.create(kind="tests.rows", requested_by=owner, state=state)
        with pytest.raises(JobError, match="Only failed or cancelled jobs can be run again"):
            job_retry(job=job, acting_user=owner)

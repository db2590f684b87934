"""The jobs mechanism end to end: an admin action launches a job, a real worker runs it, the
owner follows its progress, downloads its result, and retries it when it failed."""

from __future__ import annotations

import io
import uuid

import pytest
import redis
from django.test import Client
from django.urls import reverse
from openpyxl import load_workbook

from jobs.models import Job, JobState
from jobs.registry import JobError
from jobs.services import job_launch, job_retry
from operations.jobs import EXPORT_BUSINESSES
from tenancy.models import Business
from tests.celery_support import WorkerProcess, wait_for
from tests.factories.jobs import job_finished
from tests.factories.tenancy import MembershipFactory, UserFactory, login, staff_with_perms
from tests.worker_tasks import runs_key

pytestmark = [pytest.mark.worker, pytest.mark.django_db(transaction=True)]


def test_excel_export_launched_from_the_admin_runs_on_a_worker_and_is_downloadable(
    worker: WorkerProcess, owner_client: Client, water: Business, laundry: Business, retail: Business
) -> None:
    MembershipFactory.create(user=UserFactory.create(username="wanjiru", first_name="Wanjiru"), business=water)
    response = owner_client.post(
        reverse("admin:tenancy_business_changelist"),
        {"action": "export_to_excel", "_selected_action": [water.pk, laundry.pk, retail.pk]},
        follow=True,
    )
    assert response.status_code == 200
    job = Job.objects.get()
    assert f"#{job.pk}" in response.content.decode()
    assert job.kind == EXPORT_BUSINESSES and job.business is None and job.requested_by is not None

    job = job_finished(job)
    assert job.state == JobState.SUCCEEDED, job.error
    assert job.progress == 100 and job.attempts == 1 and job.finished_at and job.started_at
    assert job.result_file.name.endswith(".xlsx")

    download = owner_client.get(reverse("admin:jobs_job_download", args=[job.pk]))
    assert download.status_code == 200
    workbook = load_workbook(io.BytesIO(b"".join(download.streaming_content)))  # type: ignore[attr-defined]
    names = [row[1] for row in workbook["Businesses"].iter_rows(min_row=2, values_only=True)]
    assert names == sorted(["Maji Safi Water", "Fresh Fold Laundry", "Duka & Gas"])
    staff_rows = list(workbook["Staff"].iter_rows(min_row=2, values_only=True))
    assert [(r[0], r[1], r[2]) for r in staff_rows] == [("Maji Safi Water", "wanjiru", "Wanjiru")]

    changelist = owner_client.get(reverse("admin:jobs_job_changelist"))
    assert changelist.status_code == 200
    assert b"job-progress" in changelist.content
    assert reverse("admin:jobs_job_download", args=[job.pk]).encode() in changelist.content


def test_a_staff_member_exports_only_his_business_and_cannot_download_another_businesses_result(
    worker: WorkerProcess, water: Business, laundry: Business, owner: object
) -> None:
    staff = staff_with_perms(water, ["tenancy.view_business", "jobs.view_job"])
    client = login(staff)
    client.post(
        reverse("admin:tenancy_business_changelist"),
        {"action": "export_to_excel", "_selected_action": [water.pk, laundry.pk]},
    )
    job = Job.objects.get()
    assert job.business == water  # laundry was not in his queryset, so it was never selected
    assert job_finished(job).state == JobState.SUCCEEDED

    other = job_launch(kind=EXPORT_BUSINESSES, acting_user=owner, business=laundry)
    job_finished(other)
    assert client.get(reverse("admin:jobs_job_download", args=[job.pk])).status_code == 200
    assert client.get(reverse("admin:jobs_job_download", args=[other.pk])).status_code == 404
    assert client.get(reverse("admin:jobs_job_change", args=[other.pk])).status_code == 302


def test_a_failed_job_keeps_its_error_and_traceback_and_can_be_retried(
    worker: WorkerProcess, owner_client: Client, owner: object
) -> None:
    import tests.worker_tasks  # noqa: F401 - registers the test job kinds in this process too

    job = job_finished(job_launch(kind="tests.fail", acting_user=owner))
    assert job.state == JobState.FAILED
    assert "failed on purpose" in job.error and "Traceback" in job.traceback
    assert job.progress == 30

    page = owner_client.get(reverse("admin:jobs_job_change", args=[job.pk]))
    assert page.status_code == 200 and b"failed on purpose" in page.content

    response = owner_client.post(
        reverse("admin:jobs_job_changelist"),
        {"action": "retry_failed", "_selected_action": [job.pk]},
        follow=True,
    )
    assert b"Queued again" in response.content
    job = job_finished(job)
    assert job.state == JobState.FAILED and job.attempts == 1  # ran again from scratch and failed again


def test_a_transient_error_is_retried_with_backoff(
    worker: WorkerProcess, owner: object, redis_client: redis.Redis
) -> None:
    import tests.worker_tasks  # noqa: F401

    token = uuid.uuid4().hex
    job = job_launch(kind="tests.flaky", acting_user=owner, params={"token": token})
    seen_retrying = wait_for(
        lambda: Job.objects.filter(pk=job.pk, state=JobState.RETRYING).exists(), 20, "the retrying state", interval=0.05
    )
    assert seen_retrying
    job = job_finished(job, timeout=40)
    assert job.state == JobState.SUCCEEDED and job.attempts == 2
    assert redis_client.llen(runs_key(token)) == 2


def test_progress_is_visible_while_a_job_runs_and_survives_a_killed_worker(
    worker: WorkerProcess, owner: object, redis_client: redis.Redis
) -> None:
    import tests.worker_tasks  # noqa: F401

    token = uuid.uuid4().hex
    job = job_launch(kind="tests.slow", acting_user=owner, params={"token": token, "steps": 10, "step_seconds": 0.3})
    wait_for(
        lambda: Job.objects.filter(pk=job.pk, state=JobState.RUNNING, progress__gte=20).exists(), 20, "progress to show"
    )
    # Kill the pool process running it: the job is delivered again and runs to the end.
    pool_pid = int(redis_client.lindex(runs_key(token), 0).decode().split(":")[1])  # type: ignore[union-attr]
    import os
    import signal

    os.kill(pool_pid, signal.SIGKILL)
    job = job_finished(job, timeout=40)
    assert job.state == JobState.SUCCEEDED and job.attempts == 2 and job.progress == 100


def test_only_failed_jobs_can_be_retried(db: None, owner: object) -> None:
    job = Job.objects.create(kind=EXPORT_BUSINESSES, state=JobState.SUCCEEDED)
    with pytest.raises(JobError, match="Only failed or cancelled jobs"):
        job_retry(job=job, acting_user=owner)


def test_unknown_kinds_are_refused(db: None, owner: object) -> None:
    with pytest.raises(JobError, match="Unknown job kind"):
        job_launch(kind="no.such.kind", acting_user=owner)


def test_nothing_is_enqueued_when_the_launching_transaction_rolls_back(
    transactional_db: None, owner: object, clean_broker: redis.Redis
) -> None:
    from django.db import transaction

    class RolledBackError(Exception):
        pass

    def launch_then_fail() -> None:
        with transaction.atomic():
            job_launch(kind=EXPORT_BUSINESSES, acting_user=owner)
            raise RolledBackError

    with pytest.raises(RolledBackError):
        launch_then_fail()
    assert not Job.objects.exists()
    assert clean_broker.llen("default") == 0 and clean_broker.llen("reports") == 0

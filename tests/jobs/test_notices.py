""" "Your job finished": a message on the launcher's next admin page, once; one query on a page with
nothing to tell; never someone else's job."""

from __future__ import annotations

from typing import Any

import pytest
from django.core.files.base import ContentFile
from django.db import connection
from django.test.utils import CaptureQueriesContext
from django.urls import reverse
from django.utils import timezone

from jobs.models import Job, JobState
from operations.jobs import EXPORT_BUSINESSES
from tenancy.models import Business
from tests.factories.tenancy import login, staff_with_perms

pytestmark = pytest.mark.django_db

INDEX = "admin:index"


@pytest.fixture(autouse=True)
def _media(settings: Any, tmp_path: Any) -> None:
    settings.MEDIA_ROOT = tmp_path / "media"


def finished(user: Any, state: str, message: str = "", business: Business | None = None, file: bool = False) -> Job:
    job = Job.objects.create(
        kind=EXPORT_BUSINESSES,
        requested_by=user,
        business=business,
        state=state,
        message=message,
        finished_at=timezone.now(),
    )
    if file:
        job.result_file.save("businesses.xlsx", ContentFile(b"xlsx"), save=True)
    return job


def notice_queries(queries: list[dict[str, str]]) -> list[str]:
    """The queries of the notices (the dashboard reads jobs too, for its own panel)."""
    return [q["sql"] for q in queries if '"celeryconf_job"."notified_at"' in q["sql"]]


def test_the_launcher_is_told_once_with_a_download_link(water: Business) -> None:
    staff = staff_with_perms(water, ["tenancy.view_business"], username="wanjiru")
    job = finished(staff, JobState.SUCCEEDED, "Done: 3 businesses", business=water, file=True)
    client = login(staff)
    page = client.get(reverse(INDEX)).content.decode()
    download = reverse("admin:jobs_job_download", args=[job.pk])
    assert f'Excel: businesses and staff #{job.pk}</a> is ready - <a href="{download}"' in page
    assert client.get(download).status_code == 200  # the link works for him
    job.refresh_from_db()
    assert job.notified_at is not None
    assert f"#{job.pk}</a> is ready" not in client.get(reverse(INDEX)).content.decode()


def test_failed_and_cancelled_jobs_are_told_with_the_reason(water: Business, owner: Any) -> None:
    failed = finished(owner, JobState.FAILED, "Failed: the disk is full <b>")
    cancelled = finished(owner, JobState.CANCELLED, "Cancelled while running; no result was kept")
    page = login(owner).get(reverse("admin:jobs_job_changelist")).content.decode()
    assert f"#{failed.pk}</a> failed: the disk is full &lt;b&gt;" in page  # escaped
    assert f"#{cancelled.pk}</a> was cancelled" in page


def test_nobody_else_is_told_and_unfinished_jobs_wait(water: Business, owner: Any) -> None:
    staff = staff_with_perms(water, ["jobs.view_job", "tenancy.view_business"], username="wanjiru")
    theirs = finished(owner, JobState.SUCCEEDED, "Done", business=water)
    running = Job.objects.create(kind=EXPORT_BUSINESSES, requested_by=staff, business=water, state=JobState.RUNNING)
    page = login(staff).get(reverse(INDEX)).content.decode()
    assert f"#{theirs.pk}</a>" not in page and f"#{running.pk}</a>" not in page
    theirs.refresh_from_db()
    running.refresh_from_db()
    assert theirs.notified_at is None and running.notified_at is None


def test_a_page_with_nothing_to_tell_costs_one_query(owner: Any) -> None:
    client = login(owner)
    client.get(reverse(INDEX))  # settle the session
    with CaptureQueriesContext(connection) as queries:
        assert client.get(reverse(INDEX)).status_code == 200
    sql = notice_queries(queries.captured_queries)
    assert len(sql) == 1 and sql[0].startswith("SELECT") and '"notified_at" IS NULL' in sql[0]

    finished(owner, JobState.SUCCEEDED, "Done")
    with CaptureQueriesContext(connection) as queries:
        client.get(reverse(INDEX))
    assert [q.split()[0] for q in notice_queries(queries.captured_queries)] == ["SELECT", "UPDATE"]


def test_the_query_can_use_the_partial_index(owner: Any) -> None:
    for _ in range(3):
        finished(owner, JobState.SUCCEEDED, "Done")
    Job.objects.update(notified_at=timezone.now())
    from jobs.notices import jobs_to_notify

    query = Job.objects.filter(requested_by=owner.pk, notified_at__isnull=True, state__in=["succeeded"])
    assert jobs_to_notify(user=owner) == []
    with connection.cursor() as cursor:
        cursor.execute("SET LOCAL enable_seqscan = off")
        sql, params = query.query.sql_with_params()
        cursor.execute(f"EXPLAIN {sql}", params)
        plan = "\n".join(row[0] for row in cursor.fetchall())
    assert "job_to_notify" in plan, plan


def test_redirects_and_downloads_do_not_take_the_notice(owner: Any) -> None:
    job = finished(owner, JobState.SUCCEEDED, "Done", file=True)
    client = login(owner)
    assert client.get(reverse("admin:jobs_job_download", args=[job.pk])).status_code == 200
    assert client.get("/").status_code == 302
    job.refresh_from_db()
    assert job.notified_at is None
    assert f"#{job.pk}</a> is ready" in client.get(reverse(INDEX)).content.decode()

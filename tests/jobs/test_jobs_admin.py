"""The Jobs admin: who sees which job (his businesses' and his own), cancel from the list and from
the job's page with its permission rule, and what the page shows (rows, size, expiry)."""

from __future__ import annotations

import datetime as dt
from typing import Any

import pytest
from django.core.files.base import ContentFile
from django.test import Client
from django.urls import reverse
from django.utils import timezone

from jobs.models import Job, JobState
from operations.jobs import EXPORT_BUSINESSES
from tenancy.models import Business
from tenancy.scoping import sees_all_businesses, visible_business_ids
from tests.factories.tenancy import login, staff_with_perms

pytestmark = pytest.mark.django_db

LIST = "admin:jobs_job_changelist"


@pytest.fixture(autouse=True)
def _media(settings: Any, tmp_path: Any) -> None:
    settings.MEDIA_ROOT = tmp_path / "media"


def job(**fields: Any) -> Job:
    """A Job row as job_launch makes it (a staff member's job over no business records what he sees)."""
    fields.setdefault("kind", EXPORT_BUSINESSES)
    fields.setdefault("state", JobState.QUEUED)
    user = fields.get("requested_by")
    if fields.get("business") is None and user is not None and not sees_all_businesses(user):
        fields.setdefault("scope_business_ids", sorted(visible_business_ids(user)))
    return Job.objects.create(**fields)


def with_file(j: Job, content: bytes = b"x" * 1_234_567, days: int = 7) -> Job:
    j.result_file.save("sales.xlsx", ContentFile(content), save=False)
    j.result_size = len(content)
    j.finished_at = timezone.now()
    j.expires_at = j.finished_at + dt.timedelta(days=days)
    j.state = JobState.SUCCEEDED
    j.save()
    return j


def cancel_from_list(client: Client, *jobs: Job) -> Any:
    return client.post(
        reverse(LIST), {"action": "cancel_selected", "_selected_action": [j.pk for j in jobs]}, follow=True
    )


def test_a_staff_member_sees_his_businesses_jobs_and_his_own_but_not_others(
    water: Business, laundry: Business, owner: Any
) -> None:
    staff = staff_with_perms(water, ["jobs.view_job", "tenancy.view_business"], username="wanjiru")
    other = staff_with_perms(laundry, ["jobs.view_job", "tenancy.view_business"], username="otieno")
    his_business = job(business=water, requested_by=owner)
    his_own_global = with_file(job(business=None, requested_by=staff))  # over every business
    others_global = with_file(job(business=None, requested_by=other))
    other_business = with_file(job(business=laundry, requested_by=other))

    client = login(staff)
    page = client.get(reverse(LIST)).content.decode()
    shown = {j.pk for j in (his_business, his_own_global, others_global, other_business) if f"/{j.pk}/change/" in page}
    assert shown == {his_business.pk, his_own_global.pk}
    assert client.get(reverse("admin:jobs_job_download", args=[his_own_global.pk])).status_code == 200
    for hidden in (others_global, other_business):
        assert client.get(reverse("admin:jobs_job_download", args=[hidden.pk])).status_code == 404
        assert client.get(reverse("admin:jobs_job_change", args=[hidden.pk])).status_code == 302  # "does not exist"

    # The other staff member sees his own global job, not the first one's.
    other_client = login(other)
    assert other_client.get(reverse("admin:jobs_job_download", args=[others_global.pk])).status_code == 200
    assert other_client.get(reverse("admin:jobs_job_download", args=[his_own_global.pk])).status_code == 404


def test_the_launcher_opens_and_downloads_his_job_without_the_view_job_right(water: Business) -> None:
    staff = staff_with_perms(water, ["tenancy.view_business"], username="launcher")
    mine = with_file(job(business=water, requested_by=staff))
    someone_elses = with_file(job(business=water))
    client = login(staff)
    assert client.get(reverse("admin:jobs_job_change", args=[mine.pk])).status_code == 200
    assert client.get(reverse("admin:jobs_job_download", args=[mine.pk])).status_code == 200
    assert client.get(reverse("admin:jobs_job_download", args=[someone_elses.pk])).status_code == 404
    assert client.get(reverse(LIST)).status_code == 403  # the list itself needs "view job"


def test_the_launcher_cancels_his_own_job_from_the_list_but_not_a_colleagues(water: Business) -> None:
    staff = staff_with_perms(water, ["jobs.view_job", "tenancy.view_business"], username="wanjiru")
    colleague = staff_with_perms(water, ["jobs.view_job", "tenancy.view_business"], username="akinyi")
    mine = job(business=water, requested_by=staff)
    theirs = job(business=water, requested_by=colleague)
    client = login(staff)
    assert "cancel_selected" in client.get(reverse(LIST)).content.decode()
    response = cancel_from_list(client, mine, theirs).content.decode()
    assert f"Cancelled: #{mine.pk}" in response
    assert f"Job #{theirs.pk} was launched by someone else" in response
    mine.refresh_from_db()
    theirs.refresh_from_db()
    assert mine.state == JobState.CANCELLED and mine.cancelled_by == staff
    assert theirs.state == JobState.QUEUED and theirs.cancel_requested_at is None


def test_cancel_is_not_offered_to_staff_who_launched_nothing_and_lack_change_job(water: Business) -> None:
    staff = staff_with_perms(water, ["jobs.view_job", "tenancy.view_business"], username="viewer")
    queued = job(business=water)
    client = login(staff)
    assert "cancel_selected" not in client.get(reverse(LIST)).content.decode()
    cancel_from_list(client, queued)
    queued.refresh_from_db()
    assert queued.state == JobState.QUEUED


def test_change_job_cancels_anyones_job_of_his_business_never_another_business(
    water: Business, laundry: Business, owner: Any
) -> None:
    manager = staff_with_perms(water, ["jobs.view_job", "tenancy.view_business", "jobs.change_job"], username="manager")
    ours = job(business=water, requested_by=owner, state=JobState.RUNNING)
    theirs = job(business=laundry, requested_by=owner)
    response = cancel_from_list(login(manager), ours, theirs).content.decode()
    assert f"Cancelled: #{ours.pk} (a running job stops" in response
    ours.refresh_from_db()
    theirs.refresh_from_db()
    assert ours.state == JobState.RUNNING and ours.cancel_requested_at is not None  # the worker stops it
    assert theirs.state == JobState.QUEUED and theirs.cancel_requested_at is None  # not in his queryset
    assert login(manager).post(reverse("admin:jobs_job_cancel_job", args=[theirs.pk])).status_code == 403


def test_the_cancel_button_on_the_job_page(water: Business) -> None:
    staff = staff_with_perms(water, ["jobs.view_job", "tenancy.view_business"], username="wanjiru")
    colleague = staff_with_perms(water, ["jobs.view_job", "tenancy.view_business"], username="akinyi")
    mine = job(business=water, requested_by=staff)
    theirs = job(business=water, requested_by=colleague)
    client = login(staff)
    cancel_url = reverse("admin:jobs_job_cancel_job", args=[mine.pk])
    assert cancel_url in client.get(reverse("admin:jobs_job_change", args=[mine.pk])).content.decode()
    theirs_url = reverse("admin:jobs_job_cancel_job", args=[theirs.pk])
    assert theirs_url not in client.get(reverse("admin:jobs_job_change", args=[theirs.pk])).content.decode()

    confirm = client.get(cancel_url)
    assert confirm.status_code == 200 and f"Cancel job #{mine.pk}" in confirm.content.decode()
    mine.refresh_from_db()
    assert mine.state == JobState.QUEUED  # a GET only asks
    response = client.post(cancel_url, follow=True)
    assert f"Job #{mine.pk} cancelled." in response.content.decode()
    mine.refresh_from_db()
    assert mine.state == JobState.CANCELLED
    # Finished: no button any more, and a second POST is refused with the reason.
    assert cancel_url not in client.get(reverse("admin:jobs_job_change", args=[mine.pk])).content.decode()
    assert "only queued or running jobs can be cancelled" in client.post(cancel_url, follow=True).content.decode()

    assert client.get(theirs_url).status_code == 403
    assert client.post(theirs_url).status_code == 403
    theirs.refresh_from_db()
    assert theirs.state == JobState.QUEUED


def test_the_page_shows_rows_size_and_expiry(owner_client: Client, owner: Any) -> None:
    running = job(requested_by=owner, state=JobState.RUNNING, progress=12, rows_done=12_000, rows_total=100_000)
    done = with_file(job(requested_by=owner), days=7)
    page = owner_client.get(reverse(LIST)).content.decode()
    assert "12,000 of 100,000 rows" in page
    assert 'data-job-active="1"' in page  # the page reloads itself while a job runs (backoffice/jobs.js)
    assert "1.2\xa0MB" in page
    expiry = timezone.localtime(done.expires_at).strftime("%-d %b %Y")
    assert f"kept until {expiry}" in page
    detail = owner_client.get(reverse("admin:jobs_job_change", args=[running.pk])).content.decode()
    assert "12,000 of 100,000 rows" in detail
    detail = owner_client.get(reverse("admin:jobs_job_change", args=[done.pk])).content.decode()
    assert "1.2\xa0MB" in detail and f"kept until {expiry}" in detail


def test_no_reload_marker_when_nothing_is_active(owner_client: Client, owner: Any) -> None:
    with_file(job(requested_by=owner))
    page = owner_client.get(reverse(LIST)).content.decode()
    assert 'data-job-active="0"' in page and 'data-job-active="1"' not in page

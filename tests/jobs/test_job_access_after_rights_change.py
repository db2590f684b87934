"""A job's result belongs to the business it was made from: a staff member taken off that business
after the job ran no longer opens its page or downloads its file, even though he launched it."""

from __future__ import annotations

import datetime as dt
from typing import Any

import pytest
from django.core.files.base import ContentFile
from django.urls import reverse
from django.utils import timezone

from jobs.models import Job, JobState
from operations.jobs import EXPORT_BUSINESSES
from operations.reports import CUSTOMER_STATEMENTS
from tenancy.models import Business, Membership
from tests.factories.tenancy import MembershipFactory, login, staff_with_perms

pytestmark = pytest.mark.django_db


@pytest.fixture(autouse=True)
def _media(settings: Any, tmp_path: Any) -> None:
    settings.MEDIA_ROOT = tmp_path / "media"


def finished_with_file(**fields: Any) -> Job:
    fields.setdefault("kind", EXPORT_BUSINESSES)
    job = Job.objects.create(state=JobState.SUCCEEDED, finished_at=timezone.now(), **fields)
    job.result_file.save("customers.xlsx", ContentFile(b"names and phones"), save=False)
    job.expires_at = timezone.now() + dt.timedelta(days=7)
    job.save()
    return job


def test_a_launcher_taken_off_the_business_no_longer_opens_or_downloads_its_job(water: Business) -> None:
    staff = staff_with_perms(water, ["jobs.view_job", "operations.view_customer"], username="leaver")
    job = finished_with_file(business=water, requested_by=staff)
    client = login(staff)
    assert client.get(reverse("admin:jobs_job_download", args=[job.pk])).status_code == 200

    Membership.objects.filter(user=staff, business=water).delete()

    assert client.get(reverse("admin:jobs_job_download", args=[job.pk])).status_code == 404
    assert client.get(reverse("admin:jobs_job_change", args=[job.pk])).status_code == 302  # "does not exist"
    assert f"/{job.pk}/change/" not in client.get(reverse("admin:jobs_job_changelist")).content.decode()


def test_a_launcher_without_view_job_taken_off_the_business_no_longer_downloads(
    water: Business, laundry: Business
) -> None:
    staff = staff_with_perms(water, ["operations.view_customer"], username="mover")
    job = finished_with_file(business=water, requested_by=staff)
    MembershipFactory.create(user=staff, business=laundry)  # moved to the laundry
    Membership.objects.filter(user=staff, business=water).delete()
    client = login(staff)
    assert client.get(reverse("admin:jobs_job_download", args=[job.pk])).status_code == 404
    assert client.get(reverse("admin:jobs_job_change", args=[job.pk])).status_code == 403  # no "view job" left


def test_his_own_job_over_every_business_stays_his(water: Business) -> None:
    staff = staff_with_perms(water, ["jobs.view_job"], username="global")
    job = finished_with_file(business=None, requested_by=staff)
    assert login(staff).get(reverse("admin:jobs_job_download", args=[job.pk])).status_code == 200


@pytest.mark.xfail(
    strict=True,
    reason="A job with no business (an unfiltered export by staff of two businesses) records no "
    "scope: after losing one business he still downloads its rows. Needs the scope stored at launch.",
)
def test_a_job_over_two_businesses_is_refused_once_one_is_taken_away(water: Business, laundry: Business) -> None:
    staff = staff_with_perms(water, ["jobs.view_job", "operations.view_customer"], username="two")
    MembershipFactory.create(user=staff, business=laundry)
    job = finished_with_file(business=None, requested_by=staff)
    Membership.objects.filter(user=staff, business=laundry).delete()
    assert login(staff).get(reverse("admin:jobs_job_download", args=[job.pk])).status_code == 404


@pytest.mark.xfail(
    strict=True,
    reason="The download checks who may see the job, not the right the job kind needed to launch "
    "(operations.view_customer for statements): job kinds declare no permission.",
)
def test_a_launcher_who_lost_the_right_to_print_statements_no_longer_downloads_them(water: Business) -> None:
    staff = staff_with_perms(water, ["jobs.view_job", "operations.view_customer"], username="printer")
    job = finished_with_file(kind=CUSTOMER_STATEMENTS, business=water, requested_by=staff)
    staff.user_permissions.remove(staff.user_permissions.get(codename="view_customer"))
    client = login(staff)
    assert client.get(reverse("admin:jobs_job_download", args=[job.pk])).status_code == 404


def test_no_notice_for_a_job_of_a_business_he_was_taken_off(water: Business) -> None:
    staff = staff_with_perms(water, ["jobs.view_job"], username="untold")
    job = finished_with_file(business=water, requested_by=staff)
    Membership.objects.filter(user=staff, business=water).delete()
    page = login(staff).get(reverse("admin:index")).content.decode()
    assert reverse("admin:jobs_job_download", args=[job.pk]) not in page
    job.refresh_from_db()
    assert job.notified_at is not None  # not kept waiting to be told forever

"""A job's result belongs to the business it was made from: a staff member taken off that business
after the job ran no longer opens its page or downloads its file, even though he launched it."""

from __future__ import annotations

import datetime as dt
from typing import Any

import pytest
from django.contrib.auth.models import User
from django.core.files.base import ContentFile
from django.urls import reverse
from django.utils import timezone

from jobs.models import Job, JobState
from jobs.services import job_launch
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
    staff = staff_with_perms(water, ["jobs.view_job", "tenancy.view_business"], username="leaver")
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
    staff = staff_with_perms(water, ["tenancy.view_business"], username="mover")
    job = finished_with_file(business=water, requested_by=staff)
    MembershipFactory.create(user=staff, business=laundry)  # moved to the laundry
    Membership.objects.filter(user=staff, business=water).delete()
    client = login(staff)
    assert client.get(reverse("admin:jobs_job_download", args=[job.pk])).status_code == 404
    assert client.get(reverse("admin:jobs_job_change", args=[job.pk])).status_code == 403  # no "view job" left


def test_his_own_job_over_his_businesses_stays_his(water: Business, laundry: Business) -> None:
    staff = staff_with_perms(water, ["jobs.view_job", "tenancy.view_business"], username="global")
    MembershipFactory.create(user=staff, business=laundry)
    launched = job_launch(kind=EXPORT_BUSINESSES, acting_user=staff, business=None)
    assert sorted(launched.scope_business_ids) == sorted([water.pk, laundry.pk])  # what he saw at launch
    job = finished_with_file(business=None, requested_by=staff, scope_business_ids=launched.scope_business_ids)
    assert login(staff).get(reverse("admin:jobs_job_download", args=[job.pk])).status_code == 200
    # A job over no single business with no recorded scope is the owner's (every business).
    unscoped = finished_with_file(business=None, requested_by=staff)
    assert login(staff).get(reverse("admin:jobs_job_download", args=[unscoped.pk])).status_code == 404
    owner_job = job_launch(kind=EXPORT_BUSINESSES, acting_user=User.objects.create_superuser("boss"), business=None)
    assert owner_job.scope_business_ids == []


def test_a_job_over_two_businesses_is_refused_once_one_is_taken_away(water: Business, laundry: Business) -> None:
    staff = staff_with_perms(water, ["jobs.view_job", "tenancy.view_business"], username="two")
    MembershipFactory.create(user=staff, business=laundry)
    job = finished_with_file(business=None, requested_by=staff, scope_business_ids=[water.pk, laundry.pk])
    client = login(staff)
    assert client.get(reverse("admin:jobs_job_download", args=[job.pk])).status_code == 200
    Membership.objects.filter(user=staff, business=laundry).delete()
    assert client.get(reverse("admin:jobs_job_download", args=[job.pk])).status_code == 404


def test_a_launcher_who_lost_the_right_to_print_statements_no_longer_downloads_them(water: Business) -> None:
    staff = staff_with_perms(water, ["jobs.view_job", "operations.view_customer"], username="printer")
    job = finished_with_file(kind=CUSTOMER_STATEMENTS, business=water, requested_by=staff)
    staff.user_permissions.remove(staff.user_permissions.get(codename="view_customer"))
    client = login(staff)
    assert client.get(reverse("admin:jobs_job_download", args=[job.pk])).status_code == 404
    # A colleague of the same business with "view job" but not the customers' right cannot read it either.
    colleague = staff_with_perms(water, ["jobs.view_job"], username="colleague")
    assert login(colleague).get(reverse("admin:jobs_job_download", args=[job.pk])).status_code == 404


def test_an_export_needs_the_exported_models_view_right(water: Business) -> None:
    from jobs.exports import CHANGELIST_XLSX

    staff = staff_with_perms(water, ["jobs.view_job", "operations.view_sale"], username="exporter")
    job = finished_with_file(
        kind=CHANGELIST_XLSX, business=water, requested_by=staff, params={"model": "operations.sale"}
    )
    client = login(staff)
    assert client.get(reverse("admin:jobs_job_download", args=[job.pk])).status_code == 200
    staff.user_permissions.remove(staff.user_permissions.get(codename="view_sale"))
    assert login(staff).get(reverse("admin:jobs_job_download", args=[job.pk])).status_code == 404


def test_no_notice_for_a_job_of_a_business_he_was_taken_off(water: Business) -> None:
    staff = staff_with_perms(water, ["jobs.view_job", "tenancy.view_business"], username="untold")
    job = finished_with_file(business=water, requested_by=staff)
    Membership.objects.filter(user=staff, business=water).delete()
    page = login(staff).get(reverse("admin:index")).content.decode()
    assert reverse("admin:jobs_job_download", args=[job.pk]) not in page
    job.refresh_from_db()
    assert job.notified_at is not None  # not kept waiting to be told forever

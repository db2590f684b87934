"""Malformed input on the report pages: a day or period out of range is a form error, never a 500
nor a job that fails with a traceback; an ordering by a column the list does not have is ignored."""

from __future__ import annotations

from typing import Any

import pytest
from django.urls import reverse

from jobs.exports import CHANGELIST_XLSX
from jobs.models import Job
from tenancy.models import Business
from tests.factories.tenancy import login, staff_with_perms

pytestmark = pytest.mark.django_db


@pytest.mark.parametrize("day", ["9999-12-31", "0001-01-01"])
def test_the_daily_summary_refuses_a_day_out_of_range(owner_client: Any, water: Business, day: str) -> None:
    url = reverse("daily_summary")
    page = owner_client.get(f"{url}?business={water.pk}&day={day}")
    assert page.status_code == 200 and b"Choose a date from 1900 to 2999" in page.content
    assert owner_client.post(url, {"business": water.pk, "day": day}).status_code == 200
    assert not Job.objects.exists()


@pytest.mark.parametrize(("date_from", "date_to"), [("0001-01-01", "9999-12-31"), ("2026-01-01", "9999-12-31")])
def test_customer_statements_refuse_a_period_out_of_range(
    owner_client: Any, water: Business, date_from: str, date_to: str
) -> None:
    url = reverse("admin:operations_customer_statements")
    page = owner_client.post(url, {"business": water.pk, "date_from": date_from, "date_to": date_to})
    assert page.status_code == 200 and b"Choose a date from 1900 to 2999" in page.content
    assert not Job.objects.exists()


def test_an_ordering_by_a_column_the_list_does_not_have_is_ignored(water: Business) -> None:
    viewer = login(staff_with_perms(water, ["operations.view_customer"], username="orderer"))
    export_url = reverse("admin:operations_customer_export_to_excel")
    confirm = viewer.get(export_url + "?o=99")
    assert confirm.status_code == 200 and b"the list&#x27;s default" in confirm.content
    assert viewer.get(export_url + "?o=2.-99.x").status_code == 200
    viewer.post(export_url, {"_changelist_query": "o=99", "as_of": ""})
    assert Job.objects.get().kind == CHANGELIST_XLSX

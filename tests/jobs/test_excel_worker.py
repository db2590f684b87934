"""An "Export to Excel" launched from a changelist is delivered on the reports queue to a real worker,
and its file is downloadable from the Jobs page by the person who launched it."""

from __future__ import annotations

import io

import pytest
from django.test import Client
from django.urls import reverse
from openpyxl import load_workbook

from jobs.exports import CHANGELIST_XLSX
from jobs.models import Job, JobState
from operations.models import Customer
from tenancy.models import Business
from tests.celery_support import WorkerProcess
from tests.factories.jobs import job_finished
from tests.factories.operations import CustomerFactory

pytestmark = [pytest.mark.worker, pytest.mark.django_db(transaction=True)]


def test_an_export_launched_from_the_list_runs_on_a_reports_worker_and_is_downloadable(
    owner_client: Client, water: Business, laundry: Business, clean_broker: object
) -> None:
    CustomerFactory.create(business=water, name="Baraka")
    CustomerFactory.create(business=water, name="Achieng")
    CustomerFactory.create(business=laundry, name="Otieno")
    worker = WorkerProcess("reports-only", queues="reports", include_test_tasks=False).start()
    try:
        query = f"business__id__exact={water.pk}&o=1"
        response = owner_client.post(
            reverse("admin:operations_customer_export_to_excel"), {"_changelist_query": query, "as_of": ""}
        )
        assert response.status_code == 302
        job = Job.objects.get(kind=CHANGELIST_XLSX)
        assert job.business == water
        job = job_finished(job)
    finally:
        worker.stop()
    assert job.state == JobState.SUCCEEDED, job.error
    assert job.rows_done == job.rows_total == 2
    download = owner_client.get(reverse("admin:jobs_job_download", args=[job.pk]))
    assert download.status_code == 200
    wb = load_workbook(io.BytesIO(b"".join(download.streaming_content)))  # type: ignore[attr-defined]
    names = [row[0] for row in wb["Customers"].iter_rows(min_row=2, values_only=True) if row[0] != "Total"]
    assert (
        names
        == ["Achieng", "Baraka"]
        == list(Customer.objects.filter(business=water).order_by("name").values_list("name", flat=True))
    )

"""Statement reconciliation as the admin runs it: uploaded and launched from the admin, queued on
the reports queue after the request commits, and run by a real worker (no job_run in-process)."""

from __future__ import annotations

import datetime as dt
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest
import redis
from django.core.files.base import ContentFile
from django.test import Client
from django.urls import reverse

from accounts.models import JournalEntry
from integrations.mpesa.models import LineStatus, ReconciliationLine, ReconciliationRun, ReconciliationState, Till
from integrations.mpesa.payloads import NAIROBI
from integrations.mpesa.payments import payment_record
from integrations.mpesa.reconciliation import RECONCILE_JOB
from jobs.models import Job, JobState
from tests.celery_support import WorkerProcess, worker_env
from tests.factories.jobs import job_finished
from tests.factories.mpesa import FIXTURES

pytestmark = [pytest.mark.worker, pytest.mark.slow, pytest.mark.django_db(transaction=True)]

STATEMENTS = FIXTURES.parent / "mpesa_statements"
HEADER = (STATEMENTS / "mpesa_statement_header_verbatim.csv").read_text().strip()
PREAMBLE = "Organisation Name:,Maji Safi Water\nTill Number:,600966\nTime Period:,06-11-2025 - 06-11-2025\n\n"
PARTY = "2547****126 - NICHOLAS SONGOK"


def line(
    receipt: str,
    time: str,
    *,
    details: str = "Pay Bill Online",
    status: str = "Completed",
    paid_in: str = "",
    withdrawn: str = "",
    linked: str = "",
    account: str = "",
) -> str:
    """One row of the org-portal export, in the columns of the verbatim header."""
    when = f"06-11-2025 {time}"
    party = PARTY if paid_in else ""
    return (
        f"{receipt},{when},{when},{details},{status},{paid_in},{withdrawn},,true,{details},{party},{linked},{account}"
    )


STATEMENT = "\n".join(
    [
        HEADER,
        line("TKR0000001", "09:00:00", paid_in="500.00", account="INV-1"),
        line("TKR0000002", "09:00:00", details="Business Pay Bill Charge", withdrawn="-5.00", linked="TKR0000001"),
        line("TKR0000003", "10:00:00", paid_in="300.00", account="INV-2"),
        line("TKR0000004", "11:00:00", paid_in="150.00", account="INV-3"),
        line("TKR0000005", "12:00:00", status="Failed", paid_in="700.00", account="INV-4"),
    ]
)


@pytest.fixture
def media(settings: Any, tmp_path: Path) -> Path:
    """One media folder for this process (the upload) and the worker (which reads the statement)."""
    settings.MEDIA_ROOT = tmp_path / "media"
    return Path(settings.MEDIA_ROOT)


def record(till: Till, receipt: str, amount: str, time: str, day: int = 6) -> None:
    hour, minute = (int(part) for part in time.split(":"))
    payment_record(
        till=till,
        receipt=receipt,
        amount=Decimal(amount),
        paid_at=dt.datetime(2025, 11, day, hour, minute, tzinfo=NAIROBI),
        msisdn="",
        payer_name="",
        account_reference="",
        payment_request=None,
    )


def test_a_reconciliation_launched_from_the_admin_runs_on_a_reports_worker(
    owner_client: Client, owner: Any, till: Till, media: Path, clean_broker: redis.Redis
) -> None:
    record(till, "TKR0000001", "500.00", "09:00")  # matched
    record(till, "TKR0000003", "299.00", "10:00")  # the statement says 300.00
    record(till, "TKR0000006", "80.00", "10:30")  # in the statement's period, not in it
    record(till, "TKR0000007", "90.00", "10:30", day=7)  # after the period: not compared

    add = reverse("admin:integrations_reconciliationrun_add")
    upload = ContentFile((PREAMBLE + STATEMENT + "\n").encode(), name="statement.csv")
    assert owner_client.post(add, {"till": till.pk, "statement": upload}).status_code == 302
    run = ReconciliationRun.objects.get()
    changelist = reverse("admin:integrations_reconciliationrun_changelist")
    response = owner_client.post(changelist, {"action": "reconcile", "_selected_action": [run.pk]}, follow=True)
    job = Job.objects.get(kind=RECONCILE_JOB)
    assert f"queued as job #{job.pk}" in response.content.decode()
    assert job.params == {"run_id": run.pk} and job.business == till.business and job.requested_by == owner
    assert job.state == JobState.QUEUED and job.celery_task_id
    assert clean_broker.llen("reports") == 1  # sent once the admin's request committed, to the reports queue
    run.refresh_from_db()
    assert run.state == ReconciliationState.QUEUED

    worker = WorkerProcess(
        "reconcile", queues="reports", env=worker_env(MEDIA_ROOT=str(media)), include_test_tasks=False
    )
    try:
        worker.start()
        try:
            job = job_finished(job)
        except AssertionError as exc:
            raise AssertionError(f"{exc}; worker log:\n{worker.output()[-3000:]}") from exc
    finally:
        worker.stop()

    assert job.state == JobState.SUCCEEDED, f"{job.error}\n{job.traceback}"
    assert job.progress == 100 and job.attempts == 1 and job.started_at and job.finished_at
    # The summary stays on the job for the admin's job list.
    assert job.message == "Done: 1 matched, 1 not in the books, 1 not in the statement, 1 amount differences"
    assert f"jobs.run[{job.celery_task_id}] succeeded" in worker.output()

    run.refresh_from_db()
    assert run.state == ReconciliationState.DONE and run.error == ""
    assert (run.period_start, run.period_end) == (dt.date(2025, 11, 6), dt.date(2025, 11, 6))
    counts = (
        run.matched_count,
        run.missing_in_books_count,
        run.missing_in_statement_count,
        run.mismatch_count,
        run.charges_count,
    )
    assert counts == (1, 1, 1, 1, 1)
    lines = {
        item.receipt: (item.status, item.statement_amount, item.books_amount)
        for item in ReconciliationLine.objects.filter(run=run)
    }
    assert lines == {
        "TKR0000001": (LineStatus.MATCHED, Decimal("500.00"), Decimal("500.00")),
        "TKR0000002": (LineStatus.CHARGE, Decimal("5.00"), None),
        "TKR0000003": (LineStatus.AMOUNT_MISMATCH, Decimal("300.00"), Decimal("299.00")),
        "TKR0000004": (LineStatus.MISSING_IN_BOOKS, Decimal("150.00"), None),
        "TKR0000005": (LineStatus.OTHER, None, None),  # failed: not money
        "TKR0000006": (LineStatus.MISSING_IN_STATEMENT, None, Decimal("80.00")),
    }
    assert JournalEntry.objects.filter(idempotency_key="mpesa-charge:TKR0000002").count() == 1
    assert not JournalEntry.objects.filter(idempotency_key="mpesa:TKR0000004").exists()  # left to a person

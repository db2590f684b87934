"""Statement reconciliation: CSV and XLSX org-portal statements matched receipt by receipt."""

from __future__ import annotations

import datetime as dt
import io
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest
from django.core.files.base import ContentFile
from django.db.models import Sum
from django.test import Client
from django.urls import reverse

from accounts.models import JournalEntry, JournalLine
from accounts.services import books_close_period
from integrations.mpesa.models import (
    LineStatus,
    Payment,
    ReconciliationLine,
    ReconciliationRun,
    ReconciliationState,
    Till,
)
from integrations.mpesa.payloads import NAIROBI
from integrations.mpesa.payments import payment_record
from integrations.mpesa.reconciliation import (
    StatementError,
    parse_statement,
    reconciliation_post_missing,
    reconciliation_run,
)
from jobs.models import Job, JobState
from jobs.runner import job_run
from tests.factories.mpesa import FIXTURES

pytestmark = pytest.mark.django_db

# Kept apart from tests/fixtures/daraja/ (whose every file must be a Daraja API sample, test_payloads).
STATEMENTS = FIXTURES.parent / "mpesa_statements"
CSV = (STATEMENTS / "mpesa_org_portal_statement_ILLUSTRATIVE_rows.csv").read_bytes()
PREAMBLE = b"Organisation Name:,Maji Safi Water\nTill Number:,600966\nTime Period:,06-11-2025 - 06-11-2025\n\n"


@pytest.fixture(autouse=True)
def _media(settings: Any, tmp_path: Path) -> None:
    settings.MEDIA_ROOT = tmp_path / "media"


def record(till: Till, receipt: str, amount: str, when: dt.datetime) -> Payment:
    payment, _ = payment_record(
        till=till,
        receipt=receipt,
        amount=Decimal(amount),
        paid_at=when,
        msisdn="",
        payer_name="",
        account_reference="",
        payment_request=None,
    )
    return payment


def row(receipt: str, when: str, paid_in: str) -> bytes:
    party = "2547****126 - NICHOLAS SONGOK"
    return (
        f"{receipt},{when},{when},Pay Bill Online,Completed,{paid_in},,,true,Pay Bill Online,{party},,ACC9\n".encode()
    )


def new_run(till: Till, content: bytes, name: str = "statement.csv") -> ReconciliationRun:
    run = ReconciliationRun(business=till.business, till=till)
    run.statement.save(name, ContentFile(content), save=False)
    run.save()
    return run


def xlsx(rows: list[list[Any]]) -> bytes:
    from openpyxl import Workbook

    book = Workbook()
    sheet = book.active
    assert sheet is not None
    for row in rows:
        sheet.append(row)
    out = io.BytesIO()
    book.save(out)
    return out.getvalue()


def test_the_csv_statement_parses_with_description_lines_above_the_header() -> None:
    rows = parse_statement(PREAMBLE + CSV)
    assert [r.receipt for r in rows] == ["TK61ABCD01", "TK61ABCD02", "TK61ABCD03", "TK61ABCD04"]
    first, charge, failed, settle = rows
    assert first.paid_in == Decimal("500.00") and first.account_no == "INV-1001"
    assert first.completed_at == dt.datetime(2025, 11, 6, 9, 15, 22, tzinfo=NAIROBI)
    assert charge.is_charge and charge.withdrawn == Decimal("5.00") and charge.linked == "TK61ABCD01"
    assert not failed.completed and not settle.is_charge


def test_an_xlsx_statement_with_other_date_formats_parses() -> None:
    header = (STATEMENTS / "mpesa_statement_header_verbatim.csv").read_text().strip().split(",")
    content = xlsx(
        [
            ["M-PESA Statement"],
            ["Organisation:", "Maji Safi"],
            [],
            header,
            ["TKX0000001", dt.datetime(2025, 11, 7, 8, 0, 1), None, "Pay Bill", "Completed", 1200.5, None],
            ["TKX0000002", "07/11/2025 08:05:00", None, "Pay Bill", "Completed", "1,000.00", ""],
            ["TKX0000003", "2025-11-07 09:00:00", None, "Business Pay Bill Charge", "Completed", None, -12],
        ]
    )
    rows = parse_statement(content, "statement.xlsx")
    assert [(r.receipt, r.paid_in, r.withdrawn) for r in rows] == [
        ("TKX0000001", Decimal("1200.50"), Decimal("0.00")),
        ("TKX0000002", Decimal("1000.00"), Decimal("0.00")),
        ("TKX0000003", Decimal("0.00"), Decimal("12.00")),
    ]
    assert rows[1].completed_at == dt.datetime(2025, 11, 7, 8, 5, tzinfo=NAIROBI)


@pytest.mark.parametrize(
    ("content", "message"),
    [
        (b"just,some\ncsv,file\n", "Receipt No."),
        (b"Receipt No.,Details\nTK1,x\n", "Completion Time"),
        (b"Receipt No.,Completion Time,Paid In,Withdrawn\nTK61ABCD01,yesterday,1,\n", "unrecognised date"),
        (b"Receipt No.,Completion Time,Paid In,Withdrawn\nTK61ABCD01,06-11-2025 09:15:22,lots,\n", "amount"),
    ],
)
def test_an_unreadable_statement_is_refused_cleanly(content: bytes, message: str) -> None:
    with pytest.raises(StatementError, match=message):
        parse_statement(content)


def test_reconciliation_matches_receipt_by_receipt_and_posts_charges(till: Till) -> None:
    paid = dt.datetime(2025, 11, 6, 9, 15, 22, tzinfo=NAIROBI)
    matched = record(till, "TK61ABCD01", "500.00", paid)
    extra = record(till, "TK61BOOKS1", "40.00", paid + dt.timedelta(hours=2))
    statement = CSV + row("TK61ABCD05", "06-11-2025 11:00:00", "300.00")
    record(till, "TK61ABCD05", "299.00", paid + dt.timedelta(hours=1))
    statement += row("TK61ABCD06", "06-11-2025 12:00:00", "150.00")

    run = reconciliation_run(run_id=new_run(till, PREAMBLE + statement).pk)

    status = dict(ReconciliationLine.objects.filter(run=run).values_list("receipt", "status"))
    assert status == {
        "TK61ABCD01": LineStatus.MATCHED,
        "TK61ABCD02": LineStatus.CHARGE,
        "TK61ABCD03": LineStatus.OTHER,  # failed: not money
        "TK61ABCD04": LineStatus.OTHER,  # settlement to the bank
        "TK61ABCD05": LineStatus.AMOUNT_MISMATCH,
        "TK61ABCD06": LineStatus.MISSING_IN_BOOKS,
        "TK61BOOKS1": LineStatus.MISSING_IN_STATEMENT,
    }
    assert run.state == ReconciliationState.DONE
    assert (run.matched_count, run.missing_in_books_count, run.missing_in_statement_count) == (1, 1, 1)
    assert (run.mismatch_count, run.charges_count) == (1, 1)
    assert ReconciliationLine.objects.get(run=run, receipt="TK61ABCD01").payment == matched
    assert ReconciliationLine.objects.get(run=run, receipt="TK61BOOKS1").payment == extra
    charge = JournalEntry.objects.get(idempotency_key="mpesa-charge:TK61ABCD02")
    lines = {(line.account.role, line.debit, line.credit) for line in charge.lines.select_related("account")}
    assert lines == {
        ("mpesa_charges", Decimal("5.00"), Decimal("0.00")),
        ("mpesa_clearing", Decimal("0.00"), Decimal("5.00")),
    }

    # Running again recomputes the lines and posts no charge twice.
    reconciliation_run(run_id=run.pk)
    assert ReconciliationLine.objects.filter(run=run).count() == 7
    assert JournalEntry.objects.filter(idempotency_key__startswith="mpesa-charge:").count() == 1


def test_run_again_once_its_charges_day_is_closed_it_finds_the_charge_posted(till: Till) -> None:
    """The charge is not posted again on the first open day (an idempotency conflict, found by the
    fuzzing: the job failed with a traceback)."""
    run = reconciliation_run(run_id=new_run(till, PREAMBLE + CSV).pk)
    books_close_period(business=till.business, lock_date=dt.date(2025, 11, 30))
    entries = JournalEntry.objects.count()

    again = reconciliation_run(run_id=run.pk)

    assert again.state == ReconciliationState.DONE and again.charges_count == 1
    assert JournalEntry.objects.count() == entries


def test_a_charge_in_the_books_with_another_amount_refuses_the_statement_before_posting(till: Till) -> None:
    reconciliation_run(run_id=new_run(till, PREAMBLE + CSV).pk)  # charge TK61ABCD02 of 5.00
    entries = JournalEntry.objects.count()
    other = CSV.replace(b",-5.00,", b",-6.00,")
    other += b"TK61ABCD09,06-11-2025 18:00:00,,Business Pay Bill Charge,Completed,,-3.00\n"

    with pytest.raises(StatementError, match=r"charge TK61ABCD02 of 6\.00 is in the books as 5\.00"):
        reconciliation_run(run_id=new_run(till, PREAMBLE + other).pk)

    assert JournalEntry.objects.count() == entries  # TK61ABCD09 was not posted either


def test_a_receipt_missing_from_the_books_can_be_posted_once(till: Till, owner: Any) -> None:
    run = reconciliation_run(run_id=new_run(till, CSV).pk)
    line = ReconciliationLine.objects.get(run=run, receipt="TK61ABCD01")
    assert line.status == LineStatus.MISSING_IN_BOOKS

    payment = reconciliation_post_missing(line=line, acting_user=owner)

    line.refresh_from_db()
    assert line.status == LineStatus.MATCHED and line.payment == payment
    assert payment.amount == Decimal("500.00") and payment.account_reference == "INV-1001"
    assert payment.payer_name == "NICHOLAS SONGOK" and payment.msisdn_kind == "masked"
    assert JournalEntry.objects.filter(idempotency_key="mpesa:TK61ABCD01").count() == 1
    run.refresh_from_db()
    assert run.missing_in_books_count == 0 and run.matched_count == 1
    # If Daraja's callback arrives later, the receipt is already there: no second entry.
    record(till, "TK61ABCD01", "500.00", dt.datetime(2025, 11, 6, 9, 15, 22, tzinfo=NAIROBI))
    assert JournalEntry.objects.filter(idempotency_key="mpesa:TK61ABCD01").count() == 1


def test_the_admin_uploads_launches_the_job_and_posts_missing(owner_client: Client, till: Till) -> None:
    add = reverse("admin:integrations_reconciliationrun_add")
    assert owner_client.get(add).status_code == 200
    upload = ContentFile(PREAMBLE + CSV, name="statement.csv")
    assert owner_client.post(add, {"till": till.pk, "statement": upload}).status_code == 302
    run = ReconciliationRun.objects.get()
    assert run.business == till.business

    changelist = reverse("admin:integrations_reconciliationrun_changelist")
    response = owner_client.post(changelist, {"action": "reconcile", "_selected_action": [run.pk]}, follow=True)
    assert "queued as job" in response.content.decode()
    job = Job.objects.get(kind="payments.reconcile")
    assert job.params == {"run_id": run.pk} and job.business == till.business

    # What the reports worker does with the job (the job mechanism is proven with a real worker in tests/jobs).
    job_run(job_id=job.pk, retry=lambda countdown, exc: exc)  # type: ignore[arg-type,return-value]
    job.refresh_from_db()
    assert job.state == JobState.SUCCEEDED, job.error
    run.refresh_from_db()
    assert run.state == ReconciliationState.DONE and run.missing_in_books_count == 1

    lines_url = reverse("admin:integrations_reconciliationline_changelist")
    assert owner_client.get(lines_url, {"run__id__exact": run.pk}).status_code == 200
    assert owner_client.get(reverse("admin:integrations_reconciliationrun_change", args=[run.pk])).status_code == 200
    missing = ReconciliationLine.objects.get(run=run, status=LineStatus.MISSING_IN_BOOKS)
    done = owner_client.post(lines_url, {"action": "post_missing", "_selected_action": [missing.pk]}, follow=True)
    assert "Receipts posted: 1" in done.content.decode()
    assert Payment.objects.filter(receipt=missing.receipt).exists()
    clearing = JournalLine.objects.filter(account__business=till.business, account__role="mpesa_clearing").aggregate(
        d=Sum("debit"), c=Sum("credit")
    )
    assert clearing["d"] - clearing["c"] == Decimal("495.00")  # 500 received, 5 charges


def test_an_unreadable_statement_fails_the_job_with_a_message(owner: Any, till: Till) -> None:
    from integrations.mpesa.reconciliation import reconciliation_launch

    run = new_run(till, b"not a statement")
    job = reconciliation_launch(run=run, acting_user=owner)
    job_run(job_id=job.pk, retry=lambda countdown, exc: exc)  # type: ignore[arg-type,return-value]
    job.refresh_from_db()
    run.refresh_from_db()
    assert job.state == JobState.FAILED and "cannot be read" in job.message
    assert run.state == ReconciliationState.FAILED and "Receipt No." in run.error

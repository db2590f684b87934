"""Reconciliation checks: the statement's till (its shortcode), its balances against the books, and
a run that does not hold the business's books while it works."""

from __future__ import annotations

import datetime as dt
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest
from django.db import OperationalError, connection
from django.test import Client
from django.urls import reverse

from accounts.models import JournalEntry
from integrations.mpesa.models import LineStatus, ReconciliationLine, ReconciliationRun, ReconciliationState, Till
from integrations.mpesa.payloads import NAIROBI
from integrations.mpesa.reconciliation import (
    StatementOfAnotherTillError,
    parse_statement_header,
    reconciliation_launch,
    reconciliation_run,
)
from jobs.models import JobState
from jobs.runner import job_run
from tests.integrations.mpesa.test_reconciliation import CSV, new_run, record

pytestmark = pytest.mark.django_db

# The illustrative rows: 500 paid in (balance 12500 after it, so 12000 before), a 5.00 charge, a
# failed payment, then 12,000 settled to the bank: 495 at the end.
BALANCES = b'Opening Balance:,"12,000.00"\nClosing Balance:,495.00\n'


def header(shortcode: str = "600966") -> bytes:
    return (
        f"Organisation Name:,Maji Safi Water\nShort Code:,{shortcode}\nTime Period:,06-11-2025 - 06-11-2025\n".encode()
    )


@pytest.fixture(autouse=True)
def _media(settings: Any, tmp_path: Path) -> None:
    settings.MEDIA_ROOT = tmp_path / "media"


def test_the_header_names_the_till_and_the_balances() -> None:
    found = parse_statement_header(header() + BALANCES + CSV)
    assert (found.shortcode, found.organisation) == ("600966", "Maji Safi Water")
    assert (found.opening_balance, found.closing_balance) == (Decimal("12000.00"), Decimal("495.00"))
    both = parse_statement_header(b"Account Holder: 600966 - Maji Safi Water\n" + CSV)
    assert (both.shortcode, both.organisation) == ("600966", "Maji Safi Water")
    none = parse_statement_header(CSV)
    assert none.shortcode == "" and none.opening_balance is None


def test_a_statement_of_another_till_is_refused_and_posts_nothing(till: Till, owner: Any) -> None:
    run = new_run(till, header("600999") + CSV)
    job = reconciliation_launch(run=run, acting_user=owner)
    job_run(job_id=job.pk, retry=lambda countdown, exc: exc)  # type: ignore[arg-type,return-value]

    job.refresh_from_db()
    run.refresh_from_db()
    assert job.state == JobState.FAILED and "another till" in job.message
    assert run.state == ReconciliationState.FAILED
    assert "600999" in run.error and till.shortcode in run.error and run.statement_shortcode == "600999"
    assert not ReconciliationLine.objects.filter(run=run).exists()
    assert not JournalEntry.objects.exists()  # not even its charges
    with pytest.raises(StatementOfAnotherTillError):
        reconciliation_run(run_id=run.pk)


def test_a_statement_without_a_shortcode_says_so_and_is_reconciled(till: Till) -> None:
    run = reconciliation_run(run_id=new_run(till, CSV).pk)
    assert run.state == ReconciliationState.DONE and run.statement_shortcode == ""
    assert "names no shortcode" in run.notes and "balances not compared" in run.notes
    assert run.balance_difference is None


def test_money_that_left_the_till_outside_the_books_shows_as_a_balance_difference(
    till: Till, owner_client: Client
) -> None:
    record(till, "TK61ABCD01", "500.00", dt.datetime(2025, 11, 6, 9, 15, 22, tzinfo=NAIROBI))

    run = reconciliation_run(run_id=new_run(till, header() + BALANCES + CSV).pk)

    assert (run.opening_balance, run.closing_balance) == (Decimal("12000.00"), Decimal("495.00"))
    assert run.books_movement == Decimal("495.00")  # 500 received, 5 charged
    assert run.balance_difference == Decimal("-12000.00")  # the settlement to the bank
    line = ReconciliationLine.objects.get(run=run, status=LineStatus.BALANCE_DIFFERENCE)
    assert line.statement_amount == Decimal("-11505.00") and "-12000.00" in line.details
    page = owner_client.get(reverse("admin:integrations_reconciliationrun_change", args=[run.pk]))
    assert page.status_code == 200 and "-12000" in page.content.decode().replace(",", "")

    # Balanced: the same statement without the settlement row and its closing balance.
    rows = b"\n".join(r for r in CSV.splitlines() if b"Settle to Bank" not in r) + b"\n"
    balanced = b"Opening Balance:,12000.00\nClosing Balance:,12495.00\n"
    again = reconciliation_run(run_id=new_run(till, header() + balanced + rows).pk)
    assert again.balance_difference == Decimal("0.00")
    assert not ReconciliationLine.objects.filter(run=again, status=LineStatus.BALANCE_DIFFERENCE).exists()


@pytest.mark.django_db(transaction=True)
def test_the_run_does_not_hold_the_books_while_it_writes_its_lines(till: Till, monkeypatch: pytest.MonkeyPatch) -> None:
    """While the run writes its lines (its charges already posted), the business can post: another
    connection takes the books row at once."""
    run = new_run(till, header() + CSV)
    free: list[bool] = []
    original = ReconciliationLine.objects.bulk_create

    def bulk_create(objs: Any, *args: Any, **kwargs: Any) -> Any:
        other = connection.copy()
        try:
            with other.cursor() as cursor:
                cursor.execute("SET lock_timeout = '200ms'")
                cursor.execute("SELECT 1 FROM accounts_books WHERE business_id = %s FOR UPDATE", [till.business_id])
                free.append(cursor.fetchone() is not None)
        except OperationalError:
            free.append(False)
        finally:
            other.close()
        return original(objs, *args, **kwargs)

    monkeypatch.setattr(ReconciliationLine.objects, "bulk_create", bulk_create)
    reconciliation_run(run_id=run.pk)

    assert free == [True]
    assert JournalEntry.objects.filter(idempotency_key="mpesa-charge:TK61ABCD02").count() == 1
    assert ReconciliationRun.objects.get(pk=run.pk).charges_count == 1

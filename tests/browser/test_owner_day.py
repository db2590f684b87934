"""The owner's day in a real browser (Chromium through Playwright), against the live server, a real
Celery worker (exports, PDFs, the closing, the M-Pesa callback) and the fake Daraja:

log in and read the dashboard; a cash sale; an M-Pesa sale paid by STK Push (Daraja's callback
posted to the callback URL as Daraja would); today's sales to Excel, waiting for the progress bar
and the download; the P&L PDF; a manual journal entry reversed; the day closed.
Each step leaves a screenshot (tests/browser/support.py says where).
"""

from __future__ import annotations

import datetime as dt
import io
import re
from collections.abc import Iterator
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest
import requests
from django.db.models import Sum
from django.utils import timezone
from openpyxl import load_workbook
from playwright.sync_api import expect
from pypdf import PdfReader

from accounts.models import Account, JournalEntry, JournalLine
from integrations.mpesa.models import PaymentRequest, Till
from integrations.mpesa.secrets import encrypt
from jobs.models import Job, JobState
from operations.models import DayClosing, Item, Sale
from operations.selectors import cash_expected
from tests.browser.conftest import Demo, Shots, log_in
from tests.browser.support import requires_chromium
from tests.celery_support import WorkerProcess, wait_for, worker_env
from tests.factories.mpesa import stk_success
from tests.integrations.mpesa.fake_daraja import (
    SANDBOX_PASSKEY,
    SANDBOX_SHORTCODE,
    STK_PUSH,
    FakeDaraja,
    fake_daraja_fixture,  # noqa: F401 - the fake_daraja fixture
)

pytestmark = [requires_chromium, pytest.mark.worker, pytest.mark.django_db(transaction=True)]

JOB_TIMEOUT = 60  # seconds for a job on a busy CI box (the page reloads every 3 s while it runs)


def money(value: Decimal) -> str:
    return f"{value:,.2f}"


def see(page: Any, text: str) -> None:
    """The page shows `text` (waiting for it, as a person would, while a submitted form loads)."""
    expect(page.locator("body")).to_contain_text(text)


@pytest.fixture
def media_root(settings: Any, tmp_path: Path) -> Path:
    """Job files in this test's directory, for the live server and the worker alike."""
    settings.MEDIA_ROOT = tmp_path / "media"
    return Path(settings.MEDIA_ROOT)


@pytest.fixture
def worker(demo: Demo, media_root: Path, clean_broker: object) -> Iterator[WorkerProcess]:
    """A real worker on every queue (reports: exports and PDFs; default: the closing; payments: the callback)."""
    proc = WorkerProcess("browser-worker", env=worker_env(MEDIA_ROOT=str(media_root))).start()
    yield proc
    proc.stop()


@pytest.fixture
def water_till(demo: Demo, fake_daraja: FakeDaraja, live_server: Any, settings: Any) -> Till:
    """The water business's demo till, with credentials the fake Daraja accepts and callbacks to the live server."""
    from integrations.mpesa import views

    views._till_cache.clear()
    settings.MPESA_BASE_URL = fake_daraja.base_url
    till = Till.objects.get(business=demo.water)
    till.shortcode = SANDBOX_SHORTCODE
    till.consumer_key_encrypted = encrypt(fake_daraja.consumer_key)
    till.consumer_secret_encrypted = encrypt(fake_daraja.consumer_secret)
    till.passkey_encrypted = encrypt(SANDBOX_PASSKEY)
    till.callback_base_url = live_server.url
    till.save()
    return till


def run_action(page: Any, pk: int, action: str) -> None:
    """Tick one row of the changelist on screen, choose `action`, press Run."""
    page.check(f"input[name=_selected_action][value='{pk}']")
    page.select_option("select[name=action]", action)
    with page.expect_navigation():
        page.click("button[name=index]")


def add_sale(page: Any, demo: Demo, item: Item, quantity: int, method: str, phone: str = "") -> Sale:
    page.goto("/admin/operations/sale/add/")
    page.select_option("select[name=business]", str(demo.water.pk))
    page.fill("input[name=sale_date]", timezone.localdate().isoformat())
    page.select_option("select[name=payment_method]", method)
    if phone:
        page.fill("input[name=mpesa_phone]", phone)
    page.select_option("select[name=lines-0-item]", str(item.pk))
    page.fill("input[name=lines-0-quantity]", str(quantity))
    page.click("button[name=_save], input[name=_save]")
    page.wait_for_url("**/admin/operations/sale/")
    return Sale.objects.filter(business=demo.water, created_by=demo.owner).latest("pk")


def download_from_jobs_page(page: Any, job: Job, shots: Shots, step: str) -> bytes:
    """The Jobs page while the job runs (it reloads itself every 3 s), then its Download link."""
    page.goto("/admin/jobs/job/")
    row = page.locator("tr", has=page.locator(f"input[name=_selected_action][value='{job.pk}']"))
    row.locator(".job-progress").wait_for()
    row.locator("a", has_text="Download").wait_for(timeout=JOB_TIMEOUT * 1000)
    assert row.locator(".job-progress-label").inner_text().startswith("100%")
    shots(page, step)
    with page.expect_download() as download:
        row.locator("a", has_text="Download").click()
    return Path(download.value.path()).read_bytes()


def launched_job(kind_prefix: str, before: int) -> Job:
    return Job.objects.filter(pk__gt=before, kind__startswith=kind_prefix).get()


def last_job_pk() -> int:
    return Job.objects.order_by("-pk").values_list("pk", flat=True).first() or 0


def test_the_owners_day(
    page: Any, demo: Demo, worker: WorkerProcess, water_till: Till, fake_daraja: FakeDaraja, shots: Shots
) -> None:
    today = timezone.localdate()
    crate = Item.objects.get(business=demo.water, name="500 ml x 24 crate")
    litre = Item.objects.get(business=demo.water, name="1 L x 12 crate")

    # 1. Log in; the dashboard shows the seeded month and nothing sold yet today.
    log_in(page, "owner", shots=shots)
    thirty_days = page.locator("[data-figure=takings-30-days]").first.inner_text()
    assert re.fullmatch(r"KES [1-9][\d,]*\.\d\d in 30 days", thirty_days), thirty_days
    see(page, "KES 0.00")
    shots(page, "02-dashboard")

    # 2. A cash sale: drafted, then posted by the action.
    cash_sale = add_sale(page, demo, crate, 2, "cash")
    run_action(page, cash_sale.pk, "post_sales")
    see(page, "Sales posted: 1.")
    cash_sale.refresh_from_db()
    assert cash_sale.status == "posted" and cash_sale.total == 2 * crate.price == cash_sale.amount_paid
    shots(page, "03-cash-sale-posted")

    # 3. An M-Pesa sale: posted, STK Push to the customer's phone (the fake Daraja), Daraja's callback.
    mpesa_sale = add_sale(page, demo, litre, 1, "mpesa", phone="0712 345 678")
    run_action(page, mpesa_sale.pk, "post_sales")
    run_action(page, mpesa_sale.pk, "request_mpesa")
    see(page, "Payment requests sent: 1.")
    shots(page, "04-mpesa-stk-sent")
    push = next(r for r in fake_daraja.received if r.path == STK_PUSH)
    assert push.json["Amount"] == str(int(litre.price)) and push.json["AccountReference"] == mpesa_sale.number
    request = PaymentRequest.objects.get(account_reference=mpesa_sale.number)
    callback = stk_success(
        checkout_id=request.checkout_request_id, receipt="TKB1R0W5E1", amount=litre.price, phone=254712345678
    )
    answer = requests.post(
        push.json["CallBackURL"], data=callback, headers={"Content-Type": "application/json"}, timeout=10
    )
    assert answer.status_code == 200 and answer.json() == {"ResultCode": 0, "ResultDesc": "Success"}

    def paid() -> bool:
        mpesa_sale.refresh_from_db()
        return mpesa_sale.amount_paid == mpesa_sale.total

    wait_for(paid, 30, "the M-Pesa sale to be paid by the callback (payments worker)", interval=0.2)
    page.goto(f"/admin/operations/sale/{mpesa_sale.pk}/change/")
    see(page, "TKB1R0W5E1")
    amount_paid = page.locator(".field-line", has_text="Amount paid")
    assert amount_paid.inner_text().split()[-1] == money(litre.price)
    amount_paid.evaluate("e => e.scrollIntoView({block: 'center'})")
    shots(page, "05-mpesa-sale-paid")

    # The dashboard now has today's takings: both sales, by method.
    page.goto("/admin/")
    total = cash_sale.total + mpesa_sale.total
    see(page, f"KES {money(total)}")
    see(page, f"cash {money(cash_sale.total)}, M-Pesa {money(mpesa_sale.total)}")
    shots(page, "06-dashboard-after-sales")

    # 4. Today's sales of the business to Excel: confirm, follow the job, download, open the file.
    query = f"business__id__exact={demo.water.pk}&sale_date__gte={today}&sale_date__lt={today + dt.timedelta(days=1)}"
    page.goto(f"/admin/operations/sale/?{query}")
    before = last_job_pk()
    page.click("a:has-text('Export to Excel')")
    page.wait_for_url("**/export-excel/**")
    with page.expect_navigation():
        page.click("form button[type=submit]:has-text('Export to Excel')")
    see(page, "Export queued")
    export = launched_job("jobs.changelist_xlsx", before)
    xlsx = download_from_jobs_page(page, export, shots, "07-excel-export-done")
    sheet = load_workbook(io.BytesIO(xlsx))["Sales"]
    header = [cell.value for cell in sheet[1]]
    rows = [dict(zip(header, row, strict=True)) for row in sheet.iter_rows(min_row=2, values_only=True)]
    exported = {row["Sale"]: row for row in rows if row["Sale"] != "Total"}
    assert set(exported) == {cash_sale.number, mpesa_sale.number}
    assert Decimal(str(exported[cash_sale.number]["Total"])) == cash_sale.total
    assert exported[mpesa_sale.number]["M-Pesa receipt"] == "TKB1R0W5E1"
    assert exported[mpesa_sale.number]["Payment"] == "M-Pesa"

    # 5. The business's P&L for this month as a PDF; its figures are the ledger's.
    page.goto("/admin/accounts/books/reports/profit-and-loss/")
    page.select_option("select[name=business]", str(demo.water.pk))
    page.select_option("select[name=period]", "month")
    with page.expect_navigation():
        page.click("button:has-text('Show')")
    income = -sum_lines(demo, "income", today)
    see(page, money(income))
    shots(page, "08-profit-and-loss")
    before = last_job_pk()
    with page.expect_navigation():
        page.click("button:has-text('Download PDF')")
    pdf_job = launched_job("accounts.statement_pdf", before)
    pdf = download_from_jobs_page(page, pdf_job, shots, "09-pdf-job-done")
    text = "\n".join(p.extract_text() for p in PdfReader(io.BytesIO(pdf)).pages)
    assert "Profit and loss" in text and demo.water.name in text
    expenses = sum_lines(demo, "expense", today)
    for figure in (income, expenses, income - expenses):
        assert money(figure) in text, (figure, text[:2000])

    # 6. A manual journal entry (cash banked) typed in, then reversed from its page.
    cash = Account.objects.get(business=demo.water, role="cash")
    bank = Account.objects.get(business=demo.water, role="bank")
    page.goto("/admin/accounts/journalentry/add/")
    page.select_option("select[name=business]", str(demo.water.pk))
    page.fill("input[name=memo]", "Cash banked at Equity")
    page.select_option("select[name=lines-0-account]", str(bank.pk))
    page.fill("input[name=lines-0-debit]", "500")
    page.select_option("select[name=lines-1-account]", str(cash.pk))
    page.fill("input[name=lines-1-credit]", "500")
    page.click("button:has-text('Post the entry')")
    page.wait_for_url(re.compile(r"/admin/accounts/journalentry/\d+/change/"))
    entry = JournalEntry.objects.get(business=demo.water, memo="Cash banked at Equity")
    page.click("a:has-text('Reverse this entry')")
    shots(page, "10-reverse-entry-confirm")
    page.click(f"button:has-text('Reverse entry #{entry.number}')")
    page.wait_for_url(re.compile(r"/admin/accounts/journalentry/\d+/change/"))
    reversal = JournalEntry.objects.get(reverses=entry)
    see(page, f"Entry #{entry.number} reversed by entry #{reversal.number}.")
    assert set(reversal.lines.values_list("account__role", "debit", "credit")) == {
        ("cash", Decimal("500.00"), Decimal("0")),
        ("bank", Decimal("0"), Decimal("500.00")),
    }
    shots(page, "11-entry-reversed")

    # 7. The day closed: counted cash entered (50 short), the closing run as a job.
    expected = cash_expected(business=demo.water, day=today)
    page.goto("/admin/operations/dayclosing/add/")
    page.select_option("select[name=business]", str(demo.water.pk))
    page.fill("input[name=day]", today.isoformat())
    page.fill("input[name=counted_cash]", str(expected - 50))
    page.click("button[name=_save], input[name=_save]")
    page.wait_for_url("**/admin/operations/dayclosing/")
    closing = DayClosing.objects.get(business=demo.water, day=today)
    run_action(page, closing.pk, "run_closing")
    see(page, "Closing queued as job")

    def closed() -> bool:
        closing.refresh_from_db()
        return closing.status == "closed"

    wait_for(closed, JOB_TIMEOUT, "the closing job (default worker)", interval=0.3)
    page.goto(f"/admin/operations/dayclosing/?business__id__exact={demo.water.pk}")
    row = page.locator("tr", has=page.locator(f"input[name=_selected_action][value='{closing.pk}']"))
    assert closing.variance == Decimal("-50.00") and "-50.00" in row.inner_text()
    assert closing.expected_cash == expected
    shots(page, "12-day-closed")
    assert Job.objects.filter(state=JobState.FAILED).count() == 0


def sum_lines(demo: Demo, account_type: str, day: dt.date) -> Decimal:
    """Debits less credits on the business's `account_type` accounts this month (straight from the lines)."""
    totals = JournalLine.objects.filter(
        account__business=demo.water,
        account__type=account_type,
        entry__entry_date__gte=day.replace(day=1),
        entry__entry_date__lte=day,
    ).aggregate(debit=Sum("debit"), credit=Sum("credit"))
    return (totals["debit"] or Decimal(0)) - (totals["credit"] or Decimal(0))

"""The daily summary: every figure of the PDF equals the selector and a count or sum of the rows
themselves; the admin page and the job show a staff member only his own business."""

from __future__ import annotations

import datetime as dt
import io
from decimal import Decimal
from io import StringIO

import pytest
from django.core.management import call_command
from django.db import connection
from django.test import RequestFactory
from django.test.utils import CaptureQueriesContext
from django.urls import reverse
from django.utils import timezone
from pypdf import PdfReader

from accounts.pdf import money
from accounts.services import chart_ensure_default
from backoffice.daily_summary import DAILY_SUMMARY, DailySummary, closing_label, daily_summary
from backoffice.daily_summary_pdf import daily_summary_pdf_render
from backoffice.navigation import sidebar_navigation
from integrations.mpesa.models import InboxKind, InboxMessage, InboxState, Payment, PaymentStatus, Till
from jobs.models import Job, JobState
from jobs.runner import job_run
from jobs.services import job_launch
from operations.models import (
    OPEN_STATUSES,
    ClosingStatus,
    DayClosing,
    DocumentStatus,
    Expense,
    LaundryOrder,
    OrderStatus,
    PaymentMethod,
    Sale,
    SaleStatus,
    StockLevel,
)
from tenancy.models import Business
from tests.factories.mpesa import unallocated_payment
from tests.factories.tenancy import login, staff_with_perms

D = Decimal


def _pages(pdf: bytes) -> list[str]:
    return [" ".join(page.extract_text().split()) for page in PdfReader(io.BytesIO(pdf)).pages]


def _independent(business: Business, day: dt.date) -> dict[str, object]:
    """The figures again, from the rows themselves (Python sums over model rows, the closing's own record)."""
    closing = DayClosing.objects.filter(business=business, day=day, status=ClosingStatus.CLOSED).first()
    sales = Sale.objects.filter(
        business=business,
        sale_date=day,
        payment_method=PaymentMethod.ACCOUNT,
        status__in=[SaleStatus.POSTED, SaleStatus.REFUNDED],
    )
    laundry = LaundryOrder.objects.filter(business=business, collected_date=day, balance_method=PaymentMethod.ACCOUNT)
    payments = [
        p
        for p in Payment.objects.filter(business=business)
        if timezone.localtime(p.paid_at).date() == day and p.status != PaymentStatus.REVERSED
    ]
    expenses = Expense.objects.filter(business=business, expense_date=day, status=DocumentStatus.POSTED)
    levels = StockLevel.objects.filter(business=business).select_related("item")
    orders = LaundryOrder.objects.filter(business=business)
    suspense = Payment.objects.filter(business=business, status=PaymentStatus.UNALLOCATED)
    return {
        "cash": closing.cash_takings if closing else None,
        "mpesa": closing.mpesa_takings if closing else None,
        "over_short": (closing.counted_cash - closing.expected_cash) if closing and closing.counted_cash else None,
        "on_account": sum((s.total for s in sales), D(0)) + sum((o.total - o.deposit for o in laundry), D(0)),
        "mpesa_count": len(payments),
        "mpesa_value": sum((p.amount for p in payments), D(0)),
        "expenses": sum((e.amount for e in expenses), D(0)),
        "expenses_count": len(expenses),
        "low_stock": sorted(
            lv.item.name
            for lv in levels
            if lv.item.is_active and lv.item.reorder_level > 0 and lv.quantity <= lv.item.reorder_level
        ),
        "ready": sorted(o.tag for o in orders if o.status == OrderStatus.READY),
        "overdue": sorted(o.tag for o in orders if o.status in OPEN_STATUSES and o.promised_date < day),
        "suspense": (len(suspense), sum((p.unallocated_amount for p in suspense), D(0))),
        "inbox": InboxMessage.objects.filter(till__business=business, state=InboxState.NEEDS_ATTENTION).count(),
    }


@pytest.mark.django_db
def test_every_figure_of_the_daily_summary_equals_the_selector_and_the_rows(settings) -> None:  # type: ignore[no-untyped-def]
    call_command("seed_demo", "--days", "3", stdout=StringIO())
    day = timezone.localdate() - dt.timedelta(days=1)
    businesses = list(Business.objects.order_by("name"))
    retail = next(b for b in businesses if b.kind == "retail_lpg")
    till = Till.objects.filter(business=retail).first()
    assert till is not None
    unallocated_payment(till, "SUSPENSE01", D("321.00"))
    InboxMessage.objects.create(
        till=till, kind=InboxKind.C2B_CONFIRMATION, daraja_id="held-1", body="{}", state=InboxState.NEEDS_ATTENTION
    )
    out = io.BytesIO()
    summaries = daily_summary_pdf_render(out, businesses=businesses, day=day, generated_by="owner")
    pages = _pages(out.getvalue())
    assert [s.business for s in summaries] == [b.name for b in businesses]
    seen_figures = D(0)
    for business, summary in zip(businesses, summaries, strict=True):
        assert summary == daily_summary(business=business, day=day)
        mine = [p for p in pages if f"{business.name} Daily summary" in p]  # the page header
        assert mine, business
        text = " ".join(mine)
        check = _independent(business, day)
        assert (summary.cash, summary.mpesa) == (check["cash"], check["mpesa"])
        assert summary.over_short == check["over_short"]
        assert summary.on_account == check["on_account"]
        assert (summary.mpesa_count, summary.mpesa_value) == (check["mpesa_count"], check["mpesa_value"])
        assert (summary.expenses_count, summary.expenses) == (check["expenses_count"], check["expenses"])
        assert sorted(line.item for line in summary.low_stock) == check["low_stock"]
        assert sorted(o.tag for o in summary.ready) == check["ready"]
        assert sorted(o.tag for o in summary.overdue) == check["overdue"]
        assert (summary.suspense_count, summary.suspense_amount) == check["suspense"]
        assert summary.inbox_waiting == check["inbox"]
        # ... and the PDF says the same.
        for label, value in [
            ("Cash", summary.cash),
            ("M-Pesa", summary.mpesa),
            ("On account (sales on credit)", summary.on_account),
            ("Total takings", summary.takings_total),
            ("Value received", summary.mpesa_value),
            (f"Expenses of the day ({summary.expenses_count})", summary.expenses),
            (f"Payments in suspense to allocate ({summary.suspense_count})", summary.suspense_amount),
        ]:
            assert f"{label} {money(value)}" in text, (business, label)
        assert f"Number of payments {summary.mpesa_count}" in text
        assert f"Callbacks held in the inbox {summary.inbox_waiting}" in text
        assert f"Closing {closing_label(summary)}" in text
        if summary.over_short is not None:
            assert f"Cash over (+) / short (-) {money(summary.over_short)}" in text
        assert f"Stock at or below its reorder level (now): {len(summary.low_stock) or 'none'}" in text
        for line in summary.low_stock:
            assert line.item in text
        assert f"Laundry ready for collection (now): {len(summary.ready) or 'none'}" in text
        for order in summary.ready + summary.overdue:
            assert f"Tag {order.tag} - {order.customer}" in text
        seen_figures += summary.takings_total + summary.mpesa_value + summary.expenses
    # The seeded days have activity: the comparisons above were not of zeros only.
    assert seen_figures > 0 and any(s.mpesa_count for s in summaries) and any(s.closed for s in summaries)
    assert next(s for s in summaries if s.business_id == retail.pk).suspense_amount == D("321.00")


@pytest.mark.django_db
def test_a_day_not_closed_says_so(water: Business) -> None:
    summary = daily_summary(business=water, day=dt.date(2026, 1, 5))
    assert isinstance(summary, DailySummary) and not summary.closed and closing_label(summary) == "not closed"
    out = io.BytesIO()
    daily_summary_pdf_render(out, businesses=[water], day=dt.date(2026, 1, 5), generated_by="owner")
    [page] = _pages(out.getvalue())
    assert "Closing not closed" in page and "Monday 05 January 2026" in page


URL = "/admin/daily-summary/"


@pytest.mark.django_db
def test_the_owner_gets_every_business_in_one_pdf(owner_client, water: Business, laundry: Business) -> None:
    assert reverse("daily_summary") == URL
    page = owner_client.get(URL)
    assert page.status_code == 200 and water.name in page.content.decode() and laundry.name in page.content.decode()
    response = owner_client.post(URL, {"business": "all", "day": "2026-01-05"})
    job = Job.objects.get(kind=DAILY_SUMMARY)
    assert response.status_code == 302 and response["Location"] == reverse("admin:jobs_job_change", args=[job.pk])
    assert job.business_id is None and job.params == {"day": "2026-01-05"}
    pages = _pages(_pdf_of(_run(job)))
    assert len(pages) == 2
    assert f"{laundry.name} Daily summary" in pages[0] and f"{water.name} Daily summary" in pages[1]


@pytest.mark.django_db
def test_staff_see_only_their_business_and_need_the_permission(water: Business, laundry: Business) -> None:
    staff = staff_with_perms(water, ["accounts.view_reports"])
    client = login(staff)
    page = client.get(URL)
    assert page.status_code == 200 and water.name in page.content.decode() and laundry.name not in page.content.decode()
    assert client.get(URL, {"business": str(laundry.pk)}).status_code == 403
    assert client.get(URL, {"business": "all"}).status_code == 403
    assert client.post(URL, {"business": str(laundry.pk), "day": "2026-01-05"}).status_code == 403
    assert client.post(URL, {"business": "all", "day": "2026-01-05"}).status_code == 403
    assert not Job.objects.exists()
    assert client.post(URL, {"business": str(water.pk), "day": "2026-01-05"}).status_code == 302
    job = Job.objects.get(kind=DAILY_SUMMARY)
    assert job.business_id == water.pk and job.requested_by == staff
    [only] = _pages(_pdf_of(_run(job)))
    assert water.name in only and laundry.name not in only

    cashier = staff_with_perms(water, ["operations.view_sale"], username="cashier")
    assert login(cashier).get(URL).status_code == 403
    request = RequestFactory().get("/")
    for user, offered in ((staff, True), (cashier, False)):
        request.user = user
        [item] = [i for group in sidebar_navigation(request) for i in group["items"] if i["title"] == "Daily summary"]
        assert item["permission"](request) is offered


def _pdf_of(job: Job) -> bytes:
    assert job.state == JobState.SUCCEEDED, job.error
    with job.result_file.open("rb") as handle:
        return handle.read()


def _run(job: Job) -> Job:
    job_run(job_id=job.pk, retry=lambda countdown, exc: RuntimeError("no retry expected"))
    job.refresh_from_db()
    return job


@pytest.mark.django_db
def test_the_job_makes_the_pdf_for_businesses_the_person_sees_only(water: Business, laundry: Business, owner) -> None:
    staff = staff_with_perms(water, ["accounts.view_reports"])
    params = {"day": "2026-01-05"}
    mine = _run(job_launch(kind=DAILY_SUMMARY, acting_user=staff, business=water, params=params))
    assert mine.state == JobState.SUCCEEDED, mine.error
    [page] = _pages(mine.result_file.read())
    assert f"{water.name} Daily summary" in page
    other = _run(job_launch(kind=DAILY_SUMMARY, acting_user=staff, business=laundry, params=params))
    assert other.state == JobState.FAILED and not other.result_file
    every = _run(job_launch(kind=DAILY_SUMMARY, acting_user=staff, business=None, params=params))
    assert every.state == JobState.FAILED
    everything = _run(job_launch(kind=DAILY_SUMMARY, acting_user=owner, business=None, params=params))
    assert everything.state == JobState.SUCCEEDED and len(_pages(everything.result_file.read())) == 2


@pytest.mark.django_db
def test_the_suspense_figures_are_summed_by_postgresql_not_loaded_row_by_row(
    water: Business, laundry: Business
) -> None:
    """A backlog of unallocated payments costs the summary (and the reports worker) one row of totals,
    not one object per payment: the soak's thousands of unmatched C2B payments took the daily summary's
    process from 86 to 99.6 MiB when it summed them in Python."""
    for business in (water, laundry):
        chart_ensure_default(business=business)
    till = Till.objects.create(business=water, name="Suspense till", shortcode="600990", kind="paybill")
    other = Till.objects.create(business=laundry, name="Other till", shortcode="600991", kind="paybill")
    for n in range(12):
        unallocated_payment(till, f"SUSP{n:06d}", D("100.50"))
    unallocated_payment(other, "OTHER00001", D("999.00"))
    with CaptureQueriesContext(connection) as queries:
        summary = daily_summary(business=water, day=timezone.localdate())
    assert (summary.suspense_count, summary.suspense_amount) == (12, D("1206.00"))
    on_payments = [q["sql"] for q in queries.captured_queries if 'FROM "integrations_payment"' in q["sql"]]
    assert on_payments and all(' AS "n"' in sql or "COUNT(" in sql or "SUM(" in sql for sql in on_payments), on_payments

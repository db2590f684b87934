"""The owner's morning report: one business day of one business on a page.

It reads the ledger (takings), operations (credit sales, expenses, closing, stock, laundry) and
M-Pesa (payments received, work waiting for a person), so it lives in the site, the one layer that
may import them all. `daily_summary` returns the figures (Decimal) and `daily_summary_view` is the
admin page ("Daily summary", behind `accounts.view_reports`). The PDF (`daily_summary_pdf_render`)
and the `backoffice.daily_summary` job kind that renders it in the background live in
backoffice/daily_summary_pdf.py, so that the web processes, which import this module for the page,
do not load ReportLab (docs/worker-memory.md, "Web processes without ReportLab").
"""

from __future__ import annotations

import datetime as dt
import zoneinfo
from dataclasses import dataclass
from decimal import Decimal
from typing import Any

from django import forms
from django.contrib import admin, messages
from django.core.exceptions import PermissionDenied
from django.db.models import QuerySet
from django.http import HttpRequest, HttpResponseRedirect
from django.http.response import HttpResponseBase
from django.template.response import TemplateResponse
from django.urls import reverse
from django.utils import timezone
from unfold.widgets import UnfoldAdminSelectWidget

from accounts.formatting import money
from accounts.forms import REPORT_FIRST_DAY, REPORT_LAST_DAY, DateInput
from accounts.selectors import takings_by_business
from integrations.mpesa.selectors import (
    inbox_waiting_for_person,
    payments_received,
    status_queries_waiting_for_person,
    unallocated_totals,
)
from jobs.services import job_launch
from operations.selectors import (
    day_closing,
    expenses_of_day,
    low_stock,
    ready_orders,
    sales_on_account,
    uncollected_orders,
)
from tenancy.models import Business
from tenancy.scoping import sees_all_businesses, visible_businesses

DAILY_SUMMARY = "backoffice.daily_summary"
PERMISSION = "accounts.view_reports"
ALL = "all"


@dataclass(frozen=True)
class LowStockLine:
    item: str
    quantity: Decimal
    reorder_level: Decimal


@dataclass(frozen=True)
class OrderLine:
    tag: str
    customer: str
    promised_date: dt.date
    status: str
    balance_due: Decimal


@dataclass(frozen=True)
class DailySummary:
    """One business day of one business. Takings, M-Pesa received, expenses and the closing are the
    day's; stock, laundry and the M-Pesa queues are as they stand when the summary is made."""

    business_id: int
    business: str
    day: dt.date
    cash: Decimal  # takings into the drawer (sales, payments received, laundry), accounts.selectors
    mpesa: Decimal  # takings into the M-Pesa till account
    on_account: Decimal  # sold on credit
    mpesa_count: int  # M-Pesa payments received (receipts dated that day, not reversed)
    mpesa_value: Decimal
    expenses_count: int
    expenses: Decimal
    closed: bool
    expected_cash: Decimal | None
    counted_cash: Decimal | None
    over_short: Decimal | None  # counted - expected: negative is short; None: not closed
    low_stock: list[LowStockLine]
    ready: list[OrderLine]
    overdue: list[OrderLine]
    inbox_waiting: int  # M-Pesa callbacks held for a person
    status_queries_waiting: int  # receipt checks with no answer, left to a person
    suspense_count: int  # payments (partly) in suspense, to allocate
    suspense_amount: Decimal

    @property
    def takings_total(self) -> Decimal:
        return self.cash + self.mpesa + self.on_account


def _order_line(order: Any) -> OrderLine:
    return OrderLine(order.tag, order.customer.name, order.promised_date, order.get_status_display(), order.balance_due)


def daily_summary(*, business: Business, day: dt.date) -> DailySummary:
    """The figures of `business` for `day` (a business date in its own time zone)."""
    takings = takings_by_business(business_ids=[business.pk], day=day)[business.pk]
    tz = zoneinfo.ZoneInfo(business.timezone or "Africa/Nairobi")
    start = dt.datetime.combine(day, dt.time.min, tzinfo=tz)
    mpesa_count, mpesa_value = payments_received(business_id=business.pk, start=start, end=start + dt.timedelta(days=1))
    expenses = expenses_of_day(business=business, day=day)
    closing = day_closing(business=business, day=day)
    over_short = None
    if closing is not None and closing.counted_cash is not None:
        over_short = closing.variance
    suspense_count, suspense_amount = unallocated_totals(business_id=business.pk)
    return DailySummary(
        business_id=business.pk,
        business=business.name,
        day=day,
        cash=takings.cash,
        mpesa=takings.mpesa,
        on_account=sales_on_account(business=business, day=day),
        mpesa_count=mpesa_count,
        mpesa_value=mpesa_value,
        expenses_count=expenses.count,
        expenses=expenses.total,
        closed=closing is not None,
        expected_cash=closing.expected_cash if closing is not None else None,
        counted_cash=closing.counted_cash if closing is not None else None,
        over_short=over_short,
        low_stock=[LowStockLine(s.item.name, s.quantity, s.item.reorder_level) for s in low_stock(business=business)],
        ready=[_order_line(o) for o in ready_orders(business=business)],
        overdue=[_order_line(o) for o in uncollected_orders(business=business, as_of=day)],
        inbox_waiting=inbox_waiting_for_person().filter(till__business=business).count(),
        status_queries_waiting=status_queries_waiting_for_person().filter(business=business).count(),
        suspense_count=suspense_count,
        suspense_amount=suspense_amount,
    )


def closing_label(summary: DailySummary) -> str:
    if not summary.closed:
        return "not closed"
    if summary.over_short is None:
        return "closed, cash not counted"
    if summary.over_short < 0:
        return f"short {money(-summary.over_short)}"
    if summary.over_short > 0:
        return f"over {money(summary.over_short)}"
    return "balanced"


class DailySummaryForm(forms.Form):
    business = forms.ChoiceField(widget=UnfoldAdminSelectWidget)
    day = forms.DateField(widget=DateInput)

    def __init__(self, *args: Any, businesses: QuerySet[Business], owner: bool, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        choices = [(str(b.pk), b.name) for b in businesses]
        if owner:
            choices.insert(0, (ALL, "All businesses (a section each)"))
        self.fields["business"].choices = choices  # type: ignore[attr-defined]

    def clean_day(self) -> dt.date:
        """A day the figures can be read for (a day near year 1 or 9999 overflows the day's bounds)."""
        day: dt.date = self.cleaned_data["day"]
        if not REPORT_FIRST_DAY <= day <= REPORT_LAST_DAY:
            raise forms.ValidationError(f"Choose a date from {REPORT_FIRST_DAY.year} to {REPORT_LAST_DAY.year}.")
        return day


def daily_summary_view(request: HttpRequest) -> HttpResponseBase:
    """The admin page: business (staff: only theirs; the owner also "all") and day, the figures,
    and "Download PDF" (the same summary as a file). Another business, by URL, is refused (403)."""
    if not request.user.has_perm(PERMISSION):
        raise PermissionDenied
    owner = sees_all_businesses(request.user)
    visible = visible_businesses(request.user).order_by("name")
    if not visible.exists():
        raise PermissionDenied
    yesterday = timezone.localdate() - dt.timedelta(days=1)
    source = request.POST if request.method == "POST" else request.GET
    data = {
        "business": source.get("business") or (ALL if owner else str(visible.first().pk)),  # type: ignore[union-attr]
        "day": source.get("day") or yesterday.isoformat(),
    }
    allowed = {str(pk) for pk in visible.values_list("pk", flat=True)}
    if (data["business"] == ALL and not owner) or (data["business"] != ALL and data["business"] not in allowed):
        raise PermissionDenied
    form = DailySummaryForm(data, businesses=visible, owner=owner)
    summaries: list[DailySummary] = []
    if form.is_valid():
        day = form.cleaned_data["day"]
        chosen = list(visible) if data["business"] == ALL else [b for b in visible if str(b.pk) == data["business"]]
        if request.method == "POST":  # "Download PDF": the same summary, made by a reports worker
            business = None if data["business"] == ALL else chosen[0]
            job = job_launch(
                kind=DAILY_SUMMARY, acting_user=request.user, business=business, params={"day": day.isoformat()}
            )
            messages.success(request, f"Daily summary PDF queued as job #{job.pk}; the file is on the job's page.")
            return HttpResponseRedirect(reverse("admin:jobs_job_change", args=[job.pk]))
        summaries = [daily_summary(business=b, day=day) for b in chosen]
    context = {
        **admin.site.each_context(request),
        "title": "Daily summary",
        "form": form,
        "summaries": summaries,
    }
    return TemplateResponse(request, "admin/daily_summary.html", context)

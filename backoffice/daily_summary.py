"""The owner's morning report: one business day of one business on a page.

It reads the ledger (takings), operations (credit sales, expenses, closing, stock, laundry) and
M-Pesa (payments received, work waiting for a person), so it lives in the site, the one layer that
may import them all. `daily_summary` returns the figures (Decimal), `daily_summary_pdf_render`
writes them as a PDF (one section per business, each from a new page under its own header), the
`backoffice.daily_summary` job kind renders it in the background (for the scheduled e-mail), and
`daily_summary_view` is the admin page ("Daily summary", behind `accounts.view_reports`).
"""

from __future__ import annotations

import datetime as dt
import io
import zoneinfo
from collections.abc import Sequence
from dataclasses import dataclass
from decimal import Decimal
from typing import IO, Any

from django import forms
from django.contrib import admin, messages
from django.core.exceptions import PermissionDenied
from django.db.models import QuerySet
from django.http import HttpRequest, HttpResponseRedirect
from django.http.response import HttpResponseBase
from django.template.response import TemplateResponse
from django.urls import reverse
from django.utils import timezone
from reportlab.platypus import Flowable, PageBreak
from unfold.widgets import UnfoldAdminSelectWidget

from accounts.forms import REPORT_FIRST_DAY, REPORT_LAST_DAY, DateInput
from accounts.pdf import (
    LINE,
    SECTION,
    TOTAL,
    NextPagesHeader,
    PdfHeader,
    Row,
    gap,
    head_summary,
    heading,
    money,
    paragraph,
    pdf_render,
    report_table,
)
from accounts.selectors import takings_by_business
from integrations.mpesa.selectors import (
    inbox_waiting_for_person,
    payments_received,
    status_queries_waiting_for_person,
    unallocated_totals,
)
from jobs.registry import JobContext, JobFailed, job_kind
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
from tenancy.scoping import sees_all_businesses, visible_business_ids, visible_businesses

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


def _quantity(value: Decimal) -> str:
    return f"{value.normalize():f}"


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


def _orders_table(title: str, orders: Sequence[OrderLine]) -> list[Flowable]:
    if not orders:
        return [heading(f"{title}: none")]
    rows = [
        Row(LINE, f"Tag {o.tag} - {o.customer}", [o.promised_date.strftime("%d %b %Y"), o.status, money(o.balance_due)])
        for o in orders
    ]
    rows.append(Row(TOTAL, f"{len(orders)} orders", ["", "", money(sum((o.balance_due for o in orders), Decimal(0)))]))
    return [heading(f"{title}: {len(orders)}"), report_table(["Order", "Promised", "Status", "To pay"], rows)]


def summary_story(summary: DailySummary) -> list[Flowable]:
    """The flowables of one business's section."""
    takings = [
        Row(SECTION, "Takings"),
        Row(LINE, "Cash", [money(summary.cash)]),
        Row(LINE, "M-Pesa", [money(summary.mpesa)]),
        Row(LINE, "On account (sales on credit)", [money(summary.on_account)]),
        Row(TOTAL, "Total takings", [money(summary.takings_total)]),
        Row(SECTION, "M-Pesa payments received"),
        Row(LINE, "Number of payments", [f"{summary.mpesa_count:,}"]),
        Row(LINE, "Value received", [money(summary.mpesa_value)]),
        Row(SECTION, "Expenses"),
        Row(LINE, f"Expenses of the day ({summary.expenses_count:,})", [money(summary.expenses)]),
        Row(SECTION, "End-of-day closing"),
    ]
    if summary.closed:
        takings += [
            Row(LINE, "Cash expected", [money(summary.expected_cash)]),
            Row(LINE, "Cash counted", [money(summary.counted_cash) if summary.counted_cash is not None else "-"]),
            Row(
                LINE,
                "Cash over (+) / short (-)",
                [money(summary.over_short) if summary.over_short is not None else "-"],
            ),
        ]
    takings.append(Row(LINE, "Closing", [closing_label(summary)]))
    takings += [
        Row(SECTION, "M-Pesa waiting for a person (now)"),
        Row(LINE, "Callbacks held in the inbox", [f"{summary.inbox_waiting:,}"]),
        Row(LINE, "Receipt checks left to a person", [f"{summary.status_queries_waiting:,}"]),
        Row(LINE, f"Payments in suspense to allocate ({summary.suspense_count:,})", [money(summary.suspense_amount)]),
    ]
    story: list[Flowable] = [report_table(["", "KES"], takings), gap(5)]
    if summary.low_stock:
        rows = [Row(LINE, s.item, [_quantity(s.quantity), _quantity(s.reorder_level)]) for s in summary.low_stock]
        story += [
            heading(f"Stock at or below its reorder level (now): {len(rows)}"),
            report_table(["Item", "On hand", "Reorder level"], rows),
        ]
    else:
        story.append(heading("Stock at or below its reorder level (now): none"))
    story += [gap(3), *_orders_table("Laundry ready for collection (now)", summary.ready), gap(3)]
    story += _orders_table(
        f"Laundry overdue (open, promised before {summary.day.strftime('%d %b %Y')})", summary.overdue
    )
    story += [
        gap(4),
        paragraph(
            "Takings are the day's ledger entries into cash and the M-Pesa till (sales, payments received, "
            "laundry), net of voids; on account is what was sold on credit. Stock, laundry and the M-Pesa "
            "queues are as they stood when this summary was made.",
            note=True,
        ),
    ]
    return story


def daily_summary_pdf_render(
    out: IO[bytes], *, businesses: Sequence[Business], day: dt.date, generated_by: str
) -> list[DailySummary]:
    """Write the summaries of `businesses` for `day` to `out`, one section per business, each from a
    new page with its own header. Returns the summaries printed."""
    summaries = [daily_summary(business=b, day=day) for b in businesses]
    period = day.strftime("%A %d %B %Y")

    def header(summary: DailySummary | None) -> PdfHeader:
        return PdfHeader(
            title="Daily summary",
            business=summary.business if summary else "No business",
            period=period,
            generated_by=generated_by,
            ledger=head_summary([summary.business_id] if summary else []),
        )

    story: list[Flowable] = []
    for number, summary in enumerate(summaries):
        if number:
            story += [NextPagesHeader(header(summary)), PageBreak()]
        story += summary_story(summary)
    pdf_render(out, header(summaries[0] if summaries else None), story)
    return summaries


@job_kind(DAILY_SUMMARY, label="PDF: daily summary", permission=PERMISSION)
def daily_summary_job(ctx: JobContext) -> None:
    """params {"day": "YYYY-MM-DD"}; the job's business, or none: every business (the owner's). The
    worker checks again that the person who asked sees those businesses and holds the permission."""
    day = dt.date.fromisoformat(ctx.params["day"])
    businesses = list(Business.objects.order_by("name"))
    if ctx.job.business_id:
        businesses = [b for b in businesses if b.pk == ctx.job.business_id]
    user = ctx.launcher()
    if user is not None:
        if not user.has_perm(PERMISSION):
            raise JobFailed(f"{user} may not read the daily summary.")
        if ctx.job.business_id is None and not sees_all_businesses(user):
            raise JobFailed(f"{user} may not read every business's summary.")
        if any(b.pk not in visible_business_ids(user) for b in businesses):
            raise JobFailed(f"{user} may not read this business's summary.")
    ctx.rows(0, len(businesses), "Reading the figures")
    buffer = io.BytesIO()
    daily_summary_pdf_render(buffer, businesses=businesses, day=day, generated_by=str(user or "scheduled"))
    scope = ctx.job.business_id or ALL
    ctx.save_result(f"daily-summary-{scope}-{day}.pdf", buffer.getvalue())
    ctx.rows(len(businesses), len(businesses), f"Daily summary of {day}")


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

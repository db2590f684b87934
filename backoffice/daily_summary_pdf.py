"""The daily summary as a PDF (one section per business, each from a new page under its own header)
and the `backoffice.daily_summary` job kind that renders it on a reports worker (the admin page's
"Download PDF", the scheduled e-mail). The figures are backoffice/daily_summary.py's; this module is
apart so that only the processes that draw the PDF load ReportLab (declared lazily in
backoffice/apps.py: the registry imports it when a job of the kind runs).
"""

from __future__ import annotations

import datetime as dt
import io
from collections.abc import Sequence
from decimal import Decimal
from typing import IO

from reportlab.platypus import Flowable, PageBreak

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
from backoffice.daily_summary import (
    ALL,
    DAILY_SUMMARY,
    PERMISSION,
    DailySummary,
    OrderLine,
    closing_label,
    daily_summary,
)
from jobs.registry import JobContext, JobFailed, job_kind
from tenancy.models import Business
from tenancy.scoping import sees_all_businesses, visible_business_ids


def _quantity(value: Decimal) -> str:
    return f"{value.normalize():f}"


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

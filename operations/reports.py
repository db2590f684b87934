"""Customer statements as one PDF: a statement per customer (opening balance, each movement with the
running balance, closing balance, what is owed by age), each starting on a new page under its own
page header. Rendered by `statements_pdf_render` (a plain function: the admin, the job and the
benchmark call it) and in the background by the `operations.customer_statements` job kind.

The figures are the selectors' (`customer_statement`, `customer_ageing`), printed by `money()`, so a
PDF read back as text gives the same numbers as the customer page.
"""

from __future__ import annotations

import datetime as dt
import functools
import tempfile
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import IO, Any

from reportlab.lib.units import mm
from reportlab.platypus import Flowable, PageBreak, Table, TableStyle

from accounts.fields import ZERO
from accounts.pdf import (
    BAND,
    INK,
    MUTED,
    RULE,
    Later,
    NextPagesHeader,
    PdfHeader,
    gap,
    grid_style,
    head_summary,
    heading,
    money,
    paragraph,
    pdf_render,
)
from jobs.registry import JobContext, JobFailed, job_kind
from operations.models import Customer
from operations.selectors import CustomerAgeing, customer_ageing, customer_statement
from tenancy.models import Business
from tenancy.scoping import visible_business_ids

CUSTOMER_STATEMENTS = "operations.customer_statements"
# What a person needs to print statements: the customer page (where the statement already shows).
STATEMENT_PERMISSION = "operations.view_customer"

AGEING_RULE = (
    "Ageing: payments settle the oldest charges first; what is still owed is split by the age of its "
    "charges on the statement's last day (current: up to 30 days, then 31-60, 61-90 and over 90 days)."
)


def default_statement_period(today: dt.date) -> tuple[dt.date, dt.date]:
    """The last three full months and the current month to date: 15 Mar -> 1 Dec to 15 Mar."""
    month = today.month - 3
    year = today.year + (month - 1) // 12
    month = (month - 1) % 12 + 1
    return dt.date(year, month, 1), today


def day_label(day: dt.date) -> str:
    return day.strftime("%d %b %Y")


def period_label(date_from: dt.date, date_to: dt.date) -> str:
    return f"{day_label(date_from)} to {day_label(date_to)}"


def phone_label(phone: str) -> str:
    """2547XXXXXXXX -> 07XX XXX XXX (as customers write it); anything else as stored."""
    if len(phone) == 12 and phone.startswith("254") and phone.isdigit():
        local = "0" + phone[3:]
        return f"{local[:4]} {local[4:7]} {local[7:]}"
    return phone or "-"


def statement_customers(
    *, business: Business, customer_ids: Sequence[int] | None, ageing: Sequence[CustomerAgeing]
) -> list[Customer]:
    """The customers to print, by name: those asked for (of this business only), or else every
    customer of the business with a balance (owing or in credit) in `ageing`."""
    customers = Customer.objects.filter(business=business)
    if customer_ids is None:
        customers = customers.filter(pk__in=[row.customer_id for row in ageing])
    else:
        customers = customers.filter(pk__in=list(customer_ids))
    return list(customers.order_by("name", "pk"))


def _grid(data: list[list[Any]], widths: Sequence[float], style: list[tuple[Any, ...]]) -> Table:
    table = Table(data, colWidths=list(widths), repeatRows=1, hAlign="LEFT")
    table.setStyle(TableStyle([*grid_style(), *style]))
    return table


def _customer_block(customer: Customer) -> Table:
    rows = [
        ["Customer", customer.name, "Account code", customer.account_code or "-"],
        ["Phone", phone_label(customer.phone), "Credit limit", money(customer.credit_limit)],
    ]
    table = Table(rows, colWidths=[24 * mm, 66 * mm, 26 * mm, 64 * mm], hAlign="LEFT")
    table.setStyle(
        TableStyle(
            [
                ("FONT", (0, 0), (-1, -1), "Helvetica", 9),
                ("FONT", (1, 0), (1, 0), "Helvetica-Bold", 10),
                ("TEXTCOLOR", (0, 0), (0, -1), MUTED),
                ("TEXTCOLOR", (2, 0), (2, -1), MUTED),
                ("BACKGROUND", (0, 0), (-1, -1), BAND),
                ("TOPPADDING", (0, 0), (-1, -1), 3),
                ("BOTTOMPADDING", (0, 0), (-1, -1), 3),
            ]
        )
    )
    return table


def _movements(customer: Customer, date_from: dt.date, date_to: dt.date) -> Table:
    statement = customer_statement(customer=customer, date_from=date_from, date_to=date_to)
    data: list[list[Any]] = [["Date", "Kind", "Reference", "Amount", "Balance"]]
    data.append([day_label(date_from), "Opening balance", "", "", money(statement.opening)])
    for line in statement.lines:
        data.append([day_label(line.tx_date), line.kind, line.reference, money(line.amount), money(line.balance)])
    if not statement.lines:
        data.append(["", "No movements in the period", "", "", ""])
    data.append([day_label(date_to), "Closing balance", "", "", money(statement.closing)])
    last = len(data) - 1
    style: list[tuple[Any, ...]] = [
        ("ALIGN", (3, 0), (-1, -1), "RIGHT"),
        ("FONT", (0, 1), (-1, 1), "Helvetica-Bold", 8.5),
        ("BACKGROUND", (0, 1), (-1, 1), BAND),
        ("FONT", (0, last), (-1, last), "Helvetica-Bold", 9),
        ("LINEABOVE", (0, last), (-1, last), 0.6, INK),
        ("LINEBELOW", (0, last), (-1, last), 1.2, INK),
    ]
    if not statement.lines:
        style.append(("TEXTCOLOR", (1, 2), (1, 2), MUTED))
    return _grid(data, [24 * mm, 56 * mm, 40 * mm, 30 * mm, 30 * mm], style)


def _ageing(ageing: CustomerAgeing | None, date_to: dt.date) -> Table:
    buckets = (
        [ageing.current, ageing.days_30, ageing.days_60, ageing.days_90, ageing.balance]
        if ageing is not None
        else [ZERO] * 5
    )
    data = [
        ["Current (0-30 days)", "31-60 days", "61-90 days", "Over 90 days", f"Owed on {day_label(date_to)}"],
        [money(value) for value in buckets],
    ]
    style: list[tuple[Any, ...]] = [
        ("ALIGN", (0, 0), (-1, -1), "RIGHT"),
        ("FONT", (-1, 1), (-1, 1), "Helvetica-Bold", 9),
        ("LINEBELOW", (0, 1), (-1, 1), 0.4, RULE),
    ]
    return _grid(data, [36 * mm] * 5, style)


class _Done(Flowable):
    """Of no size: reports one more customer drawn (the job's progress, and where a cancel stops it)."""

    def __init__(self, report: Callable[[], None]) -> None:
        super().__init__()
        self.report = report

    def wrap(self, available_width: float, available_height: float) -> tuple[float, float]:
        return 0, 0

    def draw(self) -> None:
        self.report()


def statements_pdf_render(
    out: IO[bytes],
    *,
    business: Business,
    customer_ids: Sequence[int] | None,
    date_from: dt.date,
    date_to: dt.date,
    generated_by: str,
    on_progress: Callable[[int, int], None] | None = None,
) -> int:
    """Write the statements of `business`'s customers (`customer_ids`, or None: every customer with a
    balance on `date_to`) to `out`, one after the other, each from a new page. Returns how many.

    `on_progress(done, total)` is called as each customer's statement is drawn.
    """
    if date_from > date_to:
        raise ValueError("The period starts after it ends.")
    aged = customer_ageing(business_ids=[business.pk], as_of=date_to)
    customers = statement_customers(business=business, customer_ids=customer_ids, ageing=aged)
    ageing = {row.customer_id: row for row in aged}
    period = period_label(date_from, date_to)
    ledger = head_summary([business.pk])
    total = len(customers)

    def header_for(customer: Customer | None) -> PdfHeader:
        title = f"Customer statement: {customer.name}" if customer else "Customer statement"
        return PdfHeader(title=title, business=business.name, period=period, generated_by=generated_by, ledger=ledger)

    story: list[Flowable] = []
    counter = {"done": 0}

    def drawn() -> None:
        counter["done"] += 1
        if on_progress is not None:
            on_progress(counter["done"], total)

    def statement(customer: Customer) -> list[Flowable]:
        return [
            _customer_block(customer),
            gap(5),
            _movements(customer, date_from, date_to),
            gap(6),
            heading(f"What is owed, by age, on {day_label(date_to)}"),
            _ageing(ageing.get(customer.pk), date_to),
            gap(2),
            paragraph(AGEING_RULE, note=True),
            _Done(drawn),
        ]

    for number, customer in enumerate(customers):
        if number:
            story += [NextPagesHeader(header_for(customer)), PageBreak()]
        # Made when the document reaches it: one customer's tables in memory at a time.
        story.append(Later(functools.partial(statement, customer)))
    if not customers:
        story.append(paragraph("No customer with a balance in this business on the last day of the period."))
    pdf_render(out, header_for(customers[0] if customers else None), story)
    return total


@job_kind(CUSTOMER_STATEMENTS, label="PDF: customer statements", permission="operations.view_customer")
def customer_statements_job(ctx: JobContext) -> None:
    """params {"customer_ids": [..] | null, "date_from": "YYYY-MM-DD", "date_to": "YYYY-MM-DD"}; the
    job's business. The worker checks again what the admin checked: the person who asked still sees
    the business and may print statements, and every customer asked for is one of its customers (an
    id of another business fails the job instead of being printed or silently left out)."""
    if not ctx.job.business_id:
        raise JobFailed("Customer statements are for one business.")
    business = Business.objects.get(pk=ctx.job.business_id)
    user = ctx.launcher()
    if user is not None and (business.pk not in visible_business_ids(user) or not user.has_perm(STATEMENT_PERMISSION)):
        raise JobFailed(f"{user} may not print statements of {business}.")
    params = ctx.params
    ids = params.get("customer_ids")
    customer_ids = None if ids is None else [int(i) for i in ids]
    if customer_ids is not None:
        found = set(Customer.objects.filter(business=business, pk__in=customer_ids).values_list("pk", flat=True))
        foreign = sorted(set(customer_ids) - found)
        if foreign:
            raise JobFailed(f"Customers {foreign} are not customers of {business}.")
    date_from, date_to = dt.date.fromisoformat(params["date_from"]), dt.date.fromisoformat(params["date_to"])
    ctx.progress(0, "Reading the customers")
    filename = f"statements-{business.pk}-{date_from}-{date_to}.pdf"
    # Written to a file, not a BytesIO: one copy of a ~1 MB PDF less in memory at its peak (~1.2 MiB).
    with tempfile.TemporaryDirectory(prefix="statements-") as tmp:
        path = Path(tmp) / filename
        with path.open("wb") as out:
            count = statements_pdf_render(
                out,
                business=business,
                customer_ids=customer_ids,
                date_from=date_from,
                date_to=date_to,
                generated_by=str(user) if user is not None else "scheduled",
                on_progress=lambda done, total: ctx.rows(done, total, f"{done:,} of {total:,} customers"),
            )
        ctx.save_result_path(filename, path)
    ctx.rows(count, count, f"{count:,} customer statements")

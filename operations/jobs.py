"""Background jobs about businesses and people."""

from __future__ import annotations

import datetime as dt
import io
from decimal import Decimal

from django.utils import timezone

from accounts.exceptions import LedgerError
from celeryconf.config import QUEUE_DEFAULT
from jobs.registry import JobContext, JobFailed, job_kind
from operations.exceptions import OperationError
from tenancy.models import Business, Membership

EXPORT_BUSINESSES = "operations.export_businesses"
CLOSING = "operations.closing"


@job_kind(EXPORT_BUSINESSES, label="Excel: businesses and staff", permission="tenancy.view_business")
def export_businesses_and_staff(ctx: JobContext) -> None:
    """Write an .xlsx with a Businesses sheet and a Staff sheet.

    Scope: the job's business if it has one, else every business. Idempotent: the result file
    is replaced on a re-run.
    """
    # openpyxl is imported here, not at module level, so workers only load it when they export.
    from openpyxl import Workbook
    from openpyxl.styles import Font

    businesses = Business.objects.order_by("name")
    if ctx.job.business_id:
        businesses = businesses.filter(pk=ctx.job.business_id)
    total = businesses.count()
    wb = Workbook()
    sheet = wb.active
    assert sheet is not None
    sheet.title = "Businesses"
    sheet.append(["ID", "Name", "Kind", "Currency", "Time zone", "Active", "Staff"])
    staff = wb.create_sheet("Staff")
    staff.append(["Business", "Username", "Full name", "Email", "Role", "Active", "Since"])
    for cell in (*sheet[1], *staff[1]):
        cell.font = Font(bold=True)
    for done, business in enumerate(businesses, start=1):
        members = list(Membership.objects.filter(business=business).select_related("user").order_by("user__username"))
        sheet.append(
            [
                business.pk,
                business.name,
                business.get_kind_display(),
                business.currency,
                business.timezone,
                "yes" if business.is_active else "no",
                len(members),
            ]
        )
        for m in members:
            staff.append(
                [
                    business.name,
                    m.user.get_username(),
                    m.user.get_full_name(),
                    m.user.email,
                    m.get_role_display(),
                    "yes" if m.user.is_active else "no",
                    timezone.localtime(m.created_at).strftime("%Y-%m-%d %H:%M"),
                ]
            )
        ctx.progress(int(done * 90 / max(total, 1)), f"{done} of {total} businesses")
    buffer = io.BytesIO()
    wb.save(buffer)
    stamp = timezone.localtime().strftime("%Y%m%d-%H%M%S")
    ctx.save_result(f"businesses-and-staff-{stamp}.xlsx", buffer.getvalue())
    ctx.progress(100, f"{total} businesses exported")


@job_kind(CLOSING, label="End-of-day closing", queue=QUEUE_DEFAULT, permission="operations.view_dayclosing")
def run_closing(ctx: JobContext) -> None:
    """Close one business day: params {"day": "YYYY-MM-DD", "counted_cash": "1234.00" | null}.

    Calls operations.services.closing.closing_run, which is idempotent: a redelivered job returns
    the closing already made. A refusal (day already closed differently, books locked) fails the job
    with the service's message.
    """
    from operations.services.closing import closing_run

    if not ctx.job.business_id:
        raise JobFailed("A closing is for one business.")
    business = Business.objects.get(pk=ctx.job.business_id)
    params = ctx.params
    day = dt.date.fromisoformat(params["day"])
    counted = params.get("counted_cash")
    user = ctx.launcher()
    ctx.progress(10, f"Closing {business} for {day}")
    try:
        closing = closing_run(
            business=business,
            day=day,
            counted_cash=None if counted in (None, "") else Decimal(str(counted)),
            acting_user=user,
        )
    except (OperationError, LedgerError) as exc:
        raise JobFailed(str(exc)) from exc
    ctx.progress(100, f"Closed {day}: expected cash {closing.expected_cash}, variance {closing.variance}")

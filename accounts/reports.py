"""The statements as PDF files: a plain render function and the job kind that runs it on a worker.

`statement_pdf_render` writes a statement (accounts.statements, the same figures as the report
page) to any file object, with no Job: the benchmark and the daily email call it directly. The job
kind `accounts.statement_pdf` runs it on the reports queue for a person, after checking again, on
the worker, that this person may still read those books.
"""

from __future__ import annotations

import io
from collections.abc import Sequence
from decimal import Decimal
from typing import IO

from reportlab.platypus import Flowable, KeepTogether

from accounts.pdf import (
    LINE,
    PdfHeader,
    Row,
    check_line,
    content_width,
    gap,
    head_summary,
    heading,
    money,
    paragraph,
    pdf_render,
    report_table,
)
from accounts.periods import Period, period_from_params
from accounts.statements import (
    ALL_BUSINESSES,
    CONSOLIDATED_LABEL,
    REPORT_TITLES,
    STATEMENT_PDF,
    Statement,
    statement_build,
    statement_filename,
)
from jobs.registry import JobContext, JobFailed, job_kind
from tenancy.models import Business
from tenancy.scoping import sees_all_businesses, visible_business_ids

LANDSCAPE_OVER = 4  # figure columns; more than this and the page turns


def _cell(value: Decimal | None) -> str:
    return money(value)


def statement_story(statement: Statement, *, width: float) -> list[Flowable]:
    """The flowables of a statement: its tables (with notes) and the outcome of its checks."""
    story: list[Flowable] = []
    for table in statement.tables:
        if table.title:
            story += [gap(3), heading(table.title)]
        rows = [
            Row(
                line.kind,
                f"{line.code}  {line.label}" if line.code and line.kind == LINE else line.label,
                [_cell(a) for a in line.amounts],
                marked=line.marked,
                alert=line.alert,
            )
            for line in table.lines
        ]
        story.append(report_table(["", *table.columns], rows, width=width, groups=table.groups))
        for note in table.notes:
            story += [gap(1.5), paragraph(note, note=True)]
    if statement.checks:
        story.append(gap(3))
        checks = [
            check_line(label if ok else f"NOT BALANCED: {label.split(': ')[-1]} does not hold", ok=ok)
            for label, ok in statement.checks
        ]
        story.append(KeepTogether(checks))
    return story


def statement_pdf_render(
    out: IO[bytes],
    *,
    report: str,
    business_ids: Sequence[int] | None,
    period: Period,
    compare: str,
    generated_by: str,
    business_label: str | None = None,
) -> Statement:
    """Write the statement `report` ("profit_and_loss", ...) of the businesses (None: all, side by side) to `out`.

    Returns the statement it printed (its figures are the selectors'). Landscape when the widest
    table has more than four figure columns.
    """
    if business_label is None:
        if business_ids is None:
            business_label = CONSOLIDATED_LABEL
        else:
            names = Business.objects.filter(pk__in=business_ids).order_by("name").values_list("name", flat=True)
            business_label = ", ".join(names)
    statement = statement_build(
        report=report, business_ids=business_ids, business_label=business_label, period=period, compare=compare
    )
    header = PdfHeader(
        title=statement.title,
        business=business_label,
        period=statement.period_text,
        generated_by=generated_by,
        ledger=head_summary(business_ids),
        landscape=statement.figure_columns > LANDSCAPE_OVER,
    )
    pdf_render(out, header, statement_story(statement, width=content_width(header)))
    return statement


@job_kind(STATEMENT_PDF, label="PDF: financial statement", permission="accounts.view_reports")
def statement_pdf_job(ctx: JobContext) -> None:
    """Params {"report", "business": id or "all", "period", "date_from", "date_to", "compare"}.

    The person who asked must still hold accounts.view_reports and see the business (the owner, for
    "all"): permissions may have changed while the job waited. Idempotent: a re-run replaces the file.
    """
    params = ctx.params
    report = params.get("report", "")
    if report not in REPORT_TITLES:
        raise JobFailed(f"Unknown statement {report!r}.")
    try:
        period, compare = period_from_params(params)
    except (KeyError, ValueError) as exc:
        raise JobFailed(f"Bad period: {exc}") from exc
    user = ctx.launcher()
    if user is None or not user.is_active or not user.has_perm("accounts.view_reports"):
        raise JobFailed("The person who asked for this statement may no longer view reports.")
    business = str(params.get("business", ""))
    if business == ALL_BUSINESSES:
        if not sees_all_businesses(user):
            raise JobFailed("Only the owner may print the consolidated statements.")
        business_ids: list[int] | None = None
        label = CONSOLIDATED_LABEL
    else:
        if not business.isdigit() or int(business) not in visible_business_ids(user):
            raise JobFailed("The person who asked for this statement may not see these books.")
        business_ids = [int(business)]
        label = Business.objects.get(pk=int(business)).name
    ctx.progress(10, f"Reading the ledger: {REPORT_TITLES[report]}, {label}, {period.label}")
    buffer = io.BytesIO()
    statement_pdf_render(
        buffer,
        report=report,
        business_ids=business_ids,
        period=period,
        compare=compare,
        generated_by=user.get_full_name() or user.get_username(),
        business_label=label,
    )
    ctx.progress(90, "Saving the PDF")
    filename = statement_filename(report=report, business_label=label, period=period)
    ctx.save_result(filename, buffer.getvalue())
    ctx.progress(100, filename)

"""The owner's scheduled emails: the daily summary of the day that ended, and the weekly profit and loss.

What each holds (docs/emails.md):
- daily, for yesterday: takings per business and in all (cash, M-Pesa, on account), M-Pesa payments
  received, expenses, the closing (over/short, or "not closed"), the payments waiting for a person
  (now), the last backup's status; the daily summary PDF of every business attached. The figures
  of the body are those the PDF prints (the same `daily_summary` objects).
- weekly, for the Monday-Sunday week before the day it is sent: the profit and loss per business
  and consolidated, and the consolidated net profit beside the week before; the consolidated P&L
  PDF attached (the same `Statement` the body is written from).

When: each OwnerEmail row is its own schedule (enabled, recipients, Nairobi time, weekday). Every 5
minutes the `reports.owner_emails_due` task calls `owner_emails_send_due`, which sends each kind's
most recent scheduled email if the email log does not have it yet. A run missed at 06:30 (worker,
beat or Redis down) is made by the first run after it, at the latest when the next one is due; the
log's unique (kind, period) makes a second run, or two at once, a no-op. Only the most recent one is
caught up: after a day-long outage the owner gets the latest summary, not a pile of old ones.
"""

from __future__ import annotations

import datetime as dt
import io
import logging
from collections.abc import Sequence
from dataclasses import dataclass
from decimal import Decimal
from typing import Any

from django.conf import settings
from django.core.exceptions import ValidationError
from django.db import transaction
from django.template.loader import render_to_string
from django.utils import timezone
from django.utils.formats import date_format

from accounts.formatting import money
from accounts.periods import CUSTOM, PREVIOUS, Period
from accounts.statements import CONSOLIDATED_LABEL, LINE, SECTION, Statement, statement_filename
from backoffice.daily_summary import DailySummary, closing_label
from backoffice.emails import Attachment, EmailError, email_queue, email_requeue, recipients_parse, recipients_validate
from backoffice.models import (
    Backup,
    BackupState,
    EmailKind,
    EmailLog,
    OwnerEmail,
    OwnerEmailKind,
    VerifyState,
)
from tenancy.models import Business

logger = logging.getLogger(__name__)

ZERO = Decimal("0.00")
# What the data migration seeds; a row deleted by hand (or a test's flushed database) comes back so.
DEFAULTS = {
    OwnerEmailKind.DAILY: {"send_time": dt.time(6, 30), "weekday": 0},
    OwnerEmailKind.WEEKLY: {"send_time": dt.time(7, 0), "weekday": 0},
}
# A backup whose last good (succeeded and verified) copy is older than this is stale (the 26 hours).
GENERATED_BY = "the scheduled email"


@dataclass(frozen=True)
class Due:
    """The most recent scheduled send of one kind: when it was due and what it reports."""

    kind: str
    period: str  # EmailLog.period: "2026-11-29" (daily) or "2026-W48" (weekly)
    due_at: dt.datetime
    date_from: dt.date
    date_to: dt.date


@dataclass(frozen=True)
class BuiltEmail:
    subject: str
    body: str
    html: str
    attachment: Attachment


# ------------------------------------------------------------------------------------ schedule


def week_key(monday: dt.date) -> str:
    """ISO week: 2026-11-23 -> "2026-W48"."""
    iso = monday.isocalendar()
    return f"{iso.year}-W{iso.week:02d}"


def owner_email_due(*, config: OwnerEmail, now: dt.datetime) -> Due:
    """The most recent send of `config` scheduled at or before `now` (Nairobi time), and its period.

    Daily at 06:30: from 06:30 today it is today's, reporting yesterday; before 06:30, yesterday's,
    reporting the day before. Weekly on weekday W: the last W at its time, reporting the Monday-Sunday
    week that ended before that day.
    """
    local = timezone.localtime(now)
    today = local.date()
    reached = local.time() >= config.send_time
    if config.kind == OwnerEmailKind.DAILY:
        send_day = today if reached else today - dt.timedelta(days=1)
        day = send_day - dt.timedelta(days=1)
        return Due(config.kind, day.isoformat(), _at(send_day, config.send_time), day, day)
    send_day = today - dt.timedelta(days=(today.weekday() - config.weekday) % 7)
    if send_day == today and not reached:
        send_day -= dt.timedelta(days=7)
    sunday = send_day - dt.timedelta(days=send_day.weekday() + 1)
    monday = sunday - dt.timedelta(days=6)
    return Due(config.kind, week_key(monday), _at(send_day, config.send_time), monday, sunday)


def _at(day: dt.date, time: dt.time) -> dt.datetime:
    return timezone.make_aware(dt.datetime.combine(day, time))


def owner_emails_ensure() -> list[OwnerEmail]:
    """Both rows (daily, weekly), created with the seeded defaults if missing. Idempotent."""
    rows = []
    for kind, defaults in DEFAULTS.items():
        row, _ = OwnerEmail.objects.get_or_create(kind=kind, defaults=defaults)
        rows.append(row)
    return rows


def owner_emails_send_due(*, now: dt.datetime | None = None) -> list[EmailLog]:
    """Queue each enabled kind's most recent scheduled email (owner_email_due) that the email log does
    not have yet; returns the rows queued. Without recipients the row is recorded as failed.

    Safe to retry and to run twice at once: the OwnerEmail row is locked while its email is built, and
    the log's unique (kind, period) stands behind that. One kind failing to build does not stop the
    other; the error is raised after both were tried (so the periodic task shows it failed).
    """
    now = now or timezone.now()
    queued: list[EmailLog] = []
    errors: list[Exception] = []
    for config in owner_emails_ensure():
        try:
            log = _send_if_due(config_id=config.pk, now=now)
        except Exception as exc:  # one kind's failure must not stop the other kind's email
            logger.exception("owner email %s could not be built", config.kind)
            errors.append(exc)
            continue
        if log is not None:
            queued.append(log)
    if errors:
        raise errors[0]
    return queued


def _send_if_due(*, config_id: int, now: dt.datetime) -> EmailLog | None:
    with transaction.atomic():
        config = OwnerEmail.objects.select_for_update().get(pk=config_id)
        if not config.enabled:
            return None
        due = owner_email_due(config=config, now=now)
        if EmailLog.objects.filter(kind=config.kind, period=due.period).exists():
            return None
        built = (
            daily_email_build(day=due.date_from)
            if config.kind == OwnerEmailKind.DAILY
            else weekly_email_build(monday=due.date_from)
        )
        log, created = email_queue(
            kind=config.kind,
            period=due.period,
            subject=built.subject,
            recipients=recipients_parse(config.recipients),
            body=built.body,
            html=built.html,
            attachment=built.attachment,
        )
        return log if created else None


# ------------------------------------------------------------------------------------ the daily email


def _takings_line(s: DailySummary) -> list[str]:
    return [
        f"  Total takings: KES {money(s.takings_total)}",
        f"    Cash: KES {money(s.cash)}",
        f"    M-Pesa: KES {money(s.mpesa)}",
        f"    On account: KES {money(s.on_account)}",
        f"  M-Pesa payments received: {s.mpesa_count:,} worth KES {money(s.mpesa_value)}",
        f"  Expenses: {s.expenses_count:,} worth KES {money(s.expenses)}",
    ]


def _waiting_text(inbox: int, queries: int, suspense: int, amount: Decimal) -> str:
    return (
        f"{inbox:,} M-Pesa callback{'s' if inbox != 1 else ''} held, "
        f"{queries:,} receipt check{'s' if queries != 1 else ''} left to a person, "
        f"{suspense:,} payment{'s' if suspense != 1 else ''} in suspense (KES {money(amount)})"
    )


@dataclass(frozen=True)
class DailyTotals:
    cash: Decimal
    mpesa: Decimal
    on_account: Decimal
    total: Decimal
    mpesa_count: int
    mpesa_value: Decimal
    expenses_count: int
    expenses: Decimal
    closed: int
    businesses: int
    inbox_waiting: int
    status_queries_waiting: int
    suspense_count: int
    suspense_amount: Decimal


def daily_totals(summaries: Sequence[DailySummary]) -> DailyTotals:
    """The businesses' figures added up (the "All businesses" lines)."""

    def add(attr: str) -> Any:
        return sum((getattr(s, attr) for s in summaries), ZERO)

    return DailyTotals(
        cash=add("cash"),
        mpesa=add("mpesa"),
        on_account=add("on_account"),
        total=add("takings_total"),
        mpesa_count=sum(s.mpesa_count for s in summaries),
        mpesa_value=add("mpesa_value"),
        expenses_count=sum(s.expenses_count for s in summaries),
        expenses=add("expenses"),
        closed=sum(1 for s in summaries if s.closed),
        businesses=len(summaries),
        inbox_waiting=sum(s.inbox_waiting for s in summaries),
        status_queries_waiting=sum(s.status_queries_waiting for s in summaries),
        suspense_count=sum(s.suspense_count for s in summaries),
        suspense_amount=add("suspense_amount"),
    )


def daily_email_build(*, day: dt.date, now: dt.datetime | None = None) -> BuiltEmail:
    """The daily email of business day `day`, every business: subject, plain and HTML bodies, the PDF."""
    from backoffice.daily_summary_pdf import daily_summary_pdf_render  # ReportLab: not in web processes

    businesses = list(Business.objects.order_by("name"))
    buffer = io.BytesIO()
    summaries = daily_summary_pdf_render(buffer, businesses=businesses, day=day, generated_by=GENERATED_BY)
    totals = daily_totals(summaries)
    filename = f"daily-summary-all-{day.isoformat()}.pdf"
    long_day = date_format(day, "l j F Y")
    backup = _backup_line(now=now)
    subject = f"Daily summary {date_format(day, 'D j M Y')}: takings KES {money(totals.total)}"
    lines = [
        f"Daily summary of {long_day} (the business day that ended), every business.",
        "",
        "All businesses",
        f"  Total takings: KES {money(totals.total)}",
        f"    Cash: KES {money(totals.cash)}",
        f"    M-Pesa: KES {money(totals.mpesa)}",
        f"    On account: KES {money(totals.on_account)}",
        f"  M-Pesa payments received: {totals.mpesa_count:,} worth KES {money(totals.mpesa_value)}",
        f"  Expenses: {totals.expenses_count:,} worth KES {money(totals.expenses)}",
        f"  Closings: {totals.closed} of {totals.businesses} closed",
    ]
    for s in summaries:
        lines += ["", s.business, *_takings_line(s), f"  Closing: {closing_label(s)}"]
    lines += ["", "Waiting for a person (now)"]
    for s in summaries:
        waiting = _waiting_text(s.inbox_waiting, s.status_queries_waiting, s.suspense_count, s.suspense_amount)
        lines.append(f"  {s.business}: {waiting}")
    all_waiting = _waiting_text(
        totals.inbox_waiting, totals.status_queries_waiting, totals.suspense_count, totals.suspense_amount
    )
    lines += [
        f"  All businesses: {all_waiting}",
        "",
        backup,
        "",
        f"Attached: {filename}, the daily summary of every business (a section each, with stock and laundry).",
    ]
    html = render_to_string(
        "emails/daily.html",
        {
            "long_day": long_day,
            "summaries": [{"s": s, "closing": closing_label(s)} for s in summaries],
            "totals": totals,
            "backup": backup,
            "filename": filename,
        },
    )
    return BuiltEmail(subject, "\n".join(lines) + "\n", html, Attachment(filename, buffer.getvalue()))


# ------------------------------------------------------------------------------------ the weekly email


@dataclass(frozen=True)
class PlLine:
    kind: str  # accounts.statements: section, line, subtotal, total
    label: str
    amount: Decimal


@dataclass(frozen=True)
class PlColumn:
    """One column of the consolidated P&L: a business, or the total."""

    name: str
    lines: list[PlLine]
    total_income: Decimal
    total_expenses: Decimal
    net_income: Decimal


def pl_columns(statement: Statement) -> list[PlColumn]:
    """The consolidated P&L's first table, read per column (each business, then "Total"): its account
    lines with a figure, and the three totals."""
    table = statement.tables[0]
    columns = []
    for index, name in enumerate(table.columns):
        lines: list[PlLine] = []
        totals: dict[str, Decimal] = {}
        for line in table.lines:
            amount = line.amounts[index] if index < len(line.amounts) else None
            if line.key:
                totals[line.key] = amount or ZERO
            if line.kind == SECTION:
                lines.append(PlLine(SECTION, line.label, ZERO))
            elif line.kind == LINE and amount:
                lines.append(PlLine(LINE, line.label, amount))
        columns.append(PlColumn(name, lines, totals["total_income"], totals["total_expenses"], totals["net_income"]))
    return columns


def _comparison(statement: Statement) -> tuple[Decimal, Decimal] | None:
    """(net profit of the week before, change), from the consolidated comparison table."""
    for table in statement.tables[1:]:
        for line in table.lines:
            if line.key == "net_income":
                previous, change = line.amounts[1], line.amounts[2]
                return previous or ZERO, change or ZERO
    return None


def weekly_email_build(*, monday: dt.date) -> BuiltEmail:
    """The weekly email of the Monday-Sunday week from `monday`: the P&L per business and consolidated,
    compared with the week before; the consolidated P&L PDF (the same statement) attached."""
    from accounts.reports import statement_pdf_render  # ReportLab: not in web processes

    period = Period(CUSTOM, monday, monday + dt.timedelta(days=6))
    buffer = io.BytesIO()
    statement = statement_pdf_render(
        buffer,
        report="profit_and_loss",
        business_ids=None,
        period=period,
        compare=PREVIOUS,
        generated_by=GENERATED_BY,
        business_label=CONSOLIDATED_LABEL,
    )
    columns = pl_columns(statement)
    total = columns[-1]
    comparison = _comparison(statement)
    key = week_key(monday)
    dates = f"{date_format(period.date_from, 'l j F Y')} to {date_format(period.date_to, 'l j F Y')}"
    filename = statement_filename(report="profit_and_loss", business_label=CONSOLIDATED_LABEL, period=period)
    subject = f"Weekly profit and loss {key} ({period.dates}): net profit KES {money(total.net_income)}"
    lines = [
        f"Profit and loss of week {key}: {dates}, every business.",
        "",
        "All businesses",
        f"  Total income: KES {money(total.total_income)}",
        f"  Total expenses: KES {money(total.total_expenses)}",
        f"  Net profit (loss): KES {money(total.net_income)}",
    ]
    if comparison is not None:
        lines.append(f"  The week before: net profit (loss) KES {money(comparison[0])}, change {money(comparison[1])}")
    for column in columns[:-1]:
        lines += ["", column.name]
        for line in column.lines:
            lines.append(f"  {line.label}" if line.kind == SECTION else f"    {line.label}: KES {money(line.amount)}")
        lines += [
            f"  Total income: KES {money(column.total_income)}",
            f"  Total expenses: KES {money(column.total_expenses)}",
            f"  Net profit (loss): KES {money(column.net_income)}",
        ]
    lines += ["", f"Attached: {filename}, the consolidated profit and loss (a column per business)."]
    html = render_to_string(
        "emails/weekly.html",
        {
            "key": key,
            "dates": dates,
            "columns": columns,
            "businesses": columns[:-1],
            "total": total,
            "comparison": comparison,
            "filename": filename,
        },
    )
    return BuiltEmail(subject, "\n".join(lines) + "\n", html, Attachment(filename, buffer.getvalue()))


# ------------------------------------------------------------------------------------ backup line


def _ago(delta: dt.timedelta) -> str:
    hours = delta.total_seconds() / 3600
    if hours < 1:
        return f"{max(0, int(delta.total_seconds() // 60))} min ago"
    if hours < 48:
        return f"{int(hours)} h ago"
    return f"{int(hours // 24)} days ago"


def _when(moment: dt.datetime, now: dt.datetime) -> str:
    return f"{date_format(timezone.localtime(moment), 'j M Y H:i')} ({_ago(now - moment)})"


def _size(size: int | None) -> str:
    return f", {size / 1_000_000:,.1f} MB" if size else ""


def _backup_line(*, now: dt.datetime | None = None) -> str:
    """One line on the backups for the morning email: the last one and its fate, and the last good
    (succeeded and verified by a restore) one when that is another, marked STALE past 26 hours.
    Reads Backup directly (backoffice.backups may offer a richer status)."""
    now = now or timezone.now()
    last = Backup.objects.order_by("-started_at", "-id").first()
    if last is None:
        return "Backup: none recorded yet."
    when = _when(last.started_at, now)
    if last.state == BackupState.RUNNING:
        text = f"Backup: one running since {when}."
    elif last.state == BackupState.FAILED:
        text = f"Backup: the last one ({when}) FAILED: {(last.error or 'no error recorded').splitlines()[0][:200]}."
    elif last.verify_state == VerifyState.VERIFIED:
        text = f"Backup: last {when}, verified by a restore{_size(last.size_bytes)}."
    elif last.verify_state == VerifyState.FAILED:
        reason = (last.verify_message or "no reason recorded").splitlines()[0][:200]
        text = f"Backup: last {when}, its restore check FAILED: {reason}."
    else:
        text = f"Backup: last {when}, not verified yet{_size(last.size_bytes)}."
    good = (
        Backup.objects.filter(state=BackupState.SUCCEEDED, verify_state=VerifyState.VERIFIED)
        .order_by("-started_at", "-id")
        .first()
    )
    stale = good is None or now - good.started_at > dt.timedelta(hours=settings.BACKUP_STALE_HOURS)
    if good is None:
        text += " No verified backup yet: STALE."
    elif good.pk != last.pk:
        text += f" Last verified one: {_when(good.started_at, now)}{': STALE' if stale else ''}."
    elif stale:
        text += f" STALE: older than {settings.BACKUP_STALE_HOURS} hours."
    return text


# ------------------------------------------------------------------------------------ admin services


def owner_email_update(
    *, config: OwnerEmail, enabled: bool, recipients: str, send_time: dt.time, weekday: int
) -> OwnerEmail:
    """Save the owner's choices for one email: recipients (every address checked, one per line
    after), enabled, time (Nairobi) and weekday (weekly only). Raises ValidationError on a bad
    address or weekday. Takes effect at the next 5-minute run; idempotent."""
    addresses = recipients_validate(recipients)
    if not 0 <= weekday <= 6:
        raise ValidationError("The weekday must be from 0 (Monday) to 6 (Sunday).")
    config.enabled = enabled
    config.recipients = "\n".join(addresses)
    config.send_time = send_time.replace(second=0, microsecond=0)
    config.weekday = weekday
    config.save()
    return config


def owner_email_test_send(*, config: OwnerEmail, acting_user: Any) -> EmailLog:
    """Queue a short test email to `config`'s recipients now (the SMTP settings and the addresses,
    checked end to end); its fate shows in the email log. Raises EmailError without recipients.
    Each call sends one more test email."""
    recipients = recipients_parse(config.recipients)
    if not recipients:
        raise EmailError(f"{config}: no recipients to send a test to; add them first.")
    now = timezone.now()
    schedule = owner_email_schedule_text(config)
    body = (
        f"A test of the back office's email: the {config.get_kind_display().lower()} goes to "
        f"{', '.join(recipients)}, {schedule}{'' if config.enabled else ' (switched off at the moment)'}.\n\n"
        f"Sent at the request of {acting_user} on {date_format(timezone.localtime(now), 'j M Y H:i')}.\n"
    )
    log, _ = email_queue(
        kind=EmailKind.TEST,
        period=f"{config.kind} {now.isoformat()}",
        subject=f"Test: {config.get_kind_display()} from the back office",
        recipients=recipients,
        body=body,
    )
    return log


def owner_email_schedule_text(config: OwnerEmail) -> str:
    """ "daily at 06:30 (Nairobi)" / "on Mondays at 07:00 (Nairobi)"."""
    at = config.send_time.strftime("%H:%M")
    if config.kind == OwnerEmailKind.DAILY:
        return f"daily at {at} (Nairobi)"
    return f"on {config.get_weekday_display()}s at {at} (Nairobi)"


def email_send_again(*, email_id: int) -> EmailLog:
    """Send a failed email again: a daily or weekly email to its OwnerEmail's recipients as they are
    now (the fix for a mistyped address is to correct it, then send again), any other to its own.
    Raises EmailError when it cannot (emails.email_requeue)."""
    log = EmailLog.objects.filter(pk=email_id).first()
    if log is None:
        raise EmailError(f"Email #{email_id} does not exist.")
    if log.kind in (EmailKind.DAILY, EmailKind.WEEKLY):
        config = OwnerEmail.objects.filter(kind=log.kind).first()
        recipients = recipients_parse(config.recipients if config else "")
    else:
        recipients = recipients_parse(log.recipients)
    return email_requeue(email_id=email_id, recipients=recipients)

"""The owner's daily and weekly emails, read back from a real SMTP server: the subject, every figure of
the body (equal to the selectors' and to the rows'), the PDF attached (it opens, with the same
totals); when they are due, the catch-up of a missed send, and never twice."""

from __future__ import annotations

import datetime as dt
import io
import re
import threading
from decimal import Decimal
from io import StringIO
from pathlib import Path
from typing import Any

import pytest
import redis
from django.core.management import call_command
from django.db import connection
from django.utils import timezone
from django.utils.formats import date_format
from pypdf import PdfReader

from accounts.pdf import money
from accounts.selectors import income_statement, takings_by_business
from backoffice.daily_summary import closing_label, daily_summary
from backoffice.emails import email_deliver
from backoffice.models import (
    Backup,
    BackupState,
    EmailLog,
    EmailState,
    OwnerEmail,
    OwnerEmailKind,
    VerifyState,
)
from backoffice.owner_emails import (
    _backup_line,
    owner_email_due,
    owner_emails_ensure,
    owner_emails_send_due,
    week_key,
)
from celeryconf.app import app
from integrations.mpesa.models import InboxKind, InboxMessage, InboxState, Till
from integrations.mpesa.selectors import payments_received
from operations.selectors import expenses_of_day, sales_on_account
from tenancy.models import Business
from tests.backoffice.smtp_support import (
    SmtpServer,
    attachment_of,
    html_of,
    smtp_server,  # noqa: F401 - a fixture
    text_of,
)
from tests.backoffice.test_daily_summary import _independent
from tests.celery_support import WorkerProcess, wait_for, worker_env
from tests.factories.mpesa import unallocated_payment

D = Decimal
SUCCEEDED = re.compile(r"Task reports\.owner_emails_due\[[^\]]+\] succeeded")
NAIROBI = dt.timezone(dt.timedelta(hours=3))  # Africa/Nairobi: UTC+3, no summer time


def _pages(pdf: bytes) -> list[str]:
    return [" ".join(page.extract_text().split()) for page in PdfReader(io.BytesIO(pdf)).pages]


def block(body: str, title: str) -> list[str]:
    """The lines of the body's section headed `title` (up to the next blank line)."""
    lines = body.splitlines()
    start = lines.index(title)
    end = next((i for i in range(start + 1, len(lines)) if not lines[i].strip()), len(lines))
    return lines[start + 1 : end]


def configure(kind: str, *, recipients: str = "", enabled: bool = True, at: dt.time = dt.time(0, 0), weekday: int = 0):  # type: ignore[no-untyped-def]
    owner_emails_ensure()
    OwnerEmail.objects.filter(kind=kind).update(recipients=recipients, enabled=enabled, send_time=at, weekday=weekday)
    return OwnerEmail.objects.get(kind=kind)


def at(day: dt.date, hour: int, minute: int = 0) -> dt.datetime:
    return dt.datetime.combine(day, dt.time(hour, minute), tzinfo=NAIROBI)


def _waiting_fixtures() -> Business:
    """One payment in suspense and one callback held, at the retail shop."""
    retail = Business.objects.get(kind="retail_lpg")
    till = Till.objects.filter(business=retail).first()
    assert till is not None
    unallocated_payment(till, "SUSPENSE01", D("321.00"))
    InboxMessage.objects.create(
        till=till, kind=InboxKind.C2B_CONFIRMATION, daraja_id="held-1", body="{}", state=InboxState.NEEDS_ATTENTION
    )
    return retail


# ------------------------------------------------------------------------------------ the daily email


@pytest.mark.worker
@pytest.mark.slow
def test_the_daily_email_goes_out_through_a_worker_with_the_selectors_figures_and_the_pdf(
    transactional_db: None, clean_broker: redis.Redis, settings: Any, tmp_path: Path
) -> None:
    settings.MEDIA_ROOT = tmp_path / "media"
    call_command("seed_demo", "--days", "2", stdout=StringIO())
    retail = _waiting_fixtures()
    configure(OwnerEmailKind.DAILY, recipients="owner@example.com\npartner@example.com", at=dt.time(0, 0))
    configure(OwnerEmailKind.WEEKLY, enabled=False)
    day = timezone.localdate() - dt.timedelta(days=1)
    businesses = list(Business.objects.order_by("name"))

    server = SmtpServer().start()
    env = worker_env(MEDIA_ROOT=str(tmp_path / "worker-media"), **server.env())
    worker = WorkerProcess("emails", queues="reports,default", env=env).start()
    try:
        app.send_task("reports.owner_emails_due")  # routed to the reports queue by its name, as beat sends it
        [received] = server.recorder.wait(1)
        log = wait_for(lambda: EmailLog.objects.filter(kind="daily", state=EmailState.SENT).first(), 30, "sent")
        # Run again (beat's next tick): nothing new is sent.
        app.send_task("reports.owner_emails_due")
        wait_for(lambda: len(SUCCEEDED.findall(worker.output())) >= 2, 30, "the second run")
    finally:
        worker.stop()
        server.stop()
    assert len(server.recorder.messages) == 1 and EmailLog.objects.count() == 1
    assert (log.period, log.attempts, log.sent_at is not None) == (day.isoformat(), 1, True)

    message = received.message
    assert sorted(received.rcpt_tos) == ["owner@example.com", "partner@example.com"]
    body = text_of(message)
    takings = takings_by_business(business_ids=[b.pk for b in businesses], day=day)
    expected_total = D(0)
    seen = D(0)
    for business in businesses:
        lines = block(body, business.name)
        on_account = sales_on_account(business=business, day=day)
        total = takings[business.pk].cash + takings[business.pk].mpesa + on_account
        count, value = payments_received(
            business_id=business.pk, start=at(day, 0), end=at(day, 0) + dt.timedelta(days=1)
        )
        expenses = expenses_of_day(business=business, day=day)
        check = _independent(business, day)  # the rows themselves, summed in Python
        assert (takings[business.pk].cash, takings[business.pk].mpesa) == (check["cash"], check["mpesa"])
        assert (count, value, on_account) == (check["mpesa_count"], check["mpesa_value"], check["on_account"])
        assert lines == [
            f"  Total takings: KES {money(total)}",
            f"    Cash: KES {money(takings[business.pk].cash)}",
            f"    M-Pesa: KES {money(takings[business.pk].mpesa)}",
            f"    On account: KES {money(on_account)}",
            f"  M-Pesa payments received: {count:,} worth KES {money(value)}",
            f"  Expenses: {expenses.count:,} worth KES {money(expenses.total)}",
            f"  Closing: {closing_label(daily_summary(business=business, day=day))}",
        ]
        expected_total += total
        seen += total + value + expenses.total
    assert seen > 0  # the seeded day had activity: the comparisons above were not of zeros only
    assert message["Subject"] == f"Daily summary {date_format(day, 'D j M Y')}: takings KES {money(expected_total)}"
    assert block(body, "All businesses")[0] == f"  Total takings: KES {money(expected_total)}"
    waiting = block(body, "Waiting for a person (now)")
    assert (
        f"  {retail.name}: 1 M-Pesa callback held, 0 receipt checks left to a person, "
        "1 payment in suspense (KES 321.00)" in waiting
    )
    assert "Backup: none recorded yet." in body
    assert retail.name.replace("&", "&amp;") in html_of(message)

    filename, pdf = attachment_of(message)
    assert filename == f"daily-summary-all-{day.isoformat()}.pdf" and pdf.startswith(b"%PDF")
    pages = _pages(pdf)
    for business in businesses:
        text = " ".join(p for p in pages if f"{business.name} Daily summary" in p)
        total_line = block(body, business.name)[0].split("KES ")[1]
        assert f"Total takings {total_line}" in text, business


# ------------------------------------------------------------------------------------ the weekly email


@pytest.mark.django_db
@pytest.mark.slow
def test_the_weekly_email_is_the_pl_of_the_week_per_business_and_consolidated(
    smtp_server: SmtpServer,  # noqa: F811
    settings: Any,
    tmp_path: Path,
) -> None:
    settings.MEDIA_ROOT = tmp_path
    call_command("seed_demo", "--days", "3", stdout=StringIO())
    last = timezone.localdate() - dt.timedelta(days=1)
    monday = last - dt.timedelta(days=last.weekday())  # the week holding the last seeded day
    sunday = monday + dt.timedelta(days=6)
    configure(OwnerEmailKind.DAILY, enabled=False)
    configure(OwnerEmailKind.WEEKLY, recipients="owner@example.com", at=dt.time(7, 0), weekday=0)

    [log] = owner_emails_send_due(now=at(monday + dt.timedelta(days=7), 8, 0))
    assert (log.kind, log.period, log.state) == ("weekly", week_key(monday), EmailState.QUEUED)
    assert email_deliver(email_id=log.pk) == EmailState.SENT
    [received] = smtp_server.recorder.wait(1)
    body = text_of(received.message)

    businesses = list(Business.objects.order_by("name"))
    seen = D(0)
    for business in businesses:
        pl = income_statement(business_ids=[business.pk], date_from=monday, date_to=sunday)
        lines = block(body, business.name)
        assert lines[-3:] == [
            f"  Total income: KES {money(pl.total_income)}",
            f"  Total expenses: KES {money(pl.total_expenses)}",
            f"  Net profit (loss): KES {money(pl.net_income)}",
        ]
        for row in pl.income + pl.expenses:
            assert f"    {row.name}: KES {money(row.balance)}" in lines, (business, row.name)
        seen += pl.total_income
    assert seen > 0
    everything = income_statement(business_ids=None, date_from=monday, date_to=sunday)
    before = income_statement(
        business_ids=None, date_from=monday - dt.timedelta(days=7), date_to=sunday - dt.timedelta(days=7)
    )
    assert block(body, "All businesses") == [
        f"  Total income: KES {money(everything.total_income)}",
        f"  Total expenses: KES {money(everything.total_expenses)}",
        f"  Net profit (loss): KES {money(everything.net_income)}",
        f"  The week before: net profit (loss) KES {money(before.net_income)}, "
        f"change {money(everything.net_income - before.net_income)}",
    ]
    week_key_text = f"{monday.isocalendar().year}-W{monday.isocalendar().week:02d}"
    assert received.message["Subject"] == (
        f"Weekly profit and loss {week_key_text} ({monday.day} {monday:%b %Y} to {sunday.day} {sunday:%b %Y}): "
        f"net profit KES {money(everything.net_income)}"
    )
    filename, pdf = attachment_of(received.message)
    assert filename == f"profit-and-loss-all-businesses-consolidated-{monday}-to-{sunday}.pdf"
    text = " ".join(_pages(pdf))
    assert "Profit and loss" in text and "Net profit (loss) " in text
    for business in businesses:
        assert business.name in text
    assert money(everything.net_income) in text and money(everything.total_income) in text


# ------------------------------------------------------------------------------------ when


def _config(kind: str, at_time: dt.time, weekday: int = 0) -> OwnerEmail:
    return OwnerEmail(kind=kind, send_time=at_time, weekday=weekday)


def test_the_daily_email_due_is_todays_from_its_time_and_yesterdays_before() -> None:
    daily = _config(OwnerEmailKind.DAILY, dt.time(6, 30))
    monday = dt.date(2026, 11, 30)
    before = owner_email_due(config=daily, now=at(monday, 6, 29))
    assert (before.period, before.due_at) == ("2026-11-28", at(monday - dt.timedelta(days=1), 6, 30))
    after = owner_email_due(config=daily, now=at(monday, 6, 30))
    assert (after.period, after.date_from, after.due_at) == ("2026-11-29", dt.date(2026, 11, 29), at(monday, 6, 30))
    late = owner_email_due(config=daily, now=at(monday, 23, 59))
    assert late.period == "2026-11-29"
    # 03:00 UTC is 06:00 in Nairobi: the time is Nairobi's, whatever zone `now` comes in.
    utc = owner_email_due(config=daily, now=dt.datetime(2026, 11, 30, 3, 45, tzinfo=dt.UTC))
    assert utc.period == "2026-11-29"


@pytest.mark.parametrize(
    ("weekday", "now", "period", "monday"),
    [
        (0, at(dt.date(2026, 11, 30), 7, 0), "2026-W48", dt.date(2026, 11, 23)),  # Monday 07:00: the week just ended
        (0, at(dt.date(2026, 11, 30), 6, 59), "2026-W47", dt.date(2026, 11, 16)),  # a minute early: the one before
        (0, at(dt.date(2026, 12, 6), 22, 0), "2026-W48", dt.date(2026, 11, 23)),  # all week until the next Monday
        (2, at(dt.date(2026, 12, 2), 7, 0), "2026-W48", dt.date(2026, 11, 23)),  # a Wednesday: still the full week
        (6, at(dt.date(2026, 12, 6), 7, 0), "2026-W48", dt.date(2026, 11, 23)),  # Sunday: not the week still running
        (0, at(dt.date(2021, 1, 4), 7, 0), "2020-W53", dt.date(2020, 12, 28)),  # ISO week 53
        (0, at(dt.date(2025, 1, 6), 7, 0), "2025-W01", dt.date(2024, 12, 30)),  # week 1 starts in December
    ],
)
def test_the_weekly_email_reports_the_last_full_monday_to_sunday_week(
    weekday: int, now: dt.datetime, period: str, monday: dt.date
) -> None:
    due = owner_email_due(config=_config(OwnerEmailKind.WEEKLY, dt.time(7, 0), weekday), now=now)
    assert (due.period, due.date_from, due.date_to) == (period, monday, monday + dt.timedelta(days=6))
    assert due.date_from.weekday() == 0 and due.due_at <= now


@pytest.mark.django_db
def test_a_missed_send_goes_out_later_that_day_and_never_twice(water: Business, settings: Any, tmp_path: Path) -> None:
    settings.MEDIA_ROOT = tmp_path
    configure(OwnerEmailKind.DAILY, recipients="owner@example.com", at=dt.time(6, 30))
    configure(OwnerEmailKind.WEEKLY, enabled=False)
    today = dt.date(2026, 11, 30)
    # 06:00: yesterday's 06:30 email (for the 28th) was never made (the worker was down): made now.
    assert [log.period for log in owner_emails_send_due(now=at(today, 6, 0))] == ["2026-11-28"]
    assert owner_emails_send_due(now=at(today, 6, 5)) == []
    # The worker is down at 06:30 and back at 11:00: the email of the 29th goes out then ...
    assert [log.period for log in owner_emails_send_due(now=at(today, 11, 0))] == ["2026-11-29"]
    # ... and only then, however often the task runs (redelivered, or beat and a person at once).
    for minute in (5, 10, 15):
        assert owner_emails_send_due(now=at(today, 11, minute)) == []
    assert owner_emails_send_due(now=at(today, 23, 59)) == []
    assert sorted(EmailLog.objects.values_list("period", flat=True)) == ["2026-11-28", "2026-11-29"]
    # Moving the time after it was sent does not send the same day again.
    configure(OwnerEmailKind.DAILY, recipients="owner@example.com", at=dt.time(12, 0))
    assert owner_emails_send_due(now=at(today, 12, 5)) == []


@pytest.mark.django_db
def test_a_disabled_email_is_not_sent_and_no_recipients_is_recorded_as_failed(
    water: Business, settings: Any, tmp_path: Path
) -> None:
    settings.MEDIA_ROOT = tmp_path
    configure(OwnerEmailKind.DAILY, enabled=False)
    configure(OwnerEmailKind.WEEKLY, recipients="")  # enabled, nobody to send to
    [log] = owner_emails_send_due(now=at(dt.date(2026, 11, 30), 7, 5))
    assert (log.kind, log.state, log.attempts) == ("weekly", EmailState.FAILED, 0)
    assert "No recipients" in log.last_error and log.recipients == ""
    assert log.attachment.name.endswith(".pdf")  # kept: "Send again" after adding recipients sends it whole
    assert not EmailLog.objects.filter(kind="daily").exists()


@pytest.mark.django_db(transaction=True)
def test_two_runs_at_once_make_one_email(
    water: Business, settings: Any, tmp_path: Path, clean_broker: redis.Redis
) -> None:
    settings.MEDIA_ROOT = tmp_path
    configure(OwnerEmailKind.DAILY, recipients="owner@example.com", at=dt.time(6, 30))
    configure(OwnerEmailKind.WEEKLY, recipients="owner@example.com", at=dt.time(7, 0))
    now = at(dt.date(2026, 11, 30), 7, 5)
    results: list[Any] = []
    barrier = threading.Barrier(2)

    def run() -> None:
        try:
            barrier.wait(10)
            results.append(owner_emails_send_due(now=now))
        except Exception as exc:  # surfaced by the assertion below
            results.append(exc)
        finally:
            connection.close()

    threads = [threading.Thread(target=run) for _ in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert all(isinstance(r, list) for r in results) and len(results) == 2, results
    assert sorted(log.kind for r in results for log in r) == ["daily", "weekly"]  # each made once, by one run
    assert EmailLog.objects.count() == 2
    # Each queued its send once: two messages on the default queue, not four.
    assert clean_broker.llen("default") == 2


# ------------------------------------------------------------------------------------ the backup line


@pytest.mark.django_db
def test_the_backup_line_says_how_the_last_backup_went() -> None:
    now = at(dt.date(2026, 11, 30), 6, 30)
    assert _backup_line(now=now) == "Backup: none recorded yet."

    def backup(hours_ago: float, **fields: Any) -> Backup:
        return Backup.objects.create(started_at=now - dt.timedelta(hours=hours_ago), **fields)

    good = backup(4, state=BackupState.SUCCEEDED, verify_state=VerifyState.VERIFIED, size_bytes=12_300_000)
    assert _backup_line(now=now) == "Backup: last 30 Nov 2026 02:30 (4 h ago), verified by a restore, 12.3 MB."
    backup(1, state=BackupState.FAILED, error="pg_dump: error: connection refused\nmore")
    assert _backup_line(now=now) == (
        "Backup: the last one (30 Nov 2026 05:30 (1 h ago)) FAILED: pg_dump: error: connection refused. "
        "Last verified one: 30 Nov 2026 02:30 (4 h ago)."
    )
    Backup.objects.filter(pk=good.pk).update(started_at=now - dt.timedelta(hours=30))
    assert _backup_line(now=now).endswith("Last verified one: 29 Nov 2026 00:30 (30 h ago): STALE.")
    Backup.objects.all().delete()
    backup(2, state=BackupState.SUCCEEDED, verify_state=VerifyState.FAILED, verify_message="row counts differ")
    assert _backup_line(now=now) == (
        "Backup: last 30 Nov 2026 04:30 (2 h ago), its restore check FAILED: row counts differ. "
        "No verified backup yet: STALE."
    )
    Backup.objects.all().delete()
    backup(30, state=BackupState.SUCCEEDED, verify_state=VerifyState.VERIFIED)
    assert _backup_line(now=now).endswith("STALE: older than 26 hours.")
    backup(0.5, state=BackupState.RUNNING)
    assert _backup_line(now=now).startswith("Backup: one running since 30 Nov 2026 06:00 (30 min ago).")

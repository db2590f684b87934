"""Delivery of every email against a real SMTP server: retried with backoff while the server is down
(attempts counted, "failed" with the error after EMAIL_MAX_ATTEMPTS), failed at once on a 5xx
refusal, sent once however often its task is delivered; "send again"; the attachments' clean-up;
and the beat rows of the data migration."""

from __future__ import annotations

import datetime as dt
import os
import re
import time
from pathlib import Path
from typing import Any

import pytest
import redis
from django.core.exceptions import ValidationError
from django.utils import timezone
from django_celery_beat.models import PeriodicTask

from backoffice.emails import (
    Attachment,
    EmailError,
    EmailRetryError,
    email_deliver,
    email_files_cleanup,
    email_queue,
    email_requeue,
    emails_resend_stuck,
    recipients_parse,
    recipients_validate,
)
from backoffice.models import EmailLog, EmailState, OwnerEmail
from backoffice.owner_emails import email_send_again, owner_emails_ensure
from celeryconf.app import app
from tests.backoffice.smtp_support import (
    SmtpServer,
    attachment_of,
    free_port,
    smtp_server,  # noqa: F401 - a fixture
    text_of,
    use_smtp,
)
from tests.celery_support import WorkerProcess, wait_for, worker_env
from tests.migration_support import data_migration_apply

PDF = b"%PDF-1.4 test attachment"


def queue(period: str = "2026-11-29", recipients: list[str] | None = None, **kwargs: Any) -> EmailLog:
    log, created = email_queue(
        kind="daily",
        period=period,
        subject=f"Daily summary {period}",
        recipients=["owner@example.com"] if recipients is None else recipients,
        body="Total takings: KES 1,000.00\n",
        **kwargs,
    )
    assert created
    return log


@pytest.fixture
def media(settings: Any, tmp_path: Path) -> Path:
    settings.MEDIA_ROOT = tmp_path / "media"
    return Path(settings.MEDIA_ROOT)


# ------------------------------------------------------------------------------------ addresses


def test_recipients_are_parsed_from_any_separator_and_bad_ones_are_named() -> None:
    assert recipients_parse("a@example.com, b@example.com;c@example.com\n\nA@example.com  d@example.com") == [
        "a@example.com",
        "b@example.com",
        "c@example.com",
        "d@example.com",
    ]
    assert recipients_validate("owner@example.com\npartner@example.co.ke") == [
        "owner@example.com",
        "partner@example.co.ke",
    ]
    with pytest.raises(ValidationError) as raised:
        recipients_validate("owner@ ok@example.com @example.com owner.example.com")
    assert raised.value.messages == ["Not an email address: owner@, @example.com, owner.example.com"]


# ------------------------------------------------------------------------------------ delivery in this process


@pytest.mark.django_db
def test_an_email_reaches_the_server_with_its_attachment_and_html(smtp_server: SmtpServer, media: Path) -> None:  # noqa: F811
    log = queue(attachment=Attachment("summary.pdf", PDF), html="<p>Total takings</p>")
    assert email_deliver(email_id=log.pk) == EmailState.SENT
    [received] = smtp_server.recorder.wait(1)
    assert received.rcpt_tos == ["owner@example.com"] and received.message["Subject"] == "Daily summary 2026-11-29"
    assert text_of(received.message).splitlines() == ["Total takings: KES 1,000.00"]
    assert attachment_of(received.message) == ("summary.pdf", PDF)
    assert received.message.get_body(preferencelist=("html",)) is not None
    log.refresh_from_db()
    assert (log.state, log.attempts, log.last_error) == (EmailState.SENT, 1, "") and log.sent_at is not None
    # Delivered again (a redelivered task): not sent twice.
    # (The server records a message before it answers 250, so a second one would be there now.)
    assert email_deliver(email_id=log.pk) == EmailState.SENT
    assert len(smtp_server.recorder.messages) == 1


@pytest.mark.django_db
def test_smtp_down_is_retried_counted_and_then_failed_with_the_error(settings: Any, media: Path) -> None:
    use_smtp(settings, free_port())  # nothing listens there
    settings.EMAIL_MAX_ATTEMPTS = 3
    log = queue()
    for attempt in (1, 2):
        with pytest.raises(EmailRetryError) as raised:
            email_deliver(email_id=log.pk)
        assert raised.value.attempts == attempt
        log.refresh_from_db()
        assert (log.state, log.attempts) == (EmailState.RETRYING, attempt)
        assert "ConnectionRefusedError" in log.last_error
    assert email_deliver(email_id=log.pk) == EmailState.FAILED
    log.refresh_from_db()
    assert (log.state, log.attempts, log.sent_at) == (EmailState.FAILED, 3, None)
    assert "ConnectionRefusedError" in log.last_error
    assert email_deliver(email_id=log.pk) == EmailState.FAILED  # a late redelivery changes nothing
    log.refresh_from_db()
    assert log.attempts == 3


@pytest.mark.django_db
@pytest.mark.parametrize(
    ("rcpt_reply", "data_reply", "state", "error"),
    [
        ("550 5.1.1 No such mailbox", "", EmailState.FAILED, "550"),
        ("", "554 5.7.1 Message rejected as spam", EmailState.FAILED, "554"),
        ("451 4.3.0 Try again later", "", EmailState.RETRYING, "451"),  # temporary: retried
    ],
)
def test_a_5xx_refusal_fails_at_once_and_a_4xx_is_retried(
    smtp_server: SmtpServer,  # noqa: F811
    media: Path,
    rcpt_reply: str,
    data_reply: str,
    state: str,
    error: str,
) -> None:
    smtp_server.recorder.rcpt_reply, smtp_server.recorder.data_reply = rcpt_reply, data_reply
    log = queue()
    if state == EmailState.RETRYING:
        with pytest.raises(EmailRetryError):
            email_deliver(email_id=log.pk)
    else:
        assert email_deliver(email_id=log.pk) == EmailState.FAILED
    log.refresh_from_db()
    assert (log.state, log.attempts) == (state, 1) and error in log.last_error
    assert smtp_server.recorder.messages == []


@pytest.mark.django_db
def test_an_attachment_gone_from_the_disk_fails_the_email_at_once(smtp_server: SmtpServer, media: Path) -> None:  # noqa: F811
    log = queue(attachment=Attachment("summary.pdf", PDF))
    (media / log.attachment.name).unlink()
    assert email_deliver(email_id=log.pk) == EmailState.FAILED
    log.refresh_from_db()
    assert (log.state, log.attempts) == (EmailState.FAILED, 1)
    assert log.last_error.startswith("Attachment unreadable: FileNotFoundError")
    assert smtp_server.recorder.messages == []


@pytest.mark.django_db(transaction=True)
def test_no_recipients_is_recorded_as_failed_and_nothing_is_queued(clean_broker: redis.Redis, media: Path) -> None:
    log = queue(recipients=[])
    assert (log.state, log.attempts, log.recipients) == (EmailState.FAILED, 0, "")
    assert log.last_error.startswith("No recipients")
    assert clean_broker.llen("default") == 0
    # The same (kind, period) again: the existing row, nothing sent.
    again, created = email_queue(kind="daily", period=log.period, subject="x", recipients=["a@example.com"], body="")
    assert (again.pk, created, again.state) == (log.pk, False, EmailState.FAILED)
    assert clean_broker.llen("default") == 0


# ------------------------------------------------------------------------------------ through a worker


SENT = re.compile(r"Task backoffice\.send_email\[[^\]]+\] succeeded")


@pytest.mark.worker
def test_a_worker_retries_while_smtp_is_down_and_sends_when_it_is_back(
    transactional_db: None, clean_broker: redis.Redis, media: Path
) -> None:
    port = free_port()
    env = worker_env(
        MEDIA_ROOT=str(media),
        EMAIL_HOST="127.0.0.1",
        EMAIL_PORT=str(port),
        EMAIL_USE_TLS="0",
        EMAIL_MAX_ATTEMPTS="8",
        EMAIL_RETRY_BACKOFF_SECONDS="1",
    )
    worker = WorkerProcess("mail", queues="default", env=env).start()
    server = SmtpServer(port)
    try:
        log = queue()  # committed: the send is queued now
        wait_for(
            lambda: EmailLog.objects.filter(pk=log.pk, state=EmailState.RETRYING, attempts__gte=1).exists(),
            30,
            "a failed first attempt",
        )
        failed_attempts = EmailLog.objects.get(pk=log.pk).attempts
        server.start()
        [received] = server.recorder.wait(1)
        wait_for(lambda: EmailLog.objects.filter(pk=log.pk, state=EmailState.SENT).exists(), 30, "sent")
    finally:
        worker.stop()
        server.stop()
    log.refresh_from_db()
    assert log.attempts > failed_attempts >= 1 and log.sent_at is not None
    assert "ConnectionRefusedError" in log.last_error  # the last error is kept for the record
    assert received.message["Subject"] == log.subject


@pytest.mark.worker
def test_a_send_task_delivered_twice_sends_once(transactional_db: None, clean_broker: redis.Redis, media: Path) -> None:
    server = SmtpServer().start()
    worker = WorkerProcess("mail", queues="default", env=worker_env(MEDIA_ROOT=str(media), **server.env())).start()
    try:
        log = queue(attachment=Attachment("summary.pdf", PDF))
        app.send_task("backoffice.send_email", args=[log.pk], queue="default")  # a second delivery
        wait_for(lambda: len(SENT.findall(worker.output())) >= 2, 30, "both deliveries to run")
    finally:
        worker.stop()
        server.stop()
    assert len(server.recorder.messages) == 1
    assert attachment_of(server.recorder.messages[0].message) == ("summary.pdf", PDF)
    log.refresh_from_db()
    assert (log.state, log.attempts) == (EmailState.SENT, 1)


@pytest.mark.worker
def test_an_email_whose_message_redis_lost_is_sent_by_the_sweeper(
    transactional_db: None, clean_broker: redis.Redis, media: Path
) -> None:
    """Redis restarted without persistence: the row says queued, no message exists. The 5-minute
    check enqueues it again once it has not moved for longer than any retry could wait."""
    log = queue()
    assert clean_broker.llen("default") == 1
    clean_broker.delete("default")  # the message is gone, the row stays queued
    assert emails_resend_stuck() == []  # too young: its message may still be on its way
    EmailLog.objects.filter(pk=log.pk).update(updated_at=timezone.now() - dt.timedelta(hours=1))
    fresh = queue(period="2026-11-30")
    clean_broker.delete("default")  # lost too, but recent: left alone this time
    server = SmtpServer().start()
    worker = WorkerProcess("mail", queues="default", env=worker_env(MEDIA_ROOT=str(media), **server.env())).start()
    try:
        assert emails_resend_stuck() == [log.pk]
        wait_for(lambda: EmailLog.objects.filter(pk=log.pk, state=EmailState.SENT).exists(), 30, "the resent email")
    finally:
        worker.stop()
        server.stop()
    assert [m.message["Subject"] for m in server.recorder.messages] == [log.subject]
    fresh.refresh_from_db()
    assert fresh.state == EmailState.QUEUED


# ------------------------------------------------------------------------------------ send again


@pytest.mark.django_db
def test_send_again_takes_the_owner_emails_current_recipients_and_refuses_what_is_not_failed(
    smtp_server: SmtpServer,  # noqa: F811
    media: Path,
) -> None:
    owner_emails_ensure()
    log = queue(recipients=[])  # failed: nobody to send to
    with pytest.raises(EmailError, match="no recipients"):
        email_send_again(email_id=log.pk)
    OwnerEmail.objects.filter(kind="daily").update(recipients="owner@example.com\npartner@example.com")
    again = email_send_again(email_id=log.pk)
    assert (again.state, again.attempts, again.last_error) == (EmailState.QUEUED, 0, "")
    assert recipients_parse(again.recipients) == ["owner@example.com", "partner@example.com"]
    with pytest.raises(EmailError, match="not failed"):
        email_send_again(email_id=log.pk)  # a second click
    assert email_deliver(email_id=log.pk) == EmailState.SENT
    assert sorted(smtp_server.recorder.wait(1)[0].rcpt_tos) == ["owner@example.com", "partner@example.com"]
    with pytest.raises(EmailError, match="not failed"):
        email_send_again(email_id=log.pk)
    # Another kind (a test email, an alert) goes again to its own recipients.
    other, _ = email_queue(kind="alert", period="disk:1", subject="Disk", recipients=["ops@example.com"], body="")
    EmailLog.objects.filter(pk=other.pk).update(state=EmailState.FAILED)
    assert email_send_again(email_id=other.pk).recipients == "ops@example.com"


# ------------------------------------------------------------------------------------ clean-up


def _age(path: Path, days: float) -> None:
    when = time.time() - days * 86400
    os.utime(path, (when, when))


@pytest.mark.django_db
def test_old_attachments_are_deleted_rows_kept_and_such_an_email_is_not_sent_again(media: Path, settings: Any) -> None:
    settings.JOB_FILES_KEEP_DAYS = 7
    now = timezone.now()
    old = queue("2026-11-01", attachment=Attachment("old.pdf", PDF))
    old_failed = queue("2026-11-02", attachment=Attachment("old-failed.pdf", PDF))
    old_retrying = queue("2026-11-03", attachment=Attachment("old-retrying.pdf", PDF))
    fresh = queue("2026-11-28", attachment=Attachment("fresh.pdf", PDF))
    EmailLog.objects.filter(pk=old.pk).update(state=EmailState.SENT)
    EmailLog.objects.filter(pk=old_failed.pk).update(state=EmailState.FAILED)
    EmailLog.objects.filter(pk=old_retrying.pk).update(state=EmailState.RETRYING)
    EmailLog.objects.filter(pk=fresh.pk).update(state=EmailState.SENT)
    EmailLog.objects.filter(pk__in=[old.pk, old_failed.pk, old_retrying.pk]).update(
        created_at=now - dt.timedelta(days=8)
    )
    paths = {log.pk: media / log.attachment.name for log in (old, old_failed, old_retrying, fresh)}
    orphan_old, orphan_young = media / "emails/2026/10/lost.pdf", media / "emails/2026/11/being-written.pdf"
    for orphan in (orphan_old, orphan_young):
        orphan.parent.mkdir(parents=True, exist_ok=True)
        orphan.write_bytes(PDF)
    _age(orphan_old, 2)
    _age(paths[fresh.pk], 5)  # old on disk, but its row is fresh

    result = email_files_cleanup(now=now)
    assert (result.expired, result.orphans) == (2, 1)
    assert not paths[old.pk].exists() and not paths[old_failed.pk].exists() and not orphan_old.exists()
    assert paths[old_retrying.pk].exists() and paths[fresh.pk].exists() and orphan_young.exists()
    old.refresh_from_db()
    assert old.attachment.name == "" and old.attachment_deleted_at == now and old.state == EmailState.SENT
    with pytest.raises(EmailError, match="attachment was deleted"):
        email_requeue(email_id=old_failed.pk, recipients=["owner@example.com"])
    again = email_files_cleanup(now=now)  # idempotent
    assert (again.expired, again.orphans) == (0, 0)


@pytest.mark.django_db
def test_the_clean_up_has_nothing_to_do_without_an_emails_directory(media: Path) -> None:
    assert not (media / "emails").exists()
    result = email_files_cleanup()
    assert (result.expired, result.orphans) == (0, 0)


# ------------------------------------------------------------------------------------ beat rows

MIGRATION = ("backoffice", "0003_owner_email_schedules")


def apply_schedule_migration() -> None:
    data_migration_apply(MIGRATION)


@pytest.mark.django_db(transaction=True)
def test_the_migration_seeds_both_emails_and_their_beat_rows() -> None:
    apply_schedule_migration()
    apply_schedule_migration()  # safe to run twice
    rows = {row.kind: row for row in OwnerEmail.objects.all()}
    assert set(rows) == {"daily", "weekly"}
    assert (rows["daily"].send_time, rows["daily"].recipients, rows["daily"].enabled) == (dt.time(6, 30), "", True)
    assert (rows["weekly"].send_time, rows["weekly"].weekday) == (dt.time(7, 0), 0)

    due = PeriodicTask.objects.get(task="reports.owner_emails_due")
    assert due.enabled and due.queue == "reports" and due.crontab is None and due.expire_seconds == 300
    assert (due.interval.every, due.interval.period) == (5, "minutes")
    cleanup = PeriodicTask.objects.get(task="backoffice.email_files_cleanup")
    assert cleanup.enabled and cleanup.queue == "default" and cleanup.interval is None
    crontab = cleanup.crontab
    assert (crontab.minute, crontab.hour, crontab.day_of_week, str(crontab.timezone)) == (
        "40",
        "3",
        "*",
        "Africa/Nairobi",
    )
    app.loader.import_default_modules()
    assert {"reports.owner_emails_due", "backoffice.email_files_cleanup", "backoffice.send_email"} <= set(app.tasks)
    # Whoever sends the due check (beat, the admin's "Run selected tasks"), it goes to the reports worker.
    assert app.amqp.router.route({}, "reports.owner_emails_due")["queue"].name == "reports"
    assert app.amqp.router.route({}, "backoffice.send_email")["queue"].name == "default"

"""Every email the back office sends goes through here: logged, sent by a worker, retried with backoff.

`email_queue` records the email (an EmailLog row, unique per kind and period, so the daily email of
a day is queued once however often its task runs) and sends it to the default queue after commit.
`email_deliver` (the task's body) sends it over SMTP; a failure is recorded on the row and retried
with backoff until EMAIL_MAX_ATTEMPTS, then the row stays "failed" with the error for a person.

A refusal that cannot pass (an SMTP 5xx reply: no such mailbox, relaying denied, authentication
failed) fails the email at once: retrying the same message would get the same answer. "Send again"
(`email_requeue`, an admin action) queues a failed email once more, after the cause was fixed.

Delivery is at least once: a worker killed between the SMTP server's "250 OK" and the row's update
sends the email again on redelivery. Two deliveries at the same time cannot both send: the row is
locked while it is sent.

Attachments are kept JOB_FILES_KEEP_DAYS days (`email_files_cleanup`, daily on beat); the row stays.
"""

from __future__ import annotations

import datetime as dt
import logging
import re
import smtplib
from dataclasses import dataclass

from django.conf import settings
from django.core.exceptions import ValidationError
from django.core.files.base import ContentFile
from django.core.files.storage import Storage
from django.core.mail import EmailMessage, EmailMultiAlternatives, get_connection
from django.core.validators import validate_email
from django.db import transaction
from django.utils import timezone

from backoffice.models import EmailLog, EmailState
from jobs.cleanup import orphan_files_delete

logger = logging.getLogger(__name__)

# Transient: the server or the network; anything else is a bug and fails at once.
RETRYABLE = (smtplib.SMTPException, OSError)


@dataclass(frozen=True)
class Attachment:
    filename: str
    content: bytes
    mimetype: str = "application/pdf"


class EmailError(Exception):
    """An email cannot be (re)sent as asked; the message says why, for a person."""


def recipients_parse(text: str) -> list[str]:
    """Addresses from a text field: separated by commas, semicolons, spaces or new lines; no duplicates."""
    seen: list[str] = []
    for part in re.split(r"[\s,;]+", text or ""):
        if part and part.lower() not in (s.lower() for s in seen):
            seen.append(part)
    return seen


def recipients_validate(text: str) -> list[str]:
    """The addresses of `text` (recipients_parse), each checked. Raises ValidationError naming every
    bad one, so a typo is refused where it is typed rather than found by a bounce at 06:30."""
    addresses = recipients_parse(text)
    bad = []
    for address in addresses:
        try:
            validate_email(address)
        except ValidationError:
            bad.append(address)
    if bad:
        raise ValidationError(
            "Not an email address: %(bad)s", code="invalid_recipients", params={"bad": ", ".join(bad)}
        )
    return addresses


def email_queue(
    *,
    kind: str,
    period: str,
    subject: str,
    recipients: list[str],
    body: str,
    attachment: Attachment | None = None,
    html: str = "",
) -> tuple[EmailLog, bool]:
    """Record an email and send it from a worker after commit. Returns (row, created).

    Idempotent per (kind, period): when a row exists it is returned untouched and nothing is sent
    again (created False). Without recipients the row is recorded as failed, so the log says why
    nobody got it. `html`, when given, is sent beside `body` as an alternative part.
    """
    with transaction.atomic():
        log, created = EmailLog.objects.get_or_create(
            kind=kind,
            period=period,
            defaults={"subject": subject[:255], "recipients": ", ".join(recipients), "body": body, "body_html": html},
        )
        if not created:
            return log, False
        if attachment is not None:
            log.attachment.save(attachment.filename, ContentFile(attachment.content), save=False)
        if not recipients:
            log.state = EmailState.FAILED
            log.last_error = "No recipients: set them in the admin (Owner emails or the alert rule)."
        log.save()
        if recipients:
            _send_after_commit(log.pk)
    return log, True


def _send_after_commit(email_id: int) -> None:
    from backoffice.tasks import send_email

    transaction.on_commit(lambda: send_email.delay(email_id))


# An email still queued this long after its last change lost its message (Redis restarted without
# it, the publish failed after commit): the sweeper sends it again. Longer than any retry's countdown.
STUCK_AFTER = dt.timedelta(minutes=15)


def emails_resend_stuck(*, now: dt.datetime | None = None) -> list[int]:
    """Enqueue again every email queued or retrying whose row has not moved for STUCK_AFTER plus the
    longest retry countdown. Returns their ids. Safe beside a message that was not lost after all:
    `email_deliver` locks the row and sends only what is not sent yet."""
    from celeryconf.app import LIMITS

    now = now or timezone.now()
    cutoff = now - STUCK_AFTER - dt.timedelta(seconds=LIMITS.max_countdown)
    ids = list(
        EmailLog.objects.filter(state__in=(EmailState.QUEUED, EmailState.RETRYING), updated_at__lt=cutoff)
        .order_by("pk")
        .values_list("pk", flat=True)[:500]
    )
    for email_id in ids:
        logger.warning("email %s waited since before %s without a send: enqueued again", email_id, cutoff)
        _send_after_commit(email_id)
    return ids


def email_requeue(*, email_id: int, recipients: list[str]) -> EmailLog:
    """Send failed email `email_id` again, to `recipients` (the caller decides: an owner email's
    current recipients, say): attempts start again from zero, the last error is cleared and a
    worker sends it after commit. Raises EmailError when it is not failed (a second click, or it was
    sent meanwhile), has nobody to go to, or its attachment was already deleted by the clean-up.
    Safe to call twice: the second call finds it queued and refuses."""
    with transaction.atomic():
        log = EmailLog.objects.select_for_update().filter(pk=email_id).first()
        if log is None:
            raise EmailError(f"Email #{email_id} does not exist.")
        if log.state != EmailState.FAILED:
            raise EmailError(f'"{log.subject}" is {log.get_state_display().lower()}, not failed: not sent again.')
        if log.attachment_deleted_at is not None:
            raise EmailError(f'"{log.subject}": its attachment was deleted by the clean-up; not sent again.')
        if not recipients:
            raise EmailError(f'"{log.subject}" has no recipients: set them first.')
        log.recipients = ", ".join(recipients)
        log.state, log.attempts, log.last_error = EmailState.QUEUED, 0, ""
        log.save(update_fields=["recipients", "state", "attempts", "last_error", "updated_at"])
        _send_after_commit(log.pk)
    return log


def _permanent(exc: BaseException) -> bool:
    """An SMTP refusal that will not pass by itself: a 5xx reply (RFC 5321), for the message, the
    sender, the login or every recipient."""
    if isinstance(exc, smtplib.SMTPRecipientsRefused):
        codes = [code for code, _ in exc.recipients.values()]
        return bool(codes) and all(500 <= code < 600 for code in codes)
    if isinstance(exc, smtplib.SMTPResponseException):
        return 500 <= exc.smtp_code < 600
    return False


def _message(log: EmailLog) -> EmailMessage:
    to = recipients_parse(log.recipients)
    message: EmailMessage
    if log.body_html:
        message = EmailMultiAlternatives(log.subject, log.body, settings.DEFAULT_FROM_EMAIL, to)
        message.attach_alternative(log.body_html, "text/html")
    else:
        message = EmailMessage(log.subject, log.body, settings.DEFAULT_FROM_EMAIL, to)
    if log.attachment:
        with log.attachment.open("rb") as f:
            content = f.read()
        name = log.attachment.name.rsplit("/", 1)[-1]
        message.attach(name, content, "application/pdf" if name.endswith(".pdf") else None)
    return message


class EmailRetryError(Exception):
    """The send failed for a reason that may pass; the task delivers it again later."""

    def __init__(self, attempts: int, error: str) -> None:
        super().__init__(error)
        self.attempts = attempts


def email_deliver(*, email_id: int) -> str:
    """Send EmailLog `email_id` once. Returns its state. Safe to deliver twice: a sent or finally
    failed email is left alone. Raises EmailRetryError when the caller should try again later."""
    with transaction.atomic():
        log = EmailLog.objects.select_for_update().filter(pk=email_id).first()
        if log is None:
            logger.warning("email %s vanished; nothing to send", email_id)
            return "missing"
        if log.state in (EmailState.SENT, EmailState.FAILED):
            return str(log.state)
        log.attempts += 1
        try:
            message = _message(log)
        except OSError as exc:  # its attachment gone from the disk: no retry brings it back
            log.state, log.last_error = EmailState.FAILED, f"Attachment unreadable: {type(exc).__name__}: {exc}"[:2000]
            log.save(update_fields=["attempts", "last_error", "state", "updated_at"])
            logger.error("email %s failed: %s", log.pk, log.last_error)
            return str(log.state)
        try:
            get_connection(timeout=settings.EMAIL_TIMEOUT).send_messages([message])
        except RETRYABLE as exc:
            log.last_error = f"{type(exc).__name__}: {exc}"[:2000]
            if _permanent(exc) or log.attempts >= settings.EMAIL_MAX_ATTEMPTS:
                log.state = EmailState.FAILED
                log.save(update_fields=["attempts", "last_error", "state", "updated_at"])
                logger.error("email %s failed after %s attempts: %s", log.pk, log.attempts, log.last_error)
                return str(log.state)
            log.state = EmailState.RETRYING
            log.save(update_fields=["attempts", "last_error", "state", "updated_at"])
            error, attempts = log.last_error, log.attempts
        else:
            log.state, log.sent_at = EmailState.SENT, timezone.now()
            log.save(update_fields=["attempts", "state", "sent_at", "updated_at"])
            return str(log.state)
    raise EmailRetryError(attempts, error)


# ------------------------------------------------------------------------------ attachments' clean-up

# Where attachments live in the storage (EmailLog.attachment's upload_to starts with it).
EMAILS_DIR = "emails"
BATCH = 500


@dataclass(frozen=True)
class EmailCleanupResult:
    expired: int
    orphans: int


def _storage() -> Storage:
    return EmailLog._meta.get_field("attachment").storage  # type: ignore[attr-defined,no-any-return]


def email_files_cleanup(*, now: dt.datetime | None = None) -> EmailCleanupResult:
    """Delete the attachments of emails made more than JOB_FILES_KEEP_DAYS days ago (the row keeps
    its subject, body and fate, with attachment_deleted_at set), then files under emails/ older than
    a day that no row points to (a transaction rolled back after the file was written). An email
    still queued or retrying keeps its file whatever its age. Idempotent; safe beside a send."""
    now = now or timezone.now()
    storage = _storage()
    cutoff = now - dt.timedelta(days=settings.JOB_FILES_KEEP_DAYS)
    expired = 0
    old = (
        EmailLog.objects.filter(created_at__lte=cutoff, state__in=[EmailState.SENT, EmailState.FAILED])
        .exclude(attachment="")
        .order_by("pk")
    )
    for log in old.only("pk", "attachment").iterator(chunk_size=BATCH):
        name = log.attachment.name
        # Only if the row still points to that file and is not being sent again meanwhile.
        cleared = EmailLog.objects.filter(
            pk=log.pk, attachment=name, state__in=[EmailState.SENT, EmailState.FAILED]
        ).update(attachment="", attachment_deleted_at=now, updated_at=now)
        if cleared:
            storage.delete(name)  # no error for a file already gone
            expired += 1
    orphans = orphan_files_delete(
        storage=storage,
        directory=EMAILS_DIR,
        referenced=lambda names: set(
            EmailLog.objects.filter(attachment__in=names).values_list("attachment", flat=True)
        ),
        now=now,
    )
    logger.info("email attachments: %s expired, %s orphans deleted", expired, orphans)
    return EmailCleanupResult(expired=expired, orphans=orphans)

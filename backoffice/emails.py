"""Every email the back office sends goes through here: logged, sent by a worker, retried with backoff.

`email_queue` records the email (an EmailLog row, unique per kind and period, so the daily email of
a day is queued once however often its task runs) and sends it to the default queue after commit.
`email_deliver` (the task's body) sends it over SMTP; a failure is recorded on the row and retried
with backoff until EMAIL_MAX_ATTEMPTS, then the row stays "failed" with the error for a person.

Delivery is at least once: a worker killed between the SMTP server's "250 OK" and the row's update
sends the email again on redelivery. Two deliveries at the same time cannot both send: the row is
locked while it is sent.
"""

from __future__ import annotations

import logging
import re
import smtplib
from dataclasses import dataclass

from django.conf import settings
from django.core.files.base import ContentFile
from django.core.mail import EmailMessage, get_connection
from django.db import transaction
from django.utils import timezone

from backoffice.models import EmailLog, EmailState

logger = logging.getLogger(__name__)

# Transient: the server or the network; anything else is a bug and fails at once.
RETRYABLE = (smtplib.SMTPException, OSError)


@dataclass(frozen=True)
class Attachment:
    filename: str
    content: bytes
    mimetype: str = "application/pdf"


def recipients_parse(text: str) -> list[str]:
    """Addresses from a text field: separated by commas, semicolons, spaces or new lines; no duplicates."""
    seen: list[str] = []
    for part in re.split(r"[\s,;]+", text or ""):
        if part and part.lower() not in (s.lower() for s in seen):
            seen.append(part)
    return seen


def email_queue(
    *,
    kind: str,
    period: str,
    subject: str,
    recipients: list[str],
    body: str,
    attachment: Attachment | None = None,
) -> tuple[EmailLog, bool]:
    """Record an email and send it from a worker after commit. Returns (row, created).

    Idempotent per (kind, period): when a row exists it is returned untouched and nothing is sent
    again (created False). Without recipients the row is recorded as failed, so the log says why
    nobody got it.
    """
    from backoffice.tasks import send_email

    with transaction.atomic():
        log, created = EmailLog.objects.get_or_create(
            kind=kind,
            period=period,
            defaults={"subject": subject[:255], "recipients": ", ".join(recipients), "body": body},
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
            transaction.on_commit(lambda: send_email.delay(log.pk))
    return log, True


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
        message = EmailMessage(
            subject=log.subject,
            body=log.body,
            from_email=settings.DEFAULT_FROM_EMAIL,
            to=recipients_parse(log.recipients),
        )
        if log.attachment:
            with log.attachment.open("rb") as f:
                content = f.read()
            name = log.attachment.name.rsplit("/", 1)[-1]
            message.attach(name, content, "application/pdf" if name.endswith(".pdf") else None)
        try:
            get_connection(timeout=settings.EMAIL_TIMEOUT).send_messages([message])
        except RETRYABLE as exc:
            log.last_error = f"{type(exc).__name__}: {exc}"[:2000]
            if log.attempts >= settings.EMAIL_MAX_ATTEMPTS:
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

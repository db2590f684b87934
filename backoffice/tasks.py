"""The site's tasks: sending email, the owner's scheduled emails and the clean-up of attachments.

Names are stable: queued messages and beat's schedule rows name them. `reports.owner_emails_due`
carries the "reports." prefix so the task routes send it to the reports worker (celeryconf.config),
whoever sends it (beat, the admin's "Run selected tasks"): it draws PDFs, which are that worker's work.
"""

from __future__ import annotations

from typing import Any

from celery import shared_task
from django.conf import settings

from backoffice.emails import EmailRetryError, email_deliver, email_files_cleanup, emails_resend_stuck
from backoffice.owner_emails import owner_emails_send_due


def _backoff(attempts: int, cap: int) -> int:
    """EMAIL_RETRY_BACKOFF_SECONDS (60 s), then twice as long at each attempt, never past `cap`
    (the broker's limit on countdowns)."""
    return int(min(cap, settings.EMAIL_RETRY_BACKOFF_SECONDS * 2 ** max(0, attempts - 1)))


@shared_task(name="backoffice.send_email", bind=True, max_retries=None)
def send_email(self: Any, email_id: int) -> str:
    """Send EmailLog `email_id` (backoffice.emails.email_deliver); retried with backoff on SMTP errors."""
    from celeryconf.app import LIMITS

    try:
        return email_deliver(email_id=email_id)
    except EmailRetryError as exc:
        raise self.retry(countdown=_backoff(exc.attempts, LIMITS.max_countdown), exc=exc) from exc


@shared_task(name="reports.owner_emails_due", time_limit=600, soft_time_limit=570)
def owner_emails_due() -> list[str]:
    """Every 5 minutes on beat: queue the owner's daily and weekly emails that are due and not yet in
    the email log (backoffice.owner_emails), and enqueue again any email whose message was lost
    (backoffice.emails.emails_resend_stuck). Safe to run any number of times, and side by side."""
    resent = emails_resend_stuck()
    return [f"{log.kind} {log.period}" for log in owner_emails_send_due()] + [f"resent #{pk}" for pk in resent]


@shared_task(name="backoffice.email_files_cleanup", time_limit=600, soft_time_limit=570)
def email_files_cleanup_task() -> dict[str, int]:
    """Daily on beat: delete old email attachments and orphan files (backoffice.emails); idempotent."""
    result = email_files_cleanup()
    return {"expired": result.expired, "orphans": result.orphans}


@shared_task(name="backoffice.check_alerts", soft_time_limit=100, time_limit=120)
def check_alerts() -> str:
    """Judge every alert rule now (backoffice.alerts.alerts_check); on beat every minute, with an
    expiry, so checks missed while the worker was down are dropped rather than run in a burst."""
    from backoffice.alerts import alerts_check

    return str(alerts_check())

"""The site's tasks: sending email (and, below, backups, owner emails and alert checks).

Names are stable: queued messages and beat's schedule rows name them.
"""

from __future__ import annotations

from typing import Any

from celery import shared_task

from backoffice.emails import EmailRetryError, email_deliver


def _backoff(attempts: int, cap: int) -> int:
    """60 s, 120 s, 240 s... never past `cap` (the broker's limit on countdowns)."""
    return int(min(cap, 60 * 2 ** max(0, attempts - 1)))


@shared_task(name="backoffice.send_email", bind=True, max_retries=None)
def send_email(self: Any, email_id: int) -> str:
    """Send EmailLog `email_id` (backoffice.emails.email_deliver); retried with backoff on SMTP errors."""
    from celeryconf.app import LIMITS

    try:
        return email_deliver(email_id=email_id)
    except EmailRetryError as exc:
        raise self.retry(countdown=_backoff(exc.attempts, LIMITS.max_countdown), exc=exc) from exc


@shared_task(name="backoffice.check_alerts", soft_time_limit=100, time_limit=120)
def check_alerts() -> str:
    """Judge every alert rule now (backoffice.alerts.alerts_check); on beat every minute, with an
    expiry, so checks missed while the worker was down are dropped rather than run in a burst."""
    from backoffice.alerts import alerts_check

    return str(alerts_check())

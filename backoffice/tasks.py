"""The site's tasks: sending email, the owner's scheduled emails and the clean-up of attachments,
alert checks and the nightly backup.

Names are stable: queued messages and beat's schedule rows name them. `reports.owner_emails_due`
carries the "reports." prefix so the task routes send it to the reports worker (celeryconf.config),
whoever sends it (beat, the admin's "Run selected tasks"): it draws PDFs, which are that worker's work.
"""

from __future__ import annotations

import importlib
from typing import Any

from celery import shared_task, signals
from django.conf import settings
from django.contrib.auth import get_user_model

from backoffice.backups import backup_run, backup_verify_when_free
from backoffice.emails import EmailRetryError, email_deliver, email_files_cleanup, emails_resend_stuck
from backoffice.models import BackupState, VerifyState
from celeryconf.app import LIMITS
from celeryconf.config import QUEUE_DEFAULT, QUEUE_REPORTS


def _backoff(attempts: int, cap: int) -> int:
    """EMAIL_RETRY_BACKOFF_SECONDS (60 s), then twice as long at each attempt, never past `cap`
    (the broker's limit on countdowns)."""
    return int(min(cap, settings.EMAIL_RETRY_BACKOFF_SECONDS * 2 ** max(0, attempts - 1)))


# A short time limit (an SMTP exchange is bounded by EMAIL_TIMEOUT): the worker's main process keeps a
# timer per task for its limits until they fall due, so a 15-minute default made memory grow with the
# number of emails of the last 15 minutes (docs/worker-memory.md).
@shared_task(name="backoffice.send_email", bind=True, max_retries=None, time_limit=180, soft_time_limit=170)
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
    # Imported here: building the emails draws PDFs (ReportLab), which a worker loads only when needed.
    from backoffice.owner_emails import owner_emails_send_due

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


# What the default queue's tasks import on their first run and the worker's start has not imported yet
# (found by diffing sys.modules around a first check_alerts in a worker-like process): the Django
# cache's Redis backend (the alert check's time stamp) and the IDNA codec redis-py's connect loads.
# backoffice.alerts and backoffice.readings themselves are already imported at start (the admin and
# the System page import them), so this is small; the rest of a pool process's first-use growth is
# run-time state (connections, query and model caches) that only running the task builds.
DEFAULT_WORKER_PRELOAD = ("django.core.cache.backends.redis", "encodings.idna", "stringprep")


@signals.worker_init.connect
def _default_worker_preload(sender: Any = None, **_: Any) -> None:
    """In the default worker's main process, before the pool forks: import what its tasks would import
    lazily, so every pool process shares those pages instead of each loading its own copy on first use.
    Imports only: no connection is opened before the fork (each pool process opens its own)."""
    queues = getattr(getattr(getattr(sender, "app", None), "amqp", None), "queues", None)
    consuming = set(getattr(queues, "consume_from", None) or {}) if queues is not None else set()
    if QUEUE_DEFAULT not in consuming:
        return
    for module in DEFAULT_WORKER_PRELOAD:
        importlib.import_module(module)


# A backup and its restore check take minutes on a year of data (docs/backups.md: measured); 40 minutes,
# or less when the visibility timeout would not cover it (celeryconf.config.check_reliability).
BACKUP_TIME_LIMIT = min(40 * 60, LIMITS.visibility_timeout - LIMITS.max_countdown - LIMITS.visibility_margin)
BACKUP_SOFT_TIME_LIMIT = BACKUP_TIME_LIMIT - 60


class BackupFailedError(Exception):
    """The backup or its restore check failed: the task fails, so beat's record shows it."""


# The reports queue: long and low priority (worker-reports runs one task at a time, on one CPU, under
# SCHED_IDLE, which pg_dump and pg_restore inherit), so a backup never holds up payments or the default
# queue's housekeeping; that worker mounts the backups volume (docker-compose.prod.yml).
@shared_task(
    name="backoffice.backup",
    queue=QUEUE_REPORTS,
    time_limit=BACKUP_TIME_LIMIT,
    soft_time_limit=BACKUP_SOFT_TIME_LIMIT,
)
def backup(requested_by_id: int | None = None) -> dict[str, Any]:
    """Back up (backoffice.backups.backup_run), then prove the backup by restoring it (backup_verify).

    Safe to deliver twice: a second delivery makes a second backup (rotation keeps the count), or stops
    at once while the first still runs (BackupBusyError, the task fails without a row).
    """
    user = get_user_model().objects.filter(pk=requested_by_id).first() if requested_by_id else None
    row = backup_run(requested_by=user)
    if row.state == BackupState.SUCCEEDED:
        # The lock is let go between the dump and its check: a backup started by hand in between is waited for.
        row = backup_verify_when_free(backup=row, wait_seconds=BACKUP_SOFT_TIME_LIMIT / 2)
    result = {"backup": row.pk, "state": row.state, "verify_state": row.verify_state, "size": row.size_bytes}
    if row.state != BackupState.SUCCEEDED:
        raise BackupFailedError(f"backup #{row.pk} failed: {row.error}")
    if row.verify_state != VerifyState.VERIFIED:
        raise BackupFailedError(f"backup #{row.pk} failed its restore check: {row.verify_message}")
    return result

"""What the site keeps about itself: backups, the owner's emails, alert rules and alerts.

These belong to no business and no ledger: they watch over all of them, so they live in the site,
which may read every app (the backups read the ledger's heads, the alerts the M-Pesa inbox).
"""

from __future__ import annotations

import datetime as dt

from django.conf import settings
from django.db import models


class BackupState(models.TextChoices):
    RUNNING = "running", "Running"
    SUCCEEDED = "succeeded", "Succeeded"
    FAILED = "failed", "Failed"


class VerifyState(models.TextChoices):
    PENDING = "pending", "Not verified yet"
    VERIFIED = "verified", "Verified"
    FAILED = "failed", "Verification failed"


class BackupTier(models.TextChoices):
    """Rotation: 7 daily, 4 weekly (the Sunday backup), 12 monthly (the first of the month)."""

    DAILY = "daily", "Daily"
    WEEKLY = "weekly", "Weekly"
    MONTHLY = "monthly", "Monthly"


class Backup(models.Model):
    """One backup: a pg_dump (custom format) of the database and an archive of the uploaded files,
    their SHA-256, the ledger head of every business at the time, and whether a restore proved it."""

    state = models.CharField(max_length=10, choices=BackupState.choices, default=BackupState.RUNNING, db_index=True)
    tier = models.CharField(max_length=10, choices=BackupTier.choices, default=BackupTier.DAILY)
    started_at = models.DateTimeField(db_index=True)
    finished_at = models.DateTimeField(null=True, blank=True)
    duration_seconds = models.FloatField(null=True, blank=True)
    # Paths relative to settings.BACKUP_DIR.
    database_file = models.CharField(max_length=255, blank=True)
    media_file = models.CharField(max_length=255, blank=True)
    size_bytes = models.PositiveBigIntegerField(null=True, blank=True, help_text="Both files, in bytes.")
    sha256 = models.CharField(max_length=64, blank=True, help_text="SHA-256 of the database dump.")
    media_sha256 = models.CharField(max_length=64, blank=True, help_text="SHA-256 of the uploaded files' archive.")
    # {"<business id>": {"business": name, "number": last entry number, "hash": seal hex}} read before the dump.
    ledger_heads = models.JSONField(default=dict, blank=True)
    # {"<table>": rows} of the source, compared with the restored copy.
    row_counts = models.JSONField(default=dict, blank=True)
    verify_state = models.CharField(max_length=10, choices=VerifyState.choices, default=VerifyState.PENDING)
    verified_at = models.DateTimeField(null=True, blank=True)
    verify_seconds = models.FloatField(null=True, blank=True)
    verify_message = models.TextField(blank=True, help_text="What the restore proved, or why it failed.")
    offsite_location = models.CharField(max_length=500, blank=True, help_text="Where the off-site copy went.")
    offsite_error = models.TextField(blank=True)
    error = models.TextField(blank=True)
    traceback = models.TextField(blank=True)
    # Set when rotation deleted the files; the row stays as history.
    files_deleted_at = models.DateTimeField(null=True, blank=True)
    requested_by = models.ForeignKey(
        settings.AUTH_USER_MODEL, on_delete=models.SET_NULL, null=True, blank=True, related_name="+"
    )

    class Meta:
        ordering = ["-started_at", "-id"]
        permissions = [("run_backup", "Can start a backup and its restore check")]

    def __str__(self) -> str:
        return f"Backup of {self.started_at:%Y-%m-%d %H:%M}"


class OwnerEmailKind(models.TextChoices):
    DAILY = "daily", "Daily summary"
    WEEKLY = "weekly", "Weekly profit and loss"


class OwnerEmail(models.Model):
    """The owner's scheduled emails: who gets them and when (Nairobi time). One row per kind."""

    kind = models.CharField(max_length=10, choices=OwnerEmailKind.choices, unique=True)
    enabled = models.BooleanField(default=True)
    recipients = models.TextField(
        blank=True, help_text="Email addresses, one per line or separated by commas. Empty: nobody gets it."
    )
    send_time = models.TimeField(default=dt.time(6, 30), help_text="Nairobi time.")
    weekday = models.PositiveSmallIntegerField(
        default=0,
        choices=[
            (0, "Monday"),
            (1, "Tuesday"),
            (2, "Wednesday"),
            (3, "Thursday"),
            (4, "Friday"),
            (5, "Saturday"),
            (6, "Sunday"),
        ],
        help_text="Weekly email only: the day it is sent.",
    )
    updated_at = models.DateTimeField(auto_now=True)

    class Meta:
        ordering = ["kind"]

    def __str__(self) -> str:
        return self.get_kind_display()


class EmailKind(models.TextChoices):
    DAILY = "daily", "Daily summary"
    WEEKLY = "weekly", "Weekly profit and loss"
    ALERT = "alert", "Alert"
    TEST = "test", "Test"


class EmailState(models.TextChoices):
    QUEUED = "queued", "Queued"
    SENT = "sent", "Sent"
    RETRYING = "retrying", "Retrying"
    FAILED = "failed", "Failed"


class EmailLog(models.Model):
    """Every email the back office sends, with its fate. (kind, period) is unique: a daily email is
    built and sent once for its day however often the task is delivered."""

    kind = models.CharField(max_length=10, choices=EmailKind.choices, db_index=True)
    # What the email is about: "2026-11-29" (daily), "2026-W48" (weekly), "<rule>:<period start>" (alert).
    period = models.CharField(max_length=100)
    subject = models.CharField(max_length=255)
    recipients = models.TextField()
    body = models.TextField(blank=True)
    # The same content as HTML (an alternative part); empty: plain text only.
    body_html = models.TextField(blank=True)
    # Kept so a retry sends the same file; deleted JOB_FILES_KEEP_DAYS after the email was made
    # (backoffice.emails.email_files_cleanup), when attachment_deleted_at is set.
    attachment = models.FileField(upload_to="emails/%Y/%m/", blank=True, max_length=255)
    attachment_deleted_at = models.DateTimeField(null=True, blank=True)
    state = models.CharField(max_length=10, choices=EmailState.choices, default=EmailState.QUEUED, db_index=True)
    attempts = models.PositiveSmallIntegerField(default=0)
    last_error = models.TextField(blank=True)
    created_at = models.DateTimeField(auto_now_add=True, db_index=True)
    updated_at = models.DateTimeField(auto_now=True)
    sent_at = models.DateTimeField(null=True, blank=True)

    class Meta:
        ordering = ["-created_at", "-id"]
        constraints = [models.UniqueConstraint(fields=["kind", "period"], name="emaillog_kind_period_uniq")]
        permissions = [("resend_email", "Can send a failed email again")]

    def __str__(self) -> str:
        return self.subject


class AlertCheck(models.TextChoices):
    QUEUE_DEPTH = "queue_depth", "Queue depth above (messages)"
    QUEUE_AGE = "queue_age", "Oldest queued message older than (seconds)"
    WORKER_MISSING = "worker_missing", "A queue without a worker"
    WORKER_MEMORY = "worker_memory", "A worker process above (MB RSS)"
    WORKER_RESTARTS = "worker_restarts", "Worker restarts in the last hour above"
    HOST_MEMORY = "host_memory", "Host memory used above (MB)"
    DISK_FREE = "disk_free", "Disk free below (%)"
    BACKUP_STALE = "backup_stale", "Last good backup older than (hours)"
    BACKUP_UNVERIFIED = "backup_unverified", "Last backup not verified"
    PAYMENTS_WAITING = "payments_waiting", "Payments waiting for a person above"
    PERIODIC_TASK_FAILED = "periodic_task_failed", "A periodic task failed"
    BEAT_MISSING = "beat_missing", "Beat not ticking"


class AlertRule(models.Model):
    """A condition worth telling the owner about, with its threshold. Editable in the admin."""

    check_kind = models.CharField(max_length=30, choices=AlertCheck.choices)
    name = models.CharField(max_length=120, unique=True)
    enabled = models.BooleanField(default=True)
    threshold = models.DecimalField(max_digits=14, decimal_places=2, default=0)
    # Which queue a queue rule watches; empty: every queue.
    target = models.CharField(max_length=60, blank=True)
    email_every_minutes = models.PositiveIntegerField(
        default=24 * 60, help_text="While it stays firing, the alert is emailed at most once per this many minutes."
    )
    recipients = models.TextField(blank=True, help_text="Empty: the daily email's recipients.")
    updated_at = models.DateTimeField(auto_now=True)

    class Meta:
        ordering = ["name"]

    def __str__(self) -> str:
        return self.name


class Alert(models.Model):
    """A rule that fired: open until the condition clears (resolved_at)."""

    rule = models.ForeignKey(AlertRule, on_delete=models.CASCADE, related_name="alerts")
    message = models.CharField(max_length=500)
    value = models.CharField(max_length=100, blank=True)
    first_seen_at = models.DateTimeField()
    last_seen_at = models.DateTimeField()
    resolved_at = models.DateTimeField(null=True, blank=True)
    last_emailed_at = models.DateTimeField(null=True, blank=True)

    class Meta:
        ordering = ["-first_seen_at", "-id"]
        constraints = [
            models.UniqueConstraint(
                fields=["rule"], condition=models.Q(resolved_at__isnull=True), name="alert_one_open_per_rule"
            )
        ]

    def __str__(self) -> str:
        return self.message

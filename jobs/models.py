"""Jobs the owner can see: one row per launch of background work (exports, reports, closing...).

The table keeps its first name (celeryconf_job): the model moved here from celeryconf without a copy.
"""

from __future__ import annotations

from django.conf import settings
from django.contrib.postgres.fields import ArrayField
from django.db import models


class JobState(models.TextChoices):
    QUEUED = "queued", "Queued"
    RUNNING = "running", "Running"
    RETRYING = "retrying", "Retrying"
    SUCCEEDED = "succeeded", "Succeeded"
    FAILED = "failed", "Failed"
    CANCELLED = "cancelled", "Cancelled"


ACTIVE_STATES = (JobState.QUEUED, JobState.RUNNING, JobState.RETRYING)
FINISHED_STATES = (JobState.SUCCEEDED, JobState.FAILED, JobState.CANCELLED)


class Job(models.Model):
    kind = models.CharField(max_length=80, db_index=True)
    business = models.ForeignKey(
        "tenancy.Business",
        on_delete=models.PROTECT,
        null=True,
        blank=True,
        related_name="jobs",
        help_text="Empty for work over every business (owner only).",
    )
    # A job over no single business reads the businesses its launcher saw when he launched it: kept
    # here (empty: every business, the owner's), so he loses its file when he loses one of them.
    scope_business_ids = ArrayField(models.BigIntegerField(), default=list, blank=True)
    requested_by = models.ForeignKey(
        settings.AUTH_USER_MODEL, on_delete=models.SET_NULL, null=True, blank=True, related_name="+"
    )
    params = models.JSONField(default=dict, blank=True)
    state = models.CharField(max_length=12, choices=JobState.choices, default=JobState.QUEUED, db_index=True)
    progress = models.PositiveSmallIntegerField(default=0)
    message = models.CharField(max_length=255, blank=True)
    attempts = models.PositiveSmallIntegerField(default=0)
    celery_task_id = models.CharField(max_length=64, blank=True)
    error = models.TextField(blank=True)
    traceback = models.TextField(blank=True)
    # Rows (or customers, pages...) done out of the total, when the handler counts them.
    rows_done = models.PositiveIntegerField(null=True, blank=True)
    rows_total = models.PositiveIntegerField(null=True, blank=True)
    # Set by "cancel" on a running job; the handler stops at its next progress report.
    cancel_requested_at = models.DateTimeField(null=True, blank=True)
    cancelled_by = models.ForeignKey(
        settings.AUTH_USER_MODEL, on_delete=models.SET_NULL, null=True, blank=True, related_name="+"
    )
    result_file = models.FileField(upload_to="jobs/%Y/%m/", blank=True, max_length=255)
    result_size = models.PositiveBigIntegerField(null=True, blank=True, help_text="Bytes.")
    # When the result file is deleted by the clean-up (settings.JOB_FILES_KEEP_DAYS after it was made).
    expires_at = models.DateTimeField(null=True, blank=True, db_index=True)
    # When the person who launched it was told it finished (a message on his next admin page).
    notified_at = models.DateTimeField(null=True, blank=True)
    created_at = models.DateTimeField(auto_now_add=True, db_index=True)
    started_at = models.DateTimeField(null=True, blank=True)
    finished_at = models.DateTimeField(null=True, blank=True)
    updated_at = models.DateTimeField(auto_now=True)

    class Meta:
        db_table = "celeryconf_job"
        ordering = ["-created_at", "-id"]
        constraints = [
            models.CheckConstraint(condition=models.Q(progress__lte=100), name="job_progress_at_most_100"),
        ]
        indexes = [
            models.Index(fields=["business", "state"], name="job_business_state"),
            # The "your job finished" query of every admin page: only the few rows still to be told.
            models.Index(
                fields=["requested_by"],
                condition=models.Q(notified_at__isnull=True, state__in=FINISHED_STATES),
                name="job_to_notify",
            ),
        ]

    def __str__(self) -> str:
        return f"{self.kind} #{self.pk}"

    @property
    def is_active(self) -> bool:
        return self.state in ACTIVE_STATES


class TaskEventKind(models.TextChoices):
    FAILED = "failed", "Failed"
    RETRIED = "retried", "Retried"
    SUCCEEDED = "succeeded", "Succeeded"


class TaskEvent(models.Model):
    """A Celery task that failed or was retried (any task), or a periodic task that succeeded.

    Written by Celery signal handlers in the worker (jobs/taskevents.py), so it covers every task,
    not only those behind a Job row. Successes are recorded only for tasks sent by beat (their
    "periodic_task_name" header): the System page shows each periodic task's last success; recording
    every payment's success would double the writes of the payment path for nothing.
    """

    kind = models.CharField(max_length=10, choices=TaskEventKind.choices, db_index=True)
    task_name = models.CharField(max_length=200, db_index=True)
    task_id = models.CharField(max_length=64, blank=True)
    # The django-celery-beat PeriodicTask name when beat sent it; empty for other tasks.
    periodic_task = models.CharField(max_length=200, blank=True, db_index=True)
    worker = models.CharField(max_length=200, blank=True)
    exception = models.TextField(blank=True)
    traceback = models.TextField(blank=True)
    at = models.DateTimeField(db_index=True)

    class Meta:
        ordering = ["-at", "-id"]
        indexes = [models.Index(fields=["periodic_task", "kind", "-at"], name="taskevent_periodic_last")]

    def __str__(self) -> str:
        return f"{self.task_name} {self.kind} at {self.at:%Y-%m-%d %H:%M}"

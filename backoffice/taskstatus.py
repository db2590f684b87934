"""Reads of Celery's history for the System page and the alert rules: each periodic task's last
run, success and failure, and the tasks that failed or were retried lately.

TaskEvent rows are written by the worker's signal handlers (jobs app); PeriodicTask rows are
django-celery-beat's (beat stamps `last_run_at` when it sends one). Read-only; no locks.
"""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass

from django.db.models import OuterRef, QuerySet, Subquery
from django_celery_beat.models import PeriodicTask

from jobs.models import TaskEvent, TaskEventKind

# How far back a failure still counts as "failing" when no success came after it.
FAILURE_WINDOW = dt.timedelta(hours=24)


@dataclass(frozen=True)
class PeriodicTaskStatus:
    name: str
    task: str
    enabled: bool
    last_run_at: dt.datetime | None  # when beat last sent it
    last_success_at: dt.datetime | None
    last_failure_at: dt.datetime | None
    last_failure: str  # the exception of the last failure, one line

    def failing(self, now: dt.datetime) -> bool:
        """Failed within FAILURE_WINDOW and has not succeeded since."""
        return (
            self.last_failure_at is not None
            and self.last_failure_at >= now - FAILURE_WINDOW
            and (self.last_success_at is None or self.last_success_at < self.last_failure_at)
        )


def periodic_task_status() -> list[PeriodicTaskStatus]:
    """Every periodic task with its last run (beat), last success and last failure (TaskEvent);
    one query, through the (periodic_task, kind, -at) index."""

    def last(kind: str, field: str = "at") -> Subquery:
        return Subquery(
            TaskEvent.objects.filter(periodic_task=OuterRef("name"), kind=kind).order_by("-at").values(field)[:1]
        )

    rows = (
        PeriodicTask.objects.order_by("name")
        .annotate(
            last_success_at=last(TaskEventKind.SUCCEEDED),
            last_failure_at=last(TaskEventKind.FAILED),
            last_failure=last(TaskEventKind.FAILED, "exception"),
        )
        .values_list("name", "task", "enabled", "last_run_at", "last_success_at", "last_failure_at", "last_failure")
    )
    return [
        PeriodicTaskStatus(
            name=name,
            task=task,
            enabled=enabled,
            last_run_at=run,
            last_success_at=success,
            last_failure_at=failure,
            last_failure=(exception or "").splitlines()[0][:300] if exception else "",
        )
        for name, task, enabled, run, success, failure, exception in rows
    ]


def task_failures(*, since: dt.datetime) -> QuerySet[TaskEvent]:
    """Failed and retried tasks (any task, periodic or not) since `since`, newest first."""
    return TaskEvent.objects.filter(kind__in=[TaskEventKind.FAILED, TaskEventKind.RETRIED], at__gte=since).order_by(
        "-at", "-id"
    )

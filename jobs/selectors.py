"""Reads about background work that other pages show (the System page, the periodic tasks admin):
each periodic task's schedule and last runs, and the tasks that failed or were retried lately.

From jobs.TaskEvent, which the workers write through Celery's signals (jobs/taskevents.py), and
django-celery-beat's PeriodicTask rows. Two or three queries whatever the number of tasks.
"""

from __future__ import annotations

import datetime as dt
from typing import TypedDict

from django.db.models import Max
from django_celery_beat.models import PeriodicTask

from jobs.models import TaskEvent, TaskEventKind


class PeriodicTaskStatus(TypedDict):
    """One periodic task as the owner sees it. `failing`: its last failure is later than its last
    success (or it never succeeded); `last_failure_id` is the TaskEvent holding that traceback."""

    id: int
    name: str
    task: str
    enabled: bool
    schedule: str
    last_run_at: dt.datetime | None
    last_success_at: dt.datetime | None
    last_failure_at: dt.datetime | None
    last_error: str
    last_failure_id: int | None
    failing: bool


def schedule_text(task: PeriodicTask) -> str:
    """ "every 5 minutes", "At 03:30 AM Africa/Nairobi"... ("no schedule" for a row without one)."""
    if task.crontab_id:
        return str(task.crontab.human_readable)
    for schedule in (task.interval, task.solar, task.clocked):
        if schedule is not None:
            return str(schedule)
    return "no schedule"


def is_failing(*, last_success_at: dt.datetime | None, last_failure_at: dt.datetime | None) -> bool:
    """A periodic task is failing when its last failure came after its last success."""
    return last_failure_at is not None and (last_success_at is None or last_failure_at > last_success_at)


def periodic_task_status() -> list[PeriodicTaskStatus]:
    """Every periodic task (beat's own housekeeping entry aside), by name, with its schedule, when
    beat last sent it, its last success and its last failure (time, exception, event id)."""
    tasks = list(
        PeriodicTask.objects.exclude(task="celery.backend_cleanup")
        .select_related("interval", "crontab", "solar", "clocked")
        .order_by("name")
    )
    names = [t.name for t in tasks]
    successes = dict(
        TaskEvent.objects.filter(kind=TaskEventKind.SUCCEEDED, periodic_task__in=names)
        .values("periodic_task")
        .annotate(last=Max("at"))
        .values_list("periodic_task", "last")
    )
    # PostgreSQL's DISTINCT ON: the newest failure of each task, on the (periodic_task, kind, -at) index.
    failures = {
        e.periodic_task: e
        for e in TaskEvent.objects.filter(kind=TaskEventKind.FAILED, periodic_task__in=names)
        .order_by("periodic_task", "-at", "-id")
        .distinct("periodic_task")
        .only("id", "periodic_task", "exception", "at")
    }
    rows: list[PeriodicTaskStatus] = []
    for task in tasks:
        failure = failures.get(task.name)
        success_at = successes.get(task.name)
        failure_at = failure.at if failure else None
        rows.append(
            PeriodicTaskStatus(
                id=task.pk,
                name=task.name,
                task=task.task,
                enabled=task.enabled,
                schedule=schedule_text(task),
                last_run_at=task.last_run_at,
                last_success_at=success_at,
                last_failure_at=failure_at,
                last_error=failure.exception if failure else "",
                last_failure_id=failure.pk if failure else None,
                failing=is_failing(last_success_at=success_at, last_failure_at=failure_at),
            )
        )
    return rows


def task_failures(since: dt.datetime, *, include_retries: bool = True, limit: int = 200) -> list[TaskEvent]:
    """Tasks that failed (and, unless told otherwise, were retried) at or after `since`, newest first,
    with their exception and traceback; at most `limit` of them."""
    kinds = [TaskEventKind.FAILED, TaskEventKind.RETRIED] if include_retries else [TaskEventKind.FAILED]
    return list(TaskEvent.objects.filter(kind__in=kinds, at__gte=since).order_by("-at", "-id")[:limit])

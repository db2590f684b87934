"""The end-of-day schedule: beat sends `operations.close_due_days` every five minutes (a
django-celery-beat row seeded by operations/migrations/0008_closing_schedule.py, editable in the
admin) to the default queue. The name is stable: beat's schedule row names it.
"""

from __future__ import annotations

from celery import shared_task
from django.utils import timezone

from operations.services.closing import closings_due


@shared_task(name="operations.close_due_days", time_limit=600, soft_time_limit=570)
def close_due_days() -> dict[str, list[str]]:
    """Close every active business's days that have ended (its closing time passed) and are not
    closed, oldest first (operations.services.closing.closings_due). Safe to run at any time, twice
    at once, or again after a crash: a day already closed is skipped. Fails (ClosingsFailed) when a
    business could not be closed, after the others were."""
    result = closings_due(now=timezone.now())
    return {name: [day.isoformat() for day in days] for name, days in result.closed.items()}

""" "Your job finished": the finished jobs a user launched and has not been told about.

An admin page shows them once, as messages (jobs.middleware.JobNoticeMiddleware). The query is on a
partial index holding only finished, untold rows, so a page with nothing to tell costs one index
probe that finds nothing.
"""

from __future__ import annotations

from typing import Any

from django.utils import timezone

from jobs.access import job_readable_by
from jobs.models import FINISHED_STATES, Job

# At most this many notices on one page; the rest come on the next one.
NOTICE_LIMIT = 5


def jobs_to_notify(*, user: Any) -> list[Job]:
    """Finished jobs `user` launched that he was not told about yet, oldest first (one query)."""
    if not getattr(user, "pk", None):
        return []
    return list(
        Job.objects.filter(requested_by=user.pk, notified_at__isnull=True, state__in=FINISHED_STATES)
        .only(
            "pk", "kind", "business", "scope_business_ids", "params", "state", "message", "result_file", "finished_at"
        )
        .order_by("finished_at", "pk")[:NOTICE_LIMIT]
    )


def job_notices_take(*, user: Any) -> list[Job]:
    """The jobs to tell `user` about, each marked told; a job is handed out once even to two pages
    loading at the same moment (the conditional UPDATE decides which one gets it). A job of a
    business he no longer sees (or needing a right he lost) is marked told without telling: its page
    and file are gone for him."""
    pending = jobs_to_notify(user=user)
    if not pending:
        return []
    now = timezone.now()
    told = [job for job in pending if Job.objects.filter(pk=job.pk, notified_at__isnull=True).update(notified_at=now)]
    return [job for job in told if job_readable_by(user=user, job=job)]

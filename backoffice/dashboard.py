"""The admin landing page: per business, today's figures and the state of background work."""

from __future__ import annotations

from decimal import Decimal
from typing import Any

from django.conf import settings
from django.db.models import Count, Q
from django.http import HttpRequest
from django.utils import timezone

from backoffice.tenancy import sees_all_businesses, visible_businesses
from celeryconf.models import ACTIVE_STATES, Job, JobState


def environment_callback(request: HttpRequest) -> list[str]:
    return ["Development", "warning"] if settings.DEBUG else ["Production", "success"]


def business_figures(user: Any) -> list[dict[str, Any]]:
    """One row per business the user may see: today's takings, pending and failed jobs."""
    from accounts.selectors import takings_by_business

    today = timezone.localdate()
    businesses = list(
        visible_businesses(user)
        .order_by("name")
        .annotate(
            pending_jobs=Count("jobs", filter=Q(jobs__state__in=ACTIVE_STATES)),
            failed_jobs=Count("jobs", filter=Q(jobs__state=JobState.FAILED)),
        )
    )
    takings = takings_by_business(business_ids=[b.pk for b in businesses], day=today)
    return [
        {
            "business": b,
            "takings": takings[b.pk],
            "pending_jobs": b.pending_jobs,
            "failed_jobs": b.failed_jobs,
        }
        for b in businesses
    ]


def dashboard_callback(request: HttpRequest, context: dict[str, Any]) -> dict[str, Any]:
    rows = business_figures(request.user)
    context["business_rows"] = rows
    context["today"] = timezone.localdate()
    if sees_all_businesses(request.user):
        global_jobs = Job.objects.filter(business__isnull=True)
        context["all_businesses"] = {
            "takings": sum((r["takings"].total for r in rows), Decimal("0.00")),
            "pending_jobs": sum(r["pending_jobs"] for r in rows) + global_jobs.filter(state__in=ACTIVE_STATES).count(),
            "failed_jobs": sum(r["failed_jobs"] for r in rows) + global_jobs.filter(state=JobState.FAILED).count(),
        }
    return context

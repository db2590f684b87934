"""The admin landing page: per business, today's figures and the state of background work."""

from __future__ import annotations

from decimal import Decimal
from typing import Any

from django.conf import settings
from django.db.models import Count, Q
from django.http import HttpRequest
from django.urls import reverse
from django.utils import timezone

from jobs.models import ACTIVE_STATES, Job, JobState
from tenancy.scoping import sees_all_businesses, visible_businesses


def environment_callback(request: HttpRequest) -> list[str]:
    return ["Development", "warning"] if settings.DEBUG else ["Production", "success"]


def business_figures(user: Any) -> list[dict[str, Any]]:
    """One row per business the user may see: today's takings, pending and failed jobs, M-Pesa
    callbacks waiting for a person (inbox "needs a person") and Transaction Status queries left to
    a person (a lost confirmation no retry could settle)."""
    from accounts.selectors import takings_by_business
    from integrations.mpesa.selectors import inbox_waiting_for_person, status_queries_waiting_for_person

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
    # A query of its own: a second Count through tills -> inbox would multiply the jobs' join.
    waiting = dict(
        inbox_waiting_for_person()
        .filter(till__business__in=[b.pk for b in businesses])
        .values("till__business")
        .annotate(n=Count("id"))
        .values_list("till__business", "n")
    )
    queries = dict(
        status_queries_waiting_for_person()
        .filter(business__in=[b.pk for b in businesses])
        .values("business")
        .annotate(n=Count("id"))
        .values_list("business", "n")
    )
    return [
        {
            "business": b,
            "takings": takings[b.pk],
            "pending_jobs": b.pending_jobs,
            "failed_jobs": b.failed_jobs,
            "payments_waiting": waiting.get(b.pk, 0),
            "status_queries_waiting": queries.get(b.pk, 0),
        }
        for b in businesses
    ]


def dashboard_callback(request: HttpRequest, context: dict[str, Any]) -> dict[str, Any]:
    rows = business_figures(request.user)
    context["business_rows"] = rows
    context["today"] = timezone.localdate()
    context["inbox_url"] = (
        reverse("admin:integrations_inboxmessage_changelist")
        if request.user.has_perm("integrations.view_inboxmessage")
        else ""
    )
    context["status_query_url"] = (
        reverse("admin:integrations_statusquery_changelist")
        if request.user.has_perm("integrations.view_statusquery")
        else ""
    )
    if sees_all_businesses(request.user):
        global_jobs = Job.objects.filter(business__isnull=True)
        context["all_businesses"] = {
            "takings": sum((r["takings"].total for r in rows), Decimal("0.00")),
            "pending_jobs": sum(r["pending_jobs"] for r in rows) + global_jobs.filter(state__in=ACTIVE_STATES).count(),
            "failed_jobs": sum(r["failed_jobs"] for r in rows) + global_jobs.filter(state=JobState.FAILED).count(),
            "payments_waiting": sum(r["payments_waiting"] for r in rows),
            "status_queries_waiting": sum(r["status_queries_waiting"] for r in rows),
        }
        # The spool is one directory for every business: the owner's alone.
        from integrations.mpesa.spool import spool_status

        try:
            context["spool"] = spool_status()
        except OSError:
            context["spool"] = None
    return context

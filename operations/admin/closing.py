"""End-of-day closings: entered with the counted cash, run as a background job."""

from __future__ import annotations

from django.contrib import admin, messages
from django.db.models import QuerySet
from django.http import HttpRequest
from unfold.decorators import action

from jobs.services import job_launch
from operations.admin.base import DocumentAdmin
from operations.jobs import CLOSING
from operations.models import DayClosing


@admin.register(DayClosing)
class DayClosingAdmin(DocumentAdmin):
    draft_statuses = ("pending",)
    list_display = [
        "day",
        "business",
        "status",
        "cash_takings",
        "mpesa_takings",
        "expected_cash",
        "counted_cash",
        "variance",
        "closed_by",
        "automatic",
    ]
    list_filter = ["status", "automatic", ("day", admin.DateFieldListFilter)]
    list_select_related = ["business", "closed_by"]
    date_hierarchy = "day"
    fields = [
        "business",
        "day",
        "counted_cash",
        "status",
        "cash_takings",
        "mpesa_takings",
        "expected_cash",
        "variance",
        "entry",
        "closed_by",
        "closed_at",
        "automatic",
    ]
    readonly_fields = [
        "status",
        "cash_takings",
        "mpesa_takings",
        "expected_cash",
        "variance",
        "entry",
        "closed_by",
        "closed_at",
        "automatic",
    ]
    actions = ["run_closing"]

    @action(description="Close the selected days (background job)", permissions=["change"])
    def run_closing(self, request: HttpRequest, queryset: QuerySet[DayClosing]) -> None:
        jobs = []
        for closing in queryset.select_related("business"):
            if closing.status != "pending":
                self.message_user(request, f"{closing}: already closed.", messages.ERROR)
                continue
            counted = None if closing.counted_cash is None else str(closing.counted_cash)
            jobs.append(
                job_launch(
                    kind=CLOSING,
                    acting_user=request.user,
                    business=closing.business,
                    params={"day": closing.day.isoformat(), "counted_cash": counted},
                )
            )
        if jobs:
            ids = ", ".join(f"#{j.pk}" for j in jobs)
            self.message_user(request, f"Closing queued as job {ids}; follow it under Jobs.", messages.SUCCESS)

"""The Jobs page: what runs in the background, its progress, its result, a retry for failures."""

from __future__ import annotations

from typing import Any

from django.contrib import admin, messages
from django.db.models import QuerySet
from django.http import FileResponse, Http404, HttpRequest
from django.urls import URLPattern, path, reverse
from django.utils.html import format_html
from unfold.contrib.filters.admin import ChoicesDropdownFilter, RangeDateFilter
from unfold.decorators import action, display

from jobs.models import Job, JobState
from jobs.registry import REGISTRY, JobError, kind_label
from jobs.services import job_retry
from tenancy.scoping import BusinessScopedAdmin


class KindFilter(admin.SimpleListFilter):
    title = "kind"
    parameter_name = "kind"

    def lookups(self, request: HttpRequest, model_admin: Any) -> list[tuple[str, str]]:
        return sorted(((k, v.label) for k, v in REGISTRY.items()), key=lambda kv: kv[1])

    def queryset(self, request: HttpRequest, queryset: QuerySet[Job]) -> QuerySet[Job]:
        return queryset.filter(kind=self.value()) if self.value() else queryset


STATE_LABELS = {
    JobState.QUEUED: "info",
    JobState.RUNNING: "warning",
    JobState.RETRYING: "warning",
    JobState.SUCCEEDED: "success",
    JobState.FAILED: "danger",
}


@admin.register(Job)
class JobAdmin(BusinessScopedAdmin):
    list_display = [
        "id",
        "kind_display",
        "business",
        "state_display",
        "progress_bar",
        "message",
        "requested_by",
        "attempts",
        "created_at",
        "download",
    ]
    list_display_links = ["id", "kind_display"]
    list_filter = [("state", ChoicesDropdownFilter), KindFilter, ("created_at", RangeDateFilter)]
    list_filter_submit = True
    search_fields = ["message", "error", "requested_by__username"]
    readonly_fields = [
        "kind",
        "business",
        "requested_by",
        "params",
        "state",
        "progress",
        "message",
        "attempts",
        "celery_task_id",
        "error",
        "traceback",
        "result_file",
        "created_at",
        "started_at",
        "finished_at",
        "updated_at",
    ]
    actions = ["retry_failed"]
    list_select_related = ["business", "requested_by"]
    change_list_template = "admin/jobs/job/change_list.html"
    change_form_template = "admin/jobs/job/change_form.html"

    def has_add_permission(self, request: HttpRequest) -> bool:
        return False  # jobs are launched by actions, never typed in

    def has_change_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return False  # the worker writes them; people only read, retry and download

    @display(description="Kind")
    def kind_display(self, obj: Job) -> str:
        return kind_label(obj.kind)

    @display(description="State", label=STATE_LABELS)
    def state_display(self, obj: Job) -> str:
        return obj.state

    @display(description="Progress")
    def progress_bar(self, obj: Job) -> str:
        return format_html(
            '<div class="job-progress" data-job-active="{}" title="{}%"><div class="job-progress-bar job-{}" '
            'style="width:{}%"></div></div><span class="job-progress-label">{}%</span>',
            "1" if obj.is_active else "0",
            obj.progress,
            obj.state,
            obj.progress,
            obj.progress,
        )

    @display(description="Result")
    def download(self, obj: Job) -> str:
        if not obj.result_file:
            return "-"
        url = reverse("admin:jobs_job_download", args=[obj.pk])
        return format_html('<a href="{}" class="text-primary-600">Download</a>', url)

    def has_retry_permission(self, request: HttpRequest) -> bool:
        """Retrying runs a job again (postings, exports): the "change job" right, which staff do not have."""
        return bool(request.user.has_perm("jobs.change_job"))

    @action(description="Retry selected failed jobs", permissions=["retry"])
    def retry_failed(self, request: HttpRequest, queryset: QuerySet[Job]) -> None:
        retried, refused = [], []
        for job in queryset.order_by("pk"):
            try:
                job_retry(job=job, acting_user=request.user)
                retried.append(f"#{job.pk}")
            except JobError as exc:
                refused.append(str(exc))
        if retried:
            self.message_user(request, f"Queued again: {', '.join(retried)}.", messages.SUCCESS)
        for reason in refused:
            self.message_user(request, reason, messages.WARNING)

    def get_urls(self) -> list[URLPattern]:
        return [
            path(
                "<int:object_id>/download/",
                self.admin_site.admin_view(self.download_view),
                name="jobs_job_download",
            ),
            *super().get_urls(),
        ]

    def download_view(self, request: HttpRequest, object_id: int) -> FileResponse:
        """Serve a job's result file to a user allowed to see that job, never publicly."""
        job = self.get_object(request, str(object_id))
        if job is None or not self.has_view_permission(request, job) or not job.result_file:
            raise Http404("No such result.")
        return FileResponse(
            job.result_file.open("rb"), as_attachment=True, filename=job.result_file.name.rsplit("/", 1)[-1]
        )

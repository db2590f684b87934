"""The Jobs page: what runs in the background, its progress, its result, cancel and "run again".

Who sees a job: the owner every job; a staff member the jobs of his businesses and the jobs he
launched over every business (business empty); a job of a business he was taken off is gone for
him, even one he launched. Downloads follow the same
rule. Cancelling: the launcher may cancel his own job; anyone else needs "change job".
"""

from __future__ import annotations

from typing import Any

from django.contrib import admin, messages
from django.db.models import Q, QuerySet
from django.http import FileResponse, Http404, HttpRequest, HttpResponse, HttpResponseRedirect
from django.template.defaultfilters import filesizeformat
from django.template.response import TemplateResponse
from django.urls import URLPattern, path, reverse
from django.utils import timezone
from django.utils.formats import date_format
from django.utils.html import format_html
from unfold.admin import ModelAdmin
from unfold.contrib.filters.admin import ChoicesDropdownFilter, RangeDateFilter
from unfold.decorators import action, display

from jobs.access import job_readable_by
from jobs.models import Job, JobState, TaskEvent, TaskEventKind
from jobs.registry import REGISTRY, JobError, kind_label
from jobs.services import job_cancel, job_retry
from tenancy.scoping import BusinessScopedAdmin, sees_all_businesses, visible_business_ids


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
    JobState.CANCELLED: "default",
}


def rows_text(job: Job) -> str:
    """ "12,000 of 100,000 rows", or "" when the handler does not count rows."""
    if job.rows_total is None:
        return ""
    return f"{job.rows_done or 0:,} of {job.rows_total:,} rows"


def size_text(job: Job) -> str:
    return str(filesizeformat(job.result_size)) if job.result_size is not None else ""


def expiry_text(job: Job) -> str:
    if not job.expires_at or not job.result_file:
        return ""
    return "kept until " + date_format(timezone.localtime(job.expires_at), "j M Y, H:i")


@admin.register(Job)
class JobAdmin(BusinessScopedAdmin):
    list_display = [
        "id",
        "kind_display",
        "business",
        "state_display",
        "progress_bar",
        "message",
        "result_display",
        "requested_by",
        "attempts",
        "created_at",
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
        "rows_display",
        "message",
        "attempts",
        "celery_task_id",
        "error",
        "traceback",
        "result_file",
        "result_size_display",
        "expires_at",
        "cancel_requested_at",
        "cancelled_by",
        "notified_at",
        "created_at",
        "started_at",
        "finished_at",
        "updated_at",
    ]
    actions = ["cancel_selected", "retry_failed"]
    actions_detail = ["cancel_job"]
    list_select_related = ["business", "requested_by"]
    exclude = ["rows_done", "rows_total", "result_size"]
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
        rows = rows_text(obj)
        return format_html(
            '<div class="job-progress" data-job-active="{}" title="{}%"><div class="job-progress-bar job-{}" '
            'style="width:{}%"></div></div><span class="job-progress-label">{}%{}</span>',
            "1" if obj.is_active else "0",
            obj.progress,
            obj.state,
            obj.progress,
            obj.progress,
            f" - {rows}" if rows else "",
        )

    @display(description="Rows")
    def rows_display(self, obj: Job) -> str:
        return rows_text(obj) or "-"

    @display(description="Result size")
    def result_size_display(self, obj: Job) -> str:
        return size_text(obj) or "-"

    @display(description="Result")
    def result_display(self, obj: Job) -> str:
        if not obj.result_file:
            return "-"
        url = reverse("admin:jobs_job_download", args=[obj.pk])
        return format_html(
            '<a href="{}" class="text-primary-600">Download</a> <span class="job-result-meta">{}{}</span>',
            url,
            size_text(obj),
            f", {expiry_text(obj)}" if expiry_text(obj) else "",
        )

    # Who sees what: his businesses' jobs and the jobs he launched (BusinessScopedAdmin would show a
    # staff member only the first).
    def get_queryset(self, request: HttpRequest) -> QuerySet[Job]:
        qs = ModelAdmin.get_queryset(self, request)
        if sees_all_businesses(request.user):
            return qs
        own_global = Q(requested_by=request.user.pk, business__isnull=True)
        return qs.filter(Q(business__in=visible_business_ids(request.user)) | own_global)

    def _launched_in_scope(self, request: HttpRequest, obj: Any) -> bool:
        """He launched `obj` and may still read it (jobs.access): a staff member taken off a business,
        or who lost the right the job needed, loses its files with it, even those he launched."""
        if obj is None or obj.requested_by_id is None or obj.requested_by_id != request.user.pk:
            return False
        return job_readable_by(user=request.user, job=obj)

    def _owns(self, request: HttpRequest, obj: Any) -> bool:
        return self._launched_in_scope(request, obj) or super()._owns(request, obj)

    def has_view_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        """The list needs "view job"; the page and the download of a job he launched do not (the
        "your job is ready" notice links to them), while he still sees its business."""
        if self._launched_in_scope(request, obj):
            return bool(request.user.is_active and request.user.is_staff)
        if obj is not None and not job_readable_by(user=request.user, job=obj):
            return False  # a job of his business made with a right he does not hold
        return super().has_view_permission(request, obj)

    def has_retry_permission(self, request: HttpRequest) -> bool:
        """Retrying runs a job again (postings, exports): the "change job" right, which staff do not have."""
        return bool(request.user.has_perm("jobs.change_job"))

    def may_cancel(self, request: HttpRequest, job: Job) -> bool:
        """The launcher cancels his own job; anyone else (who sees the job) needs "change job"."""
        if request.user.has_perm("jobs.change_job"):
            return True
        return job.requested_by_id is not None and job.requested_by_id == request.user.pk

    def has_cancel_permission(self, request: HttpRequest, object_id: Any = None) -> bool:
        """Offered on the list to whoever may cancel something there: "change job", or jobs he launched.
        On a job's page: a job he sees and may cancel (the button shows while it is active)."""
        if object_id is None:
            if request.user.has_perm("jobs.change_job"):
                return True
            return self.get_queryset(request).filter(requested_by=request.user.pk).exists()
        job = self.get_object(request, str(object_id))
        return job is not None and self.has_view_permission(request, job) and self.may_cancel(request, job)

    def get_actions_detail(self, request: HttpRequest, object_id: int) -> list[Any]:
        """The Cancel button only on a job that is still queued or running."""
        job = self.get_object(request, str(object_id))
        if job is None or not job.is_active:
            return []
        return super().get_actions_detail(request, object_id)  # type: ignore[no-any-return]

    def _cancel(self, request: HttpRequest, job: Job) -> str | None:
        """Cancel `job` for this user; the refusal's text, or None when done."""
        if not self.may_cancel(request, job):
            return f'Job #{job.pk} was launched by someone else; cancelling it needs the "change job" right.'
        try:
            job_cancel(job=job, acting_user=request.user)
        except JobError as exc:
            return str(exc)
        return None

    @action(description="Cancel selected jobs", permissions=["cancel"])
    def cancel_selected(self, request: HttpRequest, queryset: QuerySet[Job]) -> None:
        done, refused = [], []
        for job in queryset.order_by("pk"):
            reason = self._cancel(request, job)
            if reason is None:
                done.append(f"#{job.pk}")
            else:
                refused.append(reason)
        if done:
            self.message_user(
                request,
                f"Cancelled: {', '.join(done)} (a running job stops at its next progress report).",
                messages.SUCCESS,
            )
        for reason in refused:
            self.message_user(request, reason, messages.WARNING)

    @action(description="Cancel job", url_path="cancel", permissions=["cancel"], icon="cancel")
    def cancel_job(self, request: HttpRequest, object_id: str) -> HttpResponse:
        """The button on a job's page: asks to confirm (GET), cancels (POST)."""
        job = self.get_object(request, object_id)
        if job is None:
            raise Http404("No such job.")
        change_url = reverse("admin:jobs_job_change", args=[job.pk])
        if request.method == "POST":
            reason = self._cancel(request, job)
            if reason is None:
                self.message_user(request, f"Job #{job.pk} cancelled.", messages.SUCCESS)
            else:
                self.message_user(request, reason, messages.WARNING)
            return HttpResponseRedirect(change_url)
        return TemplateResponse(
            request,
            "admin/jobs/job/cancel_confirm.html",
            {
                **self.admin_site.each_context(request),
                "title": f"Cancel {kind_label(job.kind)} #{job.pk}",
                "opts": self.model._meta,
                "job": job,
                "change_url": change_url,
            },
        )

    @action(description="Run selected failed or cancelled jobs again", permissions=["retry"])
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

    def change_view(
        self, request: HttpRequest, object_id: str, form_url: str = "", extra_context: dict[str, Any] | None = None
    ) -> HttpResponse:
        job = self.get_object(request, object_id)
        if job is not None:
            extra_context = {
                **(extra_context or {}),
                "job_rows": rows_text(job),
                "job_size": size_text(job),
                "job_expiry": expiry_text(job),
            }
        return super().change_view(request, object_id, form_url, extra_context)

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
        job = self.get_object(request, str(object_id))  # the same queryset as the list: same rule
        if job is None or not self.has_view_permission(request, job) or not job.result_file:
            raise Http404("No such result.")
        return FileResponse(
            job.result_file.open("rb"), as_attachment=True, filename=job.result_file.name.rsplit("/", 1)[-1]
        )


TASK_EVENT_LABELS = {
    TaskEventKind.FAILED: "danger",
    TaskEventKind.RETRIED: "warning",
    TaskEventKind.SUCCEEDED: "success",
}


class _DistinctValueFilter(admin.SimpleListFilter):
    """A filter offering the values a TaskEvent column holds (the table keeps 30 days: a few names)."""

    field = ""

    def lookups(self, request: HttpRequest, model_admin: Any) -> list[tuple[str, str]]:
        values = TaskEvent.objects.exclude(**{self.field: ""}).values_list(self.field, flat=True)
        return [(v, v) for v in values.distinct().order_by(self.field)]

    def queryset(self, request: HttpRequest, queryset: QuerySet[TaskEvent]) -> QuerySet[TaskEvent]:
        return queryset.filter(**{self.field: self.value()}) if self.value() else queryset


class TaskNameFilter(_DistinctValueFilter):
    title = "task"
    parameter_name = "task"
    field = "task_name"


class PeriodicTaskFilter(_DistinctValueFilter):
    title = "periodic task"
    parameter_name = "periodic"
    field = "periodic_task"


def may_view_task_events(user: Any) -> bool:
    """Task events are about every business (a traceback may show any business's data): the owner,
    or someone who sees every business and holds "view task event"."""
    return bool(user.is_active and user.is_staff and sees_all_businesses(user) and user.has_perm("jobs.view_taskevent"))


@admin.register(TaskEvent)
class TaskEventAdmin(ModelAdmin):  # type: ignore[type-arg]
    """Failed and retried Celery tasks, and periodic tasks' last successes, as the workers recorded
    them (jobs/taskevents.py). Read-only: the workers write them, the daily clean-up deletes them."""

    list_display = ["at", "kind_display", "task_name", "periodic_task", "exception_short", "worker"]
    list_display_links = ["at", "kind_display"]
    list_filter = [("kind", ChoicesDropdownFilter), TaskNameFilter, PeriodicTaskFilter, ("at", RangeDateFilter)]
    list_filter_submit = True
    search_fields = ["task_name", "periodic_task", "exception", "task_id"]
    fields = ["at", "kind", "task_name", "task_id", "periodic_task", "worker", "exception", "traceback_display"]
    readonly_fields = fields
    date_hierarchy = "at"

    def has_view_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return may_view_task_events(request.user)

    def has_add_permission(self, request: HttpRequest) -> bool:
        return False

    def has_change_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return False

    def has_delete_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return False  # kept 30 days by the daily clean-up (jobs.taskevents.task_events_prune)

    @display(description="What", label=TASK_EVENT_LABELS)
    def kind_display(self, obj: TaskEvent) -> str:
        return obj.kind

    @display(description="Exception")
    def exception_short(self, obj: TaskEvent) -> str:
        text = obj.exception.splitlines()[0] if obj.exception else ""
        return text if len(text) <= 120 else text[:119] + "..."

    @display(description="Traceback")
    def traceback_display(self, obj: TaskEvent) -> str:
        if not obj.traceback:
            return "-"
        return format_html(
            '<pre class="task-traceback" style="white-space:pre-wrap;font-size:12px">{}</pre>', obj.traceback
        )

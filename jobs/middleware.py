"""Tells a user, on his next admin page, that a job he launched finished (jobs.notices)."""

from __future__ import annotations

from collections.abc import Callable

from django.contrib import messages
from django.http import HttpRequest, HttpResponse
from django.template.response import TemplateResponse
from django.urls import reverse
from django.utils.html import format_html
from django.utils.safestring import SafeString

from jobs.models import Job, JobState
from jobs.notices import job_notices_take
from jobs.registry import kind_label


def notice_text(job: Job) -> SafeString:
    """ "Excel: sales #42 is ready - Download", "... failed: reason", "... was cancelled"."""
    page = reverse("admin:jobs_job_change", args=[job.pk])
    name = format_html('<a href="{}" class="underline">{} #{}</a>', page, kind_label(job.kind), job.pk)
    if job.state == JobState.SUCCEEDED:
        if job.result_file:
            download = reverse("admin:jobs_job_download", args=[job.pk])
            return format_html('{} is ready - <a href="{}" class="underline">Download</a>', name, download)
        said = job.message.removeprefix("Done").removeprefix(":").strip()
        return format_html("{} is done: {}", name, said) if said else format_html("{} is done", name)
    if job.state == JobState.FAILED:
        return format_html("{} failed: {}", name, job.message.removeprefix("Failed: "))
    return format_html("{} was cancelled", name)


LEVELS: dict[str, int] = {
    JobState.SUCCEEDED: messages.SUCCESS,
    JobState.FAILED: messages.ERROR,
    JobState.CANCELLED: messages.WARNING,
}


class JobNoticeMiddleware:
    """Adds the notices to pages rendered from templates (every admin page), not to redirects,
    downloads or JSON, where a message would be taken and never seen."""

    def __init__(self, get_response: Callable[[HttpRequest], HttpResponse]) -> None:
        self.get_response = get_response

    def __call__(self, request: HttpRequest) -> HttpResponse:
        return self.get_response(request)

    def process_template_response(self, request: HttpRequest, response: TemplateResponse) -> TemplateResponse:
        user = getattr(request, "user", None)
        if user is None or not user.is_authenticated or not user.is_staff or not hasattr(request, "_messages"):
            return response
        for job in job_notices_take(user=user):
            messages.add_message(request, LEVELS.get(job.state, messages.INFO), notice_text(job))
        return response

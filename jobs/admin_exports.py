"""The "Export to Excel" button of a changelist: exports what the user sees, as a job.

An admin mixes in `ExcelExportMixin` before its ModelAdmin base and declares `excel_columns` (and
optionally `excel_lines` for the lines of each row, `excel_options_form` for options such as an "as
of" date). The button (Unfold `actions_list`) carries the changelist's query string to a small
confirmation page that lists the filters and asks for the options; confirming queues the generic
job jobs.exports.CHANGELIST_XLSX on the reports queue. Launching needs the model's view permission
(an export is a read); the worker checks it again when it runs.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Iterable, Iterator, Sequence
from decimal import Decimal
from typing import Any

from django import forms
from django.contrib import messages
from django.contrib.admin.options import IncorrectLookupParameters
from django.db.models import QuerySet
from django.http import HttpRequest, HttpResponse, HttpResponseRedirect, QueryDict
from django.shortcuts import render
from django.urls import reverse
from django.utils import timezone
from django.utils.html import format_html
from unfold.decorators import action

from jobs.exports import (
    CHANGELIST_XLSX,
    NOT_FILTERS,
    ChildRows,
    Column,
    ExportSpec,
    changelist_request,
    describe_filters,
)
from jobs.registry import JobFailed
from jobs.services import job_launch
from tenancy.models import Business
from tenancy.scoping import sees_all_businesses, visible_business_ids

EXPORT_ACTION = "export_to_excel"


def _jsonable(value: Any) -> Any:
    if isinstance(value, (dt.date, dt.datetime)):
        return value.isoformat()
    if isinstance(value, Decimal):
        return str(value)
    if isinstance(value, Business):
        return value.pk
    return value


class AsOfForm(forms.Form):
    """The option of exports that show balances or stock on a date (today when left empty)."""

    as_of = forms.DateField(
        label="As of", required=False, widget=forms.DateInput(attrs={"type": "date"}), help_text="Empty: today."
    )

    def clean_as_of(self) -> dt.date:
        return self.cleaned_data.get("as_of") or timezone.localdate()


class ExcelExportMixin:
    """Adds the "Export to Excel" button to a (Unfold, business-scoped) ModelAdmin."""

    excel_columns: Sequence[Column] = ()
    excel_lines: ChildRows | None = None
    excel_sheet: str | None = None
    excel_options_form: type[forms.Form] | None = None
    actions_list: Sequence[Any] = (EXPORT_ACTION,)

    # --- what the worker asks of the admin (jobs.exports.export_changelist) -----------------------

    def get_excel_export(self, request: HttpRequest, options: dict[str, Any]) -> ExportSpec:
        sheet = self.excel_sheet or str(self.model._meta.verbose_name_plural).capitalize()  # type: ignore[attr-defined]
        return ExportSpec(sheet=sheet, columns=self.excel_columns, children=self.excel_lines)

    def excel_export_options(self, raw: dict[str, Any]) -> dict[str, Any]:
        """The options stored with the job, validated again by the options form."""
        if self.excel_options_form is None:
            return {}
        form = self.excel_options_form(data=raw)
        if not form.is_valid():
            raise JobFailed(f"The export's options are not valid: {form.errors.as_text()}")
        return dict(form.cleaned_data)

    def excel_export_describe_options(self, options: dict[str, Any]) -> list[tuple[str, str]]:
        if self.excel_options_form is None:
            return []
        form = self.excel_options_form()
        return [(str(form.fields[name].label or name), str(_jsonable(value))) for name, value in options.items()]

    def excel_export_queryset(
        self, request: HttpRequest, queryset: QuerySet[Any], options: dict[str, Any]
    ) -> QuerySet[Any]:
        """The changelist's queryset with what the columns read joined or prefetched (override to add)."""
        return queryset

    def excel_export_rows(self, request: HttpRequest, rows: Iterator[Any], options: dict[str, Any]) -> Iterable[Any]:
        """The rows as streamed from the database; override to attach values computed elsewhere."""
        return rows

    def excel_export_needs_objects(self) -> bool:
        """Whether the export must read model instances: when excel_export_rows is overridden (it works
        on instances). Otherwise plain values are read when the columns allow it."""
        return type(self).excel_export_rows is not ExcelExportMixin.excel_export_rows

    # --- the button, the confirmation page, the launch ---------------------------------------------

    def changelist_view(self, request: HttpRequest, extra_context: dict[str, Any] | None = None) -> HttpResponse:
        response = super().changelist_view(request, extra_context)  # type: ignore[misc]
        context = getattr(response, "context_data", None)
        query = request.GET.urlencode()
        if context and query and context.get("actions_list"):
            export_path = reverse(self._excel_url_name())
            for item in context["actions_list"]:
                if isinstance(item, dict) and item.get("path") == export_path:
                    item["path"] = f"{export_path}?{query}"
        return response  # type: ignore[no-any-return]

    def _excel_url_name(self) -> str:
        opts = self.model._meta  # type: ignore[attr-defined]
        return f"admin:{opts.app_label}_{opts.model_name}_{EXPORT_ACTION}"

    def excel_job_business(self, request: HttpRequest, query: str) -> Business | None:
        """The business the job belongs to: the one the list is filtered to, or the user's only one."""
        lookup = getattr(self, "business_lookup", "business")
        everything = sees_all_businesses(request.user)
        allowed = visible_business_ids(request.user)
        chosen = QueryDict(query).get(f"{lookup}__id__exact", "")
        if chosen.isdigit() and (everything or int(chosen) in allowed):
            return Business.objects.filter(pk=int(chosen)).first()
        if not everything and len(allowed) == 1:
            return Business.objects.filter(pk=next(iter(allowed))).first()
        return None

    @action(description="Export to Excel", url_path="export-excel", permissions=["view"], icon="download")
    def export_to_excel(self, request: HttpRequest) -> HttpResponse:
        opts = self.model._meta  # type: ignore[attr-defined]
        changelist_url = reverse(f"admin:{opts.app_label}_{opts.model_name}_changelist")
        if request.method == "POST":
            query = request.POST.get("_changelist_query", "")
        else:
            params = request.GET.copy()
            for key in NOT_FILTERS:
                params.pop(key, None)
            query = params.urlencode()
        form = None
        if self.excel_options_form is not None:
            form = self.excel_options_form(request.POST if request.method == "POST" else None)
        back = f"{changelist_url}?{query}" if query else changelist_url
        if request.method == "POST" and (form is None or form.is_valid()):
            options = {k: _jsonable(v) for k, v in (form.cleaned_data.items() if form is not None else ())}
            job = job_launch(
                kind=CHANGELIST_XLSX,
                acting_user=request.user,
                business=self.excel_job_business(request, query),
                # The changelist's path too: the worker then builds its request without loading the URLconf.
                params={"model": opts.label_lower, "query": query, "options": options, "path": changelist_url},
            )
            jobs_url = reverse("admin:jobs_job_changelist")
            self.message_user(  # type: ignore[attr-defined]
                request,
                format_html(
                    'Export queued (job #{}): you will find it on the <a href="{}">Jobs page</a>.', job.pk, jobs_url
                ),
                messages.SUCCESS,
            )
            return HttpResponseRedirect(back)
        listing = changelist_request(model_admin=self, user=request.user, query=query)
        try:
            changelist = self.get_changelist_instance(listing)  # type: ignore[attr-defined]
        except IncorrectLookupParameters:
            self.message_user(request, "These filters are not valid; nothing to export.", messages.ERROR)  # type: ignore[attr-defined]
            return HttpResponseRedirect(changelist_url)
        context = {
            **self.admin_site.each_context(request),  # type: ignore[attr-defined]
            "title": f"Export {opts.verbose_name_plural} to Excel",
            "opts": opts,
            "filters": describe_filters(changelist, listing),
            "form": form,
            "query": query,
            "back": back,
            "has_lines": self.excel_lines is not None,
        }
        return render(request, "jobs/excel_export.html", context)

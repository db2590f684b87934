"""The statement pages of the admin: trial balance, P&L, balance sheet and cash flow, and their PDFs.

Admin views (mounted under the books admin, behind admin_site.admin_view) that lay out one
statement each (accounts.statements: the same tables as the PDF). The business filter offers only
the user's businesses, plus "all businesses" side by side for the owner; asking for any other
business by URL parameter is refused with 403. "Download PDF" posts the page's filters and
launches a statement PDF job (accounts.reports) on the reports queue.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any
from urllib.parse import urlencode

from django.contrib import messages
from django.contrib.admin import ModelAdmin
from django.core.exceptions import PermissionDenied
from django.http import HttpRequest, HttpResponse, HttpResponseNotAllowed, HttpResponseRedirect
from django.template.response import TemplateResponse
from django.urls import URLPattern, path, reverse
from django.utils import timezone
from django.utils.html import format_html

from accounts.forms import ALL_BUSINESSES, ReportFilterForm
from accounts.statements import CONSOLIDATED_LABEL, STATEMENT_PDF, statement_build, statement_params
from jobs.services import job_launch
from tenancy.models import Business
from tenancy.scoping import sees_all_businesses, visible_businesses

REPORTS = [
    ("trial_balance", "trial-balance", "Trial balance"),
    ("profit_and_loss", "profit-and-loss", "Profit and loss"),
    ("balance_sheet", "balance-sheet", "Balance sheet"),
    ("cash_flow", "cash-flow", "Cash flow"),
]
FILTER_FIELDS = ("business", "period", "anchor", "date_from", "date_to", "compare")


def report_url_name(key: str) -> str:
    return f"accounts_report_{key}"


def report_pdf_url_name(key: str) -> str:
    return f"accounts_report_{key}_pdf"


class ReportViews:
    def __init__(self, model_admin: ModelAdmin) -> None:  # type: ignore[type-arg]
        self.model_admin = model_admin

    def _scope(self, request: HttpRequest, query: Mapping[str, Any]) -> tuple[ReportFilterForm, list[int] | None, str]:
        """The filter (validated), the business ids it covers (None: all) and their label."""
        if not request.user.has_perm("accounts.view_reports"):
            raise PermissionDenied
        businesses = visible_businesses(request.user).order_by("name")
        owner = sees_all_businesses(request.user)
        names = {str(pk): name for pk, name in businesses.values_list("pk", "name")}
        if not names:
            raise PermissionDenied
        requested = query.get("business") or (ALL_BUSINESSES if owner else next(iter(names)))
        if (requested == ALL_BUSINESSES and not owner) or (requested != ALL_BUSINESSES and requested not in names):
            raise PermissionDenied  # another business's books, asked for by URL
        data = {name: query.get(name) or "" for name in FILTER_FIELDS}
        data["business"] = requested
        data["anchor"] = data["anchor"] or timezone.localdate().isoformat()
        form = ReportFilterForm(data, businesses=businesses, consolidated=owner)
        if form.is_valid():
            # Show the dates the period resolved to, and the defaults it used.
            period = form.resolved_period
            form.data = {
                **data,
                "period": form.cleaned_data["period"],
                "compare": form.cleaned_data["compare"],
                "date_from": period.date_from.isoformat(),
                "date_to": period.date_to.isoformat(),
            }
        if requested == ALL_BUSINESSES:
            return form, None, CONSOLIDATED_LABEL
        return form, [int(requested)], names[requested]

    def _page(self, request: HttpRequest, key: str, title: str) -> HttpResponse:
        form, business_ids, label = self._scope(request, request.GET)
        statement = None
        if form.is_valid():
            statement = statement_build(
                report=key,
                business_ids=business_ids,
                business_label=label,
                period=form.resolved_period,
                compare=form.cleaned_data["compare"],
            )
        query = request.GET.urlencode()
        nav = [
            {
                "title": t,
                "url": reverse(f"admin:{report_url_name(k)}") + (f"?{query}" if query else ""),
                "active": k == key,
            }
            for k, _, t in REPORTS
        ]
        return TemplateResponse(
            request,
            f"admin/accounts/reports/{key}.html",
            {
                **self.model_admin.admin_site.each_context(request),
                "title": title,
                "subtitle": label,
                "form": form,
                "report_nav": nav,
                "business_label": label,
                "statement": statement,
                "pdf_url": reverse(f"admin:{report_pdf_url_name(key)}"),
                "pdf_fields": [(name, form.data.get(name, "")) for name in FILTER_FIELDS] if statement else [],
            },
        )

    def _pdf(self, request: HttpRequest, key: str, title: str) -> HttpResponse:
        """Launch the PDF of the statement as the page shows it (POST: the page's filters)."""
        if request.method != "POST":
            return HttpResponseNotAllowed(["POST"])
        form, business_ids, label = self._scope(request, request.POST)
        page = reverse(f"admin:{report_url_name(key)}")
        query = {name: request.POST.get(name, "") for name in FILTER_FIELDS if request.POST.get(name)}
        back = HttpResponseRedirect(f"{page}?{urlencode(query)}" if query else page)
        if not form.is_valid():
            errors = "; ".join(str(e) for errs in form.errors.values() for e in errs)
            messages.error(request, f"No PDF: {errors}")
            return back
        business = None if business_ids is None else Business.objects.get(pk=business_ids[0])
        job = job_launch(
            kind=STATEMENT_PDF,
            acting_user=request.user,
            business=business,
            params=statement_params(
                report=key,
                business=ALL_BUSINESSES if business is None else str(business.pk),
                period=form.resolved_period,
                compare=form.cleaned_data["compare"],
            ),
        )
        messages.success(
            request,
            format_html(
                '{} PDF of {} ({}) queued as job #{}: download it from the <a href="{}" class="underline">'
                "Jobs page</a>.",
                title,
                label,
                form.resolved_period.label,
                job.pk,
                reverse("admin:jobs_job_changelist"),
            ),
        )
        return back


def report_urls(model_admin: ModelAdmin) -> list[URLPattern]:  # type: ignore[type-arg]
    views = ReportViews(model_admin)
    wrap: Callable[..., Any] = model_admin.admin_site.admin_view
    urls = []
    for key, slug, title in REPORTS:

        def page(request: HttpRequest, key: str = key, title: str = title) -> HttpResponse:
            return views._page(request, key, title)

        def pdf(request: HttpRequest, key: str = key, title: str = title) -> HttpResponse:
            return views._pdf(request, key, title)

        urls += [
            path(f"reports/{slug}/", wrap(page), name=report_url_name(key)),
            path(f"reports/{slug}/pdf/", wrap(pdf), name=report_pdf_url_name(key)),
        ]
    return urls

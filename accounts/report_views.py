"""The statement pages of the admin: trial balance, P&L, balance sheet and cash flow.

Admin views (mounted under the books admin, behind admin_site.admin_view) that read one selector
each. The business filter offers only the user's businesses, plus "all businesses" consolidated
for the owner; asking for any other business by URL parameter is refused with 403.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Callable
from typing import Any

from django.contrib.admin import ModelAdmin
from django.core.exceptions import PermissionDenied
from django.http import HttpRequest, HttpResponse
from django.template.response import TemplateResponse
from django.urls import URLPattern, path, reverse
from django.utils import timezone

from accounts import selectors
from accounts.forms import ALL_BUSINESSES, ReportFilterForm
from tenancy.scoping import sees_all_businesses, visible_businesses

REPORTS = [
    ("trial_balance", "trial-balance", "Trial balance"),
    ("profit_and_loss", "profit-and-loss", "Profit and loss"),
    ("balance_sheet", "balance-sheet", "Balance sheet"),
    ("cash_flow", "cash-flow", "Cash flow"),
]


def report_url_name(key: str) -> str:
    return f"accounts_report_{key}"


class ReportViews:
    def __init__(self, model_admin: ModelAdmin) -> None:  # type: ignore[type-arg]
        self.model_admin = model_admin

    def _scope(self, request: HttpRequest) -> tuple[ReportFilterForm, list[int] | None, str]:
        """The validated filter, the business ids it covers (None: all) and their label."""
        if not request.user.has_perm("accounts.view_reports"):
            raise PermissionDenied
        businesses = visible_businesses(request.user).order_by("name")
        owner = sees_all_businesses(request.user)
        names = {str(pk): name for pk, name in businesses.values_list("pk", "name")}
        if not names:
            raise PermissionDenied
        requested = request.GET.get("business") or (ALL_BUSINESSES if owner else next(iter(names)))
        if (requested == ALL_BUSINESSES and not owner) or (requested != ALL_BUSINESSES and requested not in names):
            raise PermissionDenied  # another business's books, asked for by URL
        date_to = request.GET.get("date_to") or timezone.localdate().isoformat()
        try:  # by default the period starts on the first of the "to" date's month
            month_start = dt.date.fromisoformat(date_to).replace(day=1).isoformat()
        except ValueError:
            month_start = ""
        data = {"business": requested, "date_from": request.GET.get("date_from") or month_start, "date_to": date_to}
        form = ReportFilterForm(data, businesses=businesses, consolidated=owner)
        form.is_valid()
        if requested == ALL_BUSINESSES:
            return form, None, "All businesses (consolidated)"
        return form, [int(requested)], names[requested]

    def _render(
        self, request: HttpRequest, key: str, title: str, context: dict[str, Any], form: ReportFilterForm, label: str
    ) -> TemplateResponse:
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
                **context,
            },
        )

    def trial_balance(self, request: HttpRequest) -> HttpResponse:
        form, business_ids, label = self._scope(request)
        _, as_of = form.dates()
        report = selectors.trial_balance(business_ids=business_ids, as_of=as_of)
        return self._render(request, "trial_balance", "Trial balance", {"report": report}, form, label)

    def profit_and_loss(self, request: HttpRequest) -> HttpResponse:
        form, business_ids, label = self._scope(request)
        date_from, date_to = form.dates()
        report = selectors.income_statement(business_ids=business_ids, date_from=date_from, date_to=date_to)
        return self._render(request, "profit_and_loss", "Profit and loss", {"report": report}, form, label)

    def balance_sheet(self, request: HttpRequest) -> HttpResponse:
        form, business_ids, label = self._scope(request)
        _, as_of = form.dates()
        report = selectors.balance_sheet(business_ids=business_ids, as_of=as_of)
        return self._render(request, "balance_sheet", "Balance sheet", {"report": report}, form, label)

    def cash_flow(self, request: HttpRequest) -> HttpResponse:
        form, business_ids, label = self._scope(request)
        date_from, date_to = form.dates()
        report = selectors.cash_flow_statement(business_ids=business_ids, date_from=date_from, date_to=date_to)
        return self._render(request, "cash_flow", "Cash flow", {"report": report}, form, label)


def report_urls(model_admin: ModelAdmin) -> list[URLPattern]:  # type: ignore[type-arg]
    views = ReportViews(model_admin)
    wrap: Callable[..., Any] = model_admin.admin_site.admin_view
    return [path(f"reports/{slug}/", wrap(getattr(views, key)), name=report_url_name(key)) for key, slug, _ in REPORTS]

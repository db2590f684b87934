"""The ledger in the admin: chart of accounts, books (lock dates), journal entries and lines.

Posted entries and lines are read-only; corrections are reversals. Every write calls one service
(accounts.services); every page is scoped to the user's businesses by BusinessScopedAdmin.
Statements (trial balance, P&L, balance sheet, cash flow) are in accounts/report_views.py.
"""

from __future__ import annotations

import datetime as dt
from typing import Any, cast

from django import forms
from django.contrib import admin, messages
from django.contrib.admin import helpers
from django.core.exceptions import PermissionDenied, ValidationError
from django.core.paginator import Paginator
from django.db.models import Exists, OuterRef, Prefetch, Q, QuerySet, Subquery, Sum
from django.http import Http404, HttpRequest, HttpResponse, HttpResponseRedirect
from django.template.response import TemplateResponse
from django.urls import URLPattern, reverse
from django.utils import timezone
from django.utils.functional import cached_property
from django.utils.html import format_html
from unfold.admin import TabularInline
from unfold.contrib.filters.admin import ChoicesDropdownFilter, RangeDateFilter
from unfold.decorators import action, display

from accounts.exceptions import LedgerError
from accounts.forms import ClosePeriodForm, JournalLineFormSet, ManualJournalForm, postable_accounts
from accounts.models import Account, Books, JournalEntry, JournalLine, PeriodClose, SourceType
from accounts.periods import MONTH, PREVIOUS, period_containing
from accounts.report_views import report_urls
from accounts.services import books_close_period, chart_ensure_default, entry_post_manual, entry_reverse
from accounts.statements import REPORT_TITLES, STATEMENT_PDF, statement_params
from jobs.admin_exports import ExcelExportMixin
from jobs.exports import ChildRows, Column
from jobs.services import job_launch
from tenancy.models import Business
from tenancy.scoping import BusinessScopedAdmin, sees_all_businesses, visible_business_ids, visible_businesses


class CappedCountPaginator(Paginator):
    """Counts at most CAP rows: a changelist over millions of lines never runs a full COUNT(*).

    Beyond the cap the list says "more than 10,000" and offers the first pages; filters narrow it.
    """

    CAP = 10_000
    template_name = "admin/accounts/capped_pagination.html"

    @cached_property
    def count(self) -> int:
        queryset = cast(QuerySet[Any], self.object_list)
        return queryset.values("pk")[: self.CAP + 1].count()

    @property
    def capped(self) -> bool:
        return self.count > self.CAP


# --- chart of accounts ---------------------------------------------------------------------------


class AccountForm(forms.ModelForm):  # type: ignore[type-arg]
    class Meta:
        model = Account
        fields = ["business", "code", "name", "type", "parent", "role", "intercompany", "is_active"]

    def clean(self) -> dict[str, Any]:
        data = super().clean() or {}
        parent, business = data.get("parent"), data.get("business") or getattr(self.instance, "business", None)
        account_type = data.get("type") or self.instance.type
        if parent is not None:
            if business is not None and parent.business_id != business.pk:
                self.add_error("parent", "The group account must belong to the same business.")
            elif parent.type != account_type:
                self.add_error("parent", "The group account must be of the same type.")
            elif self.instance.pk and parent.pk == self.instance.pk:
                self.add_error("parent", "An account cannot be its own group.")
        if self.instance.pk and "type" in self.changed_data and self.instance.lines.exists():
            self.add_error("type", "This account has postings: its type cannot change.")
        return data


@admin.register(Account)
class AccountAdmin(BusinessScopedAdmin):
    form = AccountForm
    list_display = ["code", "name", "type", "parent", "role", "intercompany", "is_active", "business"]
    list_display_links = ["code", "name"]
    list_filter = [("type", ChoicesDropdownFilter), "is_active", "intercompany"]
    list_select_related = ["business", "parent"]
    search_fields = ["code", "name", "role"]
    ordering = ["business__name", "code"]

    def get_readonly_fields(self, request: HttpRequest, obj: Any = None) -> list[str]:
        # Services find accounts by role, and an account's lines stay with its business.
        return ["business", "role"] if obj is not None else []


# --- books: lock dates and period close ----------------------------------------------------------


class PeriodCloseInline(TabularInline):  # type: ignore[type-arg]
    model = PeriodClose
    fields = ["closed_at", "previous_lock_date", "lock_date", "closed_by"]
    readonly_fields = fields
    extra = 0
    can_delete = False
    verbose_name = "period close"

    def has_add_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return False

    def has_change_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return False


@admin.register(Books)
class BooksAdmin(BusinessScopedAdmin):
    list_display = ["business", "lock_date", "last_number"]
    readonly_fields = ["business", "lock_date", "last_number"]
    inlines = [PeriodCloseInline]
    actions = [
        "close_period",
        "ensure_default_chart",
        "pdf_profit_and_loss_this_month",
        "pdf_profit_and_loss_last_month",
        "pdf_balance_sheet_last_month",
        "pdf_trial_balance_last_month",
        "pdf_cash_flow_last_month",
        "pdf_consolidated_profit_and_loss_last_month",
    ]
    list_select_related = ["business"]

    def has_add_permission(self, request: HttpRequest) -> bool:
        return False  # created with the business's chart

    def has_change_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return False  # the lock date moves through the close-period action only

    def has_delete_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return False

    def has_close_period_permission(self, request: HttpRequest) -> bool:
        return bool(request.user.has_perm("accounts.close_period"))

    def has_chart_permission(self, request: HttpRequest) -> bool:
        return bool(request.user.has_perm("accounts.add_account"))

    def has_reports_permission(self, request: HttpRequest) -> bool:
        return bool(request.user.has_perm("accounts.view_reports"))

    def has_consolidated_reports_permission(self, request: HttpRequest) -> bool:
        return self.has_reports_permission(request) and sees_all_businesses(request.user)

    def _statement_pdfs(
        self, request: HttpRequest, queryset: QuerySet[Books] | None, report: str, months_back: int
    ) -> None:
        """One statement PDF job per selected business (None: one consolidated job), for a month."""
        anchor = timezone.localdate().replace(day=1)
        for _ in range(months_back):
            anchor = (anchor - dt.timedelta(days=1)).replace(day=1)
        period = period_containing(MONTH, anchor)
        if queryset is None:
            targets: list[Business | None] = [None]
        else:
            visible = visible_business_ids(request.user)
            targets = [b.business for b in queryset.select_related("business") if b.business_id in visible]
        jobs = [
            job_launch(
                kind=STATEMENT_PDF,
                acting_user=request.user,
                business=business,
                params=statement_params(
                    report=report,
                    business="all" if business is None else str(business.pk),
                    period=period,
                    compare=PREVIOUS,
                ),
            )
            for business in targets
        ]
        numbers = ", ".join(f"#{job.pk}" for job in jobs)
        self.message_user(
            request,
            format_html(
                '{} PDF ({}) queued as job {}: download it from the <a href="{}" class="underline">Jobs page</a>.',
                REPORT_TITLES[report],
                period.label,
                numbers,
                reverse("admin:jobs_job_changelist"),
            ),
            messages.SUCCESS,
        )

    @action(description="P&L PDF, this month", permissions=["reports"])
    def pdf_profit_and_loss_this_month(self, request: HttpRequest, queryset: QuerySet[Books]) -> None:
        self._statement_pdfs(request, queryset, "profit_and_loss", 0)

    @action(description="P&L PDF, last month", permissions=["reports"])
    def pdf_profit_and_loss_last_month(self, request: HttpRequest, queryset: QuerySet[Books]) -> None:
        self._statement_pdfs(request, queryset, "profit_and_loss", 1)

    @action(description="Balance sheet PDF, end of last month", permissions=["reports"])
    def pdf_balance_sheet_last_month(self, request: HttpRequest, queryset: QuerySet[Books]) -> None:
        self._statement_pdfs(request, queryset, "balance_sheet", 1)

    @action(description="Trial balance PDF, end of last month", permissions=["reports"])
    def pdf_trial_balance_last_month(self, request: HttpRequest, queryset: QuerySet[Books]) -> None:
        self._statement_pdfs(request, queryset, "trial_balance", 1)

    @action(description="Cash flow PDF, last month", permissions=["reports"])
    def pdf_cash_flow_last_month(self, request: HttpRequest, queryset: QuerySet[Books]) -> None:
        self._statement_pdfs(request, queryset, "cash_flow", 1)

    @action(
        description="Consolidated P&L PDF, last month (all businesses side by side)",
        permissions=["consolidated_reports"],
    )
    def pdf_consolidated_profit_and_loss_last_month(self, request: HttpRequest, queryset: QuerySet[Books]) -> None:
        self._statement_pdfs(request, None, "profit_and_loss", 1)

    @action(description="Close the period (move the lock date forward)", permissions=["close_period"])
    def close_period(self, request: HttpRequest, queryset: QuerySet[Books]) -> HttpResponse | None:
        form = ClosePeriodForm(request.POST if "apply" in request.POST else None)
        if form.is_valid():
            for books in queryset.select_related("business"):
                try:
                    books_close_period(
                        business=books.business, lock_date=form.cleaned_data["lock_date"], acting_user=request.user
                    )
                except LedgerError as exc:
                    self.message_user(request, f"{books.business}: {exc}", messages.ERROR)
                else:
                    self.message_user(
                        request,
                        f"{books.business}: closed up to {form.cleaned_data['lock_date']:%d %b %Y}.",
                        messages.SUCCESS,
                    )
            return None
        return TemplateResponse(
            request,
            "admin/accounts/books/close_period.html",
            {
                **self.admin_site.each_context(request),
                "title": "Close the period",
                "opts": self.model._meta,
                "books": queryset.select_related("business"),
                "form": form,
                "action_checkbox_name": helpers.ACTION_CHECKBOX_NAME,
            },
        )

    @action(description="Add missing default accounts to the chart", permissions=["chart"])
    def ensure_default_chart(self, request: HttpRequest, queryset: QuerySet[Books]) -> None:
        for books in queryset.select_related("business"):
            try:
                chart_ensure_default(business=books.business)
            except LedgerError as exc:
                self.message_user(request, f"{books.business}: {exc}", messages.ERROR)
        self.message_user(request, "Default accounts checked.", messages.SUCCESS)

    def get_urls(self) -> list[URLPattern]:
        return [*report_urls(self), *super().get_urls()]


# --- journal entries and lines -------------------------------------------------------------------


class JournalLineInline(TabularInline):  # type: ignore[type-arg]
    model = JournalLine
    fields = ["account", "debit", "credit", "memo"]
    readonly_fields = fields
    extra = 0
    can_delete = False
    ordering = ["id"]

    def get_queryset(self, request: HttpRequest) -> QuerySet[JournalLine]:
        return super().get_queryset(request).select_related("account")

    def has_add_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return False

    def has_change_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return False

    def has_delete_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return False


@admin.register(JournalEntry)
class JournalEntryAdmin(ExcelExportMixin, BusinessScopedAdmin):
    excel_sheet = "Journal entries"
    excel_columns = [
        Column("Number", "number", "int"),
        Column("Date", "entry_date", "date"),
        Column("Business", "business__name"),
        Column("Memo", "memo", width=40),
        Column("Source", "get_source_type_display", width=16),
        Column("Source ref", "source_ref", width=16),
        Column("Amount", "total", "money", total=True),
        Column("Posted at", "posted_at", "datetime"),
    ]
    excel_lines = ChildRows(
        sheet="Journal lines",
        related="lines",
        parent_columns=[Column("Entry", "number", "int"), Column("Date", "entry_date", "date")],
        columns=[
            Column("Account code", "account__code", width=12),
            Column("Account", "account__name", width=30),
            Column("Debit", "debit", "money", total=True),
            Column("Credit", "credit", "money", total=True),
            Column("Memo", "memo", width=40),
        ],
    )
    list_display = ["number", "entry_date", "business", "memo", "source_type", "amount", "reversal_state", "posted_at"]
    list_display_links = ["number", "entry_date"]
    list_filter = [("source_type", ChoicesDropdownFilter), ("entry_date", RangeDateFilter)]
    list_filter_submit = True
    list_select_related = ["business"]
    search_fields = ["memo", "source_ref", "=idempotency_key"]
    search_help_text = "An entry number (12 or #12), or words of the memo, source or idempotency key."
    ordering = ["-id"]
    show_full_result_count = False
    paginator = CappedCountPaginator
    fields = [
        "business",
        "number",
        "entry_date",
        "posted_at",
        "memo",
        "source_type",
        "source_ref",
        "idempotency_key",
        "created_by",
        "reverses",
        "reversed_by_link",
        "currency",
        "seal_hash",
    ]
    readonly_fields = fields
    inlines = [JournalLineInline]
    actions = ["reverse_selected"]
    actions_detail = ["reverse_entry"]

    def get_queryset(self, request: HttpRequest) -> QuerySet[JournalEntry]:
        debits = JournalLine.objects.filter(entry=OuterRef("pk")).order_by().values("entry").annotate(s=Sum("debit"))
        return (
            super()
            .get_queryset(request)
            .annotate(
                total=Subquery(debits.values("s")),
                is_reversed=Exists(JournalEntry.objects.filter(reverses=OuterRef("pk"))),
            )
        )

    def excel_export_queryset(self, request: HttpRequest, queryset: QuerySet[Any], options: dict[str, Any]) -> Any:
        lines = JournalLine.objects.select_related("account").order_by("id")
        return queryset.select_related("business").prefetch_related(Prefetch("lines", queryset=lines))

    def get_search_results(
        self, request: HttpRequest, queryset: QuerySet[JournalEntry], search_term: str
    ) -> tuple[QuerySet[JournalEntry], bool]:
        number = search_term.strip().removeprefix("#")
        if number.isdigit():
            return queryset.filter(number=int(number)), False  # indexed, unlike a text match on numbers
        return super().get_search_results(request, queryset, search_term)

    def has_change_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return False  # posted entries are never edited: reverse them

    def has_delete_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return False

    def has_reverse_permission(self, request: HttpRequest, object_id: Any = None) -> bool:
        return bool(request.user.has_perm("accounts.reverse_journalentry"))

    @display(description="Amount", ordering="total")
    def amount(self, obj: JournalEntry) -> Any:
        return getattr(obj, "total", None)

    @display(description="Reversal", label={"reversed": "warning", "reversal": "info"})
    def reversal_state(self, obj: JournalEntry) -> str:
        if obj.source_type == SourceType.REVERSAL:
            return "reversal"
        return "reversed" if getattr(obj, "is_reversed", False) else ""

    @display(description="Reversed by")
    def reversed_by_link(self, obj: JournalEntry) -> str:
        reversal = JournalEntry.objects.filter(reverses=obj).first()
        if reversal is None:
            return "-"
        url = reverse("admin:accounts_journalentry_change", args=[reversal.pk])
        return format_html('<a href="{}" class="text-primary-600">#{}</a>', url, reversal.number)

    @display(description="Seal (SHA-256)")
    def seal_hash(self, obj: JournalEntry) -> str:
        seal = getattr(obj, "seal", None) if obj.pk else None
        return seal.hash if seal is not None else "not sealed yet"

    @action(description="Reverse the selected entries", permissions=["reverse"])
    def reverse_selected(self, request: HttpRequest, queryset: QuerySet[JournalEntry]) -> None:
        for entry in queryset.select_related("business").order_by("id"):
            try:
                reversal = entry_reverse(entry=entry, acting_user=request.user)
            except LedgerError as exc:
                self.message_user(request, f"Entry #{entry.number} ({entry.business}): {exc}", messages.ERROR)
            else:
                self.message_user(
                    request, f"Entry #{entry.number} reversed by entry #{reversal.number}.", messages.SUCCESS
                )

    @action(description="Reverse this entry", url_path="reverse", permissions=["reverse"])
    def reverse_entry(self, request: HttpRequest, object_id: str) -> HttpResponse:
        entry = self.get_object(request, object_id)
        if entry is None:
            raise Http404("No such entry.")
        change_url = reverse("admin:accounts_journalentry_change", args=[entry.pk])
        if request.method == "POST":
            try:
                reversal = entry_reverse(entry=entry, acting_user=request.user)
            except LedgerError as exc:
                self.message_user(request, str(exc), messages.ERROR)
                return HttpResponseRedirect(change_url)
            self.message_user(request, f"Entry #{entry.number} reversed by entry #{reversal.number}.", messages.SUCCESS)
            return HttpResponseRedirect(reverse("admin:accounts_journalentry_change", args=[reversal.pk]))
        return TemplateResponse(
            request,
            "admin/accounts/journalentry/reverse_confirm.html",
            {
                **self.admin_site.each_context(request),
                "title": f"Reverse entry #{entry.number}",
                "opts": self.model._meta,
                "entry": entry,
                "lines": entry.lines.select_related("account").order_by("id"),
                "change_url": change_url,
            },
        )

    def add_view(self, request: HttpRequest, form_url: str = "", extra_context: Any = None) -> HttpResponse:
        """The manual journal: an entry typed in by a person, posted through entry_post_manual."""
        if not self.has_add_permission(request):
            raise PermissionDenied
        businesses = visible_businesses(request.user)
        accounts = postable_accounts(businesses)
        data = request.POST if request.method == "POST" else None
        form = ManualJournalForm(data, businesses=businesses)
        formset = JournalLineFormSet(data, accounts=accounts, prefix="lines")
        if data is not None and form.is_valid() and formset.is_valid():
            try:
                entry = entry_post_manual(
                    business=form.cleaned_data["business"],
                    entry_date=form.cleaned_data["entry_date"],
                    lines=formset.line_specs(),
                    memo=form.cleaned_data["memo"],
                    idempotency_key=form.cleaned_data["idempotency_key"],
                    acting_user=request.user,
                )
            except LedgerError as exc:
                form.add_error(None, ValidationError(str(exc)))
            else:
                self.message_user(request, f"Journal entry #{entry.number} posted.", messages.SUCCESS)
                return HttpResponseRedirect(reverse("admin:accounts_journalentry_change", args=[entry.pk]))
        return TemplateResponse(
            request,
            "admin/accounts/journalentry/manual_journal.html",
            {
                **self.admin_site.each_context(request),
                "title": "Manual journal entry",
                "opts": self.model._meta,
                "form": form,
                "formset": formset,
                "owner": sees_all_businesses(request.user),
            },
        )


@admin.register(JournalLine)
class JournalLineAdmin(BusinessScopedAdmin):
    business_lookup = "entry__business"
    list_display = ["id", "entry_link", "entry_date", "business_name", "account", "debit", "credit", "memo"]
    list_select_related = ["entry__business", "account"]
    list_filter = [("entry__source_type", ChoicesDropdownFilter), ("entry__entry_date", RangeDateFilter)]
    list_filter_submit = True
    search_fields = ["memo"]
    search_help_text = "An entry number (#12), an account code (1010), or words of the line memo."
    ordering = ["-id"]
    show_full_result_count = False
    paginator = CappedCountPaginator
    list_per_page = 50

    def get_search_results(
        self, request: HttpRequest, queryset: QuerySet[JournalLine], search_term: str
    ) -> tuple[QuerySet[JournalLine], bool]:
        term = search_term.strip()
        if term.startswith("#") and term[1:].isdigit():
            return queryset.filter(entry__number=int(term[1:])), False
        if term.isdigit():
            return queryset.filter(Q(account__code=term) | Q(entry__number=int(term))), False
        return super().get_search_results(request, queryset, search_term)

    def has_add_permission(self, request: HttpRequest) -> bool:
        return False

    def has_change_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return False

    def has_delete_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return False

    @display(description="Entry")
    def entry_link(self, obj: JournalLine) -> str:
        url = reverse("admin:accounts_journalentry_change", args=[obj.entry_id])
        return format_html('<a href="{}" class="text-primary-600">#{}</a>', url, obj.entry.number)

    @display(description="Date", ordering="entry__entry_date")
    def entry_date(self, obj: JournalLine) -> Any:
        return obj.entry.entry_date

    @display(description="Business")
    def business_name(self, obj: JournalLine) -> str:
        return obj.entry.business.name

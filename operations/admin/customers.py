"""Customers (with balances and statements), suppliers and the catalogue."""

from __future__ import annotations

import datetime as dt
from collections.abc import Iterable, Iterator
from decimal import Decimal
from typing import Any

from django import forms
from django.contrib import admin, messages
from django.core.exceptions import PermissionDenied
from django.db.models import QuerySet, Sum
from django.http import HttpRequest, HttpResponse, HttpResponseRedirect
from django.http.response import HttpResponseBase
from django.template.response import TemplateResponse
from django.urls import URLPattern, path, reverse
from django.utils import timezone
from import_export.admin import ImportExportModelAdmin
from unfold.decorators import action
from unfold.widgets import UnfoldAdminSelectWidget

from accounts.forms import REPORT_FIRST_DAY, REPORT_LAST_DAY, DateInput
from jobs.admin_exports import EXPORT_ACTION, AsOfForm, ExcelExportMixin
from jobs.exports import Column
from jobs.services import job_launch
from operations.admin.base import ImportExportForms, ReadOnlyAdmin, ScopedResource
from operations.models import Customer, CustomerTransaction, Item, Supplier
from tenancy.models import Business
from tenancy.scoping import BusinessScopedAdmin, visible_businesses


def _normalised_phone(raw: str) -> str:
    """The 2547XXXXXXXX form of what was typed, or what was typed (then refused by validation)."""
    from operations.phones import normalise_msisdn

    try:
        return normalise_msisdn(raw)
    except ValueError:
        return raw


class CustomerForm(forms.ModelForm):  # type: ignore[type-arg]
    phone = forms.CharField(max_length=20, required=False, help_text="e.g. 0712 345 678; stored as 2547XXXXXXXX")

    class Meta:
        model = Customer
        fields = ["business", "name", "phone", "account_code", "credit_limit", "is_active"]

    def clean_phone(self) -> str:
        return _normalised_phone(self.cleaned_data.get("phone", "").strip())


class CustomerResource(ScopedResource):
    def before_import_row(self, row: Any, **kwargs: Any) -> None:
        if row.get("phone"):
            row["phone"] = _normalised_phone(str(row["phone"]).strip())

    class Meta:
        model = Customer
        fields = ("id", "business", "name", "phone", "account_code", "credit_limit", "is_active")
        export_order = fields
        clean_model_instances = True  # normalises the phone and sets its SHA-256 (Customer.clean)


class SupplierResource(ScopedResource):
    class Meta:
        model = Supplier
        fields = ("id", "business", "name", "phone", "kra_pin", "is_active")
        export_order = fields


class ItemResource(ScopedResource):
    class Meta:
        model = Item
        fields = (
            "id",
            "business",
            "name",
            "sku",
            "kind",
            "unit",
            "price",
            "tax_rate",
            "sales_role",
            "reorder_level",
            "is_active",
        )
        export_order = fields
        clean_model_instances = True


def _ageing(bucket: str) -> Any:
    def value(customer: Any) -> Decimal:
        ageing = customer.ageing
        return getattr(ageing, bucket) if ageing is not None else Decimal(0)

    return value


class StatementsForm(forms.Form):
    """The period of the statements, and the business when no customer was picked (then: every
    customer of it with a balance on the last day)."""

    business = forms.ModelChoiceField(
        queryset=Business.objects.none(), required=False, widget=UnfoldAdminSelectWidget, empty_label=None
    )
    date_from = forms.DateField(widget=DateInput, label="From")
    date_to = forms.DateField(widget=DateInput, label="To")

    def __init__(self, *args: Any, businesses: QuerySet[Business], pick_business: bool, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        field = self.fields["business"]
        field.queryset = businesses  # type: ignore[attr-defined]
        field.required = pick_business
        if not pick_business:
            del self.fields["business"]

    def clean(self) -> dict[str, Any]:
        data = super().clean() or {}
        for name in ("date_from", "date_to"):
            day = data.get(name)
            if day is not None and not REPORT_FIRST_DAY <= day <= REPORT_LAST_DAY:
                self.add_error(name, f"Choose a date from {REPORT_FIRST_DAY.year} to {REPORT_LAST_DAY.year}.")
                return data
        if data.get("date_from") and data.get("date_to") and data["date_from"] > data["date_to"]:
            raise forms.ValidationError("The period starts after it ends.")
        return data


def _ids(raw: str) -> list[int]:
    try:
        return sorted({int(part) for part in raw.split(",") if part.strip()})
    except ValueError as exc:
        raise PermissionDenied from exc


@admin.register(Customer)
class CustomerAdmin(ExcelExportMixin, ImportExportForms, BusinessScopedAdmin, ImportExportModelAdmin):  # type: ignore[misc]
    """Customers; the Excel export adds each one's balance on a date, aged (operations.selectors.customer_ageing)."""

    excel_options_form = AsOfForm
    excel_columns = [
        Column("Name", "name", width=28),
        Column("Phone", "phone", width=14),
        Column("Business", "business__name"),
        Column("Account code", "account_code", width=12),
        Column("Credit limit", "credit_limit", "money"),
        Column("Active", "is_active", "bool"),
        Column("Balance", _ageing("balance"), "money", total=True),
        Column("0-30 days", _ageing("current"), "money", total=True),
        Column("31-60 days", _ageing("days_30"), "money", total=True),
        Column("61-90 days", _ageing("days_60"), "money", total=True),
        Column("Over 90 days", _ageing("days_90"), "money", total=True),
    ]
    resource_classes = [CustomerResource]
    form = CustomerForm
    list_display = ["name", "phone", "business", "credit_limit", "balance", "is_active"]
    list_filter = ["is_active"]
    search_fields = ["name", "phone", "account_code"]
    readonly_fields = ["phone_sha256", "created_at", "statement"]
    list_per_page = 50
    actions = ["statements_pdf"]
    actions_list = [EXPORT_ACTION, "statements_with_balance"]

    def get_urls(self) -> list[URLPattern]:
        view = self.admin_site.admin_view(self.statements_view)
        return [path("statements/", view, name="operations_customer_statements"), *super().get_urls()]

    @action(description="Statement PDF for the selected customers", permissions=["export"])
    def statements_pdf(self, request: HttpRequest, queryset: QuerySet[Customer]) -> HttpResponse:
        """Asks for the period next (the queryset is already the user's own customers)."""
        ids = ",".join(str(pk) for pk in queryset.order_by("pk").values_list("pk", flat=True))
        return HttpResponseRedirect(f"{reverse('admin:operations_customer_statements')}?ids={ids}")

    @action(description="Statements PDF: every customer with a balance", permissions=["export"])
    def statements_with_balance(self, request: HttpRequest) -> HttpResponse:
        return HttpResponseRedirect(reverse("admin:operations_customer_statements"))

    def statements_view(self, request: HttpRequest) -> HttpResponseBase:
        """Choose the period (and the business), then the selected customers, or every customer with a
        balance, as a background job per business (one PDF each, a page per customer)."""
        # Here, not at module level: operations.reports draws with ReportLab, and a worker that loads this
        # admin (the customers' Excel export reads it) has no PDF to draw (docs/worker-memory.md).
        from operations.reports import CUSTOMER_STATEMENTS, default_statement_period

        if not self.has_export_permission(request):
            raise PermissionDenied
        ids = _ids(request.POST.get("ids") or request.GET.get("ids") or "")
        customers: list[Customer] = []
        if ids:
            customers = list(self.get_queryset(request).filter(pk__in=ids).select_related("business"))
            if len(customers) != len(ids):
                raise PermissionDenied  # a customer he cannot see (another business's), asked for by id
        businesses = visible_businesses(request.user).order_by("name")
        date_from, date_to = default_statement_period(timezone.localdate())
        form = StatementsForm(
            request.POST if request.method == "POST" else None,
            initial={"date_from": date_from, "date_to": date_to},
            businesses=businesses,
            pick_business=not ids,
        )
        if request.method == "POST" and form.is_valid():
            date_from, date_to = form.cleaned_data["date_from"], form.cleaned_data["date_to"]
            by_business: dict[Business, list[int] | None] = {}
            if customers:
                for customer in customers:
                    by_business.setdefault(customer.business, []).append(customer.pk)  # type: ignore[union-attr]
            else:
                by_business[form.cleaned_data["business"]] = None
            params = {"date_from": date_from.isoformat(), "date_to": date_to.isoformat()}
            jobs = [
                job_launch(
                    kind=CUSTOMER_STATEMENTS,
                    acting_user=request.user,
                    business=business,
                    params={**params, "customer_ids": customer_ids},
                )
                for business, customer_ids in by_business.items()
            ]
            numbers = ", ".join(f"#{job.pk}" for job in jobs)
            self.message_user(
                request, f"Statements queued as job {numbers}; the PDF is on the job's page.", messages.SUCCESS
            )
            target = "admin:jobs_job_change" if len(jobs) == 1 else "admin:jobs_job_changelist"
            return HttpResponseRedirect(reverse(target, args=[jobs[0].pk] if len(jobs) == 1 else []))
        context = {
            **self.admin_site.each_context(request),
            "title": "Customer statements (PDF)",
            "form": form,
            "customers": customers,
            "ids": ",".join(str(pk) for pk in ids),
            "opts": self.model._meta,
        }
        return TemplateResponse(request, "admin/operations/customer/statements.html", context)

    def get_queryset(self, request: HttpRequest) -> QuerySet[Customer]:
        return super().get_queryset(request).select_related("business").annotate(_balance=Sum("transactions__amount"))

    def excel_export_rows(self, request: HttpRequest, rows: Iterator[Any], options: dict[str, Any]) -> Iterable[Any]:
        """Each customer with `ageing` (None when he owes nothing on the date), from one ageing query."""
        from operations.selectors import customer_ageing
        from tenancy.scoping import sees_all_businesses, visible_business_ids

        ids = None if sees_all_businesses(request.user) else sorted(visible_business_ids(request.user))
        aged = {a.customer_id: a for a in customer_ageing(business_ids=ids, as_of=options["as_of"])}
        for customer in rows:
            customer.ageing = aged.get(customer.pk)
            yield customer

    @admin.display(description="Owes (KES)", ordering="_balance")
    def balance(self, obj: Any) -> Any:
        return obj._balance or 0

    @admin.display(description="Statement (last 90 days)")
    def statement(self, obj: Customer) -> str:
        from django.template.loader import render_to_string

        from operations.selectors import customer_statement

        if not obj.pk:
            return "-"
        today = timezone.localdate()
        statement = customer_statement(customer=obj, date_from=today - dt.timedelta(days=90), date_to=today)
        pdf_url = f"{reverse('admin:operations_customer_statements')}?ids={obj.pk}"
        return render_to_string("operations/statement.html", {"statement": statement, "pdf_url": pdf_url})


@admin.register(Supplier)
class SupplierAdmin(ImportExportForms, BusinessScopedAdmin, ImportExportModelAdmin):  # type: ignore[misc]
    resource_classes = [SupplierResource]
    list_display = ["name", "phone", "kra_pin", "business", "is_active"]
    list_filter = ["is_active"]
    search_fields = ["name", "phone"]


@admin.register(Item)
class ItemAdmin(ImportExportForms, BusinessScopedAdmin, ImportExportModelAdmin):  # type: ignore[misc]
    resource_classes = [ItemResource]
    list_display = ["name", "business", "kind", "unit", "price", "tax_rate", "on_hand", "low_stock", "is_active"]
    list_filter = ["kind", "tax_rate", "is_active"]
    search_fields = ["name", "sku", "brand"]
    list_select_related = ["business", "stock"]
    list_per_page = 50
    fieldsets = [
        (
            None,
            {
                "fields": [
                    "business",
                    "name",
                    "sku",
                    "kind",
                    "unit",
                    "price",
                    "tax_rate",
                    "sales_role",
                    "reorder_level",
                    "is_active",
                ]
            },
        ),
        (
            "Links and cylinders",
            {
                "fields": ["stock_item", "returns_item", "cylinder_size_kg", "brand", "cylinder_state"],
                "classes": ["collapse"],
            },
        ),
    ]

    @admin.display(description="On hand")
    def on_hand(self, obj: Item) -> Any:
        level = getattr(obj, "stock", None) if obj.is_stocked else None
        return level.quantity.normalize() if level is not None else "-"

    @admin.display(description="Low", boolean=True)
    def low_stock(self, obj: Item) -> bool | None:
        level = getattr(obj, "stock", None) if obj.is_stocked else None
        if level is None or not obj.reorder_level:
            return None
        return bool(level.quantity <= obj.reorder_level)


@admin.register(CustomerTransaction)
class CustomerTransactionAdmin(ReadOnlyAdmin):
    list_display = ["tx_date", "customer", "kind", "amount", "reference", "business"]
    list_filter = ["kind", ("tx_date", admin.DateFieldListFilter)]
    search_fields = ["customer__name", "reference"]
    date_hierarchy = "tx_date"
    list_select_related = ["customer", "business"]

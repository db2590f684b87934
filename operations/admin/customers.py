"""Customers (with balances and statements), suppliers and the catalogue."""

from __future__ import annotations

import datetime as dt
from typing import Any

from django import forms
from django.contrib import admin
from django.db.models import QuerySet, Sum
from django.http import HttpRequest
from import_export.admin import ImportExportModelAdmin

from operations.admin.base import ImportExportForms, ReadOnlyAdmin, ScopedResource
from operations.models import Customer, CustomerTransaction, Item, Supplier
from tenancy.scoping import BusinessScopedAdmin


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


@admin.register(Customer)
class CustomerAdmin(ImportExportForms, BusinessScopedAdmin, ImportExportModelAdmin):  # type: ignore[misc]
    resource_classes = [CustomerResource]
    form = CustomerForm
    list_display = ["name", "phone", "business", "credit_limit", "balance", "is_active"]
    list_filter = ["is_active"]
    search_fields = ["name", "phone", "account_code"]
    readonly_fields = ["phone_sha256", "created_at", "statement"]
    list_per_page = 50

    def get_queryset(self, request: HttpRequest) -> QuerySet[Customer]:
        return super().get_queryset(request).select_related("business").annotate(_balance=Sum("transactions__amount"))

    @admin.display(description="Owes (KES)", ordering="_balance")
    def balance(self, obj: Any) -> Any:
        return obj._balance or 0

    @admin.display(description="Statement (last 90 days)")
    def statement(self, obj: Customer) -> str:
        from django.template.loader import render_to_string
        from django.utils import timezone

        from operations.selectors import customer_statement

        if not obj.pk:
            return "-"
        today = timezone.localdate()
        statement = customer_statement(customer=obj, date_from=today - dt.timedelta(days=90), date_to=today)
        return render_to_string("operations/statement.html", {"statement": statement})


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

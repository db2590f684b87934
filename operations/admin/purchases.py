"""Purchases from suppliers and expenses (with the receipt attached)."""

from __future__ import annotations

from typing import Any

from django.contrib import admin
from django.db.models import Prefetch, QuerySet
from django.http import HttpRequest
from import_export.admin import ImportExportModelAdmin
from unfold.decorators import action

from jobs.admin_exports import ExcelExportMixin
from jobs.exports import ChildRows, Column
from operations.admin.base import DocumentAdmin, DraftInline, ImportExportForms, ScopedResource
from operations.models import Expense, Purchase, PurchaseLine, SupplierPayment
from operations.services.purchases import expense_post, purchase_post, supplier_payment_post


class PurchaseLineInline(DraftInline):
    model = PurchaseLine
    fields = ["item", "quantity", "amount"]


@admin.register(Purchase)
class PurchaseAdmin(ExcelExportMixin, DocumentAdmin):
    excel_columns = [
        Column("Purchase", str, width=11),
        Column("Date", "purchase_date", "date"),
        Column("Business", "business__name"),
        Column("Supplier", "supplier__name"),
        Column("Paid from", "get_paid_from_display", width=14),
        Column("Invoice", "invoice_number", width=14),
        Column("VAT claimable", "vat_claimable", "bool", width=8),
        Column("Total", "total", "money", total=True),
        Column("Status", "get_status_display", width=10),
    ]
    excel_lines = ChildRows(
        sheet="Purchase lines",
        related="lines",
        parent_columns=[Column("Purchase", str, width=11), Column("Date", "purchase_date", "date")],
        columns=[
            Column("Item", "item__name", width=30),
            Column("Quantity", "quantity", "decimal", total=True),
            Column("Amount", "amount", "money", total=True),
        ],
    )
    list_display = [
        "__str__",
        "purchase_date",
        "business",
        "supplier",
        "paid_from",
        "invoice_number",
        "total",
        "status",
    ]
    list_filter = ["status", "paid_from", ("purchase_date", admin.DateFieldListFilter)]
    search_fields = ["supplier__name", "invoice_number"]
    list_select_related = ["supplier", "business"]
    date_hierarchy = "purchase_date"
    readonly_fields = ["status", "total", "entry", "created_by"]
    inlines = [PurchaseLineInline]
    actions = ["post_purchases"]

    def excel_export_queryset(self, request: HttpRequest, queryset: QuerySet[Any], options: dict[str, Any]) -> Any:
        lines = PurchaseLine.objects.select_related("item").order_by("id")
        return queryset.select_related("business", "supplier").prefetch_related(Prefetch("lines", queryset=lines))

    @action(description="Post selected purchases (stock in)", permissions=["change"])
    def post_purchases(self, request: HttpRequest, queryset: QuerySet[Purchase]) -> None:
        self.run_service(
            request, queryset, lambda p: purchase_post(purchase=p, acting_user=request.user), "Purchases posted"
        )


class ExpenseResource(ScopedResource):
    class Meta:
        model = Expense
        # Imported expenses are drafts (no status column): posting them is a separate, checked step.
        fields = ("id", "business", "expense_date", "category", "amount", "paid_from", "description")
        export_order = fields


@admin.register(Expense)
class ExpenseAdmin(ExcelExportMixin, ImportExportForms, DocumentAdmin, ImportExportModelAdmin):  # type: ignore[misc]
    excel_columns = [
        Column("Date", "expense_date", "date"),
        Column("Business", "business__name"),
        Column("Category", "get_category_display", width=18),
        Column("Description", "description", width=36),
        Column("Supplier", "supplier__name"),
        Column("Paid from", "get_paid_from_display", width=14),
        Column("Amount", "amount", "money", total=True),
        Column("Status", "get_status_display", width=10),
    ]
    resource_classes = [ExpenseResource]
    list_display = ["expense_date", "business", "category", "amount", "paid_from", "description", "status"]
    list_filter = ["status", "category", "paid_from", ("expense_date", admin.DateFieldListFilter)]
    search_fields = ["description", "supplier__name"]
    list_select_related = ["business"]
    date_hierarchy = "expense_date"
    readonly_fields = ["status", "entry", "created_by"]
    actions = ["post_expenses"]

    def excel_export_queryset(self, request: HttpRequest, queryset: QuerySet[Any], options: dict[str, Any]) -> Any:
        return queryset.select_related("business", "supplier")

    @action(description="Post selected expenses", permissions=["change"])
    def post_expenses(self, request: HttpRequest, queryset: QuerySet[Expense]) -> None:
        self.run_service(
            request, queryset, lambda e: expense_post(expense=e, acting_user=request.user), "Expenses posted"
        )


@admin.register(SupplierPayment)
class SupplierPaymentAdmin(DocumentAdmin):
    list_display = ["payment_date", "supplier", "business", "amount", "paid_from", "reference", "status"]
    list_filter = ["status", "paid_from", ("payment_date", admin.DateFieldListFilter)]
    search_fields = ["supplier__name", "reference"]
    list_select_related = ["supplier", "business"]
    date_hierarchy = "payment_date"
    readonly_fields = ["status", "entry", "created_by"]
    actions = ["post_payments"]

    @action(description="Post selected supplier payments", permissions=["change"])
    def post_payments(self, request: HttpRequest, queryset: QuerySet[SupplierPayment]) -> None:
        self.run_service(
            request,
            queryset,
            lambda p: supplier_payment_post(payment=p, acting_user=request.user),
            "Supplier payments posted",
        )

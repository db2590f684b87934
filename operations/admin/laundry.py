"""Laundry orders: drafted with their services, then received, moved on, collected or cancelled."""

from __future__ import annotations

from typing import Any

from django.contrib import admin
from django.db.models import Prefetch, QuerySet
from django.http import HttpRequest
from django.utils import timezone
from unfold.decorators import action

from jobs.admin_exports import ExcelExportMixin
from jobs.exports import ChildRows, Column
from operations.admin.base import DocumentAdmin, DraftInline
from operations.models import OPEN_STATUSES, LaundryOrder, LaundryOrderLine
from operations.services.laundry import (
    laundry_order_advance,
    laundry_order_cancel,
    laundry_order_collect,
    laundry_order_receive,
)
from operations.services.postings import business_open_day


class LaundryOrderLineInline(DraftInline):
    model = LaundryOrderLine
    fields = ["item", "quantity", "unit_price", "amount"]
    readonly_fields = ["amount"]


class UncollectedFilter(admin.SimpleListFilter):
    title = "collection"
    parameter_name = "uncollected"

    def lookups(self, request: HttpRequest, model_admin: Any) -> list[tuple[str, str]]:
        return [("late", "Not collected, past the promised date")]

    def queryset(self, request: HttpRequest, queryset: QuerySet[Any]) -> QuerySet[Any]:
        if self.value() == "late":
            return queryset.filter(status__in=OPEN_STATUSES, promised_date__lt=timezone.localdate())
        return queryset


def _balance_due(order: LaundryOrder) -> Any:
    return order.balance_due if order.status != "collected" else 0


@admin.register(LaundryOrder)
class LaundryOrderAdmin(ExcelExportMixin, DocumentAdmin):
    excel_sheet = "Laundry orders"
    excel_columns = [
        Column("Tag", "tag", width=10),
        Column("Customer", "customer__name"),
        Column("Phone", "customer__phone", width=14),
        Column("Business", "business__name"),
        Column("Received", "received_date", "date"),
        Column("Promised", "promised_date", "date"),
        Column("Status", "get_status_display", width=12),
        Column("Total", "total", "money", total=True),
        Column("Deposit", "deposit", "money", total=True),
        Column("Balance due", _balance_due, "money", total=True),
        Column("Collected", "collected_date", "date"),
    ]
    excel_lines = ChildRows(
        sheet="Order lines",
        related="lines",
        parent_columns=[Column("Tag", "tag", width=10), Column("Received", "received_date", "date")],
        columns=[
            Column("Service", "item__name", width=30),
            Column("Quantity", "quantity", "decimal", total=True),
            Column("Unit price", "unit_price", "money"),
            Column("Amount", "amount", "money", total=True),
        ],
    )
    list_display = [
        "tag",
        "customer",
        "business",
        "received_date",
        "promised_date",
        "status",
        "total",
        "deposit",
        "balance_due",
    ]
    list_filter = [UncollectedFilter, "status", ("received_date", admin.DateFieldListFilter)]
    search_fields = ["tag", "customer__name", "customer__phone"]
    list_select_related = ["customer", "business"]
    date_hierarchy = "received_date"
    fields = [
        "business",
        "customer",
        "tag",
        "received_date",
        "promised_date",
        "deposit",
        "deposit_method",
        "note",
        "status",
        "total",
        "vat_total",
        "collected_date",
        "balance_method",
        "deposit_entry",
        "collection_entry",
    ]
    readonly_fields = [
        "status",
        "total",
        "vat_total",
        "collected_date",
        "balance_method",
        "deposit_entry",
        "collection_entry",
    ]
    inlines = [LaundryOrderLineInline]
    actions = ["receive_orders", "advance_orders", "collect_orders", "cancel_orders"]

    def excel_export_queryset(self, request: HttpRequest, queryset: QuerySet[Any], options: dict[str, Any]) -> Any:
        lines = LaundryOrderLine.objects.select_related("item").order_by("id")
        return queryset.select_related("business", "customer").prefetch_related(Prefetch("lines", queryset=lines))

    @admin.display(description="Balance due")
    def balance_due(self, obj: LaundryOrder) -> Any:
        return obj.balance_due if obj.status != "collected" else 0

    @action(description="Receive selected orders (take the deposit)", permissions=["change"])
    def receive_orders(self, request: HttpRequest, queryset: QuerySet[LaundryOrder]) -> None:
        self.run_service(
            request, queryset, lambda o: laundry_order_receive(order=o, acting_user=request.user), "Orders received"
        )

    @action(description="Move selected orders on (washing, then ready)", permissions=["change"])
    def advance_orders(self, request: HttpRequest, queryset: QuerySet[LaundryOrder]) -> None:
        self.run_service(
            request, queryset, lambda o: laundry_order_advance(order=o, acting_user=request.user), "Orders moved on"
        )

    @action(description="Collected today, balance paid in cash", permissions=["change"])
    def collect_orders(self, request: HttpRequest, queryset: QuerySet[LaundryOrder]) -> None:
        # Today, or the next day once today is closed (a collection at 21:30 after the closing).
        self.run_service(
            request,
            queryset,
            lambda o: laundry_order_collect(
                order=o, collected_date=business_open_day(o.business), acting_user=request.user
            ),
            "Orders collected",
        )

    @action(description="Cancel selected orders (deposit back in cash)", permissions=["change"])
    def cancel_orders(self, request: HttpRequest, queryset: QuerySet[LaundryOrder]) -> None:
        self.run_service(
            request,
            queryset,
            lambda o: laundry_order_cancel(
                order=o, cancel_date=business_open_day(o.business), acting_user=request.user
            ),
            "Orders cancelled",
        )

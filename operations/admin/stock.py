"""Stock: levels and movements (read-only), opening stock, counts, production batches."""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from decimal import Decimal
from typing import Any

from django.contrib import admin
from django.db.models import F, QuerySet
from django.http import HttpRequest
from import_export.admin import ImportExportModelAdmin
from unfold.decorators import action

from jobs.admin_exports import AsOfForm, ExcelExportMixin
from jobs.exports import Column
from operations.admin.base import DocumentAdmin, DraftInline, ImportExportForms, ReadOnlyAdmin, ScopedResource
from operations.models import (
    OpeningStock,
    ProductionBatch,
    ProductionInput,
    StockCount,
    StockCountLine,
    StockLevel,
    StockMovement,
)
from operations.services.stock import stock_count_post, stock_opening_post
from operations.services.water import production_batch_post


class LowStockFilter(admin.SimpleListFilter):
    title = "stock"
    parameter_name = "low"

    def lookups(self, request: HttpRequest, model_admin: Any) -> list[tuple[str, str]]:
        return [("yes", "At or below reorder level")]

    def queryset(self, request: HttpRequest, queryset: QuerySet[Any]) -> QuerySet[Any]:
        if self.value() == "yes":
            return queryset.filter(item__reorder_level__gt=0, quantity__lte=F("item__reorder_level"))
        return queryset


def _as_of_average(level: Any) -> Decimal | None:
    quantity, value = level.as_of_quantity, level.as_of_value
    return (value / quantity).quantize(Decimal("0.01")) if quantity else None


@admin.register(StockLevel)
class StockLevelAdmin(ExcelExportMixin, ReadOnlyAdmin):
    """Stock on hand; its Excel export gives quantity and value as of a chosen date (from the movements)."""

    excel_sheet = "Stock"
    excel_options_form = AsOfForm
    excel_columns = [
        Column("Item", "item__name", width=30),
        Column("Business", "business__name"),
        Column("Kind", "item__get_kind_display", width=12),
        Column("Unit", "item__unit", width=8),
        Column("Quantity", "as_of_quantity", "decimal", total=True),
        Column("Value", "as_of_value", "money", total=True),
        Column("Average cost", _as_of_average, "money"),
        Column("Reorder level", "item__reorder_level", "decimal"),
    ]
    list_display = ["item", "business", "quantity", "value", "average_cost", "reorder_level", "low"]
    list_filter = [LowStockFilter, "item__kind"]
    search_fields = ["item__name"]
    list_select_related = ["item", "business"]

    def excel_export_rows(self, request: HttpRequest, rows: Iterator[Any], options: dict[str, Any]) -> Iterable[Any]:
        """Each level with `as_of_quantity` and `as_of_value` from stock_value_as_of (one query per business)."""
        from operations.selectors import stock_value_as_of

        by_business: dict[int, dict[int, Any]] = {}
        for level in rows:
            if level.business_id not in by_business:
                values = stock_value_as_of(business=level.business, as_of=options["as_of"])
                by_business[level.business_id] = {v.item_id: v for v in values}
            found = by_business[level.business_id].get(level.item_id)
            level.as_of_quantity = found.quantity if found else Decimal(0)
            level.as_of_value = found.value if found else Decimal(0)
            yield level

    @admin.display(description="Reorder at")
    def reorder_level(self, obj: StockLevel) -> Any:
        return obj.item.reorder_level.normalize()

    @admin.display(description="Low", boolean=True)
    def low(self, obj: StockLevel) -> bool:
        return bool(obj.item.reorder_level and obj.quantity <= obj.item.reorder_level)


@admin.register(StockMovement)
class StockMovementAdmin(ExcelExportMixin, ReadOnlyAdmin):
    excel_columns = [
        Column("Date", "movement_date", "date"),
        Column("Item", "item__name", width=30),
        Column("Kind", "get_kind_display", width=16),
        Column("Quantity", "quantity", "decimal", total=True),
        Column("Value", "value", "money", total=True),
        Column("Reference", "reference"),
        Column("Business", "business__name"),
        Column("Recorded at", "created_at", "datetime"),
    ]
    list_display = ["movement_date", "item", "kind", "quantity", "value", "reference", "business"]
    list_filter = ["kind", ("movement_date", admin.DateFieldListFilter)]
    search_fields = ["item__name", "reference"]
    date_hierarchy = "movement_date"
    list_select_related = ["item", "business"]
    show_full_result_count = False


class OpeningStockResource(ScopedResource):
    class Meta:
        model = OpeningStock
        fields = ("id", "business", "item", "stock_date", "quantity", "unit_cost")
        export_order = fields


@admin.register(OpeningStock)
class OpeningStockAdmin(ImportExportForms, DocumentAdmin, ImportExportModelAdmin):  # type: ignore[misc]
    resource_classes = [OpeningStockResource]
    list_display = ["item", "business", "stock_date", "quantity", "unit_cost", "status"]
    list_filter = ["status", ("stock_date", admin.DateFieldListFilter)]
    search_fields = ["item__name"]
    list_select_related = ["item", "business"]
    readonly_fields = ["status", "entry"]
    actions = ["post_opening"]

    @action(description="Post selected opening stock", permissions=["change"])
    def post_opening(self, request: HttpRequest, queryset: QuerySet[OpeningStock]) -> None:
        self.run_service(
            request, queryset, lambda o: stock_opening_post(opening=o, acting_user=request.user), "Opening stock posted"
        )


class StockCountLineInline(DraftInline):
    model = StockCountLine
    fields = ["item", "counted_quantity", "expected_quantity", "variance_quantity", "variance_value"]
    readonly_fields = ["expected_quantity", "variance_quantity", "variance_value"]


@admin.register(StockCount)
class StockCountAdmin(DocumentAdmin):
    list_display = ["__str__", "business", "count_date", "status", "note"]
    list_filter = ["status", ("count_date", admin.DateFieldListFilter)]
    search_fields = ["note"]
    readonly_fields = ["status", "entry", "created_by"]
    inlines = [StockCountLineInline]
    actions = ["post_counts"]

    @action(description="Post selected counts (differences to stock variance)", permissions=["change"])
    def post_counts(self, request: HttpRequest, queryset: QuerySet[StockCount]) -> None:
        self.run_service(
            request, queryset, lambda c: stock_count_post(count=c, acting_user=request.user), "Counts posted"
        )


class ProductionInputInline(DraftInline):
    model = ProductionInput
    fields = ["item", "quantity", "cost"]
    readonly_fields = ["cost"]


@admin.register(ProductionBatch)
class ProductionBatchAdmin(DocumentAdmin):
    list_display = ["__str__", "business", "batch_date", "output_item", "output_quantity", "total_cost", "status"]
    list_filter = ["status", ("batch_date", admin.DateFieldListFilter)]
    search_fields = ["output_item__name", "note"]
    list_select_related = ["output_item", "business"]
    readonly_fields = ["status", "total_cost", "entry"]
    inlines = [ProductionInputInline]
    actions = ["post_batches"]

    @action(description="Post selected production batches", permissions=["change"])
    def post_batches(self, request: HttpRequest, queryset: QuerySet[ProductionBatch]) -> None:
        self.run_service(
            request, queryset, lambda b: production_batch_post(batch=b, acting_user=request.user), "Batches posted"
        )

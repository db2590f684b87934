"""Stock: levels and movements (read-only), opening stock, counts, production batches."""

from __future__ import annotations

from typing import Any

from django.contrib import admin
from django.db.models import F, QuerySet
from django.http import HttpRequest
from import_export.admin import ImportExportModelAdmin
from unfold.decorators import action

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


@admin.register(StockLevel)
class StockLevelAdmin(ReadOnlyAdmin):
    list_display = ["item", "business", "quantity", "value", "average_cost", "reorder_level", "low"]
    list_filter = [LowStockFilter, "item__kind"]
    search_fields = ["item__name"]
    list_select_related = ["item", "business"]

    @admin.display(description="Reorder at")
    def reorder_level(self, obj: StockLevel) -> Any:
        return obj.item.reorder_level.normalize()

    @admin.display(description="Low", boolean=True)
    def low(self, obj: StockLevel) -> bool:
        return bool(obj.item.reorder_level and obj.quantity <= obj.item.reorder_level)


@admin.register(StockMovement)
class StockMovementAdmin(ReadOnlyAdmin):
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

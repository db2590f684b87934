"""Stock: the level and value of each stocked item, every movement in and out, counts,
opening stock and water production batches."""

from __future__ import annotations

from django.conf import settings
from django.db import models
from django.db.models import Q

from accounts.fields import MoneyField
from operations.models.catalogue import Item, QuantityField
from tenancy.models import Business


class StockLevel(models.Model):
    """Quantity on hand and its total cost for one item: the row locked to move its stock.

    The weighted-average cost is value / quantity; keeping the value (not the average) makes the
    sum of stock values equal the inventory account to the cent.
    """

    business = models.ForeignKey(Business, on_delete=models.PROTECT, related_name="+")
    item = models.OneToOneField(Item, on_delete=models.PROTECT, related_name="stock")
    quantity = QuantityField(default=0)
    value = MoneyField(default=0)

    class Meta:
        ordering = ["business__name", "item__name"]

    def __str__(self) -> str:
        return f"{self.item}: {self.quantity}"

    @property
    def average_cost(self) -> str:
        return f"{self.value / self.quantity:.2f}" if self.quantity else "-"


class MovementKind(models.TextChoices):
    OPENING = "opening", "Opening stock"
    PURCHASE = "purchase", "Purchase"
    SALE = "sale", "Sale"
    SALE_RETURN = "sale_return", "Sale refunded / voided"
    PRODUCTION_IN = "production_in", "Produced"
    PRODUCTION_OUT = "production_out", "Used in production"
    COUNT = "count", "Stock count difference"
    EXCHANGE_IN = "exchange_in", "Empty returned by customer"
    EXCHANGE_OUT = "exchange_out", "Empty sent to depot"


class StockMovement(models.Model):
    """One move of stock: positive quantity in, negative out, with its cost (same sign)."""

    business = models.ForeignKey(Business, on_delete=models.PROTECT, related_name="+", db_index=False)
    item = models.ForeignKey(Item, on_delete=models.PROTECT, related_name="movements", db_index=False)
    movement_date = models.DateField()
    kind = models.CharField(max_length=20, choices=MovementKind.choices)
    quantity = QuantityField()
    value = MoneyField()
    reference = models.CharField(max_length=40, blank=True, default="")
    entry = models.ForeignKey(
        "accounts.JournalEntry", on_delete=models.PROTECT, null=True, blank=True, related_name="+"
    )
    created_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        ordering = ["-movement_date", "-id"]
        indexes = [
            models.Index(fields=["business", "movement_date"], name="stockmove_business_date"),
            models.Index(fields=["item", "movement_date"], name="stockmove_item_date"),
        ]
        constraints = [models.CheckConstraint(condition=~Q(quantity=0), name="stockmove_quantity_not_zero")]

    def __str__(self) -> str:
        return f"{self.movement_date} {self.item_id} {self.quantity:+}"


class DocumentStatus(models.TextChoices):
    DRAFT = "draft", "Draft"
    POSTED = "posted", "Posted"


class StockCount(models.Model):
    """A physical count: entered as a draft, then posted (differences go to stock variance)."""

    business = models.ForeignKey(Business, on_delete=models.PROTECT, related_name="+")
    count_date = models.DateField()
    status = models.CharField(max_length=10, choices=DocumentStatus.choices, default=DocumentStatus.DRAFT)
    note = models.CharField(max_length=255, blank=True, default="")
    entry = models.ForeignKey(
        "accounts.JournalEntry", on_delete=models.PROTECT, null=True, blank=True, related_name="+"
    )
    created_by = models.ForeignKey(
        settings.AUTH_USER_MODEL, on_delete=models.SET_NULL, null=True, blank=True, related_name="+"
    )
    created_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        ordering = ["-count_date", "-id"]

    def __str__(self) -> str:
        return f"Count {self.count_date} #{self.pk}"


class StockCountLine(models.Model):
    count = models.ForeignKey(StockCount, on_delete=models.CASCADE, related_name="lines")
    item = models.ForeignKey(Item, on_delete=models.PROTECT, related_name="+")
    counted_quantity = QuantityField()
    expected_quantity = QuantityField(null=True, blank=True, editable=False)
    variance_quantity = QuantityField(null=True, blank=True, editable=False)
    variance_value = MoneyField(null=True, blank=True, editable=False)

    class Meta:
        constraints = [
            models.UniqueConstraint(fields=["count", "item"], name="countline_count_item_uniq"),
            models.CheckConstraint(condition=Q(counted_quantity__gte=0), name="countline_counted_not_negative"),
        ]

    def __str__(self) -> str:
        return f"{self.item}: {self.counted_quantity}"


class OpeningStock(models.Model):
    """Stock on hand when the business starts using the back office (imported, then posted)."""

    business = models.ForeignKey(Business, on_delete=models.PROTECT, related_name="+")
    item = models.ForeignKey(Item, on_delete=models.PROTECT, related_name="+")
    stock_date = models.DateField()
    quantity = QuantityField()
    unit_cost = MoneyField()
    status = models.CharField(max_length=10, choices=DocumentStatus.choices, default=DocumentStatus.DRAFT)
    entry = models.ForeignKey(
        "accounts.JournalEntry", on_delete=models.PROTECT, null=True, blank=True, related_name="+"
    )

    class Meta:
        verbose_name_plural = "opening stock"
        ordering = ["-stock_date", "item__name"]
        constraints = [
            models.CheckConstraint(condition=Q(quantity__gt=0), name="opening_quantity_positive"),
            models.CheckConstraint(condition=Q(unit_cost__gte=0), name="opening_unit_cost_not_negative"),
        ]

    def __str__(self) -> str:
        return f"Opening {self.item}: {self.quantity}"


class ProductionBatch(models.Model):
    """Water production: raw materials consumed, finished goods produced at their summed cost."""

    business = models.ForeignKey(Business, on_delete=models.PROTECT, related_name="+")
    batch_date = models.DateField()
    output_item = models.ForeignKey(Item, on_delete=models.PROTECT, related_name="+")
    output_quantity = QuantityField()
    status = models.CharField(max_length=10, choices=DocumentStatus.choices, default=DocumentStatus.DRAFT)
    total_cost = MoneyField(null=True, blank=True, editable=False)
    entry = models.ForeignKey(
        "accounts.JournalEntry", on_delete=models.PROTECT, null=True, blank=True, related_name="+"
    )
    note = models.CharField(max_length=255, blank=True, default="")
    created_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        verbose_name_plural = "production batches"
        ordering = ["-batch_date", "-id"]
        constraints = [models.CheckConstraint(condition=Q(output_quantity__gt=0), name="batch_output_positive")]

    def __str__(self) -> str:
        return f"Batch #{self.pk} {self.batch_date}"


class ProductionInput(models.Model):
    batch = models.ForeignKey(ProductionBatch, on_delete=models.CASCADE, related_name="inputs")
    item = models.ForeignKey(Item, on_delete=models.PROTECT, related_name="+")
    quantity = QuantityField()
    cost = MoneyField(null=True, blank=True, editable=False)

    class Meta:
        constraints = [models.CheckConstraint(condition=Q(quantity__gt=0), name="input_quantity_positive")]

    def __str__(self) -> str:
        return f"{self.item}: {self.quantity}"

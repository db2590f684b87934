"""Laundry orders: dropped off with a tag, washed, collected; revenue recognised on collection."""

from __future__ import annotations

from decimal import Decimal

from django.db import models
from django.db.models import Q

from accounts.fields import MoneyField
from operations.models.catalogue import Item, QuantityField
from operations.models.core import Customer
from operations.models.sales import PaymentMethod
from tenancy.models import Business


class OrderStatus(models.TextChoices):
    DRAFT = "draft", "Draft"
    RECEIVED = "received", "Received"
    WASHING = "washing", "Washing"
    READY = "ready", "Ready"
    COLLECTED = "collected", "Collected"
    CANCELLED = "cancelled", "Cancelled"


OPEN_STATUSES = (OrderStatus.RECEIVED, OrderStatus.WASHING, OrderStatus.READY)


class LaundryOrder(models.Model):
    business = models.ForeignKey(Business, on_delete=models.PROTECT, related_name="+")
    customer = models.ForeignKey(Customer, on_delete=models.PROTECT, related_name="laundry_orders")
    tag = models.CharField("tag number", max_length=12)
    received_date = models.DateField()
    promised_date = models.DateField()
    status = models.CharField(max_length=10, choices=OrderStatus.choices, default=OrderStatus.DRAFT)
    deposit = MoneyField(default=0, help_text="Paid at drop-off")
    deposit_method = models.CharField(max_length=10, choices=PaymentMethod.choices[:2], default=PaymentMethod.CASH)
    total = MoneyField(default=0, editable=False)
    vat_total = MoneyField(default=0, editable=False)
    collected_date = models.DateField(null=True, blank=True, editable=False)
    balance_method = models.CharField(
        max_length=10, choices=PaymentMethod.choices, blank=True, default="", editable=False
    )
    deposit_entry = models.ForeignKey(
        "accounts.JournalEntry", on_delete=models.PROTECT, null=True, blank=True, related_name="+"
    )
    collection_entry = models.ForeignKey(
        "accounts.JournalEntry", on_delete=models.PROTECT, null=True, blank=True, related_name="+"
    )
    note = models.CharField(max_length=255, blank=True, default="")
    created_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        ordering = ["-received_date", "-id"]
        constraints = [
            # A tag is reused once its order is collected or cancelled.
            models.UniqueConstraint(
                fields=["business", "tag"],
                condition=Q(status__in=["received", "washing", "ready"]),
                name="laundry_open_tag_uniq",
            ),
            models.CheckConstraint(condition=Q(deposit__gte=0), name="laundry_deposit_not_negative"),
        ]

    def __str__(self) -> str:
        return f"Tag {self.tag}"

    @property
    def balance_due(self) -> Decimal:
        return self.total - self.deposit


class LaundryOrderLine(models.Model):
    order = models.ForeignKey(LaundryOrder, on_delete=models.CASCADE, related_name="lines")
    item = models.ForeignKey(Item, on_delete=models.PROTECT, related_name="+")
    quantity = QuantityField(help_text="Kilograms or pieces")
    unit_price = MoneyField(null=True, blank=True, help_text="Leave empty for the catalogue price")
    amount = MoneyField(default=0, editable=False)

    class Meta:
        constraints = [models.CheckConstraint(condition=Q(quantity__gt=0), name="laundryline_quantity_positive")]

    def __str__(self) -> str:
        return f"{self.quantity} x {self.item}"

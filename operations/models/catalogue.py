"""What each business sells and buys: items (goods, services, raw materials, deposits) and suppliers."""

from __future__ import annotations

from decimal import Decimal
from typing import Any

from django.db import models
from django.db.models import Q

from accounts.fields import MoneyField
from tenancy.models import Business


class QuantityField(models.DecimalField):  # type: ignore[type-arg]
    """A quantity of stock or service: 14 digits, 3 decimals (kilograms to the gram)."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        kwargs.setdefault("max_digits", 14)
        kwargs.setdefault("decimal_places", 3)
        super().__init__(*args, **kwargs)


class TaxRate(models.TextChoices):
    STANDARD = "standard", "16% (standard)"
    ZERO = "zero", "0% (zero-rated)"
    EXEMPT = "exempt", "Exempt"


VAT_PERCENT: dict[str, Decimal] = {TaxRate.STANDARD: Decimal(16), TaxRate.ZERO: Decimal(0), TaxRate.EXEMPT: Decimal(0)}


class ItemKind(models.TextChoices):
    GOOD = "good", "Goods (stocked)"
    SERVICE = "service", "Service (not stocked)"
    MATERIAL = "material", "Stock only (raw material, cylinder; not sold directly)"
    DEPOSIT = "deposit", "Deposit (bottle / cylinder)"


# The kinds of item that have a stock level (Item.is_stocked; the sale's stock lock in SQL).
STOCKED_KINDS = (ItemKind.GOOD, ItemKind.MATERIAL)


class Unit(models.TextChoices):
    EACH = "each", "Each"
    KG = "kg", "Kilogram"
    CRATE = "crate", "Crate"
    LITRE = "litre", "Litre"
    PACK = "pack", "Pack"


class CylinderState(models.TextChoices):
    NONE = "", "Not a cylinder"
    FULL = "full", "Full"
    EMPTY = "empty", "Empty"


class Item(models.Model):
    """One line of a business's catalogue, with its VAT-inclusive price and VAT treatment.

    Goods and raw materials carry stock (operations.models.stock.StockLevel). A catalogue item may
    move the stock of another item (`stock_item`: "13 kg refill" moves "13 kg Total full") and
    take one unit of `returns_item` back per unit sold or bought ("13 kg Total empty" on a refill).
    `sales_role` names the ledger account credited when it is sold (an income account, or the
    deposits liability for a deposit).
    """

    business = models.ForeignKey(Business, on_delete=models.PROTECT, related_name="items")
    name = models.CharField(max_length=120)
    sku = models.CharField("code", max_length=30, blank=True, default="")
    kind = models.CharField(max_length=10, choices=ItemKind.choices, default=ItemKind.GOOD)
    unit = models.CharField(max_length=10, choices=Unit.choices, default=Unit.EACH)
    price = MoneyField(default=0, help_text="Selling price including VAT")
    tax_rate = models.CharField(max_length=10, choices=TaxRate.choices, default=TaxRate.STANDARD)
    sales_role = models.SlugField(
        max_length=50, blank=True, default="", help_text="Ledger account role credited on sale (e.g. sales_refill)"
    )
    stock_item = models.ForeignKey(
        "self",
        on_delete=models.PROTECT,
        null=True,
        blank=True,
        related_name="+",
        help_text="Sell from the stock of this item instead (e.g. a refill sells a full cylinder)",
    )
    returns_item = models.ForeignKey(
        "self",
        on_delete=models.PROTECT,
        null=True,
        blank=True,
        related_name="+",
        help_text="One unit of this item comes back per unit (e.g. the empty cylinder of a refill)",
    )
    cylinder_size_kg = models.DecimalField(max_digits=5, decimal_places=1, null=True, blank=True)
    brand = models.CharField(max_length=40, blank=True, default="")
    cylinder_state = models.CharField(max_length=5, choices=CylinderState.choices, blank=True, default="")
    reorder_level = QuantityField(default=0, help_text="Flag as low stock at or below this")
    is_active = models.BooleanField(default=True)

    class Meta:
        ordering = ["business__name", "name"]
        constraints = [
            models.UniqueConstraint(fields=["business", "name"], name="item_business_name_uniq"),
            models.UniqueConstraint(fields=["business", "sku"], condition=~Q(sku=""), name="item_business_sku_uniq"),
            models.CheckConstraint(condition=Q(price__gte=0), name="item_price_not_negative"),
        ]

    def __str__(self) -> str:
        return self.name

    def clean(self) -> None:
        """The sales role must name an account of the business's chart (checked when edited)."""
        from django.core.exceptions import ValidationError

        from accounts.models import Account

        known = Account.objects.filter(business_id=self.business_id, role=self.sales_role).exists()
        if self.sales_role and self.business_id and not known:
            raise ValidationError({"sales_role": f"{self.business} has no ledger account {self.sales_role!r}."})

    @property
    def is_stocked(self) -> bool:
        return self.kind in STOCKED_KINDS


class Supplier(models.Model):
    business = models.ForeignKey(Business, on_delete=models.PROTECT, related_name="suppliers")
    name = models.CharField(max_length=120)
    phone = models.CharField(max_length=20, blank=True, default="")
    kra_pin = models.CharField("KRA PIN", max_length=20, blank=True, default="")
    is_active = models.BooleanField(default=True)

    class Meta:
        ordering = ["business__name", "name"]
        constraints = [models.UniqueConstraint(fields=["business", "name"], name="supplier_business_name_uniq")]

    def __str__(self) -> str:
        return self.name

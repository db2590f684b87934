"""LPG: the linked catalogue items of one cylinder size and brand.

Full and empty cylinders are separate stocked items. A refill sells the full cylinder and takes
an empty back; a new cylinder sells the full one with nothing back; "gas on deposit" sells the gas
with the cylinder lent against a deposit (a deposit item crediting cylinder_deposits). Refills
bought from the depot are purchases of the full item, which send the empties out (purchases.py).
"""

from __future__ import annotations

from dataclasses import dataclass
from decimal import Decimal

from django.db import transaction

from operations.models import CylinderState, Item, ItemKind, TaxRate
from tenancy.models import Business


@dataclass(frozen=True)
class CylinderItems:
    full: Item
    empty: Item
    refill: Item
    new_cylinder: Item
    gas_on_deposit: Item
    deposit: Item


def lpg_cylinder_ensure(
    *,
    business: Business,
    size_kg: Decimal,
    brand: str,
    refill_price: Decimal,
    new_cylinder_price: Decimal,
    deposit_price: Decimal,
) -> CylinderItems:
    """The six catalogue items of a cylinder size and brand, created if missing. Idempotent (by name)."""
    label = f"{size_kg.normalize():f} kg {brand}"
    common = {"cylinder_size_kg": size_kg, "brand": brand}

    def ensure(name: str, **fields: object) -> Item:
        item, _ = Item.objects.get_or_create(business=business, name=name, defaults={**common, **fields})
        return item

    with transaction.atomic():
        full = ensure(
            f"{label} full",
            kind=ItemKind.MATERIAL,
            cylinder_state=CylinderState.FULL,
            price=new_cylinder_price,
            sales_role="sales_cylinders",
            reorder_level=Decimal(3),
        )
        empty = ensure(
            f"{label} empty",
            kind=ItemKind.MATERIAL,
            cylinder_state=CylinderState.EMPTY,
            sales_role="",
            tax_rate=TaxRate.EXEMPT,
        )
        # Full cylinders bought from the depot send an empty back.
        if full.returns_item_id is None:
            full.returns_item = empty
            full.save(update_fields=["returns_item"])
        refill = ensure(
            f"{label} refill (exchange)",
            kind=ItemKind.SERVICE,
            price=refill_price,
            sales_role="sales_lpg_refill",
            stock_item=full,
            returns_item=empty,
        )
        new_cylinder = ensure(
            f"{label} new cylinder with gas",
            kind=ItemKind.SERVICE,
            price=new_cylinder_price,
            sales_role="sales_cylinders",
            stock_item=full,
        )
        gas_on_deposit = ensure(
            f"{label} gas, cylinder on deposit",
            kind=ItemKind.SERVICE,
            price=refill_price,
            sales_role="sales_lpg_refill",
            stock_item=full,
        )
        deposit = ensure(
            f"{label} cylinder deposit",
            kind=ItemKind.DEPOSIT,
            price=deposit_price,
            sales_role="cylinder_deposits",
            tax_rate=TaxRate.EXEMPT,
        )
    return CylinderItems(full, empty, refill, new_cylinder, gas_on_deposit, deposit)

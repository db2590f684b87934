"""One row of each business-scoped operations model for a business (tests/backoffice/test_tenancy.py)."""

from __future__ import annotations

import datetime as dt
import itertools
from collections.abc import Callable
from decimal import Decimal

from django.db.models import Model

from operations.models import (
    Customer,
    CustomerTransaction,
    DayClosing,
    Expense,
    Item,
    LaundryOrder,
    MovementKind,
    OpeningStock,
    ProductionBatch,
    Purchase,
    Sale,
    StockCount,
    StockLevel,
    StockMovement,
    Supplier,
    SupplierPayment,
)
from tenancy.models import Business
from tests.factories.operations import CustomerFactory, ItemFactory, SupplierFactory

DAY = dt.date(2026, 1, 15)
_numbers = itertools.count(1)  # several rows of one business need their own item or customer


def _item(b: Business) -> Item:
    return ItemFactory.create(business=b, name=f"Item of {b.name} {next(_numbers)}")


def _customer(b: Business) -> Customer:
    return CustomerFactory.create(business=b, name=f"Customer of {b.name} {next(_numbers)}")


ROW_MAKERS: dict[type[Model], Callable[[Business], Model]] = {
    Customer: _customer,
    Supplier: lambda b: SupplierFactory.create(business=b, name=f"Supplier of {b.name} {next(_numbers)}"),
    Item: _item,
    StockLevel: lambda b: StockLevel.objects.create(business=b, item=_item(b), quantity=Decimal(3)),
    StockMovement: lambda b: StockMovement.objects.create(
        business=b,
        item=_item(b),
        movement_date=DAY,
        kind=MovementKind.PURCHASE,
        quantity=Decimal(1),
        value=Decimal(10),
        reference=f"ref {b.name}",
    ),
    OpeningStock: lambda b: OpeningStock.objects.create(
        business=b, item=_item(b), stock_date=DAY, quantity=Decimal(1), unit_cost=Decimal(10)
    ),
    StockCount: lambda b: StockCount.objects.create(business=b, count_date=DAY, note=f"count of {b.name}"),
    ProductionBatch: lambda b: ProductionBatch.objects.create(
        business=b, batch_date=DAY, output_item=_item(b), output_quantity=Decimal(1)
    ),
    Sale: lambda b: Sale.objects.create(business=b, sale_date=DAY, customer=_customer(b)),
    CustomerTransaction: lambda b: CustomerTransaction.objects.create(
        business=b, customer=_customer(b), tx_date=DAY, kind="sale", amount=Decimal(5), reference=f"ref {b.name}"
    ),
    Purchase: lambda b: Purchase.objects.create(
        business=b,
        supplier=SupplierFactory.create(business=b, name=f"Supplier of {b.name} {next(_numbers)}"),
        purchase_date=DAY,
    ),
    Expense: lambda b: Expense.objects.create(
        business=b, expense_date=DAY, category="expense_rent", amount=Decimal(100), description=f"rent {b.name}"
    ),
    LaundryOrder: lambda b: LaundryOrder.objects.create(
        business=b,
        customer=_customer(b),
        tag=f"T{b.pk}",
        received_date=DAY,
        promised_date=DAY,
    ),
    DayClosing: lambda b: DayClosing.objects.create(business=b, day=DAY),
    SupplierPayment: lambda b: SupplierPayment.objects.create(
        business=b,
        supplier=SupplierFactory.create(business=b, name=f"Supplier of {b.name} {next(_numbers)}"),
        payment_date=DAY,
        amount=Decimal(50),
        reference=f"ref {b.name}",
    ),
}

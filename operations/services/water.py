"""Water packaging: production batches.

A batch takes raw materials (preforms, caps, labels, treatment inputs) out of stock at their
average cost and puts the finished goods in at the sum of those costs. Both sides are in the one
inventory account, so the batch nets to nothing in the ledger and posts no entry; the stock
movements carry the value from materials to finished goods. (Bottle deposits are catalogue items
of kind "deposit" crediting bottle_deposits; route deliveries are sales on account with a route.)
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Sequence
from decimal import Decimal
from typing import Any

from django.db import transaction

from accounts.fields import ZERO
from operations.exceptions import InvalidInput
from operations.models import DocumentStatus, Item, ItemKind, MovementKind, ProductionBatch, ProductionInput
from operations.services.postings import books_open, day_open_check, items_read, quantity_checked
from operations.services.stock import StockBook, stock_lock
from tenancy.models import Business


def production_batch_post(*, batch: ProductionBatch, acting_user: Any = None) -> ProductionBatch:
    """Post a draft batch: inputs out at average cost, output in at their total. Idempotent."""
    with transaction.atomic():
        batch = (
            ProductionBatch.objects.select_for_update(of=("self",))
            .select_related("business", "output_item")
            .get(pk=batch.pk)
        )
        if batch.status == DocumentStatus.POSTED:
            return batch
        day_open_check(batch.business, batch.batch_date)
        inputs = list(batch.inputs.select_related("item"))
        _batch_book(batch, inputs)
        ProductionInput.objects.bulk_update(inputs, ["cost"])
        batch.save(update_fields=["status", "total_cost"])
    return batch


def _batch_book(batch: ProductionBatch, inputs: list[ProductionInput]) -> None:
    """Check the batch and move its stock (the day checked open by the caller): sets the inputs'
    costs and the batch's total and status; the caller writes them. Refusals come before any write."""
    if not inputs:
        raise InvalidInput("A production batch needs at least one raw material.")
    output = batch.output_item
    if output.kind != ItemKind.GOOD or output.business_id != batch.business_id:
        raise InvalidInput(f"{output} is not a finished good of {batch.business}")
    book = StockBook(
        stock_lock([output, *(i.item for i in inputs)]), day=batch.batch_date, reference=f"batch #{batch.pk}"
    )
    total = ZERO
    for line in inputs:
        if line.item.business_id != batch.business_id or not line.item.is_stocked:
            raise InvalidInput(f"{line.item} is not a stocked item of {batch.business}")
        line.cost = book.take_out(line.item, line.quantity, MovementKind.PRODUCTION_OUT)
        total += line.cost
    book.take_in(output, batch.output_quantity, total, MovementKind.PRODUCTION_IN)
    book.save(None)
    batch.status, batch.total_cost = DocumentStatus.POSTED, total


def production_batch_create(
    *,
    business: Business,
    batch_date: dt.date,
    output_item: Item,
    output_quantity: Decimal,
    inputs: Sequence[tuple[Item, Decimal]],
    note: str = "",
    acting_user: Any = None,
) -> ProductionBatch:
    """Record and post a production batch (as production_batch_post does); `inputs` are (raw
    material, quantity used). The items are read again; the batch's id is reserved first so the
    batch and its inputs are written once, posted, after every check."""
    with transaction.atomic():
        books = books_open(business, batch_date, reserve_id_of=ProductionBatch)
        wanted = {output_item.pk, *(item.pk for item, _ in inputs)}
        items = items_read(wanted)
        missing = [item for item in (output_item, *(item for item, _ in inputs)) if item.pk not in items]
        if missing:
            raise InvalidInput(f"{missing[0]} is not in the catalogue")
        batch = ProductionBatch(
            pk=books.reserved_id,
            business=business,
            batch_date=batch_date,
            output_item=items[output_item.pk],
            output_quantity=quantity_checked(output_quantity),
            note=note,
        )
        lines = [
            ProductionInput(batch=batch, item=items[item.pk], quantity=quantity_checked(quantity))
            for item, quantity in inputs
        ]
        _batch_book(batch, lines)
        batch.save(force_insert=True)
        ProductionInput.objects.bulk_create(lines)
    return batch

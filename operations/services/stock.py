"""Stock: levels at weighted-average cost, movements, opening stock, counts.

Stock rows are locked with select_for_update in primary-key order (one place: `stock_lock`) so
two operations moving the same items wait for each other instead of deadlocking. Each level keeps
its total value; an issue takes value * issued / on hand (all of it for the last unit), so the
sum of the levels equals the inventory account to the cent.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Callable, Iterable
from decimal import Decimal
from typing import Any

from django.db import transaction

from accounts.fields import ZERO
from accounts.journal import Journal
from accounts.models import JournalEntry, SourceType
from operations.exceptions import InsufficientStock, InvalidInput
from operations.models import (
    STOCKED_KINDS,
    DocumentStatus,
    Item,
    MovementKind,
    OpeningStock,
    StockCount,
    StockCountLine,
    StockLevel,
    StockMovement,
)
from operations.services.postings import (
    Writes,
    acting,
    array_literal,
    books_open,
    money,
    rows_read,
    rows_send,
    same_business_items,
)


def stock_lock(items: Iterable[Item]) -> dict[int, StockLevel]:
    """The stock rows of `items` (created if missing), locked, in primary-key order. In a transaction.

    One query when every row exists (the usual case); a missing row is created first, then the
    rows are locked again in primary-key order (those already held are not waited for).
    """
    wanted = {item.pk: item for item in items if item.is_stocked}
    if not wanted:
        return {}
    levels = {level.item_id: level for level in _levels_locked(wanted)}
    missing = [StockLevel(business_id=item.business_id, item=item) for pk, item in wanted.items() if pk not in levels]
    if missing:
        StockLevel.objects.bulk_create(missing, ignore_conflicts=True)
        levels = {level.item_id: level for level in _levels_locked(wanted)}
    return levels


def _levels_locked(item_ids: Iterable[int]) -> list[StockLevel]:
    return rows_read(StockLevel, "item_id = ANY(%s::bigint[])", [list(item_ids)], lock="ORDER BY id FOR UPDATE")


# The stock rows a sale of items `ids` moves: each item's stock item (or the item, if stocked)
# and the empties it takes back, locked in primary-key order (stock_lock's order).
_SOLD_LEVELS_WHERE = """item_id IN (
  SELECT CASE WHEN i.stock_item_id IS NOT NULL THEN i.stock_item_id
              WHEN i.kind = ANY(%(stocked)s::text[]) THEN i.id END
    FROM operations_item i WHERE i.id = ANY(%(ids)s::bigint[])
  UNION ALL SELECT i.returns_item_id FROM operations_item i WHERE i.id = ANY(%(ids)s::bigint[]))"""


_STOCKED_KINDS = array_literal(kind.value for kind in STOCKED_KINDS)  # as Item.is_stocked


def stock_lock_send(item_ids: Iterable[int]) -> Callable[[Iterable[Item]], dict[int, StockLevel]]:
    """stock_lock for a sale of the items `item_ids`, in two steps: the stock rows their sale moves
    (their stock items, the empties they take back) are locked by a statement sent now (inside
    postings.pipelined(), with the sale's other reads), in primary-key order. The function returned
    takes the stocked items the sale moves (as read in the sale) and gives stock_lock's result:
    when a row is missing (or the items changed in between) it is stock_lock's own, which creates
    the row and locks again."""
    params = {"ids": list(set(item_ids)), "stocked": _STOCKED_KINDS}
    later = rows_send(StockLevel, _SOLD_LEVELS_WHERE, params, lock="ORDER BY id FOR UPDATE")

    def result(items: Iterable[Item]) -> dict[int, StockLevel]:
        items = list(items)
        locked = {level.item_id: level for level in later()}
        wanted = {item.pk for item in items if item.is_stocked}
        if wanted - locked.keys():
            return stock_lock(items)
        return {pk: locked[pk] for pk in sorted(wanted)}

    return result


class StockBook:
    """Moves stock on locked levels and records the movements, saved together by `save`."""

    def __init__(self, levels: dict[int, StockLevel], *, day: dt.date, reference: str) -> None:
        self.levels = levels
        self.day = day
        self.reference = reference
        self.movements: list[StockMovement] = []
        self._touched: set[int] = set()

    def _level(self, item: Item) -> StockLevel:
        try:
            return self.levels[item.pk]
        except KeyError:
            raise InvalidInput(f"{item} is not a stocked item") from None

    def take_in(self, item: Item, quantity: Decimal, value: Decimal, kind: str) -> None:
        level = self._level(item)
        level.quantity += quantity
        level.value += value
        self._record(level, kind, quantity, value)

    def take_out(self, item: Item, quantity: Decimal, kind: str) -> Decimal:
        """Issue `quantity` at the weighted-average cost; returns the cost taken out."""
        level = self._level(item)
        if quantity > level.quantity:
            raise InsufficientStock(
                f"Only {level.quantity.normalize():f} of {item} in stock; {quantity.normalize():f} needed. "
                "Record the purchase or production first."
            )
        cost = level.value if quantity == level.quantity else money(level.value * quantity / level.quantity)
        level.quantity -= quantity
        level.value -= cost
        self._record(level, kind, -quantity, -cost)
        return cost

    def take_back(self, item: Item, quantity: Decimal, value: Decimal, kind: str) -> None:
        """Take out exactly what an earlier movement brought in (undoing it at its own cost)."""
        level = self._level(item)
        if quantity > level.quantity:
            raise InsufficientStock(f"The {item} to give back is no longer in stock; count it first.")
        level.quantity -= quantity
        level.value -= value
        self._record(level, kind, -quantity, -value)

    def unit_cost(self, item: Item) -> Decimal:
        level = self._level(item)
        return level.value / level.quantity if level.quantity > 0 else ZERO

    def _record(self, level: StockLevel, kind: str, quantity: Decimal, value: Decimal) -> None:
        self._touched.add(level.item_id)
        self.movements.append(
            StockMovement(
                business_id=level.business_id,
                item_id=level.item_id,
                movement_date=self.day,
                kind=kind,
                quantity=quantity,
                value=value,
                reference=self.reference,
            )
        )

    def save(self, entry: JournalEntry | None, writes: Writes | None = None) -> None:
        """Insert the movements and write the levels moved: one statement whatever the number of
        lines, or part of the caller's `writes` (then written when the caller runs them)."""
        for movement in self.movements:
            movement.entry = entry
        own = writes is None
        if writes is None:
            writes = Writes()
        writes.insert(self.movements)
        writes.update([self.levels[item_id] for item_id in sorted(self._touched)], ["quantity", "value"])
        if own:
            writes.run()


def stock_opening_post(*, opening: OpeningStock, acting_user: Any = None) -> OpeningStock:
    """Post opening stock: stock in at the given unit cost; Dr inventory / Cr owner's equity.

    Idempotent: a posted row is returned as it is.
    """
    with transaction.atomic():
        opening = (
            OpeningStock.objects.select_for_update(of=("self",)).select_related("business", "item").get(pk=opening.pk)
        )
        if opening.status == DocumentStatus.POSTED:
            return opening
        same_business_items(opening.business, [opening.item])
        if not opening.item.is_stocked:
            raise InvalidInput(f"{opening.item} is not a stocked item")
        books = books_open(opening.business, opening.stock_date)
        value = money(opening.quantity * opening.unit_cost)
        book = StockBook(stock_lock([opening.item]), day=opening.stock_date, reference=f"opening #{opening.pk}")
        book.take_in(opening.item, opening.quantity, value, MovementKind.OPENING)
        journal = Journal(books.roles)
        journal.debit("inventory", value, f"Opening stock {opening.item}")
        journal.credit("owner_equity", value)
        entry = journal.post(
            entry_date=opening.stock_date,
            memo=f"Opening stock: {opening.item}",
            source_type=SourceType.OPENING,
            source_ref=f"opening #{opening.pk}",
            idempotency_key=f"opening-stock:{opening.pk}",
            acting_user=acting_user,
        )
        book.save(entry)
        opening.status, opening.entry = DocumentStatus.POSTED, entry
        opening.save(update_fields=["status", "entry"])
    return opening


def stock_count_post(*, count: StockCount, acting_user: Any = None) -> StockCount:
    """Post a stock count: each line's difference with the stock on hand moves stock at the
    average cost (a gain in at the average cost too) and goes to stock variance:
    Dr stock_variance / Cr inventory for a loss, the reverse for a gain. Idempotent.
    """
    with transaction.atomic():
        count = StockCount.objects.select_for_update(of=("self",)).select_related("business").get(pk=count.pk)
        if count.status == DocumentStatus.POSTED:
            return count
        lines = list(count.lines.select_related("item"))
        if not lines:
            raise InvalidInput("A stock count needs at least one line.")
        books = books_open(count.business, count.count_date)
        same_business_items(count.business, [line.item for line in lines])
        book = StockBook(stock_lock(line.item for line in lines), day=count.count_date, reference=f"count #{count.pk}")
        journal = Journal(books.roles)
        for line in lines:
            on_hand = book.levels[line.item.pk].quantity if line.item.pk in book.levels else None
            if on_hand is None:
                raise InvalidInput(f"{line.item} is not a stocked item")
            difference = line.counted_quantity - on_hand
            value = ZERO
            if difference < 0:
                value = -book.take_out(line.item, -difference, MovementKind.COUNT)
            elif difference > 0:
                value = money(book.unit_cost(line.item) * difference)
                book.take_in(line.item, difference, value, MovementKind.COUNT)
            journal.debit("inventory", value, f"Count {line.item}")
            journal.credit("stock_variance", value)
            line.expected_quantity, line.variance_quantity, line.variance_value = on_hand, difference, value
        StockCountLine.objects.bulk_update(lines, ["expected_quantity", "variance_quantity", "variance_value"])
        entry = journal.post(
            entry_date=count.count_date,
            memo=f"Stock count #{count.pk}",
            source_type=SourceType.STOCK,
            source_ref=f"count #{count.pk}",
            idempotency_key=f"stock-count:{count.pk}",
            acting_user=acting_user,
        )
        book.save(entry)
        count.status, count.entry = DocumentStatus.POSTED, entry
        count.created_by = count.created_by or acting(acting_user)
        count.save(update_fields=["status", "entry", "created_by"])
    return count


def stock_count_create(
    *, business: Any, count_date: dt.date, counted: dict[Item, Decimal], note: str = "", acting_user: Any = None
) -> StockCount:
    """Record and post a count in one go (quantities counted per item)."""
    if not counted:
        raise InvalidInput("A stock count needs at least one line.")
    with transaction.atomic():
        count = StockCount.objects.create(
            business=business, count_date=count_date, note=note, created_by=acting(acting_user)
        )
        StockCountLine.objects.bulk_create(
            StockCountLine(count=count, item=item, counted_quantity=quantity) for item, quantity in counted.items()
        )
        return stock_count_post(count=count, acting_user=acting_user)

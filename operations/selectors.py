"""The reads of the day-to-day that matter: customer balances and statements, stock value as of a
date, low stock, uncollected laundry, the days due for closing. Each is one or two SQL queries."""

from __future__ import annotations

import datetime as dt
import zoneinfo
from collections.abc import Sequence
from dataclasses import dataclass
from decimal import Decimal
from typing import Any

from django.db import connection
from django.db.models import Count, F, Max, Min, Q, QuerySet, Sum
from django.utils import timezone

from accounts.fields import ZERO
from accounts.models import JournalEntry
from accounts.selectors import books_lock_date
from operations.models import (
    OPEN_STATUSES,
    ClosingStatus,
    Customer,
    CustomerTransaction,
    DayClosing,
    DocumentStatus,
    Expense,
    Item,
    ItemKind,
    LaundryOrder,
    OrderStatus,
    PaidFrom,
    PaymentMethod,
    Purchase,
    Sale,
    SaleStatus,
    StockLevel,
    StockMovement,
    Supplier,
    SupplierPayment,
)
from tenancy.models import Business


def cash_expected(*, business: Business, day: dt.date) -> Decimal:
    """The cash account's balance at the end of `day` (what the drawer should hold), in one query.

    From the last closing before `day`: the cash it left in the drawer (expected + variance, i.e.
    the count when there was one) and the cash lines of the entries dated after it, up to `day`.
    Nothing can be dated on or before a closed day afterwards (its closing moved the lock date to
    it, and the ledger refuses any posting up to the lock date), so what a closing left stays
    right; without a closing, every cash line up to `day`. It reads the lines, not the ledger's
    daily totals, so postings made earlier in the caller's transaction count (a closing run needs
    it), and reads a few days of them rather than every day since the business started.
    """
    with connection.cursor() as cursor:
        cursor.execute(_CASH_EXPECTED_SQL, {"business": business.pk, "day": day, "closed": ClosingStatus.CLOSED})
        left, moved = cursor.fetchone()
    return (left or ZERO) + moved


_CASH_EXPECTED_SQL = """
WITH last AS (
  SELECT c.day, c.expected_cash + c.variance AS cash FROM operations_dayclosing c
   WHERE c.business_id = %(business)s AND c.status = %(closed)s AND c.day < %(day)s
   ORDER BY c.day DESC LIMIT 1)
SELECT (SELECT cash FROM last),
       (SELECT coalesce(sum(l.debit), 0) - coalesce(sum(l.credit), 0)
          FROM accounts_journalentry e
          JOIN accounts_journalline l ON l.entry_id = e.id
          JOIN accounts_account a ON a.id = l.account_id
         WHERE e.business_id = %(business)s AND e.entry_date <= %(day)s
           AND e.entry_date > coalesce((SELECT day FROM last), '-infinity'::date)
           AND a.role = 'cash')
"""


# A business never closed is closed automatically from its first activity, but never further back
# than this: a month, so the first run after the schedule is switched on (or a business's history
# imported) writes at most a month of closings; older days are the owner's to close (docs/operations.md).
AUTO_CLOSE_FIRST_DAYS = 31


def closing_last_due_day(*, business: Business, now: dt.datetime) -> dt.date:
    """The last day of `business` that has ended at `now`: today once its closing time (Nairobi) has
    passed, else yesterday."""
    local = timezone.localtime(now, zoneinfo.ZoneInfo(business.timezone or "Africa/Nairobi"))
    if local.time() >= business.closing_time:
        return local.date()
    return local.date() - dt.timedelta(days=1)


def first_activity_day(*, business: Business) -> dt.date | None:
    """The first day `business` has anything on: a ledger entry, a stock movement (production moves
    stock without an entry) or a closing entered by hand; None for a business with nothing yet."""
    days = [
        JournalEntry.objects.filter(business=business).aggregate(d=Min("entry_date"))["d"],
        StockMovement.objects.filter(business=business).aggregate(d=Min("movement_date"))["d"],
        DayClosing.objects.filter(business=business).aggregate(d=Min("day"))["d"],
    ]
    found = [d for d in days if d is not None]
    return min(found) if found else None


def closing_days_due(*, business: Business, now: dt.datetime) -> list[dt.date]:
    """The days of `business` that have ended at `now` and are not closed, oldest first.

    From the day after the books' lock date (a closing moves it to its day); for books never locked,
    from the first day with activity, at most AUTO_CLOSE_FIRST_DAYS days back, nothing for a business
    with no activity at all. Up to today once the business's closing time has passed, else yesterday.
    """
    last = closing_last_due_day(business=business, now=now)
    lock_date = books_lock_date(business_id=business.pk)
    if lock_date is not None:
        start = lock_date + dt.timedelta(days=1)
    else:
        first = first_activity_day(business=business)
        if first is None:
            return []
        start = max(first, last - dt.timedelta(days=AUTO_CLOSE_FIRST_DAYS - 1))
    return [start + dt.timedelta(days=n) for n in range((last - start).days + 1)]


def customer_balance(*, customer: Customer, as_of: dt.date | None = None) -> Decimal:
    """What the customer owes (positive) or is owed (negative)."""
    rows = CustomerTransaction.objects.filter(customer=customer)
    if as_of is not None:
        rows = rows.filter(tx_date__lte=as_of)
    return rows.aggregate(s=Sum("amount"))["s"] or ZERO


def customer_balances(*, business: Business) -> QuerySet[Customer]:
    """The business's customers who owe something (or are owed), with `balance` annotated."""
    return (
        Customer.objects.filter(business=business)
        .annotate(balance=Sum("transactions__amount"))
        .filter(~Q(balance=0), balance__isnull=False)
        .order_by("-balance")
    )


@dataclass(frozen=True)
class StatementLine:
    tx_date: dt.date
    kind: str
    reference: str
    amount: Decimal
    balance: Decimal


@dataclass(frozen=True)
class Statement:
    customer: Customer
    date_from: dt.date
    date_to: dt.date
    opening: Decimal
    lines: list[StatementLine]

    @property
    def closing(self) -> Decimal:
        return self.lines[-1].balance if self.lines else self.opening


def customer_statement(*, customer: Customer, date_from: dt.date, date_to: dt.date) -> Statement:
    """Opening balance, each transaction of the period with the running balance, closing balance."""
    opening = customer_balance(customer=customer, as_of=date_from - dt.timedelta(days=1))
    running = opening
    lines = []
    for tx in CustomerTransaction.objects.filter(customer=customer, tx_date__range=(date_from, date_to)).order_by(
        "tx_date", "id"
    ):
        running += tx.amount
        lines.append(StatementLine(tx.tx_date, tx.get_kind_display(), tx.reference, tx.amount, running))
    return Statement(customer, date_from, date_to, opening, lines)


@dataclass(frozen=True)
class CustomerAgeing:
    """What one customer owes on a date, split by the age of the charges still unpaid.

    Payments settle the oldest charges first, so what is still owed is the newest charges'. Buckets:
    `current` 0-30 days old, `days_30` 31-60, `days_60` 61-90, `days_90` over 90. They add up to
    `balance`; a customer in credit (negative balance) has it all in `current`.
    """

    customer_id: int
    business_id: int
    name: str
    phone: str
    balance: Decimal
    current: Decimal
    days_30: Decimal
    days_60: Decimal
    days_90: Decimal


_AGEING_SQL = """
WITH tx AS (
  SELECT customer_id, id, tx_date, amount FROM operations_customertransaction
   WHERE tx_date <= %(as_of)s AND (%(all)s OR business_id = ANY(%(ids)s))
     AND (%(customer)s::bigint IS NULL OR customer_id = %(customer)s)
), bal AS (
  SELECT customer_id, sum(amount) AS balance FROM tx GROUP BY customer_id HAVING sum(amount) <> 0
), charges AS (
  -- each charge with the sum of the charges newer than it: what the balance covers first
  SELECT t.customer_id, t.tx_date, t.amount,
         coalesce(sum(t.amount) OVER (PARTITION BY t.customer_id ORDER BY t.tx_date DESC, t.id DESC
                                      ROWS BETWEEN UNBOUNDED PRECEDING AND 1 PRECEDING), 0) AS newer
    FROM tx t JOIN bal b ON b.customer_id = t.customer_id
   WHERE t.amount > 0 AND b.balance > 0
), still_owed AS (
  SELECT c.customer_id, %(as_of)s::date - c.tx_date AS age, greatest(least(c.amount, b.balance - c.newer), 0) AS owed
    FROM charges c JOIN bal b ON b.customer_id = c.customer_id
)
SELECT cu.id, cu.business_id, cu.name, cu.phone, b.balance,
       CASE WHEN b.balance < 0 THEN b.balance
            ELSE coalesce(sum(o.owed) FILTER (WHERE o.age <= 30), 0) END,
       coalesce(sum(o.owed) FILTER (WHERE o.age BETWEEN 31 AND 60), 0),
       coalesce(sum(o.owed) FILTER (WHERE o.age BETWEEN 61 AND 90), 0),
       coalesce(sum(o.owed) FILTER (WHERE o.age > 90), 0)
  FROM bal b
  JOIN operations_customer cu ON cu.id = b.customer_id
  LEFT JOIN still_owed o ON o.customer_id = b.customer_id
 GROUP BY cu.id, cu.business_id, cu.name, cu.phone, b.balance
 ORDER BY b.balance DESC, cu.name, cu.id
"""


def customer_ageing(
    *, business_ids: list[int] | None, as_of: dt.date, customer_id: int | None = None
) -> list[CustomerAgeing]:
    """Every customer with a balance on `as_of` (of these businesses; None: all), aged, biggest debt first.

    One query. `customer_id` narrows it to one customer (an empty list if he owes nothing).
    """
    params: dict[str, Any] = {
        "as_of": as_of,
        "all": business_ids is None,
        "ids": list(business_ids or []),
        "customer": customer_id,
    }
    with connection.cursor() as cursor:
        cursor.execute(_AGEING_SQL, params)
        return [CustomerAgeing(*row) for row in cursor.fetchall()]


@dataclass(frozen=True)
class StockValue:
    item_id: int
    name: str
    quantity: Decimal
    value: Decimal


def stock_value_as_of(*, business: Business, as_of: dt.date) -> list[StockValue]:
    """Quantity and value of each stocked item at the end of `as_of`, summed from the movements."""
    rows = (
        StockMovement.objects.filter(business=business, movement_date__lte=as_of)
        .values("item_id", "item__name")
        .annotate(quantity=Sum("quantity"), value=Sum("value"))
        .order_by("item__name")
    )
    return [
        StockValue(r["item_id"], r["item__name"], r["quantity"], r["value"])
        for r in rows
        if r["quantity"] or r["value"]
    ]


def low_stock(*, business: Business) -> QuerySet[StockLevel]:
    """Stock rows at or below their item's reorder level (items with a reorder level set)."""
    return (
        StockLevel.objects.filter(business=business, item__is_active=True, item__reorder_level__gt=0)
        .filter(quantity__lte=F("item__reorder_level"))
        .select_related("item")
        .order_by("item__name")
    )


def uncollected_orders(*, business: Business, as_of: dt.date) -> QuerySet[LaundryOrder]:
    """Open laundry orders whose promised date has passed, oldest first."""
    return (
        LaundryOrder.objects.filter(business=business, status__in=OPEN_STATUSES, promised_date__lt=as_of)
        .select_related("customer")
        .order_by("promised_date", "id")
    )


def ready_orders(*, business: Business) -> QuerySet[LaundryOrder]:
    """Laundry orders washed and waiting for their customer, by promised date."""
    return (
        LaundryOrder.objects.filter(business=business, status=OrderStatus.READY)
        .select_related("customer")
        .order_by("promised_date", "id")
    )


def sales_on_account(*, business: Business, day: dt.date) -> Decimal:
    """What was sold on credit on `day`: posted sales paid "on account" (a sale voided or refunded
    later still counts: the credit was given that day) and laundry collected with the balance put
    on the customer's account."""
    sales = Sale.objects.filter(
        business=business,
        sale_date=day,
        payment_method=PaymentMethod.ACCOUNT,
        status__in=[SaleStatus.POSTED, SaleStatus.REFUNDED],
    ).aggregate(s=Sum("total"))["s"]
    laundry = LaundryOrder.objects.filter(
        business=business, collected_date=day, balance_method=PaymentMethod.ACCOUNT, status=OrderStatus.COLLECTED
    ).aggregate(s=Sum(F("total") - F("deposit")))["s"]
    return (sales or ZERO) + (laundry or ZERO)


@dataclass(frozen=True)
class DayExpenses:
    count: int
    total: Decimal


def expenses_of_day(*, business: Business, day: dt.date) -> DayExpenses:
    """Posted expenses dated `day`."""
    totals = Expense.objects.filter(business=business, expense_date=day, status=DocumentStatus.POSTED).aggregate(
        n=Count("id"), s=Sum("amount")
    )
    return DayExpenses(totals["n"], totals["s"] or ZERO)


def day_closing(*, business: Business, day: dt.date) -> DayClosing | None:
    """The day's closing if it was run (status closed), else None."""
    return DayClosing.objects.filter(business=business, day=day, status=ClosingStatus.CLOSED).first()


def supplier_balance(*, supplier: Supplier) -> Decimal:
    """What the business owes the supplier: posted purchases on credit less posted payments."""
    bought = Purchase.objects.filter(
        supplier=supplier, status=DocumentStatus.POSTED, paid_from=PaidFrom.CREDIT
    ).aggregate(s=Sum("total"))["s"]
    paid = SupplierPayment.objects.filter(supplier=supplier, status=DocumentStatus.POSTED).aggregate(s=Sum("amount"))[
        "s"
    ]
    return (bought or ZERO) - (paid or ZERO)


def catalogue(*, business: Business) -> QuerySet[Item]:
    return Item.objects.filter(business=business, is_active=True).order_by("name")


@dataclass(frozen=True)
class ItemSales:
    """What one catalogue item brought in over a period: quantity and value (VAT included)."""

    item_id: int
    business_id: int
    name: str
    quantity: Decimal
    value: Decimal


_TOP_ITEMS_SQL = """
WITH sold AS (
  SELECT l.item_id, l.quantity, l.amount
    FROM operations_saleline l JOIN operations_sale s ON s.id = l.sale_id
   WHERE s.business_id = ANY(%(ids)s) AND s.sale_date BETWEEN %(date_from)s AND %(date_to)s
     AND s.status = %(posted)s
  UNION ALL
  SELECT l.item_id, l.quantity, l.amount
    FROM operations_laundryorderline l JOIN operations_laundryorder o ON o.id = l.order_id
   WHERE o.business_id = ANY(%(ids)s) AND o.collected_date BETWEEN %(date_from)s AND %(date_to)s
     AND o.status = %(collected)s
)
SELECT i.id, i.business_id, i.name, sum(sold.quantity), sum(sold.amount) AS value
  FROM sold JOIN operations_item i ON i.id = sold.item_id
 WHERE i.kind <> %(deposit)s
 GROUP BY i.id, i.business_id, i.name
 ORDER BY value DESC, i.name, i.id
 LIMIT %(limit)s
"""


def top_items(*, business_ids: Sequence[int], date_from: dt.date, date_to: dt.date, limit: int = 10) -> list[ItemSales]:
    """The items that brought in most from `date_from` to `date_to`, biggest first (at most `limit`).

    One query: lines of posted sales dated in the period (a sale voided or refunded since is left
    out: its money went back) and lines of laundry orders collected in the period (their revenue
    day), valued VAT included as the customer paid. Deposits (bottles, cylinders) are left out: they
    are the customer's money held, not a sale. Items are per business, so the same name in two
    businesses is two rows.
    """
    if not business_ids or limit <= 0:
        return []
    params: dict[str, Any] = {
        "ids": list(business_ids),
        "date_from": date_from,
        "date_to": date_to,
        "posted": SaleStatus.POSTED.value,
        "collected": OrderStatus.COLLECTED.value,
        "deposit": ItemKind.DEPOSIT.value,
        "limit": limit,
    }
    with connection.cursor() as cursor:
        cursor.execute(_TOP_ITEMS_SQL, params)
        return [ItemSales(*row) for row in cursor.fetchall()]


@dataclass(frozen=True)
class UnclosedDays:
    """The ended business days of a business with no closing since its last closed day."""

    business_id: int
    last_closed: dt.date | None
    first_day: dt.date | None  # the oldest day not closed; None when every ended day is closed
    count: int


def unclosed_days(*, businesses: Sequence[Business], now: dt.datetime) -> dict[int, UnclosedDays]:
    """Per active business: the ended days after its last closed day (since it was created, if it was
    never closed) that have no closing yet. One query (the last closed day of each business).

    A closing locks the books up to its day, so days before the last closing cannot be closed any
    more: only the days after it are counted. Inactive businesses count none.
    """
    ids = [b.pk for b in businesses]
    last = dict(
        DayClosing.objects.filter(business_id__in=ids, status=ClosingStatus.CLOSED)
        .values("business_id")
        .annotate(day=Max("day"))
        .values_list("business_id", "day")
    )
    result = {}
    for business in businesses:
        closed = last.get(business.pk)
        start = closed + dt.timedelta(days=1) if closed else timezone.localtime(business.created_at).date()
        end = closing_last_due_day(business=business, now=now)
        count = (end - start).days + 1 if business.is_active and end >= start else 0
        result[business.pk] = UnclosedDays(business.pk, closed, start if count else None, count)
    return result

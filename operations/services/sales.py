"""Sales: post, void, refund, settle by M-Pesa; customer payments and deposit returns.

A sale's entry (one per sale, key "sale:<id>"):
  Dr cash (cash) or receivables (M-Pesa awaiting payment, on account)   gross
  Cr <item's sales role> net per role, Cr vat_output VAT
  Dr cost_of_sales / Cr inventory    cost of the stock issued (less empties taken back)
Void and refund reverse that entry (entry_reverse) and put the stock back at the cost it left at.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from decimal import Decimal
from typing import Any

from django.db import transaction
from django.db.models import Sum

from accounts.fields import ZERO
from accounts.journal import Journal
from accounts.models import JournalEntry, SourceType
from accounts.services import entry_reverse
from operations.exceptions import CreditLimitExceeded, InvalidInput, InvalidState
from operations.models import (
    Customer,
    CustomerTransaction,
    CustomerTxKind,
    Item,
    ItemKind,
    MovementKind,
    PaymentMethod,
    Sale,
    SaleLine,
    SaleStatus,
    StockLevel,
    StockMovement,
)
from operations.services.postings import (
    Roles,
    Writes,
    acting,
    amount_stored,
    books_open,
    books_send,
    business_open_day,
    day_open_at,
    day_open_check,
    items_send,
    money,
    pipelined,
    quantity_checked,
    sales_role_of,
    same_business,
    same_business_items,
    vat_split,
)
from operations.services.stock import StockBook, stock_lock, stock_lock_send
from tenancy.models import Business


@dataclass(frozen=True)
class LineInput:
    """One line to sell: an item, a quantity and optionally a price (VAT incl.) other than the catalogue's."""

    item: Item
    quantity: Decimal
    unit_price: Decimal | None = None


def customer_balance_locked(customer: Customer) -> Decimal:
    """What the customer owes, with the customer row locked (call inside a transaction).

    Two statements on purpose: the sum is read after the lock is granted, so it counts what a
    transaction that held the lock committed (one statement would sum from its own snapshot,
    taken before it waited).
    """
    list(Customer.objects.select_for_update().filter(pk=customer.pk).values_list("pk", flat=True).order_by())
    total = CustomerTransaction.objects.filter(customer=customer).aggregate(s=Sum("amount"))["s"]
    return total or ZERO


def credit_check(customer: Customer, amount: Decimal) -> None:
    """Refuse `amount` more on account if it takes the customer over the limit (locks the customer)."""
    owed = customer_balance_locked(customer)
    if owed + amount > customer.credit_limit:
        raise CreditLimitExceeded(
            f"{customer.name} cannot take KES {amount:,.2f} more on credit: they owe KES {owed:,.2f} "
            f"and their limit is KES {customer.credit_limit:,.2f}. Take cash or M-Pesa, or ask the owner "
            "to raise the limit."
        )


def _stock_item(item: Item) -> Item | None:
    if item.stock_item_id:
        assert item.stock_item is not None
        return item.stock_item
    return item if item.is_stocked else None


def sale_create(
    *,
    business: Business,
    sale_date: dt.date,
    lines: Sequence[LineInput],
    payment_method: str = PaymentMethod.CASH,
    customer: Customer | None = None,
    route: str = "",
    note: str = "",
    acting_user: Any = None,
) -> Sale:
    """Record a sale with its lines and post it (as sale_post does), in one transaction.

    The items are read again (catalogue price, VAT rate, what stock they move as they are now);
    everything is checked and the stock locked before anything is written, so a refused sale
    writes nothing. The sale's number is reserved first, so the sale, its lines, the entry and the
    stock movements are each written once: a cash sale is a handful of statements.
    """
    if not lines:
        raise InvalidInput("A sale needs at least one line.")
    with transaction.atomic():
        item_ids = [line.item.pk for line in lines]
        # A sale on account locks its customer (the credit check) before the stock, as every
        # service does (customer, then stock: two of them never wait for each other in a circle):
        # its stock rows are locked after the check, by stock_lock.
        on_account = payment_method == PaymentMethod.ACCOUNT and customer is not None
        locked: Callable[[Iterable[Item]], dict[int, StockLevel]] = stock_lock
        with pipelined():  # the books, the items and the stock they move: one round trip
            books_later = books_send(business, reserve_id_of=Sale)
            items_later = items_send(item_ids)
            if not on_account:
                locked = stock_lock_send(item_ids)
        books = books_later()
        day_open_at(business, sale_date, books.lock_date)
        items = items_later()
        missing = [line.item for line in lines if line.item.pk not in items]
        if missing:
            raise InvalidInput(f"{missing[0]} is not in the catalogue")
        sale = Sale(
            pk=books.reserved_id,
            business=business,
            sale_date=sale_date,
            customer=customer,
            payment_method=payment_method,
            route=route,
            note=note,
            created_by=acting(acting_user),
        )
        sale_lines = [
            SaleLine(
                sale=sale,
                item=items[line.item.pk],
                quantity=quantity_checked(line.quantity),
                unit_price=None if line.unit_price is None else amount_stored(line.unit_price),
            )
            for line in lines
        ]
        writes = Writes()  # the sale, its lines, its stock and its charge: one statement
        _sale_book(sale, sale_lines, books.roles, acting_user, writes, locked=locked)
        writes.insert([sale])
        writes.insert(sale_lines)
        _sale_charge(sale, writes)
        writes.run()
    return sale


def sale_post(*, sale: Sale, acting_user: Any = None) -> Sale:
    """Post a draft sale: prices, VAT, stock out at average cost, the ledger entry, and for a sale on
    account (or an M-Pesa sale to a known customer) a customer transaction.

    Refuses a closed day, a sale on account without a customer or over the credit limit (the
    customer row is locked so two sales cannot both pass), stock that is not there. Safe to retry:
    a posted sale is returned unchanged; the entry's key is "sale:<id>".
    """
    with transaction.atomic():
        sale = Sale.objects.select_for_update(of=("self",)).select_related("business", "customer").get(pk=sale.pk)
        if sale.status != SaleStatus.DRAFT:
            return sale
        books = books_open(sale.business, sale.sale_date)
        lines = list(sale.lines.select_related("item", "item__stock_item", "item__returns_item"))
        writes = Writes()
        _sale_book(sale, lines, books.roles, acting_user, writes)
        writes.update(lines, ["amount", "vat", "cost"])
        writes.update([sale], ["status", "entry", "total", "vat_total", "cost_total", "amount_paid"])
        _sale_charge(sale, writes)
        writes.run()
    return sale


def _sale_book(
    sale: Sale,
    lines: list[SaleLine],
    roles: Roles,
    acting_user: Any,
    writes: Writes,
    *,
    locked: Callable[[Iterable[Item]], dict[int, StockLevel]] = stock_lock,
) -> None:
    """Price the lines, check the sale, move the stock and post the entry (in the caller's
    transaction, the day checked open): sets the lines' amount, VAT and cost and the sale's totals,
    status and entry, and adds the stock moved to `writes`; the caller adds the sale and its lines
    and runs them. Everything that can refuse the
    sale (input, credit limit, stock) is checked before the entry and the stock are written.
    """
    business = sale.business
    if not lines:
        raise InvalidInput("A sale needs at least one line.")
    customer = sale.customer
    if customer is not None and customer.business_id != business.pk:
        raise InvalidInput(f"{customer} is a customer of another business")
    same_business_items(business, [line.item for line in lines])
    if sale.payment_method == PaymentMethod.ACCOUNT and customer is None:
        raise InvalidInput("A sale on account needs a customer.")

    journal = Journal(roles)
    total = vat_total = cost_total = ZERO
    for line in lines:
        item = line.item
        if item.kind == ItemKind.MATERIAL:
            raise InvalidInput(f"{item} is stock only and not sold as such (sell the refill or product made of it)")
        price = item.price if line.unit_price is None else line.unit_price
        line.amount = money(price * line.quantity)
        net, line.vat = vat_split(line.amount, item.tax_rate)
        role = sales_role_of(item)
        journal.credit(role, net, f"{sale.number} {item}")
        journal.credit("vat_output", line.vat)
        total += line.amount
        vat_total += line.vat

    if sale.payment_method == PaymentMethod.ACCOUNT and customer is not None:
        credit_check(customer, total)

    stocked = [i for i in (_stock_item(line.item) for line in lines) if i is not None]
    returned = [line.item.returns_item for line in lines if line.item.returns_item is not None]
    book = StockBook(locked([*stocked, *returned]), day=sale.sale_date, reference=sale.number)
    for line in lines:
        line.cost = ZERO
        stock_item = _stock_item(line.item)
        if stock_item is not None:
            line.cost = book.take_out(stock_item, line.quantity, MovementKind.SALE)
        if line.item.returns_item is not None:
            empty = line.item.returns_item
            value = money(book.unit_cost(empty) * line.quantity)
            book.take_in(empty, line.quantity, value, MovementKind.EXCHANGE_IN)
            line.cost -= value
        cost_total += line.cost
    # Issued stock out of inventory, empties taken back into it; the difference is the cost.
    journal.debit("cost_of_sales", cost_total, f"Cost of {sale.number}")
    journal.credit("inventory", cost_total)
    debit_role = "cash" if sale.payment_method == PaymentMethod.CASH else "receivables"
    journal.debit(debit_role, total, f"{sale.number} {sale.get_payment_method_display()}")
    entry = journal.post(
        entry_date=sale.sale_date,
        memo=f"Sale {sale.number} ({sale.get_payment_method_display()})",
        source_type=SourceType.SALE,
        source_ref=sale.number,
        idempotency_key=f"sale:{sale.pk}",
        acting_user=acting_user,
    )
    book.save(entry, writes)
    sale.status, sale.entry = SaleStatus.POSTED, entry
    sale.total, sale.vat_total, sale.cost_total = total, vat_total, cost_total
    sale.amount_paid = total if sale.payment_method == PaymentMethod.CASH else ZERO


def _sale_charge(sale: Sale, writes: Writes) -> None:
    """What a posted sale not paid in cash adds to its customer's account (none without a customer)."""
    if sale.customer is not None and sale.payment_method != PaymentMethod.CASH and sale.total:
        charge = CustomerTransaction(
            business=sale.business,
            customer=sale.customer,
            tx_date=sale.sale_date,
            kind=CustomerTxKind.SALE,
            amount=sale.total,
            sale=sale,
            reference=sale.number,
            entry=sale.entry,
        )
        writes.insert([charge])


def _sale_reverse(*, sale: Sale, day: dt.date, status: str, acting_user: Any, reason: str) -> Sale:
    with transaction.atomic():
        sale = (
            Sale.objects.select_for_update(of=("self",)).select_related("business", "customer", "entry").get(pk=sale.pk)
        )
        if sale.status in (SaleStatus.VOIDED, SaleStatus.REFUNDED):
            return sale
        if sale.status != SaleStatus.POSTED:
            raise InvalidState(f"Sale {sale.number} is not posted: delete the draft instead.")
        if sale.payment_method == PaymentMethod.MPESA and sale.amount_paid:
            raise InvalidState(
                f"Sale {sale.number} was paid by M-Pesa: refund the payment through M-Pesa (a reversal), "
                "then void the sale."
            )
        day_open_check(sale.business, day)
        if day < sale.sale_date:
            raise InvalidInput("A refund cannot be dated before the sale.")
        entry = sale.entry
        reversal = None
        if entry is not None:
            reversal = entry_reverse(
                entry=entry,
                entry_date=day,
                memo=f"{status.title()} of sale {sale.number}: {reason}"[:255],
                acting_user=acting_user,
                idempotency_key=f"sale-refund:{sale.pk}",
            )
        # Stock comes back exactly as it left (same quantities, same costs) so it matches the reversal.
        moved = list(StockMovement.objects.filter(entry=entry, reference=sale.number).select_related("item"))
        levels = stock_lock(m.item for m in moved)
        book = StockBook(levels, day=day, reference=sale.number)
        for m in moved:
            if m.quantity < 0:
                book.take_in(m.item, -m.quantity, -m.value, MovementKind.SALE_RETURN)
            else:  # the empty cylinder a refill took back goes out again
                book.take_back(m.item, m.quantity, m.value, MovementKind.SALE_RETURN)
        book.save(reversal)
        owed = CustomerTransaction.objects.filter(sale=sale).aggregate(s=Sum("amount"))["s"] or ZERO
        if sale.customer is not None and owed:
            CustomerTransaction.objects.create(
                business=sale.business,
                customer=sale.customer,
                tx_date=day,
                kind=CustomerTxKind.REFUND,
                amount=-owed,
                sale=sale,
                reference=sale.number,
                entry=reversal,
            )
        sale.status, sale.reversal_entry = status, reversal
        sale.note = f"{sale.note} {status}: {reason}".strip()[:255]
        sale.save(update_fields=["status", "reversal_entry", "note"])
    return sale


def sale_void(*, sale: Sale, reason: str = "", acting_user: Any = None) -> Sale:
    """Void a sale on its own day: a reversal entry dated the sale date, stock back. Idempotent."""
    return _sale_reverse(
        sale=sale, day=sale.sale_date, status=SaleStatus.VOIDED, acting_user=acting_user, reason=reason or "voided"
    )


def sale_refund(*, sale: Sale, refund_date: dt.date | None = None, reason: str = "", acting_user: Any = None) -> Sale:
    """Refund a whole sale: a reversal entry dated `refund_date` (default: today, or the next day
    once today is closed: postings.business_open_day) - cash goes back out
    of the drawer, or the customer's account is credited - and the stock comes back at its cost.
    Idempotent (key "sale-refund:<id>")."""
    return _sale_reverse(
        sale=sale,
        day=refund_date or business_open_day(sale.business),
        status=SaleStatus.REFUNDED,
        acting_user=acting_user,
        reason=reason or "refunded",
    )


def customer_payment_record(
    *,
    customer: Customer,
    amount: Decimal,
    paid_to: str = "cash",
    payment_date: dt.date,
    reference: str = "",
    acting_user: Any = None,
) -> CustomerTransaction:
    """A customer pays what they owe in cash or to the bank: Dr cash|bank / Cr receivables.

    (M-Pesa payments are posted by the M-Pesa module and recorded with sale_mpesa_paid.)
    Not idempotent by itself: each call records a payment.
    """
    if paid_to not in ("cash", "bank"):
        raise InvalidInput("Record cash or bank payments here; M-Pesa payments arrive by themselves.")
    if amount <= 0:
        raise InvalidInput("The amount paid must be more than zero.")
    with transaction.atomic():
        customer = Customer.objects.select_for_update(of=("self",)).select_related("business").get(pk=customer.pk)
        books = books_open(customer.business, payment_date, reserve_id_of=CustomerTransaction)
        journal = Journal(books.roles)
        journal.debit(paid_to, amount, f"Payment from {customer.name}")
        journal.credit("receivables", amount, f"Payment from {customer.name}")
        entry = journal.post(
            entry_date=payment_date,
            memo=f"Payment from {customer.name} {reference}".strip(),
            source_type=SourceType.PAYMENT,
            source_ref=reference or f"customer {customer.pk}",
            idempotency_key=f"customer-payment:{books.reserved_id}",
            acting_user=acting_user,
        )
        return CustomerTransaction.objects.create(
            pk=books.reserved_id,
            business=customer.business,
            customer=customer,
            tx_date=payment_date,
            kind=CustomerTxKind.PAYMENT,
            amount=-amount,
            reference=reference[:40],
            entry=entry,
        )


def sale_mpesa_paid(
    *, sale: Sale, receipt: str, amount: Decimal, entry: JournalEntry | None, paid_date: dt.date
) -> Sale:
    """Record that an M-Pesa payment (already posted to the ledger by the M-Pesa module, crediting
    receivables) paid `amount` of this sale. No ledger posting here. Idempotent per receipt.

    Called by the M-Pesa module's listener (operations.payments) with at most what the sale owes:
    what is paid over it is the customer's credit or waits in suspense, never the sale's. More than
    it owes is refused (and the database refuses amount_paid over the total whatever the path).
    Only `sale.pk` is used (the row is read again, locked). No savepoint of its own: it runs inside
    the M-Pesa posting, which a refusal here rolls back whole.
    """
    with transaction.atomic(savepoint=False):
        sale = Sale.objects.select_for_update(of=("self",)).get(pk=sale.pk)
        sale_mpesa_paid_locked(sale=sale, receipt=receipt, amount=amount, entry=entry, paid_date=paid_date)
    return sale


def sale_mpesa_paid_locked(
    *, sale: Sale, receipt: str, amount: Decimal, entry: JournalEntry | None, paid_date: dt.date
) -> None:
    """sale_mpesa_paid on a sale the caller read locked (select_for_update) in its transaction."""
    if sale.status != SaleStatus.POSTED:
        raise InvalidState(f"Sale {sale.number} is not open for payment.")
    if receipt == sale.mpesa_receipt or CustomerTransaction.objects.filter(sale=sale, reference=receipt).exists():
        return
    owed = sale.total - sale.amount_paid
    if amount <= 0 or amount > owed:
        raise InvalidState(f"Sale {sale.number} owes KES {owed:,.2f}: KES {amount:,.2f} cannot be applied.")
    sale.amount_paid += amount
    sale.mpesa_receipt = sale.mpesa_receipt or receipt[:20]
    sale.save(update_fields=["amount_paid", "mpesa_receipt"])
    if sale.customer_id is not None:
        CustomerTransaction.objects.create(
            business_id=sale.business_id,
            customer_id=sale.customer_id,
            tx_date=paid_date,
            kind=CustomerTxKind.PAYMENT,
            amount=-amount,
            sale=sale,
            reference=receipt[:40],
            entry=entry,
        )


def sale_mpesa_reversed(*, sale_id: int, business_id: int, receipt: str, amount: Decimal) -> Sale | None:
    """An M-Pesa payment that paid `amount` of the sale was reversed: the sale owes it again.

    Called by the M-Pesa module's reversal listener (operations.payments), which also writes the
    customer's reversing transaction. None if the sale is not there.
    """
    with transaction.atomic():
        sale = Sale.objects.select_for_update(of=("self",)).filter(pk=sale_id, business_id=business_id).first()
        if sale is None:
            return None
        sale.amount_paid = max(sale.amount_paid - amount, ZERO)
        if sale.mpesa_receipt == receipt[:20]:
            sale.mpesa_receipt = ""
        sale.save(update_fields=["amount_paid", "mpesa_receipt"])
    return sale


def deposit_return(
    *,
    business: Business,
    item: Item,
    quantity: Decimal,
    return_date: dt.date,
    reference: str,
    acting_user: Any = None,
) -> JournalEntry:
    """A customer brings back a deposit bottle / cylinder: the deposit is paid back in cash,
    Dr <deposit liability> / Cr cash. `reference` makes it idempotent (e.g. the deposit slip)."""
    same_business(business, [item], "Item")
    if item.kind != ItemKind.DEPOSIT or not item.sales_role:
        raise InvalidInput(f"{item} is not a deposit")
    if quantity <= 0:
        raise InvalidInput("Quantity must be more than zero.")
    with transaction.atomic():
        books = books_open(business, return_date)
        amount = money(item.price * quantity)
        journal = Journal(books.roles)
        journal.debit(item.sales_role, amount, f"{quantity:f} x {item} returned")
        journal.credit("cash", amount)
        entry = journal.post(
            entry_date=return_date,
            memo=f"Deposit returned: {quantity:f} x {item}",
            source_type=SourceType.PAYMENT,
            source_ref=reference,
            idempotency_key=f"deposit-return:{business.pk}:{reference}",
            acting_user=acting_user,
        )
        assert entry is not None
    return entry

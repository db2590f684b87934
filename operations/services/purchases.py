"""Purchases of stock from suppliers, and expenses.

Purchase entry (key "purchase:<id>"):  Dr inventory (net of claimable VAT), Dr vat_input,
Cr payables (on credit) or cash / mpesa_clearing / bank. A line whose item takes an empty back
(an LPG refill from the depot) sends that many empties out at their average cost: the full
cylinders come in at the empties' cost plus the gas paid for.
Supplier payment (key "supplier-payment:<id>"):  Dr payables / Cr cash | mpesa_clearing | bank.
Expense entry (key "expense:<id>"):  Dr <category's expense account> / Cr cash | mpesa_clearing | bank.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Sequence
from decimal import Decimal
from typing import Any

from django.db import transaction

from accounts.fields import ZERO
from accounts.journal import Journal
from accounts.models import SourceType
from operations.exceptions import InvalidInput
from operations.models import (
    DocumentStatus,
    Expense,
    Item,
    MovementKind,
    PaidFrom,
    Purchase,
    PurchaseLine,
    Supplier,
    SupplierPayment,
    TaxRate,
)
from operations.services.postings import (
    Roles,
    acting,
    amount_stored,
    books_open,
    items_read,
    quantity_checked,
    same_business,
    same_business_items,
    vat_split,
)
from operations.services.stock import StockBook, stock_lock
from tenancy.models import Business


def purchase_post(*, purchase: Purchase, acting_user: Any = None) -> Purchase:
    """Post a draft purchase: stock in, the entry, totals. Idempotent: a posted purchase is returned."""
    with transaction.atomic():
        purchase = (
            Purchase.objects.select_for_update(of=("self",)).select_related("business", "supplier").get(pk=purchase.pk)
        )
        if purchase.status == DocumentStatus.POSTED:
            return purchase
        books = books_open(purchase.business, purchase.purchase_date)
        lines = list(purchase.lines.select_related("item", "item__returns_item"))
        _purchase_book(purchase, lines, books.roles, acting_user)
        purchase.save(update_fields=["status", "entry", "total"])
    return purchase


def _purchase_book(purchase: Purchase, lines: list[PurchaseLine], roles: Roles, acting_user: Any) -> None:
    """Check the purchase, move the stock and post the entry (the day checked open by the caller):
    sets the purchase's total, status and entry; the caller writes the purchase (and new lines).
    Refusals come before the entry and the stock are written."""
    business = purchase.business
    if purchase.supplier.business_id != business.pk:
        raise InvalidInput(f"{purchase.supplier} is a supplier of another business")
    if not lines:
        raise InvalidInput("A purchase needs at least one line.")
    same_business_items(business, [line.item for line in lines])
    empties = [line.item.returns_item for line in lines if line.item.returns_item is not None]
    book = StockBook(
        stock_lock([*(line.item for line in lines), *empties]), day=purchase.purchase_date, reference=str(purchase)
    )
    journal = Journal(roles)
    total = ZERO
    for line in lines:
        item = line.item
        if not item.is_stocked:
            raise InvalidInput(f"{item} is not a stocked item: record it as an expense")
        if line.amount < 0:
            raise InvalidInput(f"The amount paid for {item} cannot be negative.")
        net, vat = line.amount, ZERO
        if purchase.vat_claimable and item.tax_rate == TaxRate.STANDARD:
            net, vat = vat_split(line.amount, item.tax_rate)
        value = net
        if item.returns_item is not None:
            value += book.take_out(item.returns_item, line.quantity, MovementKind.EXCHANGE_OUT)
        book.take_in(item, line.quantity, value, MovementKind.PURCHASE)
        journal.debit("inventory", net, f"{purchase} {item}")
        journal.debit("vat_input", vat)
        total += line.amount
    journal.credit(purchase.paid_from, total, f"{purchase} {purchase.supplier}")
    entry = journal.post(
        entry_date=purchase.purchase_date,
        memo=f"Purchase {purchase} from {purchase.supplier}",
        source_type=SourceType.PURCHASE,
        source_ref=purchase.invoice_number or str(purchase),
        idempotency_key=f"purchase:{purchase.pk}",
        acting_user=acting_user,
    )
    book.save(entry)
    purchase.status, purchase.entry, purchase.total = DocumentStatus.POSTED, entry, total


def purchase_create(
    *,
    business: Business,
    supplier: Supplier,
    purchase_date: dt.date,
    lines: Sequence[tuple[Item, Decimal, Decimal]],
    paid_from: str = PaidFrom.CREDIT,
    invoice_number: str = "",
    vat_claimable: bool = False,
    acting_user: Any = None,
) -> Purchase:
    """Record and post a purchase (as purchase_post does); `lines` are (item, quantity, line total
    paid incl. VAT). The items are read again; the purchase's id is reserved first so the purchase
    and its lines are written once, posted, after every check."""
    if not lines:
        raise InvalidInput("A purchase needs at least one line.")
    with transaction.atomic():
        books = books_open(business, purchase_date, reserve_id_of=Purchase)
        items = items_read((item.pk for item, _, _ in lines), linked=("returns_item",))
        missing = [item for item, _, _ in lines if item.pk not in items]
        if missing:
            raise InvalidInput(f"{missing[0]} is not in the catalogue")
        purchase = Purchase(
            pk=books.reserved_id,
            business=business,
            supplier=supplier,
            purchase_date=purchase_date,
            paid_from=paid_from,
            invoice_number=invoice_number,
            vat_claimable=vat_claimable,
            created_by=acting(acting_user),
        )
        purchase_lines = [
            PurchaseLine(
                purchase=purchase, item=items[item.pk], quantity=quantity_checked(qty), amount=amount_stored(amount)
            )
            for item, qty, amount in lines
        ]
        _purchase_book(purchase, purchase_lines, books.roles, acting_user)
        purchase.save(force_insert=True)
        PurchaseLine.objects.bulk_create(purchase_lines)
    return purchase


def expense_post(*, expense: Expense, acting_user: Any = None) -> Expense:
    """Post a draft expense: Dr its category's account / Cr where it was paid from. Idempotent."""
    with transaction.atomic():
        expense = (
            Expense.objects.select_for_update(of=("self",)).select_related("business", "supplier").get(pk=expense.pk)
        )
        if expense.status == DocumentStatus.POSTED:
            return expense
        books = books_open(expense.business, expense.expense_date)
        _expense_book(expense, books.roles, acting_user)
        expense.save(update_fields=["status", "entry"])
    return expense


def _expense_book(expense: Expense, roles: Roles, acting_user: Any) -> None:
    """Check and post an expense (the day checked open by the caller); sets its status and entry."""
    same_business(expense.business, [expense.supplier], "Supplier")
    if expense.amount <= 0:
        raise InvalidInput("The amount of an expense must be more than zero.")
    if expense.paid_from == PaidFrom.CREDIT:
        raise InvalidInput("Expenses are paid from cash, M-Pesa or the bank.")
    journal = Journal(roles)
    journal.debit(expense.category, expense.amount, expense.description)
    journal.credit(expense.paid_from, expense.amount)
    entry = journal.post(
        entry_date=expense.expense_date,
        memo=f"{expense.get_category_display()}: {expense.description}".strip(": "),
        source_type=SourceType.EXPENSE,
        source_ref=f"expense #{expense.pk}",
        idempotency_key=f"expense:{expense.pk}",
        acting_user=acting_user,
    )
    expense.status, expense.entry = DocumentStatus.POSTED, entry


def expense_create(
    *,
    business: Business,
    expense_date: dt.date,
    category: str,
    amount: Decimal,
    paid_from: str = PaidFrom.CASH,
    description: str = "",
    supplier: Supplier | None = None,
    acting_user: Any = None,
) -> Expense:
    """Record and post an expense (as expense_post does), written once, posted, after its checks."""
    with transaction.atomic():
        books = books_open(business, expense_date, reserve_id_of=Expense)
        expense = Expense(
            pk=books.reserved_id,
            business=business,
            expense_date=expense_date,
            category=category,
            amount=amount_stored(amount),
            paid_from=paid_from,
            description=description,
            supplier=supplier,
            created_by=acting(acting_user),
        )
        _expense_book(expense, books.roles, acting_user)
        expense.save(force_insert=True)
    return expense


def supplier_payment_post(*, payment: SupplierPayment, acting_user: Any = None) -> SupplierPayment:
    """Post a draft supplier payment: Dr payables / Cr where it was paid from. Idempotent.

    Refuses paying more than is owed to the supplier (posted purchases on credit less payments).
    """
    with transaction.atomic():
        payment = (
            SupplierPayment.objects.select_for_update(of=("self",))
            .select_related("business", "supplier")
            .get(pk=payment.pk)
        )
        if payment.status == DocumentStatus.POSTED:
            return payment
        books = books_open(payment.business, payment.payment_date)
        _supplier_payment_book(payment, books.roles, acting_user)
        payment.save(update_fields=["status", "entry"])
    return payment


def _supplier_payment_book(payment: SupplierPayment, roles: Roles, acting_user: Any) -> None:
    """Check and post a supplier payment (the day checked open by the caller); sets its status and entry."""
    from operations.selectors import supplier_balance

    if payment.supplier.business_id != payment.business_id:
        raise InvalidInput(f"{payment.supplier} is a supplier of another business")
    if payment.paid_from == PaidFrom.CREDIT:
        raise InvalidInput("A supplier is paid from cash, M-Pesa or the bank.")
    if payment.amount <= 0:
        raise InvalidInput("The amount paid must be more than zero.")
    owed = supplier_balance(supplier=payment.supplier)
    if payment.amount > owed:
        raise InvalidInput(f"{payment.supplier} is owed KES {owed:,.2f}, less than KES {payment.amount:,.2f}.")
    journal = Journal(roles)
    journal.debit("payables", payment.amount, f"Paid {payment.supplier}")
    journal.credit(payment.paid_from, payment.amount)
    entry = journal.post(
        entry_date=payment.payment_date,
        memo=f"Payment to {payment.supplier} {payment.reference}".strip(),
        source_type=SourceType.PAYMENT,
        source_ref=payment.reference or f"supplier {payment.supplier_id}",
        idempotency_key=f"supplier-payment:{payment.pk}",
        acting_user=acting_user,
    )
    payment.status, payment.entry = DocumentStatus.POSTED, entry


def supplier_payment_create(
    *,
    supplier: Supplier,
    payment_date: dt.date,
    amount: Decimal,
    paid_from: str = PaidFrom.BANK,
    reference: str = "",
    acting_user: Any = None,
) -> SupplierPayment:
    """Record and post a payment to a supplier (as supplier_payment_post does), written once, posted,
    after its checks."""
    with transaction.atomic():
        books = books_open(supplier.business, payment_date, reserve_id_of=SupplierPayment)
        payment = SupplierPayment(
            pk=books.reserved_id,
            business_id=supplier.business_id,
            supplier=supplier,
            payment_date=payment_date,
            amount=amount_stored(amount),
            paid_from=paid_from,
            reference=reference,
            created_by=acting(acting_user),
        )
        _supplier_payment_book(payment, books.roles, acting_user)
        payment.save(force_insert=True)
    return payment

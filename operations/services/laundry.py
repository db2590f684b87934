"""Laundry orders: received (deposit) -> washing -> ready -> collected (revenue), or cancelled.

Revenue is recognised on collection: until the customer takes the clothes back the service is not
delivered (clothes can be re-washed, disputed or abandoned), so a deposit taken at drop-off is a
liability, not income.
  Drop-off (key "laundry-deposit:<id>"):   Dr cash (or receivables for M-Pesa, settled when the
                                           payment arrives) / Cr customer_deposits
  Collection (key "laundry-collect:<id>"): Dr customer_deposits (the deposit), Dr cash | receivables
                                           (the balance), Cr sales_<service> net, Cr vat_output
  Cancellation ("laundry-cancel:<id>"):    Dr customer_deposits / Cr cash (the deposit refunded)
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
from operations.exceptions import InvalidInput, InvalidState
from operations.models import (
    OPEN_STATUSES,
    Customer,
    CustomerTransaction,
    CustomerTxKind,
    Item,
    ItemKind,
    LaundryOrder,
    LaundryOrderLine,
    OrderStatus,
    PaymentMethod,
)
from operations.services.postings import (
    OpenBooks,
    amount_stored,
    books_open,
    items_read,
    money,
    quantity_checked,
    sales_role_of,
    vat_split,
)
from operations.services.sales import credit_check
from tenancy.models import Business

NEXT_STATUS = {OrderStatus.RECEIVED: OrderStatus.WASHING, OrderStatus.WASHING: OrderStatus.READY}


def _locked(order: LaundryOrder) -> LaundryOrder:
    return LaundryOrder.objects.select_for_update(of=("self",)).select_related("business", "customer").get(pk=order.pk)


def laundry_order_receive(*, order: LaundryOrder, acting_user: Any = None) -> LaundryOrder:
    """Take a drafted order in: price its lines, post the deposit, status "received". Idempotent."""
    with transaction.atomic():
        order = _locked(order)
        if order.status != OrderStatus.DRAFT:
            return order
        books = books_open(order.business, order.received_date)
        lines = list(order.lines.select_related("item"))
        _order_take_in(order, lines, books, acting_user)
        LaundryOrderLine.objects.bulk_update(lines, ["amount"])
        order.save(update_fields=["status", "total", "vat_total", "deposit_entry"])
        _deposit_charge(order)
    return order


def _order_take_in(order: LaundryOrder, lines: list[LaundryOrderLine], books: OpenBooks, acting_user: Any) -> None:
    """Check and price the order, post its deposit (the day checked open by the caller): sets the
    lines' amounts, the order's totals, status and deposit entry; the caller writes them."""
    business = order.business
    if order.customer.business_id != business.pk:
        raise InvalidInput(f"{order.customer} is a customer of another business")
    if order.promised_date < order.received_date:
        raise InvalidInput("The promised date cannot be before the drop-off date.")
    if not lines:
        raise InvalidInput("A laundry order needs at least one service line.")
    total = vat_total = ZERO
    for line in lines:
        if line.item.business_id != business.pk or line.item.kind != ItemKind.SERVICE:
            raise InvalidInput(f"{line.item} is not a laundry service of {business}")
        sales_role_of(line.item)  # refused now rather than at collection
        price = line.item.price if line.unit_price is None else line.unit_price
        line.amount = money(price * line.quantity)
        total += line.amount
        vat_total += vat_split(line.amount, line.item.tax_rate)[1]
    if order.deposit < 0:
        raise InvalidInput("The deposit cannot be negative.")
    if order.deposit > total:
        raise InvalidInput(f"The deposit ({order.deposit}) is more than the order total ({total}).")
    if LaundryOrder.objects.filter(business=business, tag=order.tag, status__in=OPEN_STATUSES).exists():
        raise InvalidInput(f"Tag {order.tag} is on another open order; use another tag.")
    if order.deposit:
        journal = Journal(books.roles)
        by_mpesa = order.deposit_method == PaymentMethod.MPESA
        journal.debit("receivables" if by_mpesa else "cash", order.deposit, f"Deposit tag {order.tag}")
        journal.credit("customer_deposits", order.deposit, f"Deposit tag {order.tag}")
        order.deposit_entry = journal.post(
            entry_date=order.received_date,
            memo=f"Laundry deposit, tag {order.tag}",
            source_type=SourceType.SALE,
            source_ref=f"laundry #{order.pk}",
            idempotency_key=f"laundry-deposit:{order.pk}",
            acting_user=acting_user,
        )
    order.status, order.total, order.vat_total = OrderStatus.RECEIVED, total, vat_total


def _deposit_charge(order: LaundryOrder) -> None:
    """A deposit paid by M-Pesa is owed by the customer until the payment arrives."""
    if order.deposit and order.deposit_method == PaymentMethod.MPESA:
        CustomerTransaction.objects.create(
            business=order.business,
            customer=order.customer,
            tx_date=order.received_date,
            kind=CustomerTxKind.LAUNDRY,
            amount=order.deposit,
            reference=f"tag {order.tag}",
            entry=order.deposit_entry,
        )


def laundry_order_create(
    *,
    business: Business,
    customer: Customer,
    tag: str,
    received_date: dt.date,
    promised_date: dt.date,
    lines: Sequence[tuple[Item, Decimal]],
    deposit: Decimal = ZERO,
    deposit_method: str = PaymentMethod.CASH,
    acting_user: Any = None,
) -> LaundryOrder:
    """Record and receive an order (as laundry_order_receive does); `lines` are (service, kilograms
    or pieces). The services are read again (price, VAT); the order's id is reserved first, so the
    order and its lines are written once, received, after every check."""
    with transaction.atomic():
        books = books_open(business, received_date, reserve_id_of=LaundryOrder)
        items = items_read(item.pk for item, _ in lines)
        order = LaundryOrder(
            pk=books.reserved_id,
            business=business,
            customer=customer,
            tag=tag,
            received_date=received_date,
            promised_date=promised_date,
            deposit=amount_stored(deposit),
            deposit_method=deposit_method,
        )
        order_lines = []
        for item, quantity in lines:
            if item.pk not in items:
                raise InvalidInput(f"{item} is not in the catalogue")
            order_lines.append(LaundryOrderLine(order=order, item=items[item.pk], quantity=quantity_checked(quantity)))
        _order_take_in(order, order_lines, books, acting_user)
        order.save(force_insert=True)
        LaundryOrderLine.objects.bulk_create(order_lines)
        _deposit_charge(order)
    return order


def laundry_order_advance(*, order: LaundryOrder, acting_user: Any = None) -> LaundryOrder:
    """Move an order to the next stage: received -> washing -> ready. No money moves.

    One statement when the row still has the status `order` has (moved only from that status);
    otherwise the row is locked and read to move it or say why it cannot move.
    """
    following = NEXT_STATUS.get(order.status)  # type: ignore[call-overload]
    if following is not None and LaundryOrder.objects.filter(pk=order.pk, status=order.status).update(status=following):
        order.status = following
        return order
    with transaction.atomic():
        order = _locked(order)
        if order.status not in NEXT_STATUS:
            raise InvalidState(f"Tag {order.tag} is {order.get_status_display().lower()}: it cannot move on.")
        order.status = NEXT_STATUS[OrderStatus(order.status)]
        order.save(update_fields=["status"])
    return order


def laundry_order_collect(
    *, order: LaundryOrder, collected_date: dt.date, balance_method: str = PaymentMethod.CASH, acting_user: Any = None
) -> LaundryOrder:
    """The customer collects: the revenue is recognised and the balance paid (cash, M-Pesa awaited
    in receivables, or on account within the credit limit). Idempotent."""
    with transaction.atomic():
        order = _locked(order)
        if order.status == OrderStatus.COLLECTED:
            return order
        if order.status not in (OrderStatus.RECEIVED, OrderStatus.WASHING, OrderStatus.READY):
            raise InvalidState(f"Tag {order.tag} is {order.get_status_display().lower()}.")
        business = order.business
        books = books_open(business, collected_date)
        if collected_date < order.received_date:
            raise InvalidInput("Collection cannot be dated before drop-off.")
        balance = order.total - order.deposit
        if balance and balance_method == PaymentMethod.ACCOUNT:
            credit_check(order.customer, balance)
        journal = Journal(books.roles)
        for line in order.lines.select_related("item"):
            net, vat = vat_split(line.amount, line.item.tax_rate)
            journal.credit(sales_role_of(line.item), net, f"Tag {order.tag} {line.item}")
            journal.credit("vat_output", vat)
        journal.debit("customer_deposits", order.deposit, f"Deposit tag {order.tag}")
        journal.debit(
            "cash" if balance_method == PaymentMethod.CASH else "receivables", balance, f"Balance tag {order.tag}"
        )
        order.collection_entry = journal.post(
            entry_date=collected_date,
            memo=f"Laundry collected, tag {order.tag}",
            source_type=SourceType.SALE,
            source_ref=f"laundry #{order.pk}",
            idempotency_key=f"laundry-collect:{order.pk}",
            acting_user=acting_user,
        )
        if balance and balance_method != PaymentMethod.CASH:
            CustomerTransaction.objects.create(
                business=business,
                customer=order.customer,
                tx_date=collected_date,
                kind=CustomerTxKind.LAUNDRY,
                amount=balance,
                reference=f"tag {order.tag}",
                entry=order.collection_entry,
            )
        order.status, order.collected_date, order.balance_method = OrderStatus.COLLECTED, collected_date, balance_method
        order.save(update_fields=["status", "collected_date", "balance_method", "collection_entry"])
    return order


def laundry_order_cancel(*, order: LaundryOrder, cancel_date: dt.date, acting_user: Any = None) -> LaundryOrder:
    """Cancel an open order and give the deposit back in cash: Dr customer_deposits / Cr cash."""
    with transaction.atomic():
        order = _locked(order)
        if order.status == OrderStatus.CANCELLED:
            return order
        if order.status == OrderStatus.COLLECTED:
            raise InvalidState(f"Tag {order.tag} was collected: refund it as a sale instead.")
        if order.status != OrderStatus.DRAFT and order.deposit:
            books = books_open(order.business, cancel_date)
            journal = Journal(books.roles)
            journal.debit("customer_deposits", order.deposit, f"Deposit back, tag {order.tag}")
            journal.credit("cash", order.deposit)
            journal.post(
                entry_date=cancel_date,
                memo=f"Laundry cancelled, tag {order.tag}",
                source_type=SourceType.SALE,
                source_ref=f"laundry #{order.pk}",
                idempotency_key=f"laundry-cancel:{order.pk}",
                acting_user=acting_user,
            )
        order.status = OrderStatus.CANCELLED
        order.save(update_fields=["status"])
    return order

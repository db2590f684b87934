"""What a payment received by M-Pesa pays in operations. The M-Pesa module
(integrations/mpesa/matching.py and its payments) calls these directly:

- `reference_resolve(business, reference)`: a sale number ("S0000123", what STK Pushes from a
  sale send as account reference, and what a customer types at a paybill) or the tag of an open
  laundry order -> a Match.
- `claim_resolve(business, match)`: what a matched sale still owes, with the sale row locked, and
  its customer: the M-Pesa module applies only that much to the sale; what is paid over it goes to
  the customer's credit, or to suspense when the sale has no customer.
- `payment_placed(business_id=, receipt=, placed=)`: runs inside the M-Pesa posting transaction
  once (part of) a payment is placed on receivables (by the automatic match or an allocation from
  suspense); it records it in operations' books - the sale's amount paid and the customer's
  sub-ledger (a payment, and a credit for what was paid over what was owed) - without posting
  anything more. Idempotent per entry.
- `payment_placing_reversed(...)`: undoes one placing when the payment is reversed: the sale's
  amount paid goes down, each customer transaction it wrote gets a reversing one (nothing is
  deleted).
An exception here rolls the whole M-Pesa posting back, so none of them calls out over the network.
"""

from __future__ import annotations

import datetime as dt
import re
from dataclasses import dataclass
from decimal import Decimal

from accounts.fields import ZERO
from accounts.models import JournalEntry
from operations.models import (
    OPEN_STATUSES,
    Customer,
    CustomerTransaction,
    CustomerTxKind,
    LaundryOrder,
    Sale,
    SaleStatus,
)
from tenancy.models import Business


@dataclass(frozen=True)
class Match:
    """What a payment's reference or phone points to: a sale, a laundry order, a customer."""

    customer_id: int | None
    reference_kind: str
    reference_id: int | None
    description: str


@dataclass(frozen=True)
class Claim:
    """What a matched reference can take, read under lock just before the money is placed.

    `owed`: what it still owes (None: no limit, e.g. a customer's account); `customer_id`: whose
    credit takes what is paid over `owed` (the reference's own customer, if any); `description`
    says why in words (e.g. "sale S0000012 owes KES 0.00").
    """

    owed: Decimal | None
    customer_id: int | None
    description: str = ""


@dataclass(frozen=True)
class Placed:
    """One placing of (part of) a payment: `applied` settles the matched reference, `credit` (over
    what it owed) goes to customer `match.customer_id`'s credit; both are credited to receivables
    by `entry`."""

    match: Match
    applied: Decimal
    credit: Decimal
    entry: JournalEntry
    paid_date: dt.date


_SALE_NUMBER = re.compile(r"[Ss]0*([0-9]{1,11})")


def reference_resolve(business: Business, reference: str) -> Match | None:
    """A posted sale of `business` by its number (paid or not: the claim says what it still owes),
    an open laundry order by tag, else a customer's account code (case-insensitive)."""
    text = (reference or "").strip()
    if not text:
        return None
    found = _SALE_NUMBER.fullmatch(text)
    if found:
        sale = (
            Sale.objects.filter(business=business, pk=int(found.group(1)), status=SaleStatus.POSTED)
            .only("id", "customer_id")
            .first()
        )
        if sale is not None:
            return Match(sale.customer_id, "sale", sale.pk, f"sale {sale.number}")
    order = (
        LaundryOrder.objects.filter(business=business, tag__iexact=text, status__in=OPEN_STATUSES)
        .select_related("customer")
        .first()
    )
    if order is not None:
        return Match(order.customer_id, "laundry_order", order.pk, f"laundry tag {order.tag}")
    customer = (
        Customer.objects.filter(business=business, is_active=True, account_code__iexact=text).only("id", "name").first()
    )
    if customer is not None:
        return Match(customer.pk, "customer", customer.pk, f"account code {text} of {customer.name}")
    return None


def claim_resolve(business: Business, match: Match) -> Claim:
    """What a sale still owes (0 for a cash sale, a paid, voided or unknown one), locked until the
    transaction ends so two payments of one sale cannot both take what it owes; anything else
    (a laundry order, a customer's account) takes what it is given."""
    if match.reference_kind != "sale":
        return Claim(None, match.customer_id)
    sale = (
        Sale.objects.select_for_update(of=("self",))
        .filter(business=business, pk=match.reference_id)
        .only("id", "status", "customer_id", "total", "amount_paid")
        .first()
        if match.reference_id is not None
        else None
    )
    if sale is None:
        return Claim(ZERO, None, f"no sale {match.reference_id} in this business")
    if sale.status != SaleStatus.POSTED:
        return Claim(ZERO, sale.customer_id, f"sale {sale.number} is {sale.get_status_display().lower()}")
    owed = max(sale.total - sale.amount_paid, ZERO)
    return Claim(owed, sale.customer_id, f"sale {sale.number} owed KES {owed}")


def payment_placed(*, business_id: int, receipt: str, placed: Placed) -> None:
    """Record a placing of an M-Pesa payment against the sale it pays and the customer's account."""
    from operations.services.sales import sale_mpesa_paid_locked

    match, entry, paid_date = placed.match, placed.entry, placed.paid_date
    if CustomerTransaction.objects.filter(entry=entry, reference=receipt).exists():
        return  # this placing is recorded already
    sale = None
    if match.reference_kind == "sale" and match.reference_id is not None and placed.applied:
        # Usually locked already: claim_resolve locked it when the payment was split.
        sale = (
            Sale.objects.select_for_update(of=("self",)).filter(pk=match.reference_id, business_id=business_id).first()
        )
    on_account = placed.applied
    if sale is not None:
        # The sale's amount paid, and its customer's payment transaction if it has a customer.
        sale_mpesa_paid_locked(sale=sale, receipt=receipt, amount=placed.applied, entry=entry, paid_date=paid_date)
        on_account = ZERO
    customer_id = match.customer_id
    if customer_id is None:
        return
    if on_account:
        CustomerTransaction.objects.create(
            business_id=business_id,
            customer_id=customer_id,
            tx_date=paid_date,
            kind=CustomerTxKind.PAYMENT,
            amount=-on_account,
            reference=receipt,
            entry=entry,
        )
    if placed.credit:
        CustomerTransaction.objects.create(
            business_id=business_id,
            customer_id=customer_id,
            tx_date=paid_date,
            kind=CustomerTxKind.CREDIT,  # the customer's, not the sale's: a refund of the sale leaves it
            amount=-placed.credit,
            reference=receipt,
            entry=entry,
        )


def payment_placing_reversed(
    *,
    business_id: int,
    receipt: str,
    reference_kind: str,
    reference_id: int | None,
    applied: Decimal,
    placing_entry_id: int,
    reversal_entry: JournalEntry,
) -> None:
    """Undo one placing of a reversed payment in operations' books (see the module docstring)."""
    from operations.services.sales import sale_mpesa_reversed

    day = reversal_entry.entry_date
    if reference_kind == "sale" and reference_id is not None and applied:
        sale_mpesa_reversed(sale_id=reference_id, business_id=business_id, receipt=receipt, amount=applied)
    if CustomerTransaction.objects.filter(entry=reversal_entry, reference=receipt).exists():
        return
    written = CustomerTransaction.objects.filter(entry_id=placing_entry_id, reference=receipt).exclude(
        kind=CustomerTxKind.REVERSAL
    )
    CustomerTransaction.objects.bulk_create(
        CustomerTransaction(
            business_id=tx.business_id,
            customer_id=tx.customer_id,
            tx_date=day,
            kind=CustomerTxKind.REVERSAL,
            amount=-tx.amount,
            sale_id=tx.sale_id,
            reference=receipt,
            entry=reversal_entry,
        )
        for tx in written.order_by("id")
    )

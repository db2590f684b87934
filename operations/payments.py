"""How operations takes part in M-Pesa matching (integrations/mpesa/matching.py).

- `reference_resolver(business, reference)`: a sale number ("S0000123", what STK Pushes from a
  sale send as account reference, and what a customer types at a paybill) or the tag of an open
  laundry order -> a Match.
- `claim_resolver(business, match)`: what a matched sale still owes, with the sale row locked, and
  its customer: the M-Pesa module applies only that much to the sale; what is paid over it goes to
  the customer's credit, or to suspense when the sale has no customer.
- `payment_listener(payment, placed)`: runs inside the M-Pesa posting transaction once (part of) a
  payment is placed on receivables (by the automatic match or an allocation from suspense); it
  records it in operations' books - the sale's amount paid and the customer's sub-ledger (a
  payment, and a credit for what was paid over what was owed) - without posting anything more.
  Idempotent per entry.
- `reversal_listener(payment, application, reversal_entry)`: undoes one placing when the payment
  is reversed: the sale's amount paid goes down, each customer transaction it wrote gets a
  reversing one (nothing is deleted).
All are registered in OperationsConfig.ready().
"""

from __future__ import annotations

import re
from typing import TYPE_CHECKING

from accounts.fields import ZERO
from operations.models import OPEN_STATUSES, CustomerTransaction, CustomerTxKind, LaundryOrder, Sale, SaleStatus
from tenancy.models import Business

if TYPE_CHECKING:
    from accounts.models import JournalEntry
    from integrations.mpesa.matching import Claim, Match, Placed
    from integrations.mpesa.models import Payment, PaymentApplication

_SALE_NUMBER = re.compile(r"[Ss]0*([0-9]{1,11})")


def reference_resolver(business: Business, reference: str) -> Match | None:
    """A posted sale of `business` by its number (paid or not: the claim says what it still owes),
    or an open laundry order by tag."""
    from integrations.mpesa.matching import Match

    text = reference.strip()
    found = _SALE_NUMBER.fullmatch(text)
    if found:
        sale = Sale.objects.filter(business=business, pk=int(found.group(1)), status=SaleStatus.POSTED).first()
        if sale is not None:
            return Match(sale.customer_id, "sale", sale.pk, f"sale {sale.number}")
    order = (
        LaundryOrder.objects.filter(business=business, tag__iexact=text, status__in=OPEN_STATUSES)
        .select_related("customer")
        .first()
    )
    if order is not None:
        return Match(order.customer_id, "laundry_order", order.pk, f"laundry tag {order.tag}")
    return None


def claim_resolver(business: Business, match: Match) -> Claim | None:
    """What a sale still owes (0 for a cash sale, a paid, voided or unknown one), locked until the
    transaction ends so two payments of one sale cannot both take what it owes."""
    from integrations.mpesa.matching import Claim

    if match.reference_kind != "sale":
        return None
    sale = (
        Sale.objects.select_for_update(of=("self",)).filter(business=business, pk=match.reference_id).first()
        if match.reference_id is not None
        else None
    )
    if sale is None:
        return Claim(ZERO, None, f"no sale {match.reference_id} in this business")
    if sale.status != SaleStatus.POSTED:
        return Claim(ZERO, sale.customer_id, f"sale {sale.number} is {sale.get_status_display().lower()}")
    owed = max(sale.total - sale.amount_paid, ZERO)
    return Claim(owed, sale.customer_id, f"sale {sale.number} owed KES {owed}")


def payment_listener(payment: Payment, placed: Placed) -> None:
    """Record a placing of an M-Pesa payment against the sale it pays and the customer's account."""
    from operations.services.sales import sale_mpesa_paid

    match, entry, paid_date = placed.match, placed.entry, placed.paid_date
    if CustomerTransaction.objects.filter(entry=entry, reference=payment.receipt).exists():
        return  # this placing is recorded already
    sale = None
    if match.reference_kind == "sale" and match.reference_id is not None:
        sale = Sale.objects.filter(pk=match.reference_id, business_id=payment.business_id).first()
    on_account = placed.applied
    if sale is not None and placed.applied:
        # The sale's amount paid, and its customer's payment transaction if it has a customer.
        sale_mpesa_paid(sale=sale, receipt=payment.receipt, amount=placed.applied, entry=entry, paid_date=paid_date)
        on_account = ZERO
    customer_id = match.customer_id
    if customer_id is None:
        return
    if on_account:
        CustomerTransaction.objects.create(
            business_id=payment.business_id,
            customer_id=customer_id,
            tx_date=paid_date,
            kind=CustomerTxKind.PAYMENT,
            amount=-on_account,
            reference=payment.receipt,
            entry=entry,
        )
    if placed.credit:
        CustomerTransaction.objects.create(
            business_id=payment.business_id,
            customer_id=customer_id,
            tx_date=paid_date,
            kind=CustomerTxKind.CREDIT,  # the customer's, not the sale's: a refund of the sale leaves it
            amount=-placed.credit,
            reference=payment.receipt,
            entry=entry,
        )


def reversal_listener(payment: Payment, application: PaymentApplication, reversal_entry: JournalEntry) -> None:
    """Undo one placing of a reversed payment in operations' books (see the module docstring)."""
    from operations.services.sales import sale_mpesa_reversed

    day = reversal_entry.entry_date
    if application.reference_kind == "sale" and application.reference_id is not None and application.applied:
        sale_mpesa_reversed(
            sale_id=application.reference_id,
            business_id=payment.business_id,
            receipt=payment.receipt,
            amount=application.applied,
        )
    if CustomerTransaction.objects.filter(entry=reversal_entry, reference=payment.receipt).exists():
        return
    written = CustomerTransaction.objects.filter(entry_id=application.entry_id, reference=payment.receipt).exclude(
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
            reference=payment.receipt,
            entry=reversal_entry,
        )
        for tx in written.order_by("id")
    )


def register() -> None:
    """Register the resolvers and the listeners with the M-Pesa module (idempotent)."""
    from integrations.mpesa.matching import (
        register_claim_resolver,
        register_payment_listener,
        register_reference_resolver,
        register_reversal_listener,
    )

    register_reference_resolver(reference_resolver)
    register_claim_resolver(claim_resolver)
    register_payment_listener(payment_listener)
    register_reversal_listener(reversal_listener)

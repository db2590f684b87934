"""How operations takes part in M-Pesa matching (integrations/mpesa/matching.py).

- `reference_resolver(business, reference)`: a sale number ("S0000123", what STK Pushes from a
  sale send as account reference, and what a customer types at a paybill) or the tag of an open
  laundry order -> a Match.
- `payment_listener(payment, match)`: runs inside the M-Pesa posting transaction once a payment
  is matched and its entry (Dr mpesa_clearing / Cr receivables) posted; it records the payment
  in operations' books - the sale's amount paid and the customer's sub-ledger - without posting
  anything more. Idempotent per receipt.
Both are registered in OperationsConfig.ready().
"""

from __future__ import annotations

import re
from typing import TYPE_CHECKING

from django.utils import timezone

from operations.models import (
    OPEN_STATUSES,
    Business,
    CustomerTransaction,
    CustomerTxKind,
    LaundryOrder,
    Sale,
    SaleStatus,
)

if TYPE_CHECKING:
    from integrations.mpesa.matching import Match
    from integrations.mpesa.models import Payment

_SALE_NUMBER = re.compile(r"[Ss]0*([0-9]{1,11})")


def reference_resolver(business: Business, reference: str) -> Match | None:
    """A posted, not fully paid sale of `business` by its number, or an open laundry order by tag."""
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


def payment_listener(payment: Payment, match: Match) -> None:
    """Record a matched M-Pesa payment against the sale it pays and the customer's account."""
    from operations.services.sales import sale_mpesa_paid

    entry = payment.allocation_entry or payment.entry
    paid_date = timezone.localdate(payment.paid_at)
    if match.reference_kind == "sale" and match.reference_id is not None:
        sale = Sale.objects.filter(pk=match.reference_id, business_id=payment.business_id).first()
        if sale is not None and sale.status == SaleStatus.POSTED:
            sale_mpesa_paid(sale=sale, receipt=payment.receipt, amount=payment.amount, entry=entry, paid_date=paid_date)
            return
    customer_id = match.customer_id
    if customer_id is None:
        return
    if CustomerTransaction.objects.filter(customer_id=customer_id, reference=payment.receipt).exists():
        return
    CustomerTransaction.objects.create(
        business_id=payment.business_id,
        customer_id=customer_id,
        tx_date=paid_date,
        kind=CustomerTxKind.PAYMENT,
        amount=-payment.amount,
        reference=payment.receipt,
        entry=entry,
    )


def register() -> None:
    """Register the resolver and the listener with the M-Pesa module (idempotent)."""
    from integrations.mpesa.matching import register_payment_listener, register_reference_resolver

    register_reference_resolver(reference_resolver)
    register_payment_listener(payment_listener)

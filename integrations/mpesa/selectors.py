"""The M-Pesa reads that matter beyond this app: the work waiting for a person.

Used by /healthz (counts), the dashboard (counts per business) and the daily summary, so all count
the same rows.
"""

from __future__ import annotations

import datetime as dt
from decimal import Decimal

from django.db.models import Count, QuerySet, Sum

from integrations.mpesa.models import (
    InboxMessage,
    InboxState,
    Payment,
    PaymentStatus,
    StatusQuery,
    StatusQueryState,
)


def inbox_waiting_for_person() -> QuerySet[InboxMessage]:
    """Callbacks parked for a person (inbox "needs a person": a payload, business or repeated error)."""
    return InboxMessage.objects.filter(state=InboxState.NEEDS_ATTENTION)


def status_queries_waiting_for_person() -> QuerySet[StatusQuery]:
    """Transaction Status queries left to a person (no definite answer after every retry: a payment
    accepted at validation whose confirmation never came) and whose receipt is still not a payment."""
    return StatusQuery.objects.filter(state=StatusQueryState.NEEDS_ATTENTION).exclude(
        receipt__in=Payment.objects.values("receipt")
    )


def unallocated_payments() -> QuerySet[Payment]:
    """Money in suspense that a person must allocate (the "Unallocated payments" queue)."""
    return Payment.objects.filter(status=PaymentStatus.UNALLOCATED)


def payments_received(*, business_id: int, start: dt.datetime, end: dt.datetime) -> tuple[int, Decimal]:
    """How many M-Pesa payments the business received in [start, end) and their value; payments
    reversed since are left out (the money went back)."""
    totals = (
        Payment.objects.filter(business_id=business_id, paid_at__gte=start, paid_at__lt=end)
        .exclude(status=PaymentStatus.REVERSED)
        .aggregate(n=Count("id"), s=Sum("amount"))
    )
    return totals["n"], totals["s"] or Decimal("0.00")

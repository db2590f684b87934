"""The M-Pesa reads that matter beyond this app: the work waiting for a person.

Used by /healthz (counts), the dashboard (counts per business) and the daily summary, so all count
the same rows.
"""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass
from decimal import Decimal

from django.db.models import Count, Exists, Min, OuterRef, QuerySet, Sum
from django.db.models.functions import TruncDate
from django.utils import timezone

from integrations.mpesa.models import (
    InboxMessage,
    InboxState,
    Payment,
    PaymentStatus,
    ReconciliationRun,
    ReconciliationState,
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


def unallocated_totals(*, business_id: int) -> tuple[int, Decimal]:
    """How many of the business's payments are (partly) in suspense and the amount still to allocate,
    summed by PostgreSQL: a backlog of thousands costs one row, not thousands of objects."""
    totals = (
        unallocated_payments().filter(business_id=business_id).aggregate(n=Count("id"), s=Sum("unallocated_amount"))
    )
    return totals["n"], totals["s"] or Decimal("0.00")


def payments_received(*, business_id: int, start: dt.datetime, end: dt.datetime) -> tuple[int, Decimal]:
    """How many M-Pesa payments the business received in [start, end) and their value; payments
    reversed since are left out (the money went back)."""
    totals = (
        Payment.objects.filter(business_id=business_id, paid_at__gte=start, paid_at__lt=end)
        .exclude(status=PaymentStatus.REVERSED)
        .aggregate(n=Count("id"), s=Sum("amount"))
    )
    return totals["n"], totals["s"] or Decimal("0.00")


@dataclass(frozen=True)
class InboxBacklog:
    count: int  # callbacks received and not processed yet (new, or failed and waiting for a retry)
    oldest_received_at: dt.datetime | None


def inbox_backlog() -> InboxBacklog:
    """Callbacks not processed yet, and the oldest one's arrival (the partial index inbox_pending_idx
    answers it). A minute-old backlog is normal under load; an old one means processing is stuck."""
    totals = InboxMessage.objects.filter(state__in=[InboxState.RECEIVED, InboxState.FAILED]).aggregate(
        n=Count("id"), oldest=Min("received_at")
    )
    return InboxBacklog(count=totals["n"], oldest_received_at=totals["oldest"])


@dataclass(frozen=True)
class UnreconciledDay:
    till_id: int
    till: str
    business: str
    day: dt.date


def unreconciled_days(*, first: dt.date, last: dt.date) -> list[UnreconciledDay]:
    """Days in [first, last] (business dates, Africa/Nairobi) on which a till received M-Pesa payments that no
    finished reconciliation run of that till covers (its statement period includes the day)."""
    covered = ReconciliationRun.objects.filter(
        till=OuterRef("till"),
        state=ReconciliationState.DONE,
        period_start__lte=OuterRef("day"),
        period_end__gte=OuterRef("day"),
    )
    start = timezone.make_aware(dt.datetime.combine(first, dt.time.min))
    end = timezone.make_aware(dt.datetime.combine(last + dt.timedelta(days=1), dt.time.min))
    rows = (
        Payment.objects.filter(paid_at__gte=start, paid_at__lt=end)
        .annotate(day=TruncDate("paid_at"))
        .annotate(covered=Exists(covered))
        .filter(covered=False)
        .values_list("till_id", "till__name", "till__business__name", "day")
        .distinct()
        .order_by("day", "till__name")
    )
    return [UnreconciledDay(till_id=t, till=name, business=b, day=day) for t, name, b, day in rows]

"""The M-Pesa reads that matter beyond this app: the work waiting for a person.

Used by /healthz (counts) and the dashboard (counts per business), so both count the same rows.
"""

from __future__ import annotations

from django.db.models import QuerySet

from integrations.mpesa.models import InboxMessage, InboxState, Payment, StatusQuery, StatusQueryState


def inbox_waiting_for_person() -> QuerySet[InboxMessage]:
    """Callbacks parked for a person (inbox "needs a person": a payload, business or repeated error)."""
    return InboxMessage.objects.filter(state=InboxState.NEEDS_ATTENTION)


def status_queries_waiting_for_person() -> QuerySet[StatusQuery]:
    """Transaction Status queries left to a person (no definite answer after every retry: a payment
    accepted at validation whose confirmation never came) and whose receipt is still not a payment."""
    return StatusQuery.objects.filter(state=StatusQueryState.NEEDS_ATTENTION).exclude(
        receipt__in=Payment.objects.values("receipt")
    )

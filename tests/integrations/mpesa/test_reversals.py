"""Reversals: asked from the admin (service), confirmed by Daraja's result callback, posted as ledger reversals."""

from __future__ import annotations

from decimal import Decimal
from typing import Any

import pytest
from django.db.models import Sum

from accounts.models import JournalEntry, JournalLine
from integrations.mpesa.errors import InvalidRequest
from integrations.mpesa.models import (
    InboxKind,
    InboxMessage,
    InboxState,
    Payment,
    PaymentStatus,
    Reversal,
    ReversalState,
    Till,
)
from integrations.mpesa.services import inbox_process, inbox_store, payment_allocate, reversal_request
from tests.integrations.mpesa.factories import TillFactory, reversal_result, sample, unallocated_payment
from tests.integrations.mpesa.fake_daraja import (
    REVERSAL,
    SANDBOX_SHORTCODE,
    FakeDaraja,
    fake_daraja_fixture,  # noqa: F401 - the fake_daraja fixture
)
from tests.integrations.mpesa.secrets_support import daraja_credentials

pytestmark = pytest.mark.django_db


@pytest.fixture
def daraja_till(books: Any, fake_daraja: FakeDaraja, settings: Any) -> Till:
    settings.MPESA_BASE_URL = fake_daraja.base_url
    return TillFactory.create(business=books, shortcode=SANDBOX_SHORTCODE, **daraja_credentials(fake_daraja))


def deliver(till: Till, kind: str, body: bytes, daraja_id: str) -> InboxMessage:
    inbox_id = inbox_store(till_id=till.pk, kind=kind, daraja_id=daraja_id, body=body, headers={}, remote_addr=None)
    assert inbox_id is not None
    inbox_process(inbox_id=inbox_id)
    return InboxMessage.objects.get(pk=inbox_id)


def balance(role: str, till: Till) -> Decimal:
    totals = JournalLine.objects.filter(account__business=till.business, account__role=role).aggregate(
        d=Sum("debit"), c=Sum("credit")
    )
    return (totals["d"] or Decimal(0)) - (totals["c"] or Decimal(0))


def test_a_confirmed_reversal_reverses_the_receipt_and_its_allocation(
    daraja_till: Till, fake_daraja: FakeDaraja, owner: Any
) -> None:
    payment = unallocated_payment(daraja_till, "TKREV00001", Decimal("80.00"))
    payment_allocate(payment=payment, reference_kind="customer", reference_id=None, acting_user=owner)
    reversal = reversal_request(payment=payment, reason="Paid twice", acting_user=owner)
    assert reversal.state == ReversalState.REQUESTED
    assert fake_daraja.requests_to(REVERSAL)[0].json["TransactionID"] == "TKREV00001"
    assert balance("mpesa_clearing", daraja_till) == Decimal("80.00")  # nothing posted before the result

    msg = deliver(
        daraja_till,
        InboxKind.REVERSAL_RESULT,
        reversal_result(
            conversation_id=reversal.conversation_id,
            original="TKREV00001",
            amount=Decimal("80.00"),
            till_shortcode=daraja_till.shortcode,
        ),
        reversal.conversation_id,
    )

    assert msg.state == InboxState.PROCESSED
    reversal.refresh_from_db()
    payment.refresh_from_db()
    assert reversal.state == ReversalState.COMPLETED and reversal.entry is not None
    assert reversal.entry.reverses_id == payment.entry_id
    assert payment.status == PaymentStatus.REVERSED
    assert JournalEntry.objects.filter(reverses__isnull=False).count() == 2
    for role in ("mpesa_clearing", "suspense", "receivables"):
        assert balance(role, daraja_till) == 0, role


def test_a_failed_reversal_posts_nothing(daraja_till: Till, owner: Any) -> None:
    payment = unallocated_payment(daraja_till, "TKREV00002")
    reversal = reversal_request(payment=payment, reason="Wrong till", acting_user=owner)

    deliver(
        daraja_till,
        InboxKind.REVERSAL_RESULT,
        reversal_result(conversation_id=reversal.conversation_id, success=False),
        reversal.conversation_id,
    )

    reversal.refresh_from_db()
    assert reversal.state == ReversalState.FAILED and reversal.result_code == "R000002"
    assert Payment.objects.get().status == PaymentStatus.UNALLOCATED
    assert JournalEntry.objects.filter(reverses__isnull=False).count() == 0
    # Failed: it may be asked again.
    assert reversal_request(payment=payment, reason="Again", acting_user=owner).state == ReversalState.REQUESTED


def test_a_queue_timeout_fails_the_reversal(daraja_till: Till, owner: Any) -> None:
    reversal = reversal_request(payment=unallocated_payment(daraja_till, "TKREV00003"), reason="x", acting_user=owner)
    body = sample("09_reversal_result_failure_R000002.json")
    body["Result"]["ConversationID"] = reversal.conversation_id
    import json

    deliver(daraja_till, InboxKind.REVERSAL_TIMEOUT, json.dumps(body).encode(), reversal.conversation_id)
    reversal.refresh_from_db()
    assert reversal.state == ReversalState.FAILED and "queue timeout" in reversal.result_desc


def test_one_live_reversal_per_payment(daraja_till: Till, owner: Any) -> None:
    payment = unallocated_payment(daraja_till, "TKREV00004")
    reversal_request(payment=payment, reason="x", acting_user=owner)
    with pytest.raises(InvalidRequest):
        reversal_request(payment=payment, reason="again", acting_user=owner)
    assert Reversal.objects.count() == 1


def test_a_result_for_an_unknown_reversal_needs_a_person(daraja_till: Till) -> None:
    msg = deliver(daraja_till, InboxKind.REVERSAL_RESULT, reversal_result(conversation_id="AG_UNKNOWN"), "AG_UNKNOWN")
    assert msg.state == InboxState.NEEDS_ATTENTION and "AG_UNKNOWN" in msg.error

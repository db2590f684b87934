"""Reversals: asked from the admin (service), confirmed by Daraja's result callback, posted as ledger reversals."""

from __future__ import annotations

from decimal import Decimal
from typing import Any

import pytest
from django.db.models import Sum
from django.utils import timezone

from accounts.models import JournalEntry, JournalLine
from integrations.mpesa.exceptions import InvalidRequest
from integrations.mpesa.models import (
    InboxKind,
    InboxState,
    Payment,
    PaymentStatus,
    Reversal,
    ReversalState,
    Till,
)
from integrations.mpesa.payments import payment_allocate, payment_record
from integrations.mpesa.reversals import reversal_request
from tests.factories.mpesa import TillFactory, deliver, reversal_result, sample, unallocated_payment
from tests.integrations.mpesa.fake_daraja import (
    REVERSAL,
    SANDBOX_SHORTCODE,
    FakeDaraja,
)

pytestmark = pytest.mark.django_db


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


# ------------------------------------------------------------------------------------ result checks


def _requested(till: Till, receipt: str, owner: Any, amount: Decimal = Decimal("80.00")) -> Reversal:
    payment = unallocated_payment(till, receipt, amount)
    reversal = reversal_request(payment=payment, reason="Paid twice", acting_user=owner)
    assert reversal.state == ReversalState.REQUESTED
    return reversal


@pytest.mark.parametrize(
    ("changes", "says"),
    [
        ({"amount": Decimal("8.00")}, "it reverses KES 8.00, not KES 80.00"),
        ({"original": "TKOTHER001"}, "it reverses receipt TKOTHER001, not TKREVCHK01"),
        ({"till_shortcode": "600992"}, f"the money left party 600992, not till {SANDBOX_SHORTCODE}"),
    ],
    ids=["wrong amount", "wrong receipt", "wrong till"],
)
def test_a_reversal_result_that_does_not_fit_needs_a_person_and_posts_nothing(
    daraja_till: Till, owner: Any, changes: dict[str, Any], says: str
) -> None:
    reversal = _requested(daraja_till, "TKREVCHK01", owner)
    fits = {"original": "TKREVCHK01", "amount": Decimal("80.00"), "till_shortcode": daraja_till.shortcode}
    body = reversal_result(conversation_id=reversal.conversation_id, **{**fits, **changes})

    msg = deliver(daraja_till, InboxKind.REVERSAL_RESULT, body, reversal.conversation_id)

    assert msg.state == InboxState.NEEDS_ATTENTION and says in msg.error
    reversal.refresh_from_db()
    assert reversal.state == ReversalState.REQUESTED and reversal.entry is None
    assert Payment.objects.get().status == PaymentStatus.UNALLOCATED
    assert JournalEntry.objects.filter(reverses__isnull=False).count() == 0


def test_a_reversal_result_on_another_tills_url_needs_a_person(daraja_till: Till, owner: Any) -> None:
    reversal = _requested(daraja_till, "TKREVCHK02", owner)
    other = TillFactory.create(business=daraja_till.business)
    body = reversal_result(
        conversation_id=reversal.conversation_id,
        original="TKREVCHK02",
        amount=Decimal("80.00"),
        till_shortcode=daraja_till.shortcode,
    )
    msg = deliver(other, InboxKind.REVERSAL_RESULT, body, reversal.conversation_id)
    assert msg.state == InboxState.NEEDS_ATTENTION and "came to the URL of till" in msg.error
    assert JournalEntry.objects.filter(reverses__isnull=False).count() == 0


def test_a_confirmed_reversal_undoes_the_sale_and_the_customers_side(daraja_till: Till, owner: Any) -> None:
    from operations.models import CustomerTransaction, CustomerTxKind, ItemKind, PaymentMethod
    from operations.selectors import customer_balance
    from operations.services.sales import LineInput, sale_create
    from tests.factories.operations import CustomerFactory, ItemFactory

    business = daraja_till.business
    item = ItemFactory.create(
        business=business,
        name="Refill",
        kind=ItemKind.SERVICE,
        price=Decimal("300.00"),
        sales_role="sales_bottled_water",
    )
    buyer = CustomerFactory.create(business=business, name="Akinyi")
    sale = sale_create(
        business=business,
        sale_date=timezone.localdate(),
        customer=buyer,
        payment_method=PaymentMethod.MPESA,
        lines=[LineInput(item, Decimal("1"))],
    )
    payment, _ = payment_record(
        till=daraja_till,
        receipt="TKREVSALE1",
        amount=Decimal("500.00"),
        paid_at=timezone.now(),
        msisdn="",
        payer_name="AKINYI",
        account_reference=sale.number,
        payment_request=None,
    )
    sale.refresh_from_db()
    assert sale.amount_paid == Decimal("300.00") and customer_balance(customer=buyer) == Decimal("-200.00")
    reversal = reversal_request(payment=payment, reason="Wrong number", acting_user=owner)

    msg = deliver(
        daraja_till,
        InboxKind.REVERSAL_RESULT,
        reversal_result(
            conversation_id=reversal.conversation_id,
            original="TKREVSALE1",
            amount=Decimal("500.00"),
            till_shortcode=daraja_till.shortcode,
        ),
        reversal.conversation_id,
    )

    assert msg.state == InboxState.PROCESSED, msg.error
    sale.refresh_from_db()
    assert (sale.amount_paid, sale.mpesa_receipt) == (Decimal("0.00"), "")
    # New rows undo the payment and the credit; nothing was deleted.
    rows = list(CustomerTransaction.objects.filter(customer=buyer).order_by("id").values_list("kind", "amount"))
    assert rows == [
        (CustomerTxKind.SALE, Decimal("300.00")),
        (CustomerTxKind.PAYMENT, Decimal("-300.00")),
        (CustomerTxKind.CREDIT, Decimal("-200.00")),
        (CustomerTxKind.REVERSAL, Decimal("300.00")),
        (CustomerTxKind.REVERSAL, Decimal("200.00")),
    ]
    assert customer_balance(customer=buyer) == Decimal("300.00")  # owes the sale again
    for role in ("mpesa_clearing", "suspense"):
        assert balance(role, daraja_till) == 0, role
    assert balance("receivables", daraja_till) == Decimal("300.00")

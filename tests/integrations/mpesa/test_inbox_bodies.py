"""Another body for a Daraja id already in the inbox is stored and held for a person, never dropped;
a byte-identical duplicate stays a no-op; the payment is still posted once."""

from __future__ import annotations

import threading
from decimal import Decimal

import pytest
from django.db import connection, connections
from django.test import Client

from accounts.models import JournalEntry
from integrations.mpesa.inbox import inbox_process, inbox_reprocess, inbox_store
from integrations.mpesa.models import InboxKind, InboxMessage, InboxState, Payment, PaymentRequestState, Till
from integrations.mpesa.publisher import publisher
from tests.factories.mpesa import PaymentRequestFactory, c2b_confirmation, stk_failure, stk_success

pytestmark = pytest.mark.django_db


def store(till: Till, kind: str, daraja_id: str, body: bytes) -> int | None:
    return inbox_store(till_id=till.pk, kind=kind, daraja_id=daraja_id, body=body, headers={}, remote_addr=None)


def test_a_byte_identical_duplicate_is_a_no_op(till: Till) -> None:
    body = stk_failure(checkout_id="ws_CO_SAME")
    first = store(till, InboxKind.STK_CALLBACK, "ws_CO_SAME", body)
    assert first is not None
    assert store(till, InboxKind.STK_CALLBACK, "ws_CO_SAME", body) is None
    assert InboxMessage.objects.filter(daraja_id="ws_CO_SAME").count() == 1


def test_the_body_hash_is_the_one_postgresql_computes(till: Till) -> None:
    """The migration fills old rows with encode(sha256(convert_to(body,'UTF8')),'hex'): new rows
    must get the same value, also for a body that is not valid UTF-8 or carries a NUL."""
    raw = b'{"Body": {"stkCallback": {"CheckoutRequestID": "ws_CO_HASH", "x": "caf\xc3\xa9 \xff \x00"}}}'
    inbox_id = store(till, InboxKind.STK_CALLBACK, "ws_CO_HASH", raw)
    with connection.cursor() as cursor:
        cursor.execute(
            "SELECT body_sha256, encode(sha256(convert_to(body, 'UTF8')), 'hex') FROM integrations_inboxmessage "
            "WHERE id = %s",
            [inbox_id],
        )
        stored, computed = cursor.fetchone()
    assert len(stored) == 64 and stored == computed


def test_a_success_after_a_failure_for_one_checkout_is_held_then_posted_once(till: Till, owner: object) -> None:
    request = PaymentRequestFactory.create(till=till, amount=Decimal("40.00"))
    checkout = request.checkout_request_id
    failure = store(till, InboxKind.STK_CALLBACK, checkout, stk_failure(checkout_id=checkout, code=1032))
    assert failure is not None
    inbox_process(inbox_id=failure)
    request.refresh_from_db()
    assert request.state == PaymentRequestState.CANCELLED

    body = stk_success(checkout_id=checkout, receipt="TKC0000001", amount=40)
    success = store(till, InboxKind.STK_CALLBACK, checkout, body)

    # Stored (not dropped, as ON CONFLICT (kind, daraja_id) DO NOTHING did) and held for a person.
    assert success is not None and success != failure
    row = InboxMessage.objects.get(pk=success)
    assert row.state == InboxState.NEEDS_ATTENTION and row.outcome == "needs a person"
    assert f"inbox row {failure} (processed)" in row.error
    assert row.last_enqueued_at is None
    assert inbox_process(inbox_id=success) == "already attention"
    assert Payment.objects.count() == 0
    # The same success again is a duplicate of the held row: nothing new.
    assert store(till, InboxKind.STK_CALLBACK, checkout, body) is None

    # A person looks and reprocesses it: posted once, the request paid.
    assert inbox_reprocess(inbox=row, acting_user=owner)
    inbox_process(inbox_id=success)
    row.refresh_from_db()
    request.refresh_from_db()
    assert row.state == InboxState.PROCESSED
    assert request.state == PaymentRequestState.PAID and request.receipt == "TKC0000001"
    payment = Payment.objects.get()
    assert payment.receipt == "TKC0000001" and payment.payment_request == request

    # The C2B confirmation of the same receipt, a second reprocess: still one posting.
    c2b = store(
        till,
        InboxKind.C2B_CONFIRMATION,
        "TKC0000001",
        c2b_confirmation(trans_id="TKC0000001", shortcode=till.shortcode, amount="40.00"),
    )
    assert c2b is not None
    inbox_process(inbox_id=c2b)
    assert not inbox_reprocess(inbox=row, acting_user=owner)  # processed rows are left alone
    assert JournalEntry.objects.filter(idempotency_key="mpesa:TKC0000001").count() == 1
    assert Payment.objects.count() == 1


def test_a_second_body_keeps_the_views_own_flag(till: Till) -> None:
    """A row the view already holds (e.g. an address outside the allowlist) keeps its reason."""
    store(till, InboxKind.C2B_CONFIRMATION, "TKC0000002", c2b_confirmation(trans_id="TKC0000002", shortcode="600966"))
    other = c2b_confirmation(trans_id="TKC0000002", shortcode="600966", amount="9000.00")
    inbox_id = inbox_store(
        till_id=till.pk,
        kind=InboxKind.C2B_CONFIRMATION,
        daraja_id="TKC0000002",
        body=other,
        headers={},
        remote_addr="10.9.9.9",
        state=InboxState.NEEDS_ATTENTION,
        error="source address 10.9.9.9 is not in the till's allowlist",
    )
    assert inbox_id is not None
    row = InboxMessage.objects.get(pk=inbox_id)
    assert row.state == InboxState.NEEDS_ATTENTION
    assert row.error.startswith("source address 10.9.9.9") and "another body" in row.error


def test_the_callback_view_stores_the_second_body_and_answers(till: Till, clean_broker: object) -> None:
    client = Client()
    url = f"/daraja/{till.callback_token}/stk/"
    for body in (stk_failure(checkout_id="ws_CO_VIEW"), stk_success(checkout_id="ws_CO_VIEW", receipt="TKC0000003")):
        response = client.post(url, data=body, content_type="application/json")
        assert response.status_code == 200 and response.json()["ResultCode"] == 0
    assert publisher.flush()
    states = list(InboxMessage.objects.filter(daraja_id="ws_CO_VIEW").order_by("id").values_list("state", flat=True))
    assert states == [InboxState.RECEIVED, InboxState.NEEDS_ATTENTION]


@pytest.mark.django_db(transaction=True)
def test_two_different_bodies_at_once_one_is_held(till: Till) -> None:
    """Both arrive together: the advisory lock makes "is there an earlier row?" and the insert one
    step, so one of the two is held for a person (without it, both could be processed)."""
    bodies = [stk_failure(checkout_id="ws_CO_RACE"), stk_success(checkout_id="ws_CO_RACE", receipt="TKC0000004")]
    start = threading.Barrier(len(bodies))

    def send(body: bytes) -> None:
        try:
            start.wait()
            store(till, InboxKind.STK_CALLBACK, "ws_CO_RACE", body)
        finally:
            connections.close_all()

    threads = [threading.Thread(target=send, args=(b,)) for b in bodies]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    states = sorted(InboxMessage.objects.filter(daraja_id="ws_CO_RACE").values_list("state", flat=True))
    assert states == sorted([InboxState.RECEIVED, InboxState.NEEDS_ATTENTION])

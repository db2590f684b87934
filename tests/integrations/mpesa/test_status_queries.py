"""Transaction Status: asked about a receipt (by a person, or by the recovery job for a validated
C2B payment whose confirmation never came); a "completed" answer for the till posts the payment once."""

from __future__ import annotations

import json
from decimal import Decimal
from typing import Any

import pytest
from django.test import Client
from django.urls import reverse

from accounts.models import JournalEntry
from integrations.mpesa.exceptions import InvalidRequest
from integrations.mpesa.models import (
    InboxKind,
    InboxState,
    Payment,
    PaymentRequestState,
    StatusQuery,
    StatusQueryReason,
    StatusQueryState,
    Till,
)
from integrations.mpesa.status_queries import lost_confirmations_recover, status_query_request
from tests.factories.mpesa import (
    PaymentRequestFactory,
    c2b_confirmation,
    deliver,
    sample,
    status_result,
    validated,
)
from tests.integrations.mpesa.fake_daraja import (
    TRANSACTION_STATUS,
    FakeDaraja,
)

pytestmark = pytest.mark.django_db


def test_a_completed_answer_posts_the_payment_once(daraja_till: Till, fake_daraja: FakeDaraja, owner: Any) -> None:
    request = PaymentRequestFactory.create(till=daraja_till, amount=Decimal("250"), account_reference="INV-7")
    query = status_query_request(till=daraja_till, receipt="tkst000001", payment_request=request, acting_user=owner)

    assert query.state == StatusQueryState.SENT and query.receipt == "TKST000001"
    sent = fake_daraja.requests_to(TRANSACTION_STATUS)[0].json
    assert sent["TransactionID"] == "TKST000001" and sent["CommandID"] == "TransactionStatusQuery"
    assert sent["ResultURL"].endswith(f"/daraja/{daraja_till.callback_token}/result/status/")
    assert sent["QueueTimeOutURL"].endswith(f"/daraja/{daraja_till.callback_token}/timeout/status/")
    assert not Payment.objects.exists()  # nothing posted before the answer

    msg = deliver(daraja_till, InboxKind.STATUS_RESULT, status_result(query), query.conversation_id)

    assert msg.state == InboxState.PROCESSED, msg.error
    query.refresh_from_db()
    payment = Payment.objects.get(receipt="TKST000001")
    assert query.state == StatusQueryState.CONFIRMED and query.payment == payment
    assert payment.amount == Decimal("250.00") and payment.payer_name == "John Doe"
    assert payment.msisdn == "254708374149" and payment.payment_request == request
    assert payment.account_reference == "INV-7"
    request.refresh_from_db()
    assert request.state == PaymentRequestState.PAID and request.receipt == "TKST000001"
    assert JournalEntry.objects.filter(idempotency_key="mpesa:TKST000001").count() == 1

    # The callback that was late after all, and a second query's answer: still one entry.
    deliver(
        daraja_till,
        InboxKind.C2B_CONFIRMATION,
        c2b_confirmation(trans_id="TKST000001", shortcode=daraja_till.shortcode, amount="250.00"),
        "TKST000001",
    )
    again = status_query_request(till=daraja_till, receipt="TKST000001", acting_user=owner)
    deliver(daraja_till, InboxKind.STATUS_RESULT, status_result(again), again.conversation_id)
    again.refresh_from_db()
    assert again.state == StatusQueryState.CONFIRMED and again.payment == payment
    assert Payment.objects.count() == 1
    assert JournalEntry.objects.filter(idempotency_key="mpesa:TKST000001").count() == 1


@pytest.mark.parametrize(
    ("kwargs", "state"),
    [
        ({"status": "Failed"}, StatusQueryState.NOT_COMPLETED),
        ({"receiver": "999999"}, StatusQueryState.NOT_COMPLETED),  # money into someone else's shortcode
        ({"result_code": 2001}, StatusQueryState.FAILED),
    ],
)
def test_other_answers_post_nothing(daraja_till: Till, owner: Any, kwargs: dict[str, Any], state: str) -> None:
    query = status_query_request(till=daraja_till, receipt="TKST000002", acting_user=owner)
    msg = deliver(daraja_till, InboxKind.STATUS_RESULT, status_result(query, **kwargs), query.conversation_id)
    assert msg.state == InboxState.PROCESSED
    query.refresh_from_db()
    assert query.state == state and query.completed_at is not None
    assert not Payment.objects.exists() and not JournalEntry.objects.exists()


def test_an_answer_about_another_receipt_needs_a_person(daraja_till: Till, owner: Any) -> None:
    query = status_query_request(till=daraja_till, receipt="TKST000003", acting_user=owner)
    msg = deliver(
        daraja_till, InboxKind.STATUS_RESULT, status_result(query, receipt="TKOTHER001"), query.conversation_id
    )
    assert msg.state == InboxState.NEEDS_ATTENTION and "TKOTHER001" in msg.error
    assert StatusQuery.objects.get().state == StatusQueryState.SENT and not Payment.objects.exists()


def test_a_queue_timeout_ends_the_query(daraja_till: Till, owner: Any) -> None:
    query = status_query_request(till=daraja_till, receipt="TKST000004", acting_user=owner)
    body = sample("09_reversal_result_failure_R000002.json")
    body["Result"]["ConversationID"] = query.conversation_id
    deliver(daraja_till, InboxKind.STATUS_TIMEOUT, json.dumps(body).encode(), query.conversation_id)
    query.refresh_from_db()
    assert query.state == StatusQueryState.TIMEOUT and "queue timeout" in query.result_desc


def test_bad_receipts_and_refusals(daraja_till: Till, fake_daraja: FakeDaraja, owner: Any) -> None:
    for bad in ("", "TOO-SHORT", "TKST0000001X"):
        with pytest.raises(InvalidRequest):
            status_query_request(till=daraja_till, receipt=bad, acting_user=owner)
    assert not StatusQuery.objects.exists()
    fake_daraja.script(
        TRANSACTION_STATUS,
        status=400,
        body={"requestId": "x", "errorCode": "400.002.02", "errorMessage": "Bad Request - Invalid TransactionID"},
    )
    refused = status_query_request(till=daraja_till, receipt="TKST000005", acting_user=owner)
    assert refused.state == StatusQueryState.ERROR and "400.002.02" in refused.result_desc


def test_the_recovery_job_asks_about_validated_payments_never_confirmed(
    daraja_till: Till, fake_daraja: FakeDaraja
) -> None:
    validated(daraja_till, "TKLOST0001", minutes_ago=30)  # lost: asked about
    validated(daraja_till, "TKLOST0002", minutes_ago=2)  # its confirmation may still come
    validated(daraja_till, "TKLOST0003", minutes_ago=30, outcome="rejected C2B00012: unknown account")
    validated(daraja_till, "TKLOST0004", minutes_ago=30)  # confirmed: posted already
    deliver(
        daraja_till,
        InboxKind.C2B_CONFIRMATION,
        c2b_confirmation(trans_id="TKLOST0004", shortcode=daraja_till.shortcode),
        "TKLOST0004",
    )

    assert lost_confirmations_recover(older_than_seconds=600) == {StatusQueryState.SENT: 1}
    assert [r.json["TransactionID"] for r in fake_daraja.requests_to(TRANSACTION_STATUS)] == ["TKLOST0001"]
    query = StatusQuery.objects.get()
    assert query.reason == StatusQueryReason.LOST_CONFIRMATION and query.account_reference == "CUST-9"
    assert lost_confirmations_recover(older_than_seconds=600) == {}  # asked once only

    deliver(daraja_till, InboxKind.STATUS_RESULT, status_result(query, amount="40"), query.conversation_id)
    payment = Payment.objects.get(receipt="TKLOST0001")
    assert payment.amount == Decimal("40.00") and payment.account_reference == "CUST-9"
    assert JournalEntry.objects.filter(idempotency_key="mpesa:TKLOST0001").count() == 1


def test_the_admin_asks_about_a_receipt(daraja_till: Till, fake_daraja: FakeDaraja, owner_client: Client) -> None:
    url = reverse("admin:integrations_statusquery_add")
    assert owner_client.get(url).status_code == 200
    response = owner_client.post(url, {"till": daraja_till.pk, "receipt": "tkadm00001", "account_reference": ""})
    assert response.status_code == 302, response.content[:2000]
    query = StatusQuery.objects.get()
    assert query.receipt == "TKADM00001" and query.state == StatusQueryState.SENT
    assert query.requested_by is not None
    assert owner_client.get(reverse("admin:integrations_statusquery_changelist")).status_code == 200
    assert owner_client.get(reverse("admin:integrations_statusquery_change", args=[query.pk])).status_code == 200

    refused = owner_client.post(url, {"till": daraja_till.pk, "receipt": "nope"}, follow=True)
    assert "is not an M-Pesa receipt" in refused.content.decode()
    assert StatusQuery.objects.count() == 1

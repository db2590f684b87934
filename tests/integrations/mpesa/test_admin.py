"""The M-Pesa admin through the owner's browser: every list, add form and action."""

from __future__ import annotations

from decimal import Decimal
from typing import Any

import pytest
import redis
from django.test import Client
from django.urls import reverse

from integrations.mpesa.inbox import inbox_store
from integrations.mpesa.models import (
    InboxKind,
    InboxMessage,
    InboxState,
    Payment,
    PaymentRequest,
    PaymentRequestState,
    PaymentStatus,
    Reversal,
    ReversalState,
    Till,
)
from integrations.mpesa.publisher import publisher
from integrations.mpesa.secrets import decrypt
from tenancy.models import Business
from tests.factories.mpesa import unallocated_payment
from tests.factories.operations import CustomerFactory
from tests.integrations.mpesa.fake_daraja import (
    OAUTH,
    REVERSAL,
    STK_PUSH,
    STK_QUERY,
    FakeDaraja,
)

pytestmark = pytest.mark.django_db

MODELS = ["till", "inboxmessage", "paymentrequest", "payment", "unallocatedpayment", "reversal"]


def url(model: str, view: str, *args: object) -> str:
    return reverse(f"admin:integrations_{model}_{view}", args=args)


@pytest.mark.parametrize("model", MODELS)
def test_every_changelist_renders(owner_client: Client, till: Till, model: str) -> None:
    unallocated_payment(till, "TKADM00001")
    inbox_store(
        till_id=till.pk,
        kind=InboxKind.STK_CALLBACK,
        daraja_id="ws_CO_ADMIN",
        body=b'{"a": 1}',
        headers={},
        remote_addr="196.201.214.1",
    )
    response = owner_client.get(url(model, "changelist"))
    assert response.status_code == 200


def test_the_detail_pages_render(owner_client: Client, till: Till) -> None:
    payment = unallocated_payment(till, "TKADM00002")
    inbox_id = inbox_store(
        till_id=till.pk,
        kind=InboxKind.STK_CALLBACK,
        daraja_id="ws_CO_X",
        body=b'{"Body": 1}',
        headers={"User-Agent": "Daraja"},
        remote_addr=None,
    )
    assert owner_client.get(url("payment", "change", payment.pk)).status_code == 200
    page = owner_client.get(url("inboxmessage", "change", inbox_id))
    assert page.status_code == 200 and "&quot;Body&quot;: 1" in page.content.decode()
    assert owner_client.get(url("till", "change", till.pk)).status_code == 200


def test_the_till_add_form_stores_secrets_encrypted_and_never_shows_them(owner_client: Client, books: Business) -> None:
    assert owner_client.get(url("till", "add")).status_code == 200
    form = {
        "business": books.pk,
        "name": "Shop till",
        "shortcode": "5123456",
        "kind": "till",
        "store_number": "5123400",
        "environment": "production",
        "credentials_env_prefix": "",
        "initiator_name": "ops",
        "callback_base_url": "https://office.example.co.ke",
        "allowed_ips": "",
        "min_amount": "1",
        "max_amount": "150000",
        "is_active": "on",
        "consumer_key": "key-123-zq7Kx",
        "consumer_secret": "secret-456-zq7Kx",
        "passkey": "passkey-789-zq7Kx",
        "security_credential": "cred-000-zq7Kx",
    }
    response = owner_client.post(url("till", "add"), form)
    assert response.status_code == 302, response.content.decode()[:2000]
    till = Till.objects.get(shortcode="5123456")
    assert decrypt(till.consumer_key_encrypted) == "key-123-zq7Kx"
    assert "zq7Kx" not in till.consumer_key_encrypted + till.passkey_encrypted

    page = owner_client.get(url("till", "change", till.pk)).content.decode()
    assert "-zq7Kx" not in page and till.consumer_key_encrypted not in page
    assert "Stored (leave blank to keep)" in page
    assert f"https://office.example.co.ke/daraja/{till.callback_token}/c2b/confirm/" in page

    # A blank secret keeps the stored one; a new value replaces it.
    form.update(consumer_key="", passkey="new-passkey")
    assert owner_client.post(url("till", "change", till.pk), form).status_code == 302
    till.refresh_from_db()
    assert decrypt(till.consumer_key_encrypted) == "key-123-zq7Kx"
    assert decrypt(till.passkey_encrypted) == "new-passkey"


def test_register_urls_action(owner_client: Client, daraja_till: Till, fake_daraja: FakeDaraja) -> None:
    response = owner_client.post(
        url("till", "changelist"), {"action": "register_urls", "_selected_action": [daraja_till.pk]}, follow=True
    )
    assert "URLs registered for tills: 1" in response.content.decode()
    sent = [r.json for r in fake_daraja.received if r.path.endswith("/registerurl")]
    assert sent[0]["ConfirmationURL"].endswith(f"/daraja/{daraja_till.callback_token}/c2b/confirm/")


def test_register_urls_refusal_is_shown(owner_client: Client, daraja_till: Till, fake_daraja: FakeDaraja) -> None:
    fake_daraja.script(OAUTH, status=400, body={"errorCode": "400.008.01", "errorMessage": "Invalid Authentication"})
    response = owner_client.post(
        url("till", "changelist"), {"action": "register_urls", "_selected_action": [daraja_till.pk]}, follow=True
    )
    assert "registering the URLs" in response.content.decode()


def test_reprocess_action_sends_a_flagged_row_again(
    owner_client: Client, till: Till, clean_broker: redis.Redis, django_capture_on_commit_callbacks: Any
) -> None:
    flagged = inbox_store(
        till_id=till.pk,
        kind=InboxKind.C2B_CONFIRMATION,
        daraja_id="TKADM00003",
        body=b"{}",
        headers={},
        remote_addr="203.0.113.1",
        state=InboxState.NEEDS_ATTENTION,
        error="ip",
    )
    with django_capture_on_commit_callbacks(execute=True):
        response = owner_client.post(
            url("inboxmessage", "changelist"), {"action": "reprocess", "_selected_action": [flagged]}, follow=True
        )
    assert "Sent for processing again: 1" in response.content.decode()
    assert InboxMessage.objects.get(pk=flagged or 0).state == InboxState.RECEIVED
    assert publisher.flush()
    assert clean_broker.llen("payments") == 1


def test_request_payment_sends_an_stk_push(owner_client: Client, daraja_till: Till, fake_daraja: FakeDaraja) -> None:
    assert owner_client.get(url("paymentrequest", "add")).status_code == 200
    response = owner_client.post(
        url("paymentrequest", "add"),
        {
            "till": daraja_till.pk,
            "phone": "0712 345 678",
            "amount": "250",
            "account_reference": "S-1001",
            "description": "Sale S-1001",
        },
    )
    assert response.status_code == 302
    request = PaymentRequest.objects.get()
    assert request.state == PaymentRequestState.SENT and request.checkout_request_id.startswith("ws_CO_FAKE")
    assert request.phone == "254712345678" and request.amount == Decimal("250.00")
    sent = fake_daraja.requests_to(STK_PUSH)[0].json
    assert sent["PhoneNumber"] == "254712345678" and sent["AccountReference"] == "S-1001"
    assert sent["CallBackURL"].endswith(f"/daraja/{daraja_till.callback_token}/stk/")
    assert fake_daraja.rejections == []


def test_request_payment_refused_by_daraja_is_shown(
    owner_client: Client, daraja_till: Till, fake_daraja: FakeDaraja
) -> None:
    fake_daraja.script(
        STK_PUSH, status=400, body={"errorCode": "400.002.02", "errorMessage": "Bad Request - Invalid PhoneNumber"}
    )
    response = owner_client.post(
        url("paymentrequest", "add"),
        {"till": daraja_till.pk, "phone": "0712345678", "amount": "10", "account_reference": "X", "description": "X"},
        follow=True,
    )
    assert "Invalid PhoneNumber" in response.content.decode()
    assert PaymentRequest.objects.get().state == PaymentRequestState.ERROR


def test_request_payment_with_a_bad_phone_stores_nothing(owner_client: Client, daraja_till: Till) -> None:
    response = owner_client.post(
        url("paymentrequest", "add"),
        {"till": daraja_till.pk, "phone": "12", "amount": "10", "account_reference": "X", "description": "X"},
        follow=True,
    )
    assert (
        "not a Kenyan mobile number" in response.content.decode() or "not a phone number" in response.content.decode()
    )
    assert PaymentRequest.objects.count() == 0


def test_query_status_action(owner_client: Client, daraja_till: Till, fake_daraja: FakeDaraja) -> None:
    request = PaymentRequest.objects.create(
        till=daraja_till,
        business=daraja_till.business,
        phone="254712345678",
        amount=10,
        account_reference="X",
        description="X",
        checkout_request_id="ws_CO_Q1",
    )
    response = owner_client.post(
        url("paymentrequest", "changelist"), {"action": "query_status", "_selected_action": [request.pk]}, follow=True
    )
    assert "paid" in response.content.decode()
    request.refresh_from_db()
    assert request.state == PaymentRequestState.PAID_AWAITING_CALLBACK
    assert fake_daraja.requests_to(STK_QUERY)[0].json["CheckoutRequestID"] == "ws_CO_Q1"


def test_allocate_action_shows_a_form_then_allocates(owner_client: Client, till: Till) -> None:
    payment = unallocated_payment(till, "TKADM00004", Decimal("120.00"))
    buyer = CustomerFactory.create(business=till.business, name="Mama Njeri")
    page = owner_client.post(
        url("unallocatedpayment", "changelist"), {"action": "allocate", "_selected_action": [payment.pk]}
    )
    assert page.status_code == 200 and "Mama Njeri" in page.content.decode() and "TKADM00004" in page.content.decode()

    done = owner_client.post(
        url("unallocatedpayment", "changelist"),
        {
            "action": "allocate",
            "_selected_action": [payment.pk],
            "confirm": "1",
            "customer": buyer.pk,
            "credit_role": "receivables",
            "reference_kind": "customer",
            "reference_id": "",
        },
        follow=True,
    )
    assert "Payments allocated: 1" in done.content.decode()
    payment.refresh_from_db()
    assert payment.status == PaymentStatus.ALLOCATED and payment.customer == buyer
    listing = owner_client.get(url("unallocatedpayment", "changelist")).content.decode()
    assert "TKADM00004" not in listing


def test_reversal_action_asks_daraja(owner_client: Client, daraja_till: Till, fake_daraja: FakeDaraja) -> None:
    payment = unallocated_payment(daraja_till, "TKADM00005", Decimal("40.00"))
    response = owner_client.post(
        url("payment", "changelist"), {"action": "request_reversal", "_selected_action": [payment.pk]}, follow=True
    )
    assert "Reversals requested: 1" in response.content.decode()
    reversal = Reversal.objects.get()
    assert reversal.state == ReversalState.REQUESTED and reversal.conversation_id.startswith("AG_FAKE_")
    sent = fake_daraja.requests_to(REVERSAL)[0].json
    assert sent["TransactionID"] == "TKADM00005" and sent["Amount"] == "40"
    assert Payment.objects.get().status == PaymentStatus.UNALLOCATED  # nothing posted before the result

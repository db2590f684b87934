"""Factories for M-Pesa rows and builders of realistic Daraja callback bodies (from the samples)."""

from __future__ import annotations

import copy
import datetime as dt
import json
from decimal import Decimal
from pathlib import Path
from typing import Any

import factory
from django.utils import timezone

from integrations.mpesa.inbox import inbox_process, inbox_store
from integrations.mpesa.models import (
    DarajaEnvironment,
    InboxKind,
    InboxMessage,
    InboxState,
    Payment,
    PaymentRequest,
    PaymentStatus,
    StatusQuery,
    Till,
    TillKind,
)
from integrations.mpesa.payloads import NAIROBI
from integrations.mpesa.secrets import encrypt
from tests.factories.tenancy import BusinessFactory

FIXTURES = Path(__file__).resolve().parents[1] / "fixtures" / "daraja"


def sample(name: str) -> Any:
    return json.loads((FIXTURES / name).read_text())


def sample_bytes(name: str) -> bytes:
    return (FIXTURES / name).read_bytes()


class TillFactory(factory.django.DjangoModelFactory[Till]):
    class Meta:
        model = Till

    business = factory.SubFactory(BusinessFactory)
    name = factory.Sequence(lambda n: f"Till {n}")
    shortcode = factory.Sequence(lambda n: f"{600100 + n}")
    kind = TillKind.PAYBILL
    environment = DarajaEnvironment.SANDBOX
    callback_base_url = "http://127.0.0.1:8000"
    consumer_key_encrypted = factory.LazyFunction(lambda: encrypt("test-consumer-key"))
    consumer_secret_encrypted = factory.LazyFunction(lambda: encrypt("test-consumer-secret"))
    passkey_encrypted = factory.LazyFunction(lambda: encrypt("test-passkey"))
    initiator_name = "testapi"
    security_credential_encrypted = factory.LazyFunction(lambda: encrypt("test-credential"))


class PaymentRequestFactory(factory.django.DjangoModelFactory[PaymentRequest]):
    class Meta:
        model = PaymentRequest

    till = factory.SubFactory(TillFactory)
    business = factory.LazyAttribute(lambda o: o.till.business)
    phone = "254708374149"
    amount = Decimal("100.00")
    account_reference = "REF1"
    description = "Payment"
    checkout_request_id = factory.Sequence(lambda n: f"ws_CO_TEST{n:012d}")
    merchant_request_id = factory.Sequence(lambda n: f"{n}-merchant")


def daraja_time(when: dt.datetime | None = None) -> str:
    moment = (when or dt.datetime.now(tz=NAIROBI)).astimezone(NAIROBI)
    return moment.strftime("%Y%m%d%H%M%S")


def stk_success(
    *,
    checkout_id: str,
    receipt: str,
    amount: Decimal | float = 1.0,
    phone: int | str = 254708374149,
    when: dt.datetime | None = None,
) -> bytes:
    body = sample("03_stk_callback_success_doc.json")
    cb = body["Body"]["stkCallback"]
    cb["CheckoutRequestID"] = checkout_id
    values = {
        "Amount": float(amount),
        "MpesaReceiptNumber": receipt,
        "TransactionDate": int(daraja_time(when)),
        "PhoneNumber": phone,
    }
    for item in cb["CallbackMetadata"]["Item"]:
        item["Value"] = values[item["Name"]]
    return json.dumps(body).encode()


def stk_failure(*, checkout_id: str, code: int = 1032, desc: str = "Request cancelled by user") -> bytes:
    body = sample("03_stk_callback_cancelled_1032_doc.json")
    body["Body"]["stkCallback"].update({"CheckoutRequestID": checkout_id, "ResultCode": code, "ResultDesc": desc})
    return json.dumps(body).encode()


def c2b_confirmation(
    *,
    trans_id: str,
    shortcode: str,
    amount: str = "5.00",
    bill_ref: str = "",
    msisdn: str = "2547 ***** 126",
    when: dt.datetime | None = None,
    first_name: str = "NICHOLAS",
) -> bytes:
    body = copy.deepcopy(sample("06_c2b_confirmation_v2_masked_msisdn_doc.json"))
    body.update(
        {
            "TransID": trans_id,
            "BusinessShortCode": shortcode,
            "TransAmount": amount,
            "BillRefNumber": bill_ref,
            "MSISDN": msisdn,
            "TransTime": daraja_time(when),
            "FirstName": first_name,
        }
    )
    return json.dumps(body).encode()


def c2b_validation(*, trans_id: str, shortcode: str, amount: str = "10", bill_ref: str = "invoice008") -> bytes:
    body = sample("06_c2b_validation_request_doc_masked_msisdn.json")
    body.update({"TransID": trans_id, "BusinessShortCode": shortcode, "TransAmount": amount, "BillRefNumber": bill_ref})
    return json.dumps(body).encode()


def reversal_result(
    *,
    conversation_id: str,
    success: bool = True,
    original: str = "SKC82PACB8",
    amount: Decimal | float | None = None,
    till_shortcode: str | None = None,
) -> bytes:
    """Daraja's reversal result sample for `conversation_id`: reversing receipt `original` of
    `amount` (the sample's 1.0 if not given) out of till `till_shortcode` (the DebitParty; the
    sample's 600992 if not given)."""
    name = "09_reversal_result_success.json" if success else "09_reversal_result_failure_R000002.json"
    body = sample(name)
    body["Result"]["ConversationID"] = conversation_id
    if success:
        for item in body["Result"]["ResultParameters"]["ResultParameter"]:
            if item["Key"] == "OriginalTransactionID":
                item["Value"] = original
            elif item["Key"] == "Amount" and amount is not None:
                item["Value"] = float(amount)
            elif item["Key"] == "DebitPartyPublicName" and till_shortcode is not None:
                item["Value"] = f"{till_shortcode} - Safaricom Daraja 992"
    return json.dumps(body).encode()


def unallocated_payment(till: Till, receipt: str, amount: Decimal = Decimal("250.00")) -> Payment:
    """A payment in suspense, recorded through the real service (so its entry exists)."""
    from integrations.mpesa.payments import payment_record

    payment, _ = payment_record(
        till=till,
        receipt=receipt,
        amount=amount,
        paid_at=dt.datetime.now(tz=NAIROBI),
        msisdn="",
        payer_name="WALK IN",
        account_reference="",
        payment_request=None,
    )
    assert payment.status == PaymentStatus.UNALLOCATED
    return payment


def status_result(
    query: StatusQuery,
    *,
    receipt: str | None = None,
    status: str = "Completed",
    amount: str = "250",
    receiver: str | None = None,
    result_code: int = 0,
) -> bytes:
    """Daraja's Transaction Status result for `query` (the documented sample, re-addressed)."""
    body = sample("08_transaction_status_result_doc_b2c.json")
    result = body["Result"]
    result["ConversationID"] = query.conversation_id
    result["OriginatorConversationID"] = query.originator_conversation_id
    result["ResultCode"] = result_code
    values = {
        "ReceiptNo": receipt or query.receipt,
        "TransactionStatus": status,
        "Amount": amount,
        "CreditPartyName": f"{receiver or query.till.shortcode} - Bench Water",
        "DebitPartyName": "254708374149 - John Doe",
    }
    params = [p for p in result["ResultParameters"]["ResultParameter"] if p["Key"] not in values]
    params += [{"Key": key, "Value": value} for key, value in values.items()]
    result["ResultParameters"]["ResultParameter"] = params
    return json.dumps(body).encode()


def deliver(till: Till, kind: str, body: bytes, daraja_id: str) -> InboxMessage:
    """A callback body stored in the inbox and processed there, as the worker would."""
    inbox_id = inbox_store(till_id=till.pk, kind=kind, daraja_id=daraja_id, body=body, headers={}, remote_addr=None)
    assert inbox_id is not None
    inbox_process(inbox_id=inbox_id)
    return InboxMessage.objects.get(pk=inbox_id)


def validated(till: Till, receipt: str, *, minutes_ago: int, outcome: str = "accepted") -> None:
    """A C2B validation stored as answered `minutes_ago` (its confirmation not come yet)."""
    inbox_id = inbox_store(
        till_id=till.pk,
        kind=InboxKind.C2B_VALIDATION,
        daraja_id=receipt,
        body=c2b_validation(trans_id=receipt, shortcode=till.shortcode, amount="40", bill_ref="CUST-9"),
        headers={},
        remote_addr=None,
        state=InboxState.PROCESSED,
        outcome=outcome,
    )
    assert inbox_id is not None
    InboxMessage.objects.filter(pk=inbox_id).update(received_at=timezone.now() - dt.timedelta(minutes=minutes_ago))

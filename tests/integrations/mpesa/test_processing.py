"""Processing an inbox row: parse, match, post once, mark processed - or flag it for a person."""

from __future__ import annotations

import datetime as dt
from decimal import Decimal

import pytest
from django.utils import timezone

from accounts.models import JournalEntry, JournalLine
from accounts.services import books_close_period
from integrations.mpesa.exceptions import NotUnallocated
from integrations.mpesa.inbox import inbox_process, inbox_store
from integrations.mpesa.models import (
    InboxKind,
    InboxMessage,
    InboxState,
    Payment,
    PaymentRequestState,
    PaymentStatus,
    Till,
)
from integrations.mpesa.payloads import NAIROBI
from integrations.mpesa.payments import payment_allocate
from operations.models import Customer
from operations.phones import msisdn_sha256
from tests.factories.mpesa import (
    PaymentRequestFactory,
    c2b_confirmation,
    sample_bytes,
    stk_failure,
    stk_success,
    unallocated_payment,
)
from tests.factories.operations import CustomerFactory

pytestmark = pytest.mark.django_db


def store(till: Till, kind: str, body: bytes, daraja_id: str) -> InboxMessage:
    inbox_id = inbox_store(till_id=till.pk, kind=kind, daraja_id=daraja_id, body=body, headers={}, remote_addr=None)
    assert inbox_id is not None
    return InboxMessage.objects.get(pk=inbox_id)


def process(msg: InboxMessage) -> InboxMessage:
    inbox_process(inbox_id=msg.pk)
    msg.refresh_from_db()
    return msg


def lines_of(entry: JournalEntry) -> set[tuple[str, Decimal, Decimal]]:
    return {
        (line.account.role, line.debit, line.credit)
        for line in JournalLine.objects.filter(entry=entry).select_related("account")
    }


def customer(till: Till, **kwargs: str) -> Customer:
    c = CustomerFactory.build(business=till.business, **kwargs)
    c.clean()
    c.save()
    return c


def test_a_successful_stk_callback_pays_its_request_and_posts_to_the_customer(till: Till) -> None:
    buyer = customer(till, name="Amina", phone="0708374149")
    request = PaymentRequestFactory.create(till=till, phone="254708374149", amount=Decimal("150.00"))
    when = dt.datetime(2026, 11, 20, 10, 21, 15, tzinfo=NAIROBI)
    body = stk_success(checkout_id=request.checkout_request_id, receipt="TKA1000001", amount=150, when=when)

    msg = process(store(till, InboxKind.STK_CALLBACK, body, request.checkout_request_id))

    assert msg.state == InboxState.PROCESSED and msg.attempts == 1
    request.refresh_from_db()
    assert request.state == PaymentRequestState.PAID and request.receipt == "TKA1000001"
    payment = Payment.objects.get()
    assert (payment.receipt, payment.amount, payment.paid_at) == ("TKA1000001", Decimal("150.00"), when)
    assert payment.customer == buyer and payment.status == PaymentStatus.ALLOCATED
    assert payment.payment_request == request and payment.matched_by == "phone"
    entry = payment.entry
    assert entry.idempotency_key == "mpesa:TKA1000001" and entry.entry_date == dt.date(2026, 11, 20)
    assert lines_of(entry) == {
        ("mpesa_clearing", Decimal("150.00"), Decimal("0.00")),
        ("receivables", Decimal("0.00"), Decimal("150.00")),
    }


def test_an_unmatched_payment_goes_to_suspense(till: Till) -> None:
    body = c2b_confirmation(trans_id="TKA1000002", shortcode=till.shortcode, amount="75.50", msisdn="")
    msg = process(store(till, InboxKind.C2B_CONFIRMATION, body, "TKA1000002"))

    payment = Payment.objects.get()
    assert msg.state == InboxState.PROCESSED and "suspense" in msg.outcome
    assert payment.status == PaymentStatus.UNALLOCATED and payment.customer is None
    assert payment.payer_name == "NICHOLAS"
    assert lines_of(payment.entry) == {
        ("mpesa_clearing", Decimal("75.50"), Decimal("0.00")),
        ("suspense", Decimal("0.00"), Decimal("75.50")),
    }


@pytest.mark.parametrize(
    ("code", "desc", "state"),
    [
        (1032, "Request cancelled by user", PaymentRequestState.CANCELLED),
        (2001, "[STK_CB - ]The initiator information is invalid.", PaymentRequestState.FAILED),
        (1037, "DS timeout user cannot be reached", PaymentRequestState.TIMEOUT),
        (1, "The balance is insufficient for the transaction.", PaymentRequestState.FAILED),
        (1001, "Unable to lock subscriber", PaymentRequestState.FAILED),
    ],
)
def test_a_failed_stk_result_updates_the_request_and_posts_nothing(
    till: Till, code: int, desc: str, state: str
) -> None:
    request = PaymentRequestFactory.create(till=till)
    body = stk_failure(checkout_id=request.checkout_request_id, code=code, desc=desc)

    msg = process(store(till, InboxKind.STK_CALLBACK, body, request.checkout_request_id))

    request.refresh_from_db()
    assert msg.state == InboxState.PROCESSED
    assert request.state == state and request.result_code == code
    assert not request.result_desc.startswith("[STK_CB")
    assert Payment.objects.count() == 0 and JournalEntry.objects.count() == 0


def test_stk_callback_and_c2b_confirmation_of_one_receipt_post_once(till: Till) -> None:
    request = PaymentRequestFactory.create(till=till, amount=Decimal("5.00"))
    stk = store(
        till,
        InboxKind.STK_CALLBACK,
        stk_success(checkout_id=request.checkout_request_id, receipt="TKA1000003", amount=5),
        request.checkout_request_id,
    )
    c2b = store(
        till,
        InboxKind.C2B_CONFIRMATION,
        c2b_confirmation(trans_id="TKA1000003", shortcode=till.shortcode, amount="5.00", first_name="WANJIKU"),
        "TKA1000003",
    )

    process(c2b)
    process(stk)

    assert JournalEntry.objects.count() == 1
    payment = Payment.objects.get()
    # The second callback added what the first did not know, without touching the entry.
    assert payment.payer_name == "WANJIKU" and payment.payment_request == request
    assert payment.msisdn == "254708374149" and payment.msisdn_kind == "plain"
    assert "already recorded" in InboxMessage.objects.get(pk=stk.pk).outcome


def test_a_processed_row_is_left_alone(till: Till) -> None:
    msg = process(
        store(
            till,
            InboxKind.C2B_CONFIRMATION,
            c2b_confirmation(trans_id="TKA1000004", shortcode=till.shortcode),
            "TKA1000004",
        )
    )
    assert inbox_process(inbox_id=msg.pk) == "already processed"
    msg.refresh_from_db()
    assert msg.attempts == 1 and JournalEntry.objects.count() == 1


def test_masked_msisdn_matches_only_a_single_candidate(till: Till) -> None:
    only = customer(till, name="Nicholas", phone="0712345126")
    body = c2b_confirmation(trans_id="TKA1000005", shortcode=till.shortcode, msisdn="2547 ***** 126")
    process(store(till, InboxKind.C2B_CONFIRMATION, body, "TKA1000005"))
    assert Payment.objects.get(receipt="TKA1000005").customer == only

    customer(till, name="Other", phone="0799999126")
    body = c2b_confirmation(trans_id="TKA1000006", shortcode=till.shortcode, msisdn="2547 ***** 126")
    process(store(till, InboxKind.C2B_CONFIRMATION, body, "TKA1000006"))
    assert Payment.objects.get(receipt="TKA1000006").status == PaymentStatus.UNALLOCATED


def test_hashed_msisdn_matches_the_customer(till: Till) -> None:
    buyer = customer(till, name="Hashed", phone="0722000111")
    body = c2b_confirmation(trans_id="TKA1000007", shortcode=till.shortcode, msisdn=msisdn_sha256("254722000111"))
    process(store(till, InboxKind.C2B_CONFIRMATION, body, "TKA1000007"))
    payment = Payment.objects.get()
    assert payment.customer == buyer and payment.msisdn_kind == "sha256"


def test_the_account_reference_matches_a_customer_case_insensitively(till: Till) -> None:
    buyer = customer(till, name="Hotel", account_code="HOTEL7")
    body = c2b_confirmation(trans_id="TKA1000008", shortcode=till.shortcode, bill_ref=" hotel7 ")
    process(store(till, InboxKind.C2B_CONFIRMATION, body, "TKA1000008"))
    payment = Payment.objects.get()
    assert payment.customer == buyer and payment.matched_by == "account reference"
    assert (payment.reference_kind, payment.reference_id) == ("customer", buyer.pk)


def test_a_closed_day_posts_on_the_first_open_day_and_keeps_the_payment_time(till: Till) -> None:
    yesterday = timezone.localdate() - dt.timedelta(days=1)
    books_close_period(business=till.business, lock_date=yesterday)
    paid = dt.datetime.combine(yesterday, dt.time(9, 30), tzinfo=NAIROBI)
    body = c2b_confirmation(trans_id="TKA1000010", shortcode=till.shortcode, when=paid)
    process(store(till, InboxKind.C2B_CONFIRMATION, body, "TKA1000010"))
    payment = Payment.objects.get()
    assert payment.entry.entry_date == timezone.localdate() and payment.paid_at == paid


def test_a_payload_problem_needs_a_person_and_is_not_retried(till: Till) -> None:
    body = b'{"Body": {"stkCallback": {"CheckoutRequestID": "ws_CO_BAD", "ResultCode": 0}}}'
    msg = process(store(till, InboxKind.STK_CALLBACK, body, "ws_CO_BAD"))
    assert msg.state == InboxState.NEEDS_ATTENTION and "PayloadError" in msg.error
    assert Payment.objects.count() == 0


def test_a_confirmation_for_another_shortcode_needs_a_person(till: Till) -> None:
    body = c2b_confirmation(trans_id="TKA1000011", shortcode="999999")
    msg = process(store(till, InboxKind.C2B_CONFIRMATION, body, "TKA1000011"))
    assert msg.state == InboxState.NEEDS_ATTENTION and "999999" in msg.error
    assert JournalEntry.objects.count() == 0


def test_a_business_without_books_needs_a_person(water: object) -> None:
    from tests.factories.mpesa import TillFactory

    bare = TillFactory.create(business=water, shortcode="600111")
    msg = process(
        store(
            bare, InboxKind.C2B_CONFIRMATION, c2b_confirmation(trans_id="TKA1000012", shortcode="600111"), "TKA1000012"
        )
    )
    assert msg.state == InboxState.NEEDS_ATTENTION and "mpesa_clearing" in msg.error


@pytest.mark.parametrize(
    ("name", "kind", "words"),
    [
        ("10_account_balance_result_doc.json", InboxKind.BALANCE_RESULT, "Working Account KES 700000.00"),
        ("08_transaction_status_result_doc_b2c.json", InboxKind.STATUS_RESULT, "transaction status 0"),
        ("09_reversal_result_failure_R000002.json", InboxKind.STATUS_TIMEOUT, "queue timeout R000002"),
    ],
)
def test_result_callbacks_are_recorded(till: Till, name: str, kind: str, words: str) -> None:
    msg = process(store(till, kind, sample_bytes(name), f"id-{name}"))
    assert msg.state == InboxState.PROCESSED and words in msg.outcome


def test_allocating_a_payment_in_suspense(till: Till, owner: object) -> None:
    payment = unallocated_payment(till, "TKA1000013", Decimal("300.00"))
    buyer = customer(till, name="Late payer")

    entry = payment_allocate(
        payment=payment, customer=buyer, reference_kind="customer", reference_id=buyer.pk, acting_user=owner
    )

    payment.refresh_from_db()
    assert payment.status == PaymentStatus.ALLOCATED and payment.customer == buyer
    assert payment.allocation_entry == entry and payment.allocated_by == owner
    assert entry.idempotency_key == "mpesa-allocate:TKA1000013"
    assert lines_of(entry) == {
        ("suspense", Decimal("300.00"), Decimal("0.00")),
        ("receivables", Decimal("0.00"), Decimal("300.00")),
    }
    with pytest.raises(NotUnallocated):
        payment_allocate(payment=payment, reference_kind="customer", reference_id=None, acting_user=owner)


def test_a_later_callback_that_identifies_the_payer_allocates_it(till: Till) -> None:
    buyer = customer(till, name="Known", phone="0708374149")
    c2b = store(
        till,
        InboxKind.C2B_CONFIRMATION,
        c2b_confirmation(trans_id="TKA1000014", shortcode=till.shortcode, amount="1.00", msisdn=""),
        "TKA1000014",
    )
    process(c2b)
    assert Payment.objects.get().status == PaymentStatus.UNALLOCATED

    stk = store(till, InboxKind.STK_CALLBACK, stk_success(checkout_id="ws_CO_LATE", receipt="TKA1000014"), "ws_CO_LATE")
    process(stk)

    payment = Payment.objects.get()
    assert payment.status == PaymentStatus.ALLOCATED and payment.customer == buyer
    assert JournalEntry.objects.filter(idempotency_key__startswith="mpesa:").count() == 1
    assert payment.allocation_entry is not None

"""A row that fails in an unexpected way is rolled back alone, recorded with its traceback, counted,
and parked for a person after MPESA_MAX_ATTEMPTS; the rest of its batch goes on. Receipts longer
than the columns are refused by the parser instead of failing in the database."""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator
from decimal import Decimal

import psycopg
import pytest
from django.db import DatabaseError, OperationalError, connection

from accounts.models import JournalEntry
from integrations.mpesa import payments as mpesa_payments
from integrations.mpesa.inbox import inbox_process, inbox_store, inbox_sweep
from integrations.mpesa.models import (
    InboxKind,
    InboxMessage,
    InboxState,
    Payment,
    PaymentRequest,
    StatusQuery,
    Till,
)
from integrations.mpesa.payloads import (
    RECEIPT_MAX_LENGTH,
    PayloadError,
    parse_c2b_confirmation,
    parse_stk_callback,
)
from integrations.mpesa.tasks import process_inbox
from operations.models import Customer
from operations.payments import Placed
from tests.factories.mpesa import c2b_confirmation, stk_success
from tests.factories.operations import CustomerFactory

pytestmark = pytest.mark.django_db


def store(till: Till, receipt: str, bill_ref: str = "") -> InboxMessage:
    body = c2b_confirmation(trans_id=receipt, shortcode=till.shortcode, bill_ref=bill_ref)
    inbox_id = inbox_store(
        till_id=till.pk, kind=InboxKind.C2B_CONFIRMATION, daraja_id=receipt, body=body, headers={}, remote_addr=None
    )
    assert inbox_id is not None
    return InboxMessage.objects.get(pk=inbox_id)


def known_customer(till: Till) -> Customer:
    c = CustomerFactory.build(business=till.business, name="Hotel", account_code="HOTEL7")
    c.clean()
    c.save()
    return c


@pytest.fixture
def listener_fails_for(monkeypatch: pytest.MonkeyPatch) -> Callable[..., None]:
    """Make operations' recording of a placed payment (operations.payments.payment_placed) raise for one receipt."""

    def arrange(receipt: str, fail: Callable[[], None]) -> None:
        real = mpesa_payments.payment_placed

        def placed(*, business_id: int, receipt: str, placed: Placed) -> None:
            if receipt == failing:
                fail()
            real(business_id=business_id, receipt=receipt, placed=placed)

        failing = receipt
        monkeypatch.setattr(mpesa_payments, "payment_placed", placed)

    return arrange


def _runtime_error() -> None:
    raise RuntimeError("listener broke")


def test_a_listener_error_is_recorded_on_its_row_and_the_batch_goes_on(
    till: Till, listener_fails_for: Callable[..., None]
) -> None:
    known_customer(till)
    listener_fails_for("TKB0000001", _runtime_error)
    bad, good = store(till, "TKB0000001", "HOTEL7"), store(till, "TKB0000002", "HOTEL7")

    outcomes = process_inbox.run([bad.pk, good.pk])

    bad.refresh_from_db()
    good.refresh_from_db()
    assert bad.state == InboxState.FAILED and bad.attempts == 1
    assert bad.error == "RuntimeError: listener broke"
    assert "Traceback (most recent call last)" in bad.traceback and "listener broke" in bad.traceback
    assert not Payment.objects.filter(receipt="TKB0000001").exists()  # its attempt was rolled back
    assert not JournalEntry.objects.filter(idempotency_key="mpesa:TKB0000001").exists()
    assert good.state == InboxState.PROCESSED
    assert Payment.objects.get(receipt="TKB0000002").customer is not None
    assert outcomes[0].startswith("failed: RuntimeError") and outcomes[1].startswith("posted TKB0000002")


def test_a_row_failing_again_and_again_is_parked_for_a_person(
    till: Till, listener_fails_for: Callable[..., None], settings: object
) -> None:
    settings.MPESA_MAX_ATTEMPTS = 3  # type: ignore[attr-defined]
    known_customer(till)
    listener_fails_for("TKB0000003", _runtime_error)
    row = store(till, "TKB0000003", "HOTEL7")

    states = []
    for _ in range(3):
        InboxMessage.objects.filter(pk=row.pk).update(last_enqueued_at=None)
        inbox_process(inbox_id=row.pk)
        row.refresh_from_db()
        states.append(row.state)

    assert states == [InboxState.FAILED, InboxState.FAILED, InboxState.NEEDS_ATTENTION]
    assert row.attempts == 3 and row.outcome == "needs a person: failed 3 times"
    assert row.error == "RuntimeError: listener broke"
    # Parked: the sweeper no longer sends it, and processing leaves it alone.
    InboxMessage.objects.filter(pk=row.pk).update(received_at=row.received_at.replace(year=2020))
    assert inbox_sweep(min_age_seconds=0) == 0
    assert inbox_process(inbox_id=row.pk) == "already attention"


def _bad_sql() -> None:
    with connection.cursor() as cursor:
        cursor.execute("SELECT 'not a number'::integer")


def _bad_sql_swallowed_then_go_on() -> None:
    with connection.cursor() as cursor:
        # What a careless listener does: the error is swallowed, the transaction stays aborted.
        with contextlib.suppress(DatabaseError):
            cursor.execute("SELECT 'not a number'::integer")
        cursor.execute("SELECT 1")


@pytest.mark.django_db(transaction=True)
@pytest.mark.parametrize(
    ("fail", "error"),
    [
        (_bad_sql, "DataError: invalid input syntax for type integer"),
        (_bad_sql_swallowed_then_go_on, "InternalError: current transaction is aborted"),
    ],
)
def test_a_database_error_that_aborted_the_transaction_is_still_recorded(
    till: Till, listener_fails_for: Callable[..., None], fail: Callable[[], None], error: str
) -> None:
    """A real DataError inside the posting transaction (PostgreSQL aborts the transaction; in the
    second case the next statement fails too). The failure is recorded after the rollback, in a
    transaction of its own, and the next row of the batch is posted."""
    known_customer(till)
    listener_fails_for("TKB0000004", fail)
    bad, good = store(till, "TKB0000004", "HOTEL7"), store(till, "TKB0000005", "HOTEL7")

    process_inbox.run([bad.pk, good.pk])

    bad.refresh_from_db()
    assert bad.state == InboxState.FAILED and bad.attempts == 1
    assert bad.error.startswith(error) and "\n" not in bad.error
    assert bad.traceback.startswith("Traceback") and error.split(":")[0] in bad.traceback
    assert InboxMessage.objects.get(pk=good.pk).state == InboxState.PROCESSED
    assert list(Payment.objects.values_list("receipt", flat=True)) == ["TKB0000005"]


@pytest.fixture
def receipt_lock_held() -> Iterator[Callable[[str], None]]:
    """Hold the receipt's advisory lock from another session (as a slow posting of it would)."""
    s = connection.settings_dict
    other = psycopg.connect(
        dbname=s["NAME"], user=s["USER"], password=s["PASSWORD"] or None, host=s["HOST"], port=s["PORT"] or None
    )
    other.autocommit = True

    def hold(receipt: str) -> None:
        other.execute("SELECT pg_advisory_lock(hashtextextended(%s, 0))", [f"mpesa:{receipt}"])

    yield hold
    other.close()


@pytest.mark.django_db(transaction=True)
def test_a_transient_error_counts_an_attempt_and_retries_until_parked(
    till: Till, receipt_lock_held: Callable[[str], None], settings: object
) -> None:
    settings.MPESA_LOCK_TIMEOUT_SECONDS = 0.2  # type: ignore[attr-defined]
    settings.MPESA_MAX_ATTEMPTS = 2  # type: ignore[attr-defined]
    receipt_lock_held("TKB0000006")
    held, good = store(till, "TKB0000006"), store(till, "TKB0000007")

    # First failure: counted, recorded, and the task retries from this row (called directly,
    # Celery's retry re-raises the error).
    with pytest.raises(OperationalError):
        process_inbox.run([held.pk, good.pk])
    held.refresh_from_db()
    assert held.state == InboxState.FAILED and held.attempts == 1
    assert "lock timeout" in held.error and "Traceback" in held.traceback
    assert InboxMessage.objects.get(pk=good.pk).state == InboxState.RECEIVED

    # Second failure: the limit; parked for a person, and the batch goes on without it.
    outcomes = process_inbox.run([held.pk, good.pk])
    held.refresh_from_db()
    assert held.state == InboxState.NEEDS_ATTENTION and held.attempts == 2
    assert outcomes[0].startswith("attention: OperationalError")
    assert InboxMessage.objects.get(pk=good.pk).state == InboxState.PROCESSED
    assert not Payment.objects.filter(receipt="TKB0000006").exists()


# ---------------------------------------------------------------------------------- receipt length


def test_receipt_columns_are_as_wide_as_the_parser_allows() -> None:
    for model in (Payment, PaymentRequest, StatusQuery):
        assert model._meta.get_field("receipt").max_length == RECEIPT_MAX_LENGTH
    assert RECEIPT_MAX_LENGTH >= 10  # today's M-Pesa receipts


@pytest.mark.parametrize(("length", "ok"), [(10, True), (RECEIPT_MAX_LENGTH, True), (RECEIPT_MAX_LENGTH + 1, False)])
def test_the_parser_refuses_receipts_longer_than_the_columns(length: int, ok: bool) -> None:
    receipt = ("TK" + "A" * 40)[:length]
    stk = stk_success(checkout_id="ws_CO_LEN", receipt=receipt)
    c2b = c2b_confirmation(trans_id=receipt, shortcode="600966")
    if ok:
        assert parse_stk_callback(stk).mpesa_receipt_number == receipt
        assert parse_c2b_confirmation(c2b).trans_id == receipt
    else:
        with pytest.raises(PayloadError, match="too long"):
            parse_stk_callback(stk)
        with pytest.raises(PayloadError, match="too long"):
            parse_c2b_confirmation(c2b)


def test_a_callback_with_a_receipt_too_long_for_the_columns_needs_a_person(till: Till) -> None:
    """Before: the parser took up to 32 characters, the INSERT failed with DataError (varchar(20))
    and the row stayed "received" with no error, retried for ever."""
    receipt = "TK" + "9" * 30
    body = stk_success(checkout_id="ws_CO_LONG", receipt=receipt)
    inbox_id = inbox_store(
        till_id=till.pk, kind=InboxKind.STK_CALLBACK, daraja_id="ws_CO_LONG", body=body, headers={}, remote_addr=None
    )
    assert inbox_id is not None

    inbox_process(inbox_id=inbox_id)

    row = InboxMessage.objects.get(pk=inbox_id)
    assert row.state == InboxState.NEEDS_ATTENTION and "too long" in row.error and "PayloadError" in row.error
    assert Payment.objects.count() == 0


def test_a_receipt_of_the_full_width_posts(till: Till) -> None:
    receipt = "TK" + "1" * (RECEIPT_MAX_LENGTH - 2)
    row = store(till, receipt)
    inbox_process(inbox_id=row.pk)
    assert Payment.objects.get().receipt == receipt and Payment.objects.get().amount == Decimal("5.00")

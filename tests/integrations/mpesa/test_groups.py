"""Payment callbacks recorded in groups (inbox.inbox_process_group, through payments.process_inbox):
one transaction for many rows, each recorded exactly once; a row that fails takes no other row
down with it; rows waiting in the inbox are taken, never one another task holds; a worker killed in
the middle of a group leaves nothing behind, and every row is posted once after redelivery."""

from __future__ import annotations

import datetime as dt
import time
from collections.abc import Callable
from decimal import Decimal
from typing import Any
from unittest.mock import ANY

import psycopg
import pytest
import redis
from django.db import connection
from django.test.utils import CaptureQueriesContext
from django.utils import timezone

from accounts.models import Account, JournalEntry, SourceType
from accounts.services import LineSpec, entry_post
from integrations.mpesa import inbox
from integrations.mpesa import payments as mpesa_payments
from integrations.mpesa.inbox import inbox_process_group, inbox_store
from integrations.mpesa.models import (
    InboxKind,
    InboxMessage,
    InboxState,
    Payment,
    PaymentApplication,
    PaymentRequestState,
    Till,
)
from integrations.mpesa.publisher import inbox_enqueue
from integrations.mpesa.tasks import process_inbox
from operations.models import Customer
from operations.payments import Placed
from operations.phones import msisdn_sha256
from tests import celery_support
from tests.celery_support import WorkerProcess, wait_for, worker_env
from tests.factories.mpesa import PaymentRequestFactory, c2b_confirmation, stk_success
from tests.factories.operations import CustomerFactory

pytestmark = pytest.mark.django_db


def store(till: Till, kind: str, body: bytes, daraja_id: str) -> int:
    inbox_id = inbox_store(till_id=till.pk, kind=kind, daraja_id=daraja_id, body=body, headers={}, remote_addr=None)
    assert inbox_id is not None
    return inbox_id


def confirmation(till: Till, receipt: str, *, amount: str = "30.00", bill_ref: str = "", phone: str = "") -> int:
    msisdn = msisdn_sha256(phone) if phone else "2547 ***** 126"
    body = c2b_confirmation(trans_id=receipt, shortcode=till.shortcode, amount=amount, bill_ref=bill_ref, msisdn=msisdn)
    return store(till, InboxKind.C2B_CONFIRMATION, body, receipt)


def entries(receipt: str) -> int:
    return JournalEntry.objects.filter(idempotency_key=f"mpesa:{receipt}").count()


def states(ids: list[int]) -> list[str]:
    found = dict(InboxMessage.objects.filter(pk__in=ids).values_list("pk", "state"))
    return [found[i] for i in ids]


def customer(till: Till, **fields: str) -> Customer:
    c = CustomerFactory.build(business=till.business, **fields)
    c.clean()
    c.save()
    return c


@pytest.fixture
def listener_fails_for(monkeypatch: pytest.MonkeyPatch) -> Callable[[set[str]], None]:
    """Make operations' recording of a placed payment raise for the given receipts."""

    def arrange(receipts: set[str]) -> None:
        real = mpesa_payments.payment_placed

        def placed(*, business_id: int, receipt: str, placed: Placed) -> None:
            if receipt in receipts:
                raise RuntimeError(f"listener broke on {receipt}")
            real(business_id=business_id, receipt=receipt, placed=placed)

        monkeypatch.setattr(mpesa_payments, "payment_placed", placed)

    return arrange


def test_a_group_records_every_payment_once_with_a_few_statements(till: Till) -> None:
    """Thirty confirmations, a customer's among them, and an STK callback with the C2B confirmation
    of its receipt: one group, each row processed once, each receipt posted once; the statements
    besides the ledger's own (one per entry) do not grow with the number of rows."""
    buyer = customer(till, name="Amina", phone="0708374149")
    request = PaymentRequestFactory.create(till=till, phone="254708374149", amount=Decimal("150.00"))
    ids = [confirmation(till, f"TKG{n:07d}", phone=f"25471{n:07d}") for n in range(28)]
    ids.append(confirmation(till, "TKG1000000", phone="254708374149"))
    body = stk_success(checkout_id=request.checkout_request_id, receipt="TKG2000000", amount=150)
    ids.append(store(till, InboxKind.STK_CALLBACK, body, request.checkout_request_id))
    ids.append(confirmation(till, "TKG2000000", amount="150.00"))

    with CaptureQueriesContext(connection) as queries:
        result = inbox_process_group(inbox_ids=ids)

    assert result.alone == [] and sorted(result.outcomes) == sorted(ids)
    assert states(ids) == [InboxState.PROCESSED] * len(ids)
    assert set(InboxMessage.objects.filter(pk__in=ids).values_list("attempts", flat=True)) == {1}
    assert Payment.objects.count() == 30
    assert JournalEntry.objects.filter(idempotency_key__startswith="mpesa:").count() == 30
    assert Payment.objects.get(receipt="TKG1000000").customer == buyer
    pair = Payment.objects.get(receipt="TKG2000000")
    assert pair.payment_request == request and pair.payer_name == "NICHOLAS" and pair.customer == buyer
    request.refresh_from_db()
    assert request.state == PaymentRequestState.PAID and request.receipt == "TKG2000000"
    assert entries("TKG2000000") == 1
    # One row at a time this took about ten statements per row (300 here). Now: about a dozen for
    # the group, what the STK request's own reference and row take, and operations' listener for
    # the two payments of a customer (two each).
    statements = [
        q["sql"] for q in queries.captured_queries if "accounts_journal" not in q["sql"] and "SAVEPOINT" not in q["sql"]
    ]
    assert len(statements) <= 20, statements


def test_rows_that_fail_in_a_group_go_alone_and_the_others_post(
    till: Till, listener_fails_for: Callable[[set[str]], None]
) -> None:
    """A listener error on one row and a receipt announced with another amount on another: each is
    recorded on its own row (failed with its traceback; held for a person), nothing of theirs is
    posted, and the other rows of the message are posted once, in the same task run."""
    customer(till, name="Hotel", account_code="HOTEL7")
    listener_fails_for({"TKF0000003"})
    first = process_inbox.run([confirmation(till, "TKF0000004", amount="40.00")])
    assert first[0].startswith("posted TKF0000004")
    ids = [
        confirmation(till, "TKF0000001"),
        confirmation(till, "TKF0000002", bill_ref="HOTEL7"),
        confirmation(till, "TKF0000003", bill_ref="HOTEL7"),
        store(
            till,
            InboxKind.STK_CALLBACK,
            stk_success(checkout_id="ws_CO_UNKNOWN0001", receipt="TKF0000004", amount=41),
            "ws_CO_UNKNOWN0001",
        ),
        confirmation(till, "TKF0000005"),
    ]

    outcomes = process_inbox.run(ids)

    assert states(ids) == [
        InboxState.PROCESSED,
        InboxState.PROCESSED,
        InboxState.FAILED,
        InboxState.NEEDS_ATTENTION,
        InboxState.PROCESSED,
    ]
    failed = InboxMessage.objects.get(pk=ids[2])
    assert failed.attempts == 1 and failed.error == "RuntimeError: listener broke on TKF0000003"
    assert "Traceback (most recent call last)" in failed.traceback
    assert "now announced as 41.00" in InboxMessage.objects.get(pk=ids[3]).error
    assert outcomes[2].startswith("failed: RuntimeError") and outcomes[3] == "needs a person"
    assert not Payment.objects.filter(receipt="TKF0000003").exists() and entries("TKF0000003") == 0
    assert Payment.objects.get(receipt="TKF0000004").amount == Decimal("40.00")
    for receipt in ("TKF0000001", "TKF0000002", "TKF0000004", "TKF0000005"):
        assert entries(receipt) == 1
    assert Payment.objects.get(receipt="TKF0000002").customer is not None


def test_more_failing_rows_than_a_group_tolerates_send_every_row_alone(
    till: Till, listener_fails_for: Callable[[set[str]], None]
) -> None:
    customer(till, name="Hotel", account_code="HOTEL7")
    failing = {f"TKH000000{n}" for n in (1, 2, 4, 5)}
    listener_fails_for(failing)
    receipts = [f"TKH000000{n}" for n in range(1, 7)]
    ids = [confirmation(till, receipt, bill_ref="HOTEL7") for receipt in receipts]

    result = inbox_process_group(inbox_ids=ids)
    assert result.outcomes == {} and result.alone == ids  # three failures: the group gave up
    process_inbox.run(ids)

    for receipt, state in zip(receipts, states(ids), strict=True):
        assert state == (InboxState.FAILED if receipt in failing else InboxState.PROCESSED)
        assert entries(receipt) == (0 if receipt in failing else 1)


def test_a_group_that_fails_after_posting_leaves_nothing_and_its_rows_post_alone(
    till: Till, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The group's Payment rows fail to insert after every entry was posted (in its transaction):
    nothing of it stays, and each row is then posted once on its own."""

    def broken(self: mpesa_payments.PostingGroup) -> None:
        raise RuntimeError("insert failed")

    monkeypatch.setattr(mpesa_payments.PostingGroup, "flush", broken)
    ids = [confirmation(till, f"TKX000000{n}") for n in range(4)]

    result = inbox_process_group(inbox_ids=ids)

    assert result.outcomes == {} and result.alone == ids
    assert states(ids) == [InboxState.RECEIVED] * 4
    assert JournalEntry.objects.count() == 0 and Payment.objects.count() == 0
    monkeypatch.undo()
    outcomes = process_inbox.run(ids)
    assert all(o.startswith("posted TKX") for o in outcomes)
    assert [entries(f"TKX000000{n}") for n in range(4)] == [1, 1, 1, 1]


@pytest.mark.django_db(transaction=True)
def test_a_task_takes_waiting_rows_but_not_one_another_task_holds(till: Till) -> None:
    """A message with one row records the payments waiting behind it in the same group, except a
    row another transaction holds (SKIP LOCKED: no wait); that one's own message posts it later."""
    ids = [confirmation(till, f"TKW000000{n}") for n in range(5)]
    holder = psycopg.connect(celery_support.test_database_url())
    try:
        holder.execute("SELECT id FROM integrations_inboxmessage WHERE id = %s FOR UPDATE", [ids[3]])
        started = time.monotonic()
        outcomes = process_inbox.run([ids[0]])
        assert time.monotonic() - started < 5
        assert len(outcomes) == 4 and outcomes[0].startswith("posted TKW0000000")
        assert states(ids) == [InboxState.PROCESSED] * 3 + [InboxState.RECEIVED, InboxState.PROCESSED]
    finally:
        holder.close()
    assert process_inbox.run([ids[3]])[0].startswith("posted TKW0000003")
    assert process_inbox.run(ids[1:3]) == ["already processed", "already processed"]
    assert [entries(f"TKW000000{n}") for n in range(5)] == [1] * 5
    assert set(InboxMessage.objects.values_list("attempts", flat=True)) == {1}


@pytest.mark.django_db(transaction=True)
def test_a_message_whose_rows_are_settled_takes_waiting_rows_only_by_a_groups_worth_or_once_they_wait(
    till: Till, settings: Any
) -> None:
    """A message that comes after its rows were taken (a queue fallen behind) leaves a few rows just
    stored to their own messages; it takes them once half a group waits, or once one has waited
    TOP_UP_AGE_SECONDS (its own message lost or far behind)."""
    settings.MPESA_GROUP_SIZE = 10  # a message of one row takes up to 9 others; 4 are worth a group
    first = confirmation(till, "TKS0000000")
    assert process_inbox.run([first])[0].startswith("posted TKS0000000")
    fresh = [confirmation(till, f"TKS000000{n}") for n in range(1, 4)]
    assert process_inbox.run([first]) == ["already processed"]
    assert states(fresh) == [InboxState.RECEIVED] * 3
    # One more makes four waiting: half of the 9 the message may take, so it takes them.
    fresh.append(confirmation(till, "TKS0000004"))
    outcomes = process_inbox.run([first])
    assert outcomes[0] == "already processed" and len(outcomes) == 5
    assert states(fresh) == [InboxState.PROCESSED] * 4
    # Two rows waiting, the older for longer than TOP_UP_AGE_SECONDS: both are taken.
    late = [confirmation(till, f"TKS000000{n}") for n in range(5, 7)]
    assert process_inbox.run([first]) == ["already processed"]
    InboxMessage.objects.filter(pk=late[0]).update(
        received_at=timezone.now() - dt.timedelta(seconds=inbox.TOP_UP_AGE_SECONDS + 1)
    )
    assert process_inbox.run([first])[1:] == ["posted TKS0000005 KES 30.00: suspense (unallocated)", ANY]
    assert states(late) == [InboxState.PROCESSED] * 2
    assert [entries(f"TKS000000{n}") for n in range(7)] == [1] * 7


# ------------------------------------------------------------------------------ with a real worker

# A worker whose messages come back quickly after it dies (as test_delivery's), waiting long enough
# on a lock to be killed while it waits.
FAST = {
    "CELERY_TASK_TIME_LIMIT": "15",
    "CELERY_TASK_SOFT_TIME_LIMIT": "14",
    "CELERY_MAX_COUNTDOWN": "1",
    "CELERY_VISIBILITY_MARGIN": "2",
    "CELERY_VISIBILITY_TIMEOUT": "18",
    "CELERY_RESTORE_INTERVAL": "1",
    "CELERY_RESTORE_THROTTLE": "1",
    "MPESA_LOCK_TIMEOUT_SECONDS": "30",
}


def _waiting_on_a_lock(dbname: str) -> str:
    """The statement a session of `dbname` is waiting in for a lock ("" if none)."""
    with connection.cursor() as cursor:
        cursor.execute("SELECT query FROM pg_stat_activity WHERE datname = %s AND wait_event_type = 'Lock'", [dbname])
        row = cursor.fetchone()
    return str(row[0]) if row else ""


@pytest.mark.worker
@pytest.mark.slow
@pytest.mark.django_db(transaction=True)
def test_a_worker_killed_in_the_middle_of_a_group_posts_every_row_once_after_redelivery(
    clean_broker: redis.Redis, till: Till
) -> None:
    """Eight rows, four in the message and four waiting in the inbox (taken by the group). Another
    session has inserted, uncommitted, a Payment row under the last receipt, so the worker's group
    waits at its very end - every entry posted, the Payment rows being inserted - when the whole
    worker is SIGKILLed. Nothing of the group stays; after redelivery every row is processed once,
    every receipt posted once, and no row counts the killed attempt."""
    receipts = [f"TKK000000{n}" for n in range(8)]
    ids = [confirmation(till, receipt) for receipt in receipts]
    template, _ = mpesa_payments.payment_record(
        till=till,
        receipt="TKKSEED0001",
        amount=Decimal("1.00"),
        paid_at=InboxMessage.objects.get(pk=ids[0]).received_at,
        msisdn="",
        payer_name="",
        account_reference="",
        payment_request=None,
    )
    holder = psycopg.connect(celery_support.test_database_url())
    doomed = WorkerProcess("doomed-group", queues="payments", env=worker_env(**FAST))
    rescuer: WorkerProcess | None = None
    try:
        columns = [f.column for f in Payment._meta.concrete_fields if not f.primary_key]
        copied = ", ".join("%s" if column == "receipt" else column for column in columns)
        holder.execute(
            f"INSERT INTO integrations_payment ({', '.join(columns)}) "
            f"SELECT {copied} FROM integrations_payment WHERE id = %s",
            [receipts[-1], template.pk],
        )
        doomed.start()
        assert inbox_enqueue(ids[:4]) == 4
        waiting = wait_for(lambda: _waiting_on_a_lock(connection.settings_dict["NAME"]), 20, "the group to wait")
        assert waiting.startswith('INSERT INTO "integrations_payment"'), waiting  # every entry posted by now
        doomed.kill()
        holder.rollback()
        assert states(ids) == [InboxState.RECEIVED] * 8
        assert not Payment.objects.filter(receipt__in=receipts).exists()

        rescuer = WorkerProcess("rescuer-group", queues="payments", env=worker_env(**FAST)).start()
        wait_for(
            lambda: InboxMessage.objects.filter(pk__in=ids, state=InboxState.PROCESSED).count() == 8,
            60,
            "every row to be processed after redelivery",
        )
        time.sleep(1)
        assert set(InboxMessage.objects.filter(pk__in=ids).values_list("attempts", flat=True)) == {1}
        assert [entries(r) for r in receipts] == [1] * 8
        assert Payment.objects.filter(receipt__in=receipts).count() == 8
    finally:
        holder.close()
        doomed.kill()
        if rescuer:
            rescuer.stop()


@pytest.fixture
def ledger_statements(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """The statements sent that write journal entries (every psycopg cursor: Django's and the ledger's)."""
    sent: list[str] = []
    real = psycopg.Cursor.execute

    def execute(self: psycopg.Cursor[Any], query: Any, *args: Any, **kwargs: Any) -> Any:
        if "INSERT INTO accounts_journalentry" in str(query):
            sent.append(str(query))
        return real(self, query, *args, **kwargs)

    monkeypatch.setattr(psycopg.Cursor, "execute", execute)
    return sent


def test_a_group_posts_its_entries_with_one_statement_gap_free(till: Till, ledger_statements: list[str]) -> None:
    ids = [confirmation(till, f"TKS{n:07d}", amount=f"{10 + n}.00") for n in range(40)]

    result = inbox_process_group(inbox_ids=ids)

    assert result.alone == [] and states(ids) == [InboxState.PROCESSED] * 40
    assert len(ledger_statements) == 1
    posted = JournalEntry.objects.filter(business=till.business).order_by("number")
    assert list(posted.values_list("number", flat=True)) == list(range(1, 41))
    assert list(posted.values_list("idempotency_key", flat=True)) == [f"mpesa:TKS{n:07d}" for n in range(40)]
    for payment in Payment.objects.select_related("entry"):
        assert payment.entry.idempotency_key == f"mpesa:{payment.receipt}"
        assert payment.entry.lines.get(debit__gt=0).debit == payment.amount


def test_a_receipt_posted_before_with_other_content_goes_alone_and_the_group_posts_the_rest(
    till: Till, ledger_statements: list[str]
) -> None:
    clearing = Account.objects.get(business=till.business, role="mpesa_clearing")
    suspense = Account.objects.get(business=till.business, role="suspense")
    taken = entry_post(
        business=till.business,
        entry_date=timezone.localdate(),
        lines=[LineSpec(account=clearing, debit=Decimal("99.00")), LineSpec(account=suspense, credit=Decimal("99.00"))],
        memo="M-Pesa TKD0000002",
        source_type=SourceType.MPESA,
        source_ref="TKD0000002",
        idempotency_key="mpesa:TKD0000002",
    )
    ledger_statements.clear()
    ids = [confirmation(till, f"TKD000000{n}") for n in range(1, 5)]

    result = inbox_process_group(inbox_ids=ids)

    # The group's statement left the taken key out, its entry alone found the other content
    # (IdempotencyConflict) and rolled the group back; the group was recorded again without that
    # row: three statements writing entries.
    assert result.alone == [ids[1]] and sorted(result.outcomes) == sorted(ids[:1] + ids[2:])
    assert len(ledger_statements) == 3
    process_inbox.run([ids[1]])
    assert states(ids) == [InboxState.PROCESSED, InboxState.NEEDS_ATTENTION, InboxState.PROCESSED, InboxState.PROCESSED]
    assert "IdempotencyConflict" in InboxMessage.objects.get(pk=ids[1]).error
    assert not Payment.objects.filter(receipt="TKD0000002").exists()
    assert JournalEntry.objects.filter(idempotency_key="mpesa:TKD0000002").get() == taken
    for receipt in ("TKD0000001", "TKD0000003", "TKD0000004"):
        assert entries(receipt) == 1
    numbers = JournalEntry.objects.filter(business=till.business).order_by("number").values_list("number", flat=True)
    assert list(numbers) == [1, 2, 3, 4]


def test_two_payments_of_one_sale_in_a_group_apply_only_what_it_owes(till: Till) -> None:
    """The second placing on a sale waits for the first's to be recorded (its entry posted first), so
    it sees what the sale still owes: the sale is paid in full, the rest is the customer's credit."""
    from operations.models import ItemKind, PaymentMethod
    from operations.services.sales import LineInput, sale_create
    from tests.factories.operations import ItemFactory

    business = till.business
    item = ItemFactory.create(
        business=business, name="Refill", kind=ItemKind.SERVICE, price=Decimal("300.00"), sales_role="sales_refill"
    )
    buyer = customer(till, name="Akinyi")
    sale = sale_create(
        business=business,
        sale_date=timezone.localdate(),
        customer=buyer,
        payment_method=PaymentMethod.MPESA,
        lines=[LineInput(item, Decimal("1"))],
    )
    ids = [
        confirmation(till, "TKP0000001", amount="200.00", bill_ref=sale.number),
        confirmation(till, "TKP0000002", amount="10.00"),
        confirmation(till, "TKP0000003", amount="200.00", bill_ref=sale.number),
    ]

    result = inbox_process_group(inbox_ids=ids)

    assert result.alone == [] and states(ids) == [InboxState.PROCESSED] * 3
    sale.refresh_from_db()
    assert sale.amount_paid == Decimal("300.00")
    second = PaymentApplication.objects.get(payment__receipt="TKP0000003")
    assert (second.applied, second.credit, second.unallocated) == (Decimal("100.00"), Decimal("100.00"), Decimal("0"))
    assert PaymentApplication.objects.get(payment__receipt="TKP0000001").applied == Decimal("200.00")


def test_groups_of_any_size_leave_no_statement_text_on_the_connection(till: Till) -> None:
    """A group's ORM statements carry its rows' values (IN lists, the Payment rows' INSERT): psycopg
    kept the last 100 of them per connection in its prepared-statement bookkeeping, ~47 KB for a group
    of 100, sized by the largest groups (docs/worker-memory.md, "Soak"). Groups of 1 to 12 rows leave
    only the ledger's prepared posting statement, whatever their sizes."""
    connection.ensure_connection()
    manager = connection.connection._prepared
    n = 0
    for size in range(1, 13):
        ids = [confirmation(till, f"TKS{n + k:07d}", phone=f"25472{n + k:07d}") for k in range(size)]
        n += size
        result = inbox_process_group(inbox_ids=ids)
        assert result.alone == [] and states(ids) == [InboxState.PROCESSED] * size
    texts = [key[0] for key in [*manager._counts, *manager._names]]
    assert all(b"unnest" in text for text in texts), [text[:80] for text in texts]
    assert len(texts) <= 2

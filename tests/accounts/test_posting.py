"""Posting through entry_post: what it guarantees and what it refuses (before touching the database)."""

from __future__ import annotations

import datetime as dt
from decimal import Decimal

import pytest
from django.db import connection, transaction

from accounts.exceptions import (
    IdempotencyConflict,
    InvalidAccount,
    InvalidLine,
    LedgerError,
    PeriodLocked,
    UnbalancedEntry,
)
from accounts.models import Account, Books, EntrySeal, JournalEntry, JournalLine
from accounts.services import LineSpec, books_close_period, entry_post
from tests.accounts.conftest import fire_deferred
from tests.factories.accounts import acct, post, sale

pytestmark = pytest.mark.django_db


def test_posting_numbers_entries_and_seals_them_at_commit(water, owner, today):
    # Given a business with its chart
    # When two sales are posted
    first = sale(water, "116.00", acting_user=owner)
    second = sale(water, "58.00")
    # Then they are numbered 1 and 2, with their lines, user and posting time
    assert (first.number, second.number) == (1, 2)
    assert first.created_by_id == owner.pk and first.posted_at is not None and first.currency == "KES"
    assert JournalLine.objects.filter(entry=first).count() == 3
    assert Books.objects.get(business=water).last_number == 2
    # And the seals are written when the transaction commits
    assert not EntrySeal.objects.filter(entry__in=[first, second]).exists()
    fire_deferred()
    seals = dict(EntrySeal.objects.values_list("entry_id", "hash"))
    assert len(seals[first.pk]) == 64 and seals[first.pk] != seals[second.pk]


def test_amounts_are_stored_with_two_decimals(water, today):
    entry = post(water, [("cash", "10.1", 0), ("sales_refill", 0, "10.10")])
    assert list(entry.lines.order_by("id").values_list("debit", "credit")) == [
        (Decimal("10.10"), Decimal("0.00")),
        (Decimal("0.00"), Decimal("10.10")),
    ]


@pytest.mark.parametrize(
    ("lines", "error"),
    [
        ([], UnbalancedEntry),
        ([("cash", "10.00", 0)], UnbalancedEntry),
        ([("cash", "10.00", 0), ("sales_refill", 0, "9.99")], UnbalancedEntry),
        ([("cash", "10.01", 0), ("sales_refill", 0, "10.00")], UnbalancedEntry),
        ([("cash", "10.00", "10.00"), ("sales_refill", 0, "0")], InvalidLine),
        ([("cash", "-10.00", 0), ("sales_refill", "-10.00", 0)], InvalidLine),
        ([("cash", "0", 0), ("sales_refill", 0, "0")], InvalidLine),
        ([("cash", "10.005", 0), ("sales_refill", 0, "10.005")], InvalidLine),
        ([("cash", "NaN", 0), ("sales_refill", 0, "1")], InvalidLine),
    ],
    ids=[
        "no-lines",
        "one-line",
        "short-by-a-cent",
        "over-by-a-cent",
        "both-sides",
        "negative",
        "zero",
        "3-decimals",
        "nan",
    ],
)
def test_invalid_entries_are_refused_and_nothing_is_posted(water, lines, error):
    with pytest.raises(error):
        post(water, lines)
    assert not JournalEntry.objects.exists()
    assert Books.objects.get(business=water).last_number == 0


def test_accounts_must_be_active_leaf_accounts_of_the_business(water, laundry):
    cash = acct(water, "cash")
    # Another business's account
    with pytest.raises(InvalidAccount, match="another business"):
        entry_post(
            business=water,
            entry_date=dt.date.today(),
            memo="x",
            source_type="manual",
            idempotency_key="a",
            lines=[LineSpec(cash, debit=Decimal(1)), LineSpec(acct(laundry, "sales_ironing"), credit=Decimal(1))],
        )
    # The same, given by id: the database refuses it
    with pytest.raises(InvalidAccount, match="another business"):
        entry_post(
            business=water,
            entry_date=dt.date.today(),
            memo="x",
            source_type="manual",
            idempotency_key="b",
            lines=[LineSpec(cash.pk, debit=Decimal(1)), LineSpec(acct(laundry, "sales_ironing").pk, credit=Decimal(1))],
        )
    # A group account (it has children)
    group = Account.objects.get(business=water, role="group_sales")
    with pytest.raises(InvalidAccount, match="group account"):
        entry_post(
            business=water,
            entry_date=dt.date.today(),
            memo="x",
            source_type="manual",
            idempotency_key="c",
            lines=[LineSpec(cash.pk, debit=Decimal(1)), LineSpec(group.pk, credit=Decimal(1))],
        )
    # An inactive account
    Account.objects.filter(pk=cash.pk).update(is_active=False)
    with pytest.raises(InvalidAccount, match="inactive"):
        entry_post(
            business=water,
            entry_date=dt.date.today(),
            memo="x",
            source_type="manual",
            idempotency_key="d",
            lines=[LineSpec(cash.pk, debit=Decimal(1)), LineSpec(acct(water, "sales_refill").pk, credit=Decimal(1))],
        )
    # An account that does not exist
    with pytest.raises(InvalidAccount):
        entry_post(
            business=water,
            entry_date=dt.date.today(),
            memo="x",
            source_type="manual",
            idempotency_key="e",
            lines=[LineSpec(999_999, debit=Decimal(1)), LineSpec(acct(water, "sales_refill").pk, credit=Decimal(1))],
        )
    assert not JournalEntry.objects.exists()


def test_nothing_is_posted_on_or_before_the_lock_date(water, today):
    books_close_period(business=water, lock_date=today - dt.timedelta(days=1))
    for day in (today - dt.timedelta(days=1), today - dt.timedelta(days=30)):
        with pytest.raises(PeriodLocked):
            sale(water, day=day)
    assert sale(water, day=today).number == 1


def test_a_retry_with_the_same_key_and_content_returns_the_posted_entry(water):
    first = post(water, [("cash", "10.1", 0), ("sales_refill", 0, "10.10")], key="receipt-QK1")
    # Same content, amounts written differently and lines in another order
    again = post(water, [("sales_refill", 0, "10.10"), ("cash", "10.10", 0)], key="receipt-QK1")
    assert again.pk == first.pk and again.number == 1
    assert JournalEntry.objects.count() == 1
    assert Books.objects.get(business=water).last_number == 1


def test_the_same_key_with_other_content_is_an_error(water):
    post(water, [("cash", "10.00", 0), ("sales_refill", 0, "10.00")], key="receipt-QK2")
    with pytest.raises(IdempotencyConflict):
        post(water, [("cash", "10.01", 0), ("sales_refill", 0, "10.01")], key="receipt-QK2")
    with pytest.raises(IdempotencyConflict):
        post(water, [("cash", "10.00", 0), ("sales_refill", 0, "10.00")], key="receipt-QK2", memo="other memo")
    assert JournalEntry.objects.count() == 1


def test_keys_are_per_business(water, laundry):
    a = post(water, [("cash", 5, 0), ("sales_refill", 0, 5)], key="same")
    b = post(laundry, [("cash", 5, 0), ("sales_ironing", 0, 5)], key="same")
    assert a.pk != b.pk and (a.number, b.number) == (1, 1)


def test_a_refused_posting_inside_a_transaction_leaves_it_usable(water):
    # Given a caller's transaction with work in it
    with transaction.atomic():
        kept = sale(water)
        # When a posting inside it is refused by the database
        with pytest.raises(LedgerError):
            post(water, [("cash", 5, 0), ("group_sales", 0, 5)])
        # Then the transaction carries on and its other work stands
        again = sale(water)
    assert [kept.number, again.number] == [1, 2]
    fire_deferred()


def test_posting_refuses_reversal_source_and_bad_input(water, today):
    with pytest.raises(LedgerError, match="entry_reverse"):
        post(water, [("cash", 5, 0), ("sales_refill", 0, 5)], source_type="reversal")
    with pytest.raises(LedgerError, match="unknown source"):
        post(water, [("cash", 5, 0), ("sales_refill", 0, 5)], source_type="gift")
    with pytest.raises(LedgerError, match="idempotency key"):
        post(water, [("cash", 5, 0), ("sales_refill", 0, 5)], key=" ")
    with pytest.raises(LedgerError, match="a date"):
        entry_post(
            business=water,
            entry_date=dt.datetime.now(tz=dt.UTC),
            memo="x",
            source_type="sale",
            idempotency_key="k",
            lines=[
                LineSpec(acct(water, "cash"), debit=Decimal(1)),
                LineSpec(acct(water, "sales_refill"), credit=Decimal(1)),
            ],
        )
    with pytest.raises(LedgerError, match="longer than"):
        post(water, [("cash", 5, 0), ("sales_refill", 0, 5)], memo="x" * 300)


def test_float_input_is_read_as_typed_never_through_binary(water):
    entry = post(water, [("cash", 0.1, 0), ("cash", 0.2, 0), ("sales_refill", 0, 0.3)])
    assert sum(line.debit for line in entry.lines.all()) == Decimal("0.30")
    with connection.cursor() as cursor:
        cursor.execute("SELECT sum(debit) FROM accounts_journalline WHERE entry_id = %s", [entry.pk])
        assert cursor.fetchone()[0] == Decimal("0.30")


def test_postings_inside_a_transaction_take_no_savepoint(water):
    # Given a caller's transaction (the test's own)
    assert connection.in_atomic_block
    # When an entry is posted and then retried under the same key
    entry = sale(water, key="mpesa:QX1")
    again = sale(water, key="mpesa:QX1")
    # Then the rows were written by the transaction itself, not by a subtransaction (a savepoint's
    # rows carry the subtransaction's id: 64 of those in a transaction make every snapshot of the
    # server slower), and the retry returned the entry without taking a number
    with connection.cursor() as cursor:
        cursor.execute(
            "SELECT e.xmin::text = pg_current_xact_id()::text, bool_and(l.xmin::text = pg_current_xact_id()::text)"
            " FROM accounts_journalentry e JOIN accounts_journalline l ON l.entry_id = e.id WHERE e.id = %s"
            " GROUP BY e.xmin",
            [entry.pk],
        )
        assert cursor.fetchone() == (True, True)
    assert again.pk == entry.pk and Books.objects.get(business=water).last_number == 1
    fire_deferred()


def test_a_posting_refused_as_closed_inside_a_transaction_can_be_posted_on_an_open_day(water, today):
    # Given closed books up to yesterday and a caller's transaction with work in it (as the M-Pesa
    # payment recording does: it posts on the payment's day, or on the first open day when refused)
    books_close_period(business=water, lock_date=today - dt.timedelta(days=1))
    with transaction.atomic():
        kept = sale(water)
        with pytest.raises(PeriodLocked):
            sale(water, key="mpesa:QX2", day=today - dt.timedelta(days=3))
        # Then the transaction carries on: the same posting on an open day goes through
        moved = sale(water, key="mpesa:QX2", day=today)
    assert [kept.number, moved.number] == [1, 2]
    assert Books.objects.get(business=water).last_number == 2
    fire_deferred()


@pytest.mark.parametrize(
    "memo", ['a "quoted" memo', "back\\slash", "{braces},commas", "NULL", "  spaced  ", "ünïcødé €", ""]
)
def test_line_memos_are_stored_and_sealed_as_given(water, memo):
    cash, sales = acct(water, "cash"), acct(water, "sales_refill")
    entry = entry_post(
        business=water,
        entry_date=dt.date.today(),
        memo=memo,
        source_type="manual",
        idempotency_key="memo-1",
        lines=[LineSpec(cash, debit=Decimal(5), memo=memo), LineSpec(sales, credit=Decimal(5), memo=memo + "!")],
    )
    assert list(JournalLine.objects.filter(entry=entry).order_by("id").values_list("memo", flat=True)) == [
        memo,
        memo + "!",
    ]
    fire_deferred()

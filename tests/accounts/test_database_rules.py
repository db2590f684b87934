"""Each rule PostgreSQL keeps, tried and broken through the ORM and through raw SQL.

Most of these tests commit (transaction=True): the balance and seal checks run at COMMIT. The suite runs
as the application role, which may not UPDATE, DELETE or TRUNCATE the ledger's rows at all
(tests/accounts/test_db_roles.py); the tests that try those run as the tables' owner (`table_owner`), to
show the triggers refuse them even to the role that has every privilege on the tables.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Callable
from decimal import Decimal
from typing import Any

import pytest
from django.db import DatabaseError, IntegrityError, connection, transaction

from accounts.models import Account, AccountDayTotal, Books, EntrySeal, JournalEntry, JournalLine
from accounts.services import books_close_period
from tests.accounts.conftest import superuser_bypass
from tests.factories.accounts import acct, sale

pytestmark = pytest.mark.django_db(transaction=True)


def sqlstate(excinfo: pytest.ExceptionInfo[BaseException]) -> str | None:
    cause = excinfo.value.__cause__ or excinfo.value
    return getattr(cause, "sqlstate", None)


def raw_entry(cursor, business, *, day=None, key="raw-1", number=None) -> int:
    """INSERT an entry row by hand; returns its id."""
    cursor.execute(
        "INSERT INTO accounts_journalentry (business_id, entry_date, memo, source_type, source_ref, idempotency_key,"
        " currency, number) VALUES (%s, %s, 'raw', 'manual', '', %s, 'KES', %s) RETURNING id",
        [business.pk, day or dt.date.today(), key, number or 0],
    )
    return cursor.fetchone()[0]


def raw_line(cursor, entry_id: int, account: Account, debit: str = "0", credit: str = "0") -> None:
    cursor.execute(
        "INSERT INTO accounts_journalline (entry_id, account_id, debit, credit, memo) VALUES (%s, %s, %s, %s, '')",
        [entry_id, account.pk, Decimal(debit), Decimal(credit)],
    )


def committed(fn: Callable[[], Any]) -> Any:
    """Run `fn` in a transaction of its own and COMMIT it (the deferred checks run then)."""
    with transaction.atomic():
        return fn()


def raw_post(business, lines, *, key="raw-1", number=None) -> int:
    """Post by hand with raw SQL, lines as (role, debit, credit), and COMMIT; returns the entry id."""
    with transaction.atomic(), connection.cursor() as cursor:
        entry_id = raw_entry(cursor, business, key=key, number=number)
        for role, debit, credit in lines:
            raw_line(cursor, entry_id, acct(business, role), debit=debit, credit=credit)
    return entry_id


def orm_post(business, lines, *, key="orm-1", number=None) -> JournalEntry:
    """Post through the bare ORM (create + bulk_create, no service), and COMMIT."""
    with transaction.atomic():
        entry = JournalEntry.objects.create(
            business=business,
            entry_date=dt.date.today(),
            source_type="manual",
            idempotency_key=key,
            number=number or 0,
        )
        JournalLine.objects.bulk_create(
            [
                JournalLine(entry=entry, account=acct(business, role), debit=Decimal(debit), credit=Decimal(credit))
                for role, debit, credit in lines
            ]
        )
    return entry


# --- every entry balances and has at least two lines, checked at commit ---------------------------

UNBALANCED = [("cash", "10.00", "0"), ("sales_refill", "0", "9.99")]


def test_raw_sql_unbalanced_entry_fails_at_commit(water):
    with pytest.raises(IntegrityError, match="does not balance") as excinfo:
        raw_post(water, UNBALANCED)
    assert sqlstate(excinfo) == "23L01"
    assert not JournalEntry.objects.exists()


def test_orm_unbalanced_entry_fails_at_commit(water):
    with pytest.raises(IntegrityError, match="does not balance"):
        orm_post(water, [("cash", "10.00", "0"), ("sales_refill", "0", "10.01")])
    assert not JournalEntry.objects.exists()


def test_orm_balanced_entry_is_numbered_and_sealed(water):
    entry = orm_post(water, [("cash", "10.00", "0"), ("sales_refill", "0", "10.00")], number=77)
    entry.refresh_from_db()
    # The database assigned the number (not 77) and sealed the entry at commit.
    assert entry.number == 1
    assert EntrySeal.objects.filter(entry=entry).exists()


@pytest.mark.parametrize("lines", [[], [("cash", "10.00", "0")]], ids=["no-lines", "one-line"])
def test_entries_with_fewer_than_two_lines_fail_at_commit(water, lines):
    with pytest.raises(IntegrityError, match="at least two") as excinfo:
        raw_post(water, lines)
    assert sqlstate(excinfo) == "23L01"
    with pytest.raises(IntegrityError, match="at least two"):
        orm_post(water, lines)
    assert not JournalEntry.objects.exists()


@pytest.mark.parametrize(
    ("debit", "credit"),
    [("10.00", "10.00"), ("0", "0"), ("-10.00", "0"), ("0", "-10.00")],
    ids=["both-sides", "zero", "negative-debit", "negative-credit"],
)
def test_a_line_is_one_positive_side(water, debit, credit):
    bad = [("cash", debit, credit), ("sales_refill", "0", "10.00")]
    with pytest.raises(IntegrityError, match="line_one_positive_side"):
        raw_post(water, bad)
    with pytest.raises(IntegrityError, match="line_one_positive_side"):
        orm_post(water, bad)


def move_line(line_id: int, entry_id: int, *, compensate_with: Account | None = None) -> None:
    """Move a line to another entry (and optionally add a credit there to keep it balanced); COMMIT."""
    with transaction.atomic(), connection.cursor() as cursor:
        cursor.execute("UPDATE accounts_journalline SET entry_id = %s WHERE id = %s", [entry_id, line_id])
        if compensate_with is not None:
            raw_line(cursor, entry_id, compensate_with, credit="116.00")


def test_orm_moving_a_line_to_another_entry_fails_at_commit_without_the_immutability_trigger(water, table_owner):
    # Given two posted entries and the tables' owner, who disabled the immutability trigger on lines
    a, b = sale(water, "116.00"), sale(water, "116.00")
    moved = JournalLine.objects.filter(entry=a, debit__gt=0).get()
    # When a line is moved from A to B through the ORM
    with (
        superuser_bypass("accounts_journalline", trigger="journal_line_immutable"),
        pytest.raises(IntegrityError, match="does not balance") as excinfo,
    ):
        committed(lambda: JournalLine.objects.filter(pk=moved.pk).update(entry=b))
    # Then the commit fails and the line is where it was
    assert sqlstate(excinfo) == "23L01"
    assert JournalLine.objects.get(pk=moved.pk).entry_id == a.pk


def test_moving_a_line_is_caught_by_the_old_entry_check(water, table_owner):
    # B gets the line and a matching credit, so B still balances: only checking A, the line's OLD
    # entry, catches the move.
    a, b = sale(water, "116.00"), sale(water, "116.00")
    moved = JournalLine.objects.filter(entry=a, debit__gt=0).get()
    with (
        superuser_bypass("accounts_journalline", trigger="journal_line_immutable"),
        superuser_bypass("accounts_journalline", trigger="journal_line_inserted"),
        pytest.raises(IntegrityError, match=f"journal entry {a.pk} does not balance"),
    ):
        move_line(moved.pk, b.pk, compensate_with=acct(water, "suspense"))
    assert JournalLine.objects.get(pk=moved.pk).entry_id == a.pk


# --- posted rows cannot be updated, deleted or truncated ----------------------------------------


def test_posted_entries_cannot_be_updated_or_deleted(water, table_owner):
    entry = sale(water)
    with pytest.raises(DatabaseError, match="cannot be changed"):
        JournalEntry.objects.filter(pk=entry.pk).update(memo="changed")
    entry.memo = "changed"
    with pytest.raises(DatabaseError, match="cannot be changed"):
        entry.save()
    with pytest.raises(DatabaseError, match="cannot be changed"), connection.cursor() as cursor:
        cursor.execute("UPDATE accounts_journalentry SET entry_date = entry_date - 1 WHERE id = %s", [entry.pk])
    with pytest.raises(DatabaseError, match="cannot be changed"), connection.cursor() as cursor:
        cursor.execute("DELETE FROM accounts_journalentry WHERE id = %s", [entry.pk])
    with pytest.raises(DatabaseError):
        JournalEntry.objects.filter(pk=entry.pk).delete()
    assert JournalEntry.objects.get(pk=entry.pk).memo == "test entry"


def test_posted_lines_cannot_be_updated_or_deleted(water, table_owner):
    entry = sale(water)
    line = entry.lines.earliest("id")
    with pytest.raises(DatabaseError, match="cannot be changed"):
        JournalLine.objects.filter(pk=line.pk).update(debit=Decimal("1.00"))
    with pytest.raises(DatabaseError, match="cannot be changed"):
        JournalLine.objects.filter(entry=entry).delete()
    with pytest.raises(DatabaseError, match="cannot be changed"), connection.cursor() as cursor:
        cursor.execute("UPDATE accounts_journalline SET memo = 'x' WHERE entry_id = %s", [entry.pk])
    with pytest.raises(DatabaseError, match="cannot be changed"), connection.cursor() as cursor:
        cursor.execute("DELETE FROM accounts_journalline WHERE entry_id = %s", [entry.pk])
    assert entry.lines.count() == 3


@pytest.mark.parametrize(
    "table", ["accounts_journalentry", "accounts_journalline", "accounts_entryseal", "accounts_accountdaytotal"]
)
def test_the_ledger_cannot_be_truncated(water, table, table_owner):
    sale(water)
    with pytest.raises(DatabaseError, match="cannot be truncated"), connection.cursor() as cursor:
        cursor.execute(f"TRUNCATE {table} CASCADE")
    assert JournalEntry.objects.count() == 1


def test_what_entries_and_lines_refer_to_cannot_be_deleted(water, owner_cursor):
    # Since migration 0009 lines, seals and entries have no foreign keys to their entry, account and
    # business: the triggers check those at insert, and none of them can be deleted afterwards - tried
    # with raw SQL as the tables' owner and as the application role.
    from tenancy.models import Business

    entry = sale(water)
    account_id = entry.lines.earliest("id").account_id
    attempts = [
        ("DELETE FROM accounts_account WHERE id = %s", account_id),
        (f"DELETE FROM {Business._meta.db_table} WHERE id = %s", water.pk),
        ("DELETE FROM accounts_books WHERE business_id = %s", water.pk),
    ]
    for sql, arg in attempts:
        with pytest.raises(DatabaseError):
            owner_cursor.execute(sql, [arg])
        with pytest.raises(DatabaseError), transaction.atomic(), connection.cursor() as cursor:
            cursor.execute(sql, [arg])
    assert Account.objects.filter(pk=account_id).exists()
    assert Business.objects.filter(pk=water.pk).exists()
    assert Books.objects.filter(pk=water.pk).exists()
    assert JournalLine.objects.filter(entry=entry).count() == 3
    assert EntrySeal.objects.filter(entry=entry).exists()


def test_lines_cannot_be_added_to_a_posted_entry(water):
    entry = sale(water)
    with pytest.raises(DatabaseError, match="is posted"):
        JournalLine.objects.create(entry=entry, account=acct(water, "cash"), debit=Decimal("1.00"))
    with pytest.raises(DatabaseError, match="is posted"), connection.cursor() as cursor:
        raw_line(cursor, entry.pk, acct(water, "cash"), debit="1.00")


def test_seals_and_daily_totals_are_written_by_the_triggers_only(water, table_owner):
    entry = sale(water)
    seal = EntrySeal.objects.get(entry=entry)
    with pytest.raises(DatabaseError, match="cannot be changed"):
        EntrySeal.objects.filter(pk=seal.pk).update(hash="0" * 64)
    with pytest.raises(DatabaseError, match="written by the ledger triggers"), connection.cursor() as cursor:
        cursor.execute("INSERT INTO accounts_entryseal (entry_id, hash) VALUES (%s, %s)", [entry.pk, "f" * 64])
    with pytest.raises(DatabaseError, match="written by the ledger triggers"):
        AccountDayTotal.objects.filter(account=acct(water, "cash")).update(debit=Decimal("1.00"))
    with pytest.raises(DatabaseError, match="cannot be changed"):
        AccountDayTotal.objects.all().delete()


# --- the lock date ---------------------------------------------------------------------------------


def test_raw_sql_cannot_post_on_or_before_the_lock_date(water):
    yesterday = dt.date.today() - dt.timedelta(days=1)
    books_close_period(business=water, lock_date=yesterday)
    with pytest.raises(DatabaseError, match="the period is closed") as excinfo, connection.cursor() as cursor:
        raw_entry(cursor, water, day=yesterday)
    assert sqlstate(excinfo) == "23L03"
    with pytest.raises(DatabaseError, match="the period is closed"):
        JournalEntry.objects.create(
            business=water, entry_date=yesterday - dt.timedelta(days=9), source_type="manual", idempotency_key="late"
        )


def test_the_lock_date_only_moves_forward_whatever_writes_it(water):
    books_close_period(business=water, lock_date=dt.date.today() - dt.timedelta(days=1))
    with pytest.raises(DatabaseError, match="only moves forward"):
        Books.objects.filter(business=water).update(lock_date=dt.date.today() - dt.timedelta(days=2))
    with pytest.raises(DatabaseError, match="only moves forward"), connection.cursor() as cursor:
        cursor.execute("UPDATE accounts_books SET lock_date = NULL WHERE business_id = %s", [water.pk])
    Books.objects.filter(business=water).update(lock_date=dt.date.today())
    assert Books.objects.get(business=water).lock_date == dt.date.today()


# --- idempotency keys, numbering ------------------------------------------------------------------


def test_an_idempotency_key_posts_once_even_through_raw_sql(water):
    sale(water, key="k-1")
    with pytest.raises(IntegrityError, match="entry_business_idempotency_uniq"):
        raw_post(water, [("cash", "1.00", "0"), ("sales_refill", "0", "1.00")], key="k-1")
    assert JournalEntry.objects.count() == 1


def insert_without_triggers(cursor, business, *, key: str, number: int) -> None:
    """As a superuser with the triggers switched off for the session."""
    cursor.execute("SET session_replication_role = replica")
    try:
        raw_entry(cursor, business, key=key, number=number)
    finally:
        cursor.execute("SET session_replication_role = DEFAULT")


def test_numbers_have_no_gaps_even_after_failed_postings(water, owner_cursor, superuser_cursor):
    sale(water)
    with pytest.raises(IntegrityError, match="at least two"):
        raw_post(water, [], key="fails", number=2)  # fails at commit: rolled back with its number
    # A number asked for is ignored: the database assigns the next one
    raw_post(water, [("cash", "1.00", "0"), ("sales_refill", "0", "1.00")], key="ok", number=500)
    # The counter cannot be moved by hand: the application role may not UPDATE it at all (the numbering
    # function writes it as the tables' owner) ...
    with pytest.raises(DatabaseError, match="permission denied") as excinfo:
        Books.objects.filter(business=water).update(last_number=10)
    assert sqlstate(excinfo) == "42501"
    # ... and the owner, who may, is refused by the books guard, even for a move by one
    for statement in ("last_number = 10", "last_number = last_number + 1"):
        with pytest.raises(DatabaseError, match="assigned by posting only") as excinfo:
            owner_cursor.execute(f"UPDATE accounts_books SET {statement} WHERE business_id = %s", [water.pk])
        assert sqlstate(excinfo) == "23L06"
    # Even with the triggers off a number is used once
    with pytest.raises(IntegrityError, match="entry_business_number_uniq"):
        insert_without_triggers(superuser_cursor, water, key="dup", number=1)
    assert list(JournalEntry.objects.order_by("number").values_list("number", flat=True)) == [1, 2]
    assert Books.objects.get(business=water).last_number == 2
    sale(water)
    assert list(JournalEntry.objects.order_by("number").values_list("number", flat=True)) == [1, 2, 3]


def test_account_rules_parent_of_the_same_business_and_type(water, laundry):
    cash = acct(water, "cash")
    with pytest.raises(DatabaseError, match="same business and type"):
        Account.objects.create(business=laundry, code="9999", name="x", type="asset", parent=cash)
    with pytest.raises(DatabaseError, match="same business and type"):
        Account.objects.create(business=water, code="9999", name="x", type="income", parent=cash)
    group = Account.objects.get(business=water, role="group_cash")
    with pytest.raises(DatabaseError, match="cycle"):
        Account.objects.filter(pk=group.pk).update(parent=cash)
    sale(water)
    with pytest.raises(DatabaseError, match="has postings"):
        Account.objects.filter(pk=cash.pk).update(type="expense")


def reversal_sql(business, reverses_id: int, key: str) -> None:
    """A reversal entry written by hand (the original's lines with the sides swapped), committed."""
    with transaction.atomic(), connection.cursor() as cursor:
        cursor.execute(
            "INSERT INTO accounts_journalentry (business_id, entry_date, memo, source_type, source_ref,"
            " idempotency_key, currency, reverses_id) VALUES (%s, %s, 'rev', 'reversal', '', %s, 'KES', %s)"
            " RETURNING id",
            [business.pk, dt.date.today(), key, reverses_id],
        )
        entry_id = cursor.fetchone()[0]
        cursor.execute(
            "INSERT INTO accounts_journalline (entry_id, account_id, debit, credit, memo)"
            " SELECT %s, account_id, credit, debit, '' FROM accounts_journalline WHERE entry_id = %s ORDER BY id",
            [entry_id, reverses_id],
        )


def test_an_entry_has_at_most_one_reversal_of_its_own_business(water, laundry):
    entry = sale(water)
    reversal_sql(water, entry.pk, key="rev-1")
    with pytest.raises(IntegrityError, match="reverses_id"):
        reversal_sql(water, entry.pk, key="rev-2")
    with pytest.raises(IntegrityError, match="of another business"):
        reversal_sql(laundry, entry.pk, key="rev-3")
    with pytest.raises(IntegrityError, match="entry_reversal_has_original"):
        orm_reversal(water)
    assert JournalEntry.objects.filter(reverses=entry).count() == 1


def orm_reversal(business) -> None:
    """A 'reversal' that reverses nothing: refused by a CHECK constraint."""
    JournalEntry.objects.create(
        business=business, entry_date=dt.date.today(), source_type="reversal", idempotency_key="orphan"
    )


def test_a_business_without_books_cannot_post(db):
    from tenancy.models import Business

    bare = Business.objects.create(name="No books yet", kind="water")
    with pytest.raises(IntegrityError, match="no books row"):
        JournalEntry.objects.create(
            business=bare, entry_date=dt.date.today(), source_type="manual", idempotency_key="x"
        )

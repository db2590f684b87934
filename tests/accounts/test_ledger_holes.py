"""Attacks on the ledger's rules through raw SQL and concurrent sessions, refused by PostgreSQL.

Each test is an attack that got through before migrations/0004_ledger_holes.py (docs/ledger.md,
"Attacks refused by the database"). Most commit: the balance, seal and foreign-key checks run at
COMMIT. Concurrent sessions are plain psycopg connections to the test database.
"""

from __future__ import annotations

import datetime as dt
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from decimal import Decimal
from typing import Any

import psycopg
import pytest
from django.db import DatabaseError, IntegrityError, connection, transaction
from django.utils import timezone

from accounts.exceptions import (
    InvalidAccount,
    InvalidLine,
    InvalidLockDate,
    InvalidReversal,
    PeriodLocked,
    ledger_error_from,
)
from accounts.models import Account, Books, JournalEntry, JournalLine, PeriodClose
from accounts.services import books_close_period, entry_reverse
from accounts.verification import ledger_verify
from tests.conftest import TEST_APP_ROLE, TEST_OWNER_ROLE
from tests.factories.accounts import acct, sale

pytestmark = pytest.mark.django_db(transaction=True)

INSUFFICIENT_PRIVILEGE = "42501"


def sqlstate(excinfo: pytest.ExceptionInfo[BaseException]) -> str | None:
    error = excinfo.value
    return getattr(error, "sqlstate", None) or getattr(error.__cause__, "sqlstate", None)


def session() -> psycopg.Connection[Any]:
    """Another session on the test database (not in autocommit: each one is a transaction)."""
    params = connection.settings_dict
    return psycopg.connect(
        dbname=params["NAME"],
        user=params["USER"] or None,
        password=params["PASSWORD"] or None,
        host=params["HOST"] or None,
        port=params["PORT"] or None,
    )


class Background(threading.Thread):
    """Runs `fn` in a thread (a statement that may wait on a lock); keeps its result or error."""

    def __init__(self, fn: Callable[[], Any]) -> None:
        super().__init__(daemon=True)
        self.fn = fn
        self.result: Any = None
        self.error: BaseException | None = None
        self.start()

    def run(self) -> None:
        try:
            self.result = self.fn()
        except BaseException as exc:
            self.error = exc
        finally:
            from django.db import connections

            connections.close_all()


def wait_until_blocked(worker: Background, timeout: float = 10.0) -> bool:
    """True once another session of this database waits on a lock; False if `worker` ended instead."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if not worker.is_alive():
            return False
        with connection.cursor() as cursor:
            cursor.execute(
                "SELECT count(*) FROM pg_stat_activity WHERE datname = current_database() AND wait_event_type = 'Lock'"
            )
            if cursor.fetchone()[0] >= 1:
                return True
        time.sleep(0.02)
    raise AssertionError("the other session neither finished nor waited on a lock")


def verify_ok() -> None:
    report = ledger_verify(check_totals=True)
    assert report.ok, (report.first_broken, [b.problems for b in report.businesses])


ENTRY_SQL = (
    "INSERT INTO accounts_journalentry (business_id, entry_date, memo, source_type, source_ref, idempotency_key,"
    " currency, reverses_id) VALUES (%s, %s, 'raw', %s, '', %s, 'KES', %s) RETURNING id"
)
LINE_SQL = "INSERT INTO accounts_journalline (entry_id, account_id, debit, credit, memo) VALUES (%s, %s, %s, %s, '')"


def raw_entry(cursor: Any, business: Any, *, key: str, day: dt.date | None = None, reverses: int | None = None) -> int:
    source = "reversal" if reverses else "manual"
    cursor.execute(ENTRY_SQL, [business.pk, day or timezone.localdate(), source, key, reverses])
    return cursor.fetchone()[0]


def raw_line(cursor: Any, entry_id: int, account: Account, debit: str = "0", credit: str = "0") -> None:
    cursor.execute(LINE_SQL, [entry_id, account.pk, Decimal(debit), Decimal(credit)])


# --- 2. ON CONFLICT DO NOTHING on a used idempotency key takes no number -----------------------------

ON_CONFLICT_SQL = """
WITH e AS (
  INSERT INTO accounts_journalentry (business_id, entry_date, memo, source_type, source_ref, idempotency_key, currency)
  VALUES (%(business)s, %(day)s, 'again', 'manual', '', %(key)s, 'KES')
  ON CONFLICT DO NOTHING
  RETURNING id
)
INSERT INTO accounts_journalline (entry_id, account_id, debit, credit, memo)
SELECT e.id, v.account_id, v.debit, v.credit, '' FROM e CROSS JOIN (VALUES
  (%(cash)s::bigint, 5.00::numeric, 0::numeric), (%(suspense)s::bigint, 0::numeric, 5.00::numeric))
  AS v(account_id, debit, credit)
RETURNING entry_id
"""


def on_conflict_params(business: Any, key: str) -> dict[str, Any]:
    return {
        "business": business.pk,
        "day": timezone.localdate(),
        "key": key,
        "cash": acct(business, "cash").pk,
        "suspense": acct(business, "suspense").pk,
    }


def test_on_conflict_do_nothing_on_a_used_key_leaves_the_books_usable(water):
    # Given an entry posted under key K
    sale(water, key="mpesa:K1")
    # When K is posted again with ON CONFLICT DO NOTHING, by raw SQL and by bulk_create(ignore_conflicts)
    with transaction.atomic(), connection.cursor() as cursor:
        cursor.execute(ON_CONFLICT_SQL, on_conflict_params(water, "mpesa:K1"))
        assert cursor.fetchall() == []
    JournalEntry.objects.bulk_create(
        [
            JournalEntry(
                business=water, entry_date=timezone.localdate(), source_type="manual", idempotency_key="mpesa:K1"
            )
        ],
        ignore_conflicts=True,
    )
    # Then nothing was inserted, no number was taken, and the next posting works
    assert Books.objects.get(business=water).last_number == 1
    sale(water)
    assert list(JournalEntry.objects.order_by("number").values_list("number", flat=True)) == [1, 2]
    verify_ok()


@pytest.mark.parametrize("first_commits", [True, False], ids=["first-commits", "first-rolls-back"])
def test_on_conflict_do_nothing_racing_a_posting_of_the_same_key(water, first_commits):
    # Given session A posting key K, not committed yet (it holds the books row)
    with session() as a, session() as b:
        entry_id = raw_entry(a.cursor(), water, key="mpesa:K2")
        raw_line(a.cursor(), entry_id, acct(water, "cash"), debit="5.00")
        raw_line(a.cursor(), entry_id, acct(water, "suspense"), credit="5.00")

        # When session B posts K with ON CONFLICT DO NOTHING (it waits for A), then A ends
        def second() -> list[Any]:
            rows = b.execute(ON_CONFLICT_SQL, on_conflict_params(water, "mpesa:K2")).fetchall()
            b.commit()
            return rows

        worker = Background(second)
        assert wait_until_blocked(worker)
        a.commit() if first_commits else a.rollback()
        worker.join(10)
        assert worker.error is None, worker.error
    # Then K is posted once, by whichever session got it, and no number was lost
    assert (worker.result == []) is first_commits
    assert JournalEntry.objects.filter(idempotency_key="mpesa:K2").count() == 1
    assert Books.objects.get(business=water).last_number == 1
    sale(water)
    assert Books.objects.get(business=water).last_number == 2
    verify_ok()


ON_CONFLICT_ROW_SQL = """
INSERT INTO accounts_journalentry (id, business_id, entry_date, memo, source_type, source_ref, idempotency_key,
                                   currency, reverses_id)
VALUES (coalesce(%(id)s, nextval(pg_get_serial_sequence('accounts_journalentry', 'id'))), %(business)s, %(day)s,
        'again', %(source)s, '', %(key)s, 'KES', %(reverses)s)
ON CONFLICT DO NOTHING
RETURNING id
"""


@pytest.mark.parametrize("taken", ["id", "reversal"])
def test_on_conflict_do_nothing_on_a_taken_id_or_reversal_takes_no_number(water, taken):
    # Given an entry and its reversal
    original = sale(water)
    entry_reverse(entry=original)
    # When a row is inserted with ON CONFLICT DO NOTHING under a new key, on the original's id or as a
    # second reversal of it (skipped by the unique index on the id, or on the reversed entry)
    params = {
        "id": original.pk if taken == "id" else None,
        "business": water.pk,
        "day": timezone.localdate(),
        "source": "manual" if taken == "id" else "reversal",
        "key": f"again:{taken}",
        "reverses": None if taken == "id" else original.pk,
    }
    with transaction.atomic(), connection.cursor() as cursor:
        cursor.execute(ON_CONFLICT_ROW_SQL, params)
        assert cursor.fetchall() == []
    # Then it took no number (the gap would stop every later posting at commit: the chain needs the
    # entry numbered one less), and the business goes on posting
    assert Books.objects.get(business=water).last_number == 2
    assert sale(water).number == 3
    verify_ok()


# --- 3. Books and their audit trail: no TRUNCATE, every lock-date move audited, append-only ------------


@pytest.mark.parametrize("statement", ["TRUNCATE accounts_books CASCADE", "TRUNCATE accounts_periodclose"])
def test_books_and_period_closes_cannot_be_truncated(water, statement, owner_cursor):
    yesterday = timezone.localdate() - dt.timedelta(days=1)
    books_close_period(business=water, lock_date=yesterday)
    # The application role holds no TRUNCATE privilege at all ...
    with pytest.raises(DatabaseError, match="permission denied") as excinfo, connection.cursor() as cursor:
        cursor.execute(statement)
    assert sqlstate(excinfo) == INSUFFICIENT_PRIVILEGE
    # ... and the tables' owner, who does, is refused by the trigger
    with pytest.raises(DatabaseError, match="cannot be truncated"):
        owner_cursor.execute(statement)
    assert Books.objects.get(business=water).lock_date == yesterday
    assert PeriodClose.objects.filter(books_id=water.pk).count() == 1
    with pytest.raises(PeriodLocked):
        sale(water, day=yesterday)


def test_books_with_a_lock_date_cannot_be_deleted(water):
    books_close_period(business=water, lock_date=timezone.localdate() - dt.timedelta(days=1))
    with pytest.raises(DatabaseError, match="cannot be deleted"), connection.cursor() as cursor:
        cursor.execute("DELETE FROM accounts_books WHERE business_id = %s", [water.pk])


def test_every_lock_date_move_writes_one_audit_row(water, owner):
    today = timezone.localdate()
    # A move by raw SQL is audited, by nobody
    with connection.cursor() as cursor:
        cursor.execute(
            "UPDATE accounts_books SET lock_date = %s WHERE business_id = %s", [today - dt.timedelta(days=3), water.pk]
        )
    # A close through the service is audited once, by the acting user
    books_close_period(business=water, lock_date=today - dt.timedelta(days=1), acting_user=owner)
    books_close_period(business=water, lock_date=today - dt.timedelta(days=1), acting_user=owner)  # no move
    rows = list(
        PeriodClose.objects.filter(books_id=water.pk)
        .order_by("id")
        .values_list("previous_lock_date", "lock_date", "closed_by")
    )
    assert rows == [
        (None, today - dt.timedelta(days=3), None),
        (today - dt.timedelta(days=3), today - dt.timedelta(days=1), owner.pk),
    ]
    # The acting user does not leak into a later raw move of the same session
    with connection.cursor() as cursor:
        cursor.execute("UPDATE accounts_books SET lock_date = %s WHERE business_id = %s", [today, water.pk])
    assert PeriodClose.objects.filter(books_id=water.pk).latest("id").closed_by_id is None
    verify_ok()


def test_period_close_rows_are_append_only(water, owner, owner_cursor):
    books_close_period(business=water, lock_date=timezone.localdate() - dt.timedelta(days=1), acting_user=owner)
    close = PeriodClose.objects.get(books_id=water.pk)
    insert = (
        "INSERT INTO accounts_periodclose (books_id, previous_lock_date, lock_date, closed_by_id, closed_at)"
        " VALUES (%s, NULL, %s, NULL, now())"
    )
    # The application role may neither change nor add audit rows: PostgreSQL's privileges refuse it ...
    with pytest.raises(DatabaseError, match="permission denied"):
        PeriodClose.objects.filter(pk=close.pk).update(closed_by=None)
    with pytest.raises(DatabaseError, match="permission denied"):
        PeriodClose.objects.filter(pk=close.pk).delete()
    with pytest.raises(DatabaseError, match="permission denied"), connection.cursor() as cursor:
        cursor.execute(insert, [water.pk, timezone.localdate()])
    # ... and the triggers refuse the tables' owner, who holds every privilege on them
    with pytest.raises(DatabaseError, match="cannot be changed"):
        owner_cursor.execute("UPDATE accounts_periodclose SET closed_by_id = NULL WHERE id = %s", [close.pk])
    with pytest.raises(DatabaseError, match="cannot be changed"):
        owner_cursor.execute("DELETE FROM accounts_periodclose WHERE id = %s", [close.pk])
    with pytest.raises(DatabaseError, match="written by the ledger triggers"):
        owner_cursor.execute(insert, [water.pk, timezone.localdate()])
    assert PeriodClose.objects.get(books_id=water.pk).closed_by_id == owner.pk


def test_verify_ledger_finds_a_lock_date_moved_without_its_audit_row(water, superuser_cursor):
    # Only a superuser (or the owner) can: the audit trigger switched off
    superuser_cursor.execute("ALTER TABLE accounts_books DISABLE TRIGGER books_lock_date_moved")
    try:
        superuser_cursor.execute(
            "UPDATE accounts_books SET lock_date = %s WHERE business_id = %s", [timezone.localdate(), water.pk]
        )
    finally:
        superuser_cursor.execute("ALTER TABLE accounts_books ENABLE TRIGGER books_lock_date_moved")
    assert not PeriodClose.objects.exists()
    report = ledger_verify()
    assert not report.ok
    assert "moved without its audit row" in report.businesses[0].problems[0]


# --- 4. Seals, daily totals, numbers: written by the ledger's SECURITY DEFINER functions only ---------


@pytest.fixture
def temp_app_role(superuser_cursor: Any) -> Iterator[Callable[[], Any]]:
    """An application role that may create TEMP tables, to SET ROLE to on the superuser's connection.

    The real application role may not (test_the_application_role_cannot_create_a_temp_table): this
    scratch role (dropped afterwards) is the app as it stood before that, with INSERT and UPDATE on
    every table - all the writes the triggers used to make with the caller's rights - so the attack
    reaches the ledger's guards instead of stopping at a missing privilege.
    """
    name = f"ledger_app_{uuid.uuid4().hex[:12]}"
    su = superuser_cursor
    su.execute(f"CREATE ROLE {name} NOLOGIN NOSUPERUSER NOCREATEROLE NOCREATEDB NOBYPASSRLS")
    su.execute(f"GRANT USAGE ON SCHEMA public TO {name}")
    su.execute(f"GRANT SELECT, INSERT, UPDATE ON ALL TABLES IN SCHEMA public TO {name}")
    su.execute(f"GRANT USAGE ON ALL SEQUENCES IN SCHEMA public TO {name}")
    su.execute(f"GRANT TEMP ON DATABASE {connection.ops.quote_name(connection.settings_dict['NAME'])} TO {name}")

    @contextmanager
    def as_app() -> Iterator[Any]:
        su.execute(f"SET ROLE {name}")
        try:
            yield su
        finally:
            su.execute("RESET ROLE")

    try:
        yield as_app
    finally:
        su.execute("RESET ROLE")
        su.execute("DISCARD TEMP")
        su.execute(f"DROP OWNED BY {name}")
        su.execute(f"DROP ROLE {name}")


TEMP_TRIGGER_SQL = """
CREATE TEMP TABLE IF NOT EXISTS bait (x int);
CREATE OR REPLACE FUNCTION pg_temp.forge() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
  {body}
  RETURN NULL;
END $$;
DROP TRIGGER IF EXISTS forge ON bait;
CREATE TRIGGER forge AFTER INSERT ON bait FOR EACH ROW EXECUTE FUNCTION pg_temp.forge();
"""

FORGERIES = {
    "daily-totals-update": "UPDATE public.accounts_accountdaytotal SET debit = debit + 1000;",
    "daily-totals-insert": "INSERT INTO public.accounts_accountdaytotal (account_id, business_id, day, debit, credit,"
    " line_count) SELECT id, business_id, current_date + 1, 1000, 0, 1 FROM public.accounts_account;",
    "seal": "INSERT INTO public.accounts_entryseal (entry_id, hash) SELECT id, repeat('f', 64)"
    " FROM public.accounts_journalentry WHERE NOT EXISTS (SELECT 1 FROM public.accounts_entryseal);",
    "number": "UPDATE public.accounts_books SET last_number = last_number + 1;",
    "period-close": "INSERT INTO public.accounts_periodclose (books_id, lock_date, closed_at)"
    " SELECT business_id, current_date, now() FROM public.accounts_books;",
}


def test_the_application_role_cannot_create_a_temp_table():
    # The attack below needs TEMP: the application role has none (docs/deploy.md, "Database roles")
    with pytest.raises(DatabaseError, match="permission denied") as excinfo, connection.cursor() as cursor:
        cursor.execute(TEMP_TRIGGER_SQL.format(body="NULL;"))
    assert sqlstate(excinfo) == INSUFFICIENT_PRIVILEGE


@pytest.mark.parametrize("forgery", FORGERIES.values(), ids=FORGERIES.keys())
def test_a_trigger_on_a_temp_table_cannot_write_the_ledgers_own_rows(water, temp_app_role, forgery):
    sale(water)
    with temp_app_role() as cursor:
        cursor.execute(
            "SELECT current_setting('is_superuser'), pg_has_role(current_user, %s, 'USAGE')", [TEST_OWNER_ROLE]
        )
        assert cursor.fetchone() == ("off", False)  # neither a superuser nor the tables' owner
        cursor.execute(TEMP_TRIGGER_SQL.format(body=forgery))
        with pytest.raises(DatabaseError, match=r"written by the ledger triggers|assigned by posting only"):
            cursor.execute("INSERT INTO bait VALUES (1)")
        # the same statement written directly is refused too
        with pytest.raises(DatabaseError, match=r"written by the ledger triggers|assigned by posting only"):
            cursor.execute(f"DO $$ BEGIN {forgery} END $$")
    assert Books.objects.get(business=water).last_number == 1
    assert not PeriodClose.objects.exists()
    verify_ok()


def test_the_application_role_posts_closes_and_reverses_normally(water, today):
    with connection.cursor() as cursor:
        cursor.execute("SELECT current_user, current_setting('is_superuser')")
        assert cursor.fetchone() == (TEST_APP_ROLE, "off")
    entry = sale(water, "116.00")
    entry_reverse(entry=entry)
    books_close_period(business=water, lock_date=today - dt.timedelta(days=1))
    sale(water, "58.00")
    assert Books.objects.get(business=water).last_number == 3
    assert PeriodClose.objects.filter(books_id=water.pk).count() == 1
    verify_ok()


# --- 5. An account and a posting to it: no write skew ----------------------------------------------------


def cross_business_lines() -> int:
    with connection.cursor() as cursor:
        cursor.execute(
            "SELECT count(*) FROM accounts_journalline l JOIN accounts_journalentry e ON e.id = l.entry_id"
            " JOIN accounts_account a ON a.id = l.account_id WHERE a.business_id <> e.business_id"
        )
        return cursor.fetchone()[0]


def test_an_account_never_moves_to_another_business(water, laundry):
    spare = Account.objects.create(business=water, code="9901", name="Spare", type="asset")
    with pytest.raises(DatabaseError, match="cannot move to another business"):
        Account.objects.filter(pk=spare.pk).update(business=laundry)


def test_moving_an_account_while_a_posting_to_it_is_in_flight(water, laundry):
    spare = Account.objects.create(business=water, code="9902", name="Spare", type="asset")
    # Given session A posting to the account, not committed yet
    with session() as a, session() as b:
        entry_id = raw_entry(a.cursor(), water, key="in-flight")
        a.execute(LINE_SQL, [entry_id, spare.pk, Decimal("5.00"), Decimal("0")])
        a.execute(LINE_SQL, [entry_id, acct(water, "suspense").pk, Decimal("0"), Decimal("5.00")])

        # When session B moves the account to another business, and A commits
        def move() -> None:
            b.execute("UPDATE accounts_account SET business_id = %s WHERE id = %s", [laundry.pk, spare.pk])
            b.commit()

        worker = Background(move)
        wait_until_blocked(worker)
        a.commit()
        worker.join(10)
    # Then the move is refused and no line sits on another business's account
    assert worker.error is not None and "cannot move to another business" in str(worker.error)
    assert Account.objects.get(pk=spare.pk).business_id == water.pk
    assert cross_business_lines() == 0
    verify_ok()


def test_a_posting_waits_for_an_account_change_in_flight_and_sees_it(water):
    # Given session B deactivating the cash account, not committed yet
    with session() as b:
        b.execute("UPDATE accounts_account SET is_active = false WHERE id = %s", [acct(water, "cash").pk])
        # When a posting to that account starts, then B commits
        worker = Background(lambda: sale(water))
        assert wait_until_blocked(worker), worker.error
        b.commit()
        worker.join(10)
    # Then the posting saw the account inactive
    assert isinstance(worker.error, InvalidAccount) and "inactive" in str(worker.error)
    assert not JournalEntry.objects.exists()


def test_verify_ledger_names_an_entry_with_a_line_on_another_business_account(water, laundry, superuser_cursor):
    spare = Account.objects.create(business=water, code="9903", name="Spare", type="asset")
    with transaction.atomic(), connection.cursor() as cursor:
        entry_id = raw_entry(cursor, water, key="to-move")
        raw_line(cursor, entry_id, spare, debit="5.00")
        raw_line(cursor, entry_id, acct(water, "suspense"), credit="5.00")
    # Only a superuser (or the owner) can: the account guard switched off
    superuser_cursor.execute("ALTER TABLE accounts_account DISABLE TRIGGER account_guard")
    try:
        superuser_cursor.execute("UPDATE accounts_account SET business_id = %s WHERE id = %s", [laundry.pk, spare.pk])
    finally:
        superuser_cursor.execute("ALTER TABLE accounts_account ENABLE TRIGGER account_guard")
    assert Account.objects.get(pk=spare.pk).business_id == laundry.pk
    broken = ledger_verify().first_broken
    assert broken is not None and broken.entry_id == entry_id
    assert f"account {spare.pk}, which is not an account of the entry's business" in broken.problem


# --- 6. A line for an entry the line check cannot see --------------------------------------------------


def test_a_line_for_an_entry_not_yet_committed_is_refused(water, laundry):
    with session() as a, session() as b:
        # Given session A adding a line (Dr 7.00 on another business's account) to the next entry id
        row = a.execute("SELECT nextval(pg_get_serial_sequence('accounts_journalentry', 'id'))").fetchone()
        assert row is not None
        next_id = row[0]
        try:
            a.execute(LINE_SQL, [next_id, acct(laundry, "cash").pk, Decimal("7.00"), Decimal("0")])
            refused = None
        except psycopg.IntegrityError as exc:
            refused = exc
            a.rollback()
        # When session B posts that entry and commits, and then A commits
        b.execute(
            "INSERT INTO accounts_journalentry (id, business_id, entry_date, memo, source_type, source_ref,"
            " idempotency_key, currency) VALUES (%s, %s, %s, 'b', 'manual', '', 'b-next', 'KES')",
            [next_id, water.pk, timezone.localdate()],
        )
        raw_line(b.cursor(), next_id, acct(water, "cash"), debit="5.00")
        raw_line(b.cursor(), next_id, acct(water, "suspense"), credit="5.00")
        b.commit()
        if refused is None:
            a.commit()
    # Then A's line was refused and the sealed entry holds its own two lines
    assert refused is not None and "does not exist or is not committed" in str(refused)
    assert JournalLine.objects.filter(entry_id=next_id).count() == 2
    verify_ok()


def test_a_line_for_another_sessions_uncommitted_entry_is_refused(water):
    with session() as a, session() as b:
        entry_id = raw_entry(b.cursor(), water, key="b-entry")
        raw_line(b.cursor(), entry_id, acct(water, "cash"), debit="5.00")
        raw_line(b.cursor(), entry_id, acct(water, "suspense"), credit="5.00")
        with pytest.raises(psycopg.IntegrityError, match="not committed"):
            raw_line(a.cursor(), entry_id, acct(water, "cash"), debit="1.00")
        a.rollback()
        b.commit()
    assert JournalLine.objects.filter(entry_id=entry_id).count() == 2
    verify_ok()


# --- 7. Reversals ----------------------------------------------------------------------------------------


def raw_reversal(business: Any, original: JournalEntry, *, key: str, day: dt.date | None = None, lines=None) -> int:
    """A reversal by hand, committed: by default the original's lines swapped, in reverse order."""
    with transaction.atomic(), connection.cursor() as cursor:
        entry_id = raw_entry(cursor, business, key=key, day=day, reverses=original.pk)
        if lines is None:
            for line in original.lines.order_by("-id"):
                cursor.execute(LINE_SQL, [entry_id, line.account_id, line.credit, line.debit])
        else:
            for role, debit, credit in lines:
                raw_line(cursor, entry_id, acct(business, role), debit=debit, credit=credit)
    return entry_id


def test_a_raw_reversal_mirroring_its_original_is_accepted(water):
    original = sale(water)
    raw_reversal(water, original, key="rev-ok")
    verify_ok()


def test_a_reversal_of_a_reversal_is_refused_by_the_database(water):
    reversal = entry_reverse(entry=sale(water))
    with pytest.raises(IntegrityError, match="itself a reversal") as excinfo:
        raw_reversal(water, reversal, key="rev-rev")
    assert sqlstate(excinfo) == "23L07"
    assert isinstance(ledger_error_from(excinfo.value), InvalidReversal)


def test_a_reversal_dated_before_its_original_is_refused(water, today):
    original = sale(water, day=today)
    with pytest.raises(IntegrityError, match="before its original"):
        raw_reversal(water, original, key="rev-early", day=today - dt.timedelta(days=1))
    assert not JournalEntry.objects.filter(reverses=original).exists()


def test_a_reversal_with_other_lines_is_refused_at_commit_and_leaves_the_slot_free(water):
    original = sale(water, "116.00")
    unrelated = [("cash", "0", "1.00"), ("suspense", "1.00", "0")]
    with pytest.raises(IntegrityError, match="not that entry's lines with debits and credits swapped"):
        raw_reversal(water, original, key="rev-other", lines=unrelated)
    # the same lines, not swapped
    same = [("cash", "116.00", "0"), ("sales_refill", "0", "100.00"), ("vat_output", "0", "16.00")]
    with pytest.raises(IntegrityError, match="not that entry's lines"):
        raw_reversal(water, original, key="rev-same", lines=same)
    reversal = entry_reverse(entry=original)
    assert reversal.reverses_id == original.pk
    verify_ok()


# --- 8. Amounts: exact cents, never rounded ------------------------------------------------------------


@pytest.mark.parametrize(
    ("debit", "credit"),
    [("10.005", "10.01"), ("1.004", "1.00"), ("NaN", "1.00"), ("Infinity", "1.00"), ("1000000000000.00", "1.00")],
    ids=["three-decimals", "rounds-to-balanced", "nan", "infinity", "too-large"],
)
def test_amounts_are_refused_not_rounded(water, debit, credit):
    def by_raw_sql() -> None:
        with transaction.atomic(), connection.cursor() as cursor:
            entry_id = raw_entry(cursor, water, key="cents")
            cursor.execute(LINE_SQL, [entry_id, acct(water, "cash").pk, Decimal(debit), Decimal(0)])
            cursor.execute(LINE_SQL, [entry_id, acct(water, "suspense").pk, Decimal(0), Decimal(credit)])

    def by_orm() -> None:
        with transaction.atomic():
            entry = JournalEntry.objects.create(
                business=water, entry_date=timezone.localdate(), source_type="manual", idempotency_key="cents-orm"
            )
            JournalLine.objects.bulk_create(
                [
                    JournalLine(entry=entry, account=acct(water, "cash"), debit=Decimal(debit)),
                    JournalLine(entry=entry, account=acct(water, "suspense"), credit=Decimal(credit)),
                ]
            )

    with pytest.raises(IntegrityError, match="line_amount_cents") as excinfo:
        by_raw_sql()
    assert isinstance(ledger_error_from(excinfo.value), InvalidLine)
    if Decimal(debit).is_finite():  # the ORM refuses NaN and Infinity itself
        with pytest.raises(IntegrityError, match="line_amount_cents"):
            by_orm()
    assert not JournalEntry.objects.exists()


def test_amounts_of_fewer_decimals_are_kept_and_hashed_at_two(water):
    with transaction.atomic(), connection.cursor() as cursor:
        entry_id = raw_entry(cursor, water, key="whole")
        cursor.execute(LINE_SQL, [entry_id, acct(water, "cash").pk, 10, 0])
        cursor.execute(LINE_SQL, [entry_id, acct(water, "suspense").pk, Decimal("0"), Decimal("10.0")])
    assert sorted(JournalLine.objects.filter(entry_id=entry_id).values_list("debit", flat=True)) == [0, 10]
    verify_ok()


# --- 9. Lock dates: never in the future --------------------------------------------------------------


def test_a_lock_date_in_the_future_is_refused(water, laundry, today):
    with pytest.raises(IntegrityError, match="in the future") as excinfo, connection.cursor() as cursor:
        cursor.execute("UPDATE accounts_books SET lock_date = '9999-12-31' WHERE business_id = %s", [water.pk])
    assert sqlstate(excinfo) == "23L08"
    assert isinstance(ledger_error_from(excinfo.value), InvalidLockDate)
    with pytest.raises(IntegrityError, match="in the future"):
        Books.objects.filter(business=water).update(lock_date=today + dt.timedelta(days=1))
    with connection.cursor() as cursor:
        cursor.execute("DELETE FROM accounts_books WHERE business_id = %s", [laundry.pk])
        with pytest.raises(IntegrityError, match="in the future"):
            cursor.execute(
                "INSERT INTO accounts_books (business_id, lock_date, last_number) VALUES (%s, '9999-12-31', 0)",
                [laundry.pk],
            )
    # today is the latest lock date; the business can post again tomorrow
    Books.objects.filter(business=water).update(lock_date=today)
    assert Books.objects.get(business=water).lock_date == today

"""The application role cannot switch the ledger's protection off, and the whole suite runs as it.

The suite's tests run as the application role (tests/conftest.py): these prove that role is neither a
superuser nor an owner, and that each way around the ledger's triggers is refused to it by PostgreSQL's
privileges (SQLSTATE 42501) before any trigger is consulted.
"""

from __future__ import annotations

from io import StringIO
from typing import Any

import pytest
from django.core.management import CommandError, call_command
from django.db import DatabaseError, connection, transaction

from accounts.db_roles import FULL, TRIGGER_WRITES, app_privileges
from accounts.models import JournalEntry, JournalLine, PeriodClose
from tests.conftest import TEST_APP_ROLE, TEST_OWNER_ROLE
from tests.factories.accounts import sale

INSUFFICIENT_PRIVILEGE = "42501"


def refused(statement: str, params: list[int] | None = None) -> str:
    """Run `statement` as the test's role in a savepoint; the SQLSTATE it failed with."""
    with pytest.raises(DatabaseError) as excinfo, transaction.atomic(), connection.cursor() as cursor:
        cursor.execute(statement, params)
    cause = excinfo.value.__cause__
    return str(getattr(cause, "sqlstate", None))


def test_the_suite_runs_as_the_application_role(db):
    with connection.cursor() as cursor:
        cursor.execute(
            "SELECT current_user, rolsuper, rolcreaterole, rolcreatedb FROM pg_roles WHERE rolname = current_user"
        )
        assert cursor.fetchone() == (TEST_APP_ROLE, False, False, False)
        cursor.execute(
            "SELECT count(*) FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace"
            " WHERE n.nspname = 'public' AND pg_has_role(current_user, c.relowner, 'USAGE')"
        )
        assert cursor.fetchone()[0] == 0  # owns no table, view or sequence
        cursor.execute("SELECT pg_get_userbyid(relowner) FROM pg_class WHERE oid = 'accounts_journalline'::regclass")
        assert cursor.fetchone()[0] == TEST_OWNER_ROLE  # the migrations ran as the owner role


def test_worker_processes_the_tests_start_connect_as_the_application_role(db):
    from urllib.parse import urlsplit

    from tests.celery_support import worker_env

    assert urlsplit(worker_env()["DATABASE_URL"]).username == TEST_APP_ROLE


def test_the_application_role_cannot_disable_the_triggers(water):
    sale(water)
    for table in ("accounts_journalline", "accounts_journalentry", "accounts_entryseal", "accounts_books"):
        assert refused(f"ALTER TABLE {table} DISABLE TRIGGER ALL") == INSUFFICIENT_PRIVILEGE
        assert refused(f"ALTER TABLE {table} DISABLE TRIGGER USER") == INSUFFICIENT_PRIVILEGE
    assert refused("SET session_replication_role = replica") == INSUFFICIENT_PRIVILEGE
    assert refused("DROP TRIGGER journal_line_immutable ON accounts_journalline") == INSUFFICIENT_PRIVILEGE
    assert refused("CREATE OR REPLACE FUNCTION ledger_refuse_change() RETURNS trigger LANGUAGE plpgsql AS $$"
                   " BEGIN RETURN NULL; END $$") == INSUFFICIENT_PRIVILEGE  # fmt: skip


@pytest.mark.parametrize(
    "table",
    ["accounts_journalentry", "accounts_journalline", "accounts_entryseal", "accounts_accountdaytotal",
     "accounts_books", "accounts_periodclose", "operations_business", "django_session"],
)  # fmt: skip
def test_the_application_role_cannot_truncate(water, table):
    sale(water)
    assert refused(f"TRUNCATE {table} CASCADE") == INSUFFICIENT_PRIVILEGE
    assert JournalEntry.objects.count() == 1


def test_the_application_role_cannot_change_or_delete_ledger_rows(water):
    entry = sale(water)
    line = entry.lines.earliest("id")
    assert refused("UPDATE accounts_journalline SET debit = debit + 1 WHERE id = %s", [line.pk]) == "42501"
    assert refused("DELETE FROM accounts_journalline WHERE id = %s", [line.pk]) == "42501"
    assert refused("UPDATE accounts_journalentry SET memo = 'x' WHERE id = %s", [entry.pk]) == "42501"
    assert refused("DELETE FROM accounts_journalentry WHERE id = %s", [entry.pk]) == "42501"
    assert refused("UPDATE accounts_entryseal SET hash = repeat('a', 64)") == "42501"
    assert refused("DELETE FROM accounts_entryseal") == "42501"
    assert refused("DELETE FROM accounts_accountdaytotal") == "42501"
    assert refused("UPDATE accounts_periodclose SET lock_date = NULL") == "42501"
    assert refused("DELETE FROM accounts_periodclose") == "42501"
    assert refused("SELECT setval(pg_get_serial_sequence('accounts_journalentry', 'id'), 1)") == "42501"
    # Nor write what only the ledger's (SECURITY DEFINER) trigger functions write
    assert (
        refused("INSERT INTO accounts_entryseal (entry_id, hash) VALUES (%s, repeat('f', 64))", [entry.pk]) == "42501"
    )
    assert refused("UPDATE accounts_accountdaytotal SET debit = debit + 1") == "42501"
    assert (
        refused(
            "INSERT INTO accounts_accountdaytotal (account_id, business_id, day, debit, credit, line_count)"
            " SELECT account_id, business_id, day + 1, 1, 0, 1 FROM accounts_accountdaytotal"
        )
        == "42501"
    )
    assert refused("UPDATE accounts_books SET last_number = last_number + 1") == "42501"
    assert (
        refused(
            "INSERT INTO accounts_periodclose (books_id, lock_date, closed_at) SELECT business_id, current_date, now()"
            " FROM accounts_books"
        )
        == "42501"
    )
    # The ORM gets the same answer
    with pytest.raises(DatabaseError, match="permission denied"), transaction.atomic():
        JournalLine.objects.filter(pk=line.pk).delete()
    with pytest.raises(DatabaseError, match="permission denied"), transaction.atomic():
        PeriodClose.objects.all().delete()
    assert JournalEntry.objects.filter(pk=entry.pk).exists() and entry.lines.count() == 3


def test_the_application_role_cannot_create_temporary_tables_or_objects(db):
    assert refused("CREATE TEMP TABLE shadow (id int)") == INSUFFICIENT_PRIVILEGE
    assert refused("CREATE TABLE public.shadow (id int)") == INSUFFICIENT_PRIVILEGE
    assert refused("CREATE FUNCTION public.shadow() RETURNS int LANGUAGE sql AS 'SELECT 1'") == INSUFFICIENT_PRIVILEGE
    assert refused("CREATE SCHEMA shadow") == INSUFFICIENT_PRIVILEGE
    assert refused("CREATE ROLE shadow") == INSUFFICIENT_PRIVILEGE


@pytest.mark.django_db(transaction=True)
def test_the_application_role_alone_cannot_flush_the_ledger(water, settings):
    # Given posted entries and no owner connection (production's app containers have no DATABASE_OWNER_URL)
    sale(water)
    settings.DATABASE_OWNER_URL = ""
    # When the app role runs Django's flush, it is refused and the ledger is intact
    with pytest.raises(CommandError, match="cannot empty the ledger"):
        call_command("flush", interactive=False, verbosity=0)
    assert JournalEntry.objects.count() == 1 and JournalLine.objects.count() == 3
    # (Even TRUNCATE of its own tables is refused: the app role holds no TRUNCATE privilege.)
    assert refused("TRUNCATE operations_business CASCADE") == INSUFFICIENT_PRIVILEGE


def test_db_roles_check_passes_for_the_app_role_and_names_an_owner(db):
    out = StringIO()
    call_command("db_roles", "check", app_role=TEST_APP_ROLE, stdout=out)
    assert "no owner or superuser rights" in out.getvalue()
    with pytest.raises(CommandError, match="own tables") as excinfo:
        call_command("db_roles", "check", app_role=TEST_OWNER_ROLE)
    assert excinfo.value.returncode == 1


def test_grant_refuses_to_run_as_anything_but_the_owner(db):
    # The app role does not own the tables: it cannot grant itself anything
    with pytest.raises(CommandError, match="does not own"):
        call_command("db_roles", "grant", app_role=TEST_OWNER_ROLE)
    with pytest.raises(CommandError, match="must not be"):
        call_command("db_roles", "grant", app_role=TEST_APP_ROLE)


@pytest.mark.django_db(transaction=True)
def test_grant_covers_tables_added_by_later_migrations(table_owner):
    # Given a table created after the last grant (as a new migration would, as the owner)
    with connection.cursor() as cursor:
        cursor.execute("CREATE TABLE roles_probe (id bigint GENERATED BY DEFAULT AS IDENTITY PRIMARY KEY, x int)")
    try:
        with connection.cursor() as cursor:
            cursor.execute("SELECT has_table_privilege(%s, 'roles_probe', 'SELECT')", [TEST_APP_ROLE])
            assert cursor.fetchone()[0] is False  # nothing by default
        # When the grant runs again (idempotent: twice)
        call_command("db_roles", "grant", app_role=TEST_APP_ROLE, stdout=StringIO())
        call_command("db_roles", "grant", app_role=TEST_APP_ROLE, stdout=StringIO())
        # Then the app role may read and write it, but not empty it
        with connection.cursor() as cursor:
            cursor.execute(
                "SELECT privilege_type FROM information_schema.role_table_grants"
                " WHERE grantee = %s AND table_name = 'roles_probe' ORDER BY 1",
                [TEST_APP_ROLE],
            )
            assert [r[0] for r in cursor.fetchall()] == ["DELETE", "INSERT", "SELECT", "UPDATE"]
            cursor.execute(
                "SELECT privilege_type FROM information_schema.role_table_grants"
                " WHERE grantee = %s AND table_name = 'accounts_journalline' ORDER BY 1",
                [TEST_APP_ROLE],
            )
            assert [r[0] for r in cursor.fetchall()] == ["INSERT", "SELECT"]
    finally:
        with connection.cursor() as cursor:
            cursor.execute("DROP TABLE roles_probe")


def test_ledger_privileges_follow_the_trigger_functions_rights():
    # Trigger functions with the caller's rights need the caller to write the seal, totals and audit rows ...
    invoker = [
        "ledger_entry_before_insert",
        "ledger_entry_seal",
        "ledger_lines_inserted",
        "ledger_books_lock_date_moved",
    ]
    assert app_privileges("accounts_entryseal", invoker) == {"SELECT": (), "INSERT": ()}
    assert app_privileges("accounts_books", invoker)["UPDATE"] == ("last_number", "lock_date")
    assert app_privileges("accounts_periodclose", invoker) == {"SELECT": (), "INSERT": ()}
    # ... SECURITY DEFINER ones (running as the owner) do not: then the app role only reads them
    assert app_privileges("accounts_entryseal", []) == {"SELECT": ()}
    assert app_privileges("accounts_accountdaytotal", []) == {"SELECT": ()}
    assert app_privileges("accounts_periodclose", []) == {"SELECT": ()}
    assert app_privileges("accounts_books", [])["UPDATE"] == ("lock_date",)
    assert app_privileges("accounts_journalline", invoker) == {"SELECT": (), "INSERT": ()}
    assert app_privileges("operations_sale", invoker) == FULL


@pytest.mark.django_db(transaction=True)
def test_flush_through_a_superuser_connection_empties_the_ledger(water, settings, db_roles):
    # The other path of accounts' flush: session_replication_role, which only a superuser may set
    sale(water)
    user, password = db_roles.superuser
    settings.DATABASE_OWNER_URL = f"postgresql://{user}:{password or ''}@127.0.0.1/"
    call_command("flush", interactive=False, verbosity=0)
    assert not JournalEntry.objects.exists()
    with connection.cursor() as cursor:
        cursor.execute(
            "SELECT count(*) FROM pg_trigger WHERE tgrelid = 'accounts_journalline'::regclass AND tgenabled <> 'O'"
        )
        assert cursor.fetchone()[0] == 0  # every trigger still enabled


def granted(cursor: Any, role: str, table: str) -> list[str]:
    """What `role` was granted on `table`, table-wide ("INSERT") and per column ("UPDATE (lock_date)")."""
    cursor.execute(
        "SELECT a.privilege_type FROM pg_class c, aclexplode(c.relacl) a"
        " WHERE c.oid = %s::regclass AND a.grantee = %s::regrole"
        " UNION ALL"
        " SELECT a.privilege_type || ' (' || att.attname || ')' FROM pg_attribute att, aclexplode(att.attacl) a"
        " WHERE att.attrelid = %s::regclass AND a.grantee = %s::regrole"
        " ORDER BY 1",
        [table, role, table, role],
    )
    return [row[0] for row in cursor.fetchall()]


def test_the_application_role_holds_no_write_the_definer_functions_make(db):
    # The writers of seals, daily totals, numbers and audit rows run as the owner (SECURITY DEFINER,
    # migrations/0004_ledger_holes.py): after `db_roles grant` the application role only reads those rows
    with connection.cursor() as cursor:
        cursor.execute(
            "SELECT proname FROM pg_proc WHERE pronamespace = current_schema()::regnamespace AND proname = ANY(%s)"
            " AND prosecdef ORDER BY 1",
            [list(TRIGGER_WRITES)],
        )
        assert [row[0] for row in cursor.fetchall()] == sorted(TRIGGER_WRITES)
        assert granted(cursor, TEST_APP_ROLE, "accounts_entryseal") == ["SELECT"]
        assert granted(cursor, TEST_APP_ROLE, "accounts_accountdaytotal") == ["SELECT"]
        assert granted(cursor, TEST_APP_ROLE, "accounts_periodclose") == ["SELECT"]
        assert granted(cursor, TEST_APP_ROLE, "accounts_books") == ["DELETE", "INSERT", "SELECT", "UPDATE (lock_date)"]
        # Nor through PUBLIC or another role
        cursor.execute(
            "SELECT has_table_privilege(%(r)s, 'accounts_entryseal', 'INSERT'),"
            " has_any_column_privilege(%(r)s, 'accounts_accountdaytotal', 'INSERT, UPDATE'),"
            " has_any_column_privilege(%(r)s, 'accounts_periodclose', 'INSERT, UPDATE'),"
            " has_column_privilege(%(r)s, 'accounts_books', 'last_number', 'UPDATE'),"
            " has_column_privilege(%(r)s, 'accounts_books', 'lock_date', 'UPDATE')",
            {"r": TEST_APP_ROLE},
        )
        assert cursor.fetchone() == (False, False, False, False, True)


@pytest.mark.django_db(transaction=True)
def test_check_names_a_write_only_the_definer_functions_make(table_owner):
    # Given the owner granting the application role writes the ledger's SECURITY DEFINER functions make
    with connection.cursor() as cursor:
        cursor.execute(f"GRANT INSERT ON accounts_periodclose, accounts_entryseal TO {TEST_APP_ROLE}")
        cursor.execute(f"GRANT UPDATE (last_number) ON accounts_books TO {TEST_APP_ROLE}")
    try:
        # Then `db_roles check` names each of them
        with pytest.raises(CommandError) as excinfo:
            call_command("db_roles", "check", app_role=TEST_APP_ROLE)
        message = str(excinfo.value)
        assert "INSERT accounts_periodclose, which only the ledger's triggers write" in message
        assert "INSERT accounts_entryseal, which only" in message
        assert "UPDATE accounts_books (last_number), which only" in message
        assert "accounts_accountdaytotal" not in message
    finally:
        # and `db_roles grant` takes them away again
        call_command("db_roles", "grant", app_role=TEST_APP_ROLE, stdout=StringIO())
    call_command("db_roles", "check", app_role=TEST_APP_ROLE, stdout=StringIO())

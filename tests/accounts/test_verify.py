"""verify_ledger: recomputes every chain and balance from the raw rows and names the first broken entry."""

from __future__ import annotations

import datetime as dt
import hashlib
from decimal import Decimal

import pytest
from django.core.management import CommandError, call_command
from django.db import connection

from accounts.models import EntrySeal, JournalEntry
from accounts.verification import ledger_verify
from tests.factories.accounts import sale

pytestmark = pytest.mark.django_db(transaction=True)


def canonical(entry: JournalEntry, prev_hash: str) -> str:
    """The documented canonical form (docs/ledger.md), computed independently of the SQL."""

    def text(value: str) -> str:
        return f"{len(value)}:{value}"

    epoch = dt.datetime(1970, 1, 1, tzinfo=dt.UTC)
    header = "|".join(
        [
            "v1",
            str(entry.business_id),
            str(entry.number),
            entry.entry_date.isoformat(),
            str((entry.posted_at - epoch) // dt.timedelta(microseconds=1)),
            entry.currency,
            entry.source_type,
            text(entry.source_ref),
            text(entry.idempotency_key),
            str(entry.reverses_id or "-"),
            str(entry.created_by_id or "-"),
            text(entry.memo),
        ]
    )
    lines = "\n".join(
        f"{line.account_id}|{line.debit.quantize(Decimal('0.01'))}|{line.credit.quantize(Decimal('0.01'))}|"
        f"{text(line.memo)}"
        for line in entry.lines.order_by("id")
    )
    return hashlib.sha256(f"{prev_hash}\n{header}\n{lines}".encode()).hexdigest()


def run_verify(*args: str) -> str:
    from io import StringIO

    out = StringIO()
    call_command("verify_ledger", *args, stdout=out)
    return out.getvalue()


def test_the_seal_is_the_documented_sha256_chain(water, owner):
    entries = [sale(water, "116.00", acting_user=owner, memo="bottles | 5:x"), sale(water, "58.10")]
    prev = "0" * 64
    for entry in entries:
        entry.refresh_from_db()
        seal = EntrySeal.objects.get(entry=entry).hash
        assert seal == canonical(entry, prev)
        prev = seal


def test_amounts_hash_at_a_fixed_scale(water):
    # 1.1 and 1.10 are the same amount: the canonical form writes both as "1.10"
    with connection.cursor() as cursor:
        cursor.execute("SELECT ledger_line_canon(7, 1.1, 0, ''), ledger_line_canon(7, 1.10, 0.000, '')")
        a, b = cursor.fetchone()
    assert a == b == "7|1.10|0.00|0:"


def test_the_line_canon_is_the_v1_text_for_any_memo():
    # ledger_line_canon writes an empty memo's "|0:" as a constant (migration 0010): the text must be
    # the v1 expression's for every memo and amount, NULL included, or older seals would break
    memos = ["", "x", "0:", "|0:", "a|b", "5:hello", "\n", "ümlaut ₭", " ", None]
    amounts = ["0", "0.000", "1.1", "1.10", "999999999999.99", "0.01", None]
    with connection.cursor() as cursor:
        cursor.execute(
            """
            SELECT m, d, c, ledger_line_canon(42, d, c, m),
                   42::bigint::text || '|' || d::numeric(14, 2)::text || '|' || c::numeric(14, 2)::text
                   || '|' || length(m)::text || ':' || m
              FROM unnest(%s::text[]) m, unnest(%s::numeric[]) d, unnest(%s::numeric[]) c
            """,
            [memos, amounts, amounts],
        )
        rows = cursor.fetchall()
    assert len(rows) == len(memos) * len(amounts) ** 2
    assert [row for row in rows if row[3] != row[4] or (row[3] is None) != (row[4] is None)] == []
    assert ("", Decimal("0"), Decimal("1.1"), "42|0.00|1.10|0:", "42|0.00|1.10|0:") in rows


def test_an_intact_ledger_verifies(water, laundry):
    for _ in range(3):
        sale(water)
        sale(laundry)
    output = run_verify()
    assert "Ledger verified: 6 entries" in output
    report = ledger_verify(workers=2, check_totals=True)
    assert report.ok and report.entries == 6


def test_a_line_tampered_with_triggers_disabled_is_named(water, laundry, superuser_cursor):
    # Given posted books, and a superuser who switches the triggers off and changes one line's amount
    entries = [sale(water, "116.00") for _ in range(5)]
    sale(laundry)
    target = entries[2]
    superuser_cursor.execute("SET session_replication_role = replica")
    superuser_cursor.execute(
        "UPDATE accounts_journalline SET debit = debit + 100 WHERE entry_id = %s AND debit > 0", [target.pk]
    )
    superuser_cursor.execute(
        "UPDATE accounts_journalline SET credit = credit + 100 WHERE id = "
        "(SELECT min(id) FROM accounts_journalline WHERE entry_id = %s AND credit > 0)",
        [target.pk],
    )
    superuser_cursor.execute("SET session_replication_role = DEFAULT")
    # When verify_ledger runs
    with pytest.raises(CommandError) as excinfo:
        run_verify()
    # Then it exits 1 naming exactly that entry (its balance still holds: the hash gives it away)
    assert excinfo.value.returncode == 1
    message = str(excinfo.value)
    assert f"entry no. {target.number} (id {target.pk})" in message and "hash mismatch" in message
    assert f"business {water.pk}" in message


def test_an_unbalancing_tamper_is_named_as_unbalanced(water, superuser_cursor):
    entries = [sale(water) for _ in range(3)]
    superuser_cursor.execute("ALTER TABLE accounts_journalline DISABLE TRIGGER ALL")
    superuser_cursor.execute(
        "UPDATE accounts_journalline SET credit = credit + 1 WHERE entry_id = %s AND credit > 0", [entries[1].pk]
    )
    superuser_cursor.execute("ALTER TABLE accounts_journalline ENABLE TRIGGER ALL")
    report = ledger_verify(check_totals=True)
    assert not report.ok
    first = report.first_broken
    assert first is not None and first.entry_id == entries[1].pk and "differ" in first.problem
    assert any("differs from its lines" in p for p in report.businesses[0].problems)  # daily totals now wrong


def test_a_deleted_entry_shows_as_a_gap(water, superuser_cursor):
    entries = [sale(water) for _ in range(4)]
    superuser_cursor.execute("SET session_replication_role = replica")
    superuser_cursor.execute("DELETE FROM accounts_entryseal WHERE entry_id = %s", [entries[1].pk])
    superuser_cursor.execute("DELETE FROM accounts_journalline WHERE entry_id = %s", [entries[1].pk])
    superuser_cursor.execute("DELETE FROM accounts_journalentry WHERE id = %s", [entries[1].pk])
    superuser_cursor.execute("SET session_replication_role = DEFAULT")
    report = ledger_verify()
    first = report.first_broken
    assert first is not None and first.number == 3 and "gap" in first.problem
    assert any("books count 4" in p for p in report.businesses[0].problems)


def test_a_rewritten_seal_breaks_the_next_link(water, superuser_cursor):
    entries = [sale(water) for _ in range(3)]
    superuser_cursor.execute("ALTER TABLE accounts_entryseal DISABLE TRIGGER ALL")
    superuser_cursor.execute(
        "UPDATE accounts_entryseal SET hash = repeat('a', 64) WHERE entry_id = %s", [entries[0].pk]
    )
    superuser_cursor.execute("ALTER TABLE accounts_entryseal ENABLE TRIGGER ALL")
    report = ledger_verify(limit=5)
    assert [b.number for b in report.businesses[0].broken] == [1, 2]


def test_verify_checks_businesses_in_chunks_across_workers(water, laundry, monkeypatch, superuser_cursor):
    import accounts.verification as verification

    monkeypatch.setattr(verification, "CHUNK", 2)
    entries = [sale(water if i % 2 else laundry) for i in range(9)]
    assert ledger_verify(workers=2).ok
    superuser_cursor.execute("SET session_replication_role = replica")
    superuser_cursor.execute("UPDATE accounts_journalentry SET memo = 'changed' WHERE id = %s", [entries[6].pk])
    superuser_cursor.execute("SET session_replication_role = DEFAULT")
    report = ledger_verify(workers=2, business_ids=[entries[6].business_id])
    assert report.first_broken is not None and report.first_broken.entry_id == entries[6].pk
    assert len(report.businesses) == 1


def test_daily_totals_out_of_step_with_the_lines_are_found_with_totals(water, superuser_cursor):
    # Given a daily total changed behind the ledger's back (its guard trigger disabled)
    sale(water, "116.00")
    superuser_cursor.execute("ALTER TABLE accounts_accountdaytotal DISABLE TRIGGER ALL")
    superuser_cursor.execute("UPDATE accounts_accountdaytotal SET debit = debit + 50 WHERE debit > 0")
    superuser_cursor.execute("ALTER TABLE accounts_accountdaytotal ENABLE TRIGGER ALL")
    # Then the chain still verifies, but the totals check names the account and day
    assert "Ledger verified" in run_verify()
    with pytest.raises(CommandError, match="daily total of account") as excinfo:
        run_verify("--totals")
    assert excinfo.value.returncode == 1


def test_lines_added_with_null_memos_are_named(water, superuser_cursor):
    # Given a superuser who drops a NOT NULL and adds to a sealed entry a debit and a credit line of 40
    # with a NULL memo (their canonical text is NULL, which string_agg would leave out of the hash)
    entries = [sale(water, "116.00") for _ in range(3)]
    target = entries[1]
    superuser_cursor.execute("ALTER TABLE accounts_journalline ALTER COLUMN memo DROP NOT NULL")
    try:
        superuser_cursor.execute("SET session_replication_role = replica")
        superuser_cursor.execute(
            "INSERT INTO accounts_journalline (entry_id, account_id, debit, credit, memo) "
            "SELECT entry_id, account_id, CASE WHEN debit > 0 THEN 40 ELSE 0 END, "
            "CASE WHEN debit > 0 THEN 0 ELSE 40 END, NULL FROM accounts_journalline "
            "WHERE id IN (SELECT min(id) FROM accounts_journalline WHERE entry_id = %s GROUP BY debit > 0)",
            [target.pk],
        )
        superuser_cursor.execute("SET session_replication_role = DEFAULT")
        # Then verify_ledger names that entry
        report = ledger_verify()
        first = report.first_broken
        assert first is not None and first.entry_id == target.pk and "NULL" in first.problem, first
    finally:
        superuser_cursor.execute("SET session_replication_role = replica")
        superuser_cursor.execute("DELETE FROM accounts_journalline WHERE memo IS NULL")
        superuser_cursor.execute("SET session_replication_role = DEFAULT")
        superuser_cursor.execute("ALTER TABLE accounts_journalline ALTER COLUMN memo SET NOT NULL")


def test_an_entry_field_set_to_null_is_a_hash_mismatch(water, superuser_cursor):
    # Given an entry whose memo a superuser set to NULL (NOT NULL dropped, triggers off): its canonical
    # header is NULL, and so is the hash recomputed from it
    entries = [sale(water) for _ in range(3)]
    superuser_cursor.execute("ALTER TABLE accounts_journalentry ALTER COLUMN memo DROP NOT NULL")
    try:
        superuser_cursor.execute("SET session_replication_role = replica")
        superuser_cursor.execute("UPDATE accounts_journalentry SET memo = NULL WHERE id = %s", [entries[2].pk])
        superuser_cursor.execute("SET session_replication_role = DEFAULT")
        report = ledger_verify()
        first = report.first_broken
        assert first is not None and first.entry_id == entries[2].pk and "hash mismatch" in first.problem, first
    finally:
        superuser_cursor.execute("SET session_replication_role = replica")
        superuser_cursor.execute("UPDATE accounts_journalentry SET memo = '' WHERE memo IS NULL")
        superuser_cursor.execute("SET session_replication_role = DEFAULT")
        superuser_cursor.execute("ALTER TABLE accounts_journalentry ALTER COLUMN memo SET NOT NULL")

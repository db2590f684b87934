"""entries_post: several entries with one statement, each with entry_post's guarantees - one posting per
key, the same refusals, numbers gap-free in order - and a refused entry sinking no other."""

from __future__ import annotations

import datetime as dt
from decimal import Decimal
from typing import Any

import psycopg
import pytest
from django.db import ProgrammingError, transaction
from django.utils import timezone

from accounts import services
from accounts.exceptions import IdempotencyConflict, InvalidAccount, LedgerError, PeriodLocked, UnbalancedEntry
from accounts.models import Books, EntrySeal, JournalEntry, JournalLine
from accounts.services import EntrySpec, LineSpec, books_close_period, entries_post
from tenancy.models import Business
from tests.accounts.conftest import fire_deferred
from tests.factories.accounts import acct, post

pytestmark = pytest.mark.django_db


def spec(
    business: Business, key: str, amount: str = "10.00", *, day: dt.date | None = None, **fields: Any
) -> EntrySpec:
    lines = fields.pop(
        "lines",
        [
            LineSpec(account=acct(business, "cash"), debit=Decimal(amount)),
            LineSpec(account=acct(business, "sales_delivery"), credit=Decimal(amount)),
        ],
    )
    return EntrySpec(
        business=business,
        entry_date=day or timezone.localdate(),
        lines=lines,
        memo=fields.pop("memo", f"sale {key}"),
        source_type=fields.pop("source_type", "sale"),
        idempotency_key=key,
        **fields,
    )


@pytest.fixture
def ledger_statements(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """The statements sent that write journal entries (every cursor of psycopg, Django's and the ledger's)."""
    sent: list[str] = []
    real = psycopg.Cursor.execute

    def execute(self: psycopg.Cursor[Any], query: Any, *args: Any, **kwargs: Any) -> Any:
        text = query if isinstance(query, str) else str(query)
        if "INSERT INTO accounts_journalentry" in text:
            sent.append(text)
        return real(self, query, *args, **kwargs)

    monkeypatch.setattr(psycopg.Cursor, "execute", execute)
    return sent


def numbers(business: Business) -> list[int]:
    return list(JournalEntry.objects.filter(business=business).order_by("number").values_list("number", flat=True))


def test_a_batch_is_one_statement_numbered_in_order_and_sealed_at_commit(water, laundry, ledger_statements, owner):
    specs = [spec(water, f"sale:{n}", f"{n}.50", acting_user=owner) for n in range(1, 6)]
    specs.insert(2, spec(laundry, "sale:1", "7.00"))  # the same key in another business is another key

    results = entries_post(specs)

    assert len(ledger_statements) == 1
    assert all(isinstance(r, JournalEntry) for r in results)
    entries = [r for r in results if isinstance(r, JournalEntry)]
    assert [e.number for e in entries] == [1, 2, 1, 3, 4, 5]
    assert [e.business_id for e in entries] == [water.pk, water.pk, laundry.pk, water.pk, water.pk, water.pk]
    for entry, given in zip(entries, specs, strict=True):
        stored = JournalEntry.objects.get(pk=entry.pk)
        assert (stored.number, stored.idempotency_key, stored.memo, stored.posted_at) == (
            entry.number,
            given.idempotency_key,
            given.memo,
            entry.posted_at,
        )
        lines = list(
            JournalLine.objects.filter(entry=entry).order_by("id").values_list("account_id", "debit", "credit")
        )
        assert lines == [(line.account.pk, line.debit, line.credit) for line in given.lines]  # type: ignore[union-attr]
    assert entries[0].created_by_id == owner.pk
    assert Books.objects.get(business=water).last_number == 5
    fire_deferred()  # balance and seal, as at commit
    assert EntrySeal.objects.filter(entry__in=entries).count() == 6


def test_repeated_keys_post_once_and_other_content_under_a_key_is_a_conflict(water, ledger_statements):
    before = post(water, [("cash", "5.00", 0), ("sales_delivery", 0, "5.00")], key="sale:old", memo="sale sale:old")
    specs = [
        spec(water, "sale:a"),
        spec(water, "sale:old", "5.00"),  # posted before, same content: that entry
        spec(water, "sale:a"),  # repeated in the batch, same content: the batch's entry
        spec(water, "sale:b"),
        spec(water, "sale:a", "11.00"),  # repeated with other content
        spec(water, "sale:old", "6.00"),  # posted before with other content
        spec(water, "sale:c"),
    ]

    results = entries_post(specs)

    a, old, a_again, b, a_other, old_other, c = results
    assert isinstance(a, JournalEntry) and isinstance(a_again, JournalEntry) and a_again.pk == a.pk
    assert isinstance(old, JournalEntry) and old.pk == before.pk
    assert isinstance(a_other, IdempotencyConflict) and isinstance(old_other, IdempotencyConflict)
    assert isinstance(b, JournalEntry) and isinstance(c, JournalEntry)
    assert [a.number, b.number, c.number] == [2, 3, 4]
    assert numbers(water) == [1, 2, 3, 4] and Books.objects.get(business=water).last_number == 4
    for key in ("sale:a", "sale:b", "sale:c", "sale:old"):
        assert JournalEntry.objects.filter(business=water, idempotency_key=key).count() == 1
    fire_deferred()


def refused_mix(water: Business, laundry: Business, today: dt.date) -> list[EntrySpec]:
    foreign = acct(laundry, "cash").pk  # an id: only PostgreSQL can tell it is another business's
    return [
        spec(water, "sale:1"),
        spec(water, "sale:closed", day=today - dt.timedelta(days=2)),
        spec(water, "sale:2"),
        spec(
            water,
            "sale:foreign",
            lines=[
                LineSpec(account=foreign, debit=Decimal("3.00")),
                LineSpec(account=acct(water, "sales_delivery"), credit=Decimal("3.00")),
            ],
        ),
        spec(
            water,
            "sale:unbalanced",
            lines=[
                LineSpec(account=acct(water, "cash"), debit=Decimal("3.00")),
                LineSpec(account=acct(water, "sales_delivery"), credit=Decimal("2.00")),
            ],
        ),
        spec(water, "sale:3"),
    ]


def check_refused_mix(water: Business, results: list[JournalEntry | LedgerError]) -> None:
    one, closed, two, foreign, unbalanced, three = results
    assert isinstance(closed, PeriodLocked)
    assert isinstance(foreign, InvalidAccount)
    assert isinstance(unbalanced, UnbalancedEntry)
    posted = [one, two, three]
    assert all(isinstance(r, JournalEntry) for r in posted)
    assert [r.number for r in posted if isinstance(r, JournalEntry)] == [1, 2, 3]
    assert sorted(JournalEntry.objects.filter(business=water).values_list("idempotency_key", flat=True)) == [
        "sale:1",
        "sale:2",
        "sale:3",
    ]
    assert numbers(water) == [1, 2, 3] and Books.objects.get(business=water).last_number == 3


def test_refused_entries_in_a_callers_transaction_sink_no_other(water, laundry, today, ledger_statements):
    books_close_period(business=water, lock_date=today - dt.timedelta(days=1))
    with transaction.atomic():
        results = entries_post(refused_mix(water, laundry, today))
        check_refused_mix(water, results)
        # The caller's transaction goes on: the refusals were PostgreSQL's own, each in a savepoint.
        post(water, [("cash", "1.00", 0), ("sales_delivery", 0, "1.00")], key="sale:after")
    # The batch, then each refused entry alone (checked, then PostgreSQL's error in a savepoint)
    # - the unbalanced one never reaches the database - then the posting after it.
    assert len(ledger_statements) == 1 + 2 * 2 + 1
    assert numbers(water) == [1, 2, 3, 4]
    fire_deferred()


@pytest.mark.django_db(transaction=True)
def test_refused_entries_in_autocommit_sink_no_other(water, laundry, today):
    books_close_period(business=water, lock_date=today - dt.timedelta(days=1))
    results = entries_post(refused_mix(water, laundry, today))
    check_refused_mix(water, results)
    assert EntrySeal.objects.filter(entry__business=water).count() == 3  # committed, sealed


def test_a_statement_refused_whole_falls_back_to_one_by_one(water, laundry, today, monkeypatch):
    """Should PostgreSQL refuse the batch statement itself (a rule its checks do not foresee), nothing of
    it stays and each entry goes alone: the good ones are posted, once, gap-free."""
    books_close_period(business=water, lock_date=today - dt.timedelta(days=1))
    monkeypatch.setattr(services, "_POSTS_CHECKED_SQL", "SELECT 1 / 0 FROM unnest(%(keys)s::text[])")
    with transaction.atomic():
        check_refused_mix(water, entries_post(refused_mix(water, laundry, today)))
    fire_deferred()


def test_errors_that_are_not_refusals_are_raised_and_the_transaction_goes_on(water, monkeypatch):
    monkeypatch.setattr(services, "_POSTS_CHECKED_SQL", "SELECT %(keys)s::text[] FROM no_such_table")
    with transaction.atomic():
        with pytest.raises(ProgrammingError):
            entries_post([spec(water, "sale:1")])
        assert not JournalEntry.objects.exists()
        post(water, [("cash", "1.00", 0), ("sales_delivery", 0, "1.00")], key="sale:after")
    assert numbers(water) == [1]

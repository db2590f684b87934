"""Property tests: random valid postings keep every invariant; malformed entries never get in.

Each example runs in a savepoint rolled back at its end, with the commit-time checks fired
(fire_deferred), so the seals and balance triggers run as they would at COMMIT.
"""

from __future__ import annotations

import datetime as dt
from collections import defaultdict
from decimal import Decimal

import pytest
from django.db import IntegrityError, connection, transaction
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from accounts.exceptions import LedgerError
from accounts.models import DEBIT_NORMAL, Account, AccountType
from accounts.selectors import balance_sheet, income_statement, trial_balance
from accounts.services import LineSpec, entry_post, entry_reverse
from accounts.verification import ledger_verify
from tests.accounts.conftest import fire_deferred

pytestmark = pytest.mark.django_db

CENT = Decimal("0.01")
TODAY = dt.date(2026, 6, 30)
SETTINGS = settings(
    max_examples=40,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow, HealthCheck.data_too_large],
)

amounts = st.integers(min_value=1, max_value=5_000_000).map(lambda cents: Decimal(cents) * CENT)


@st.composite
def balanced_entries(draw: st.DrawFn, accounts: int) -> tuple[int, list[tuple[int, Decimal, Decimal]]]:
    """(day offset, lines as (account index, debit, credit)): debits drawn, credits split to match."""
    debits = draw(st.lists(amounts, min_size=1, max_size=3))
    total_cents = int(sum(debits) / CENT)
    credit_count = draw(st.integers(min_value=1, max_value=min(3, total_cents)))
    cuts = (
        sorted(draw(st.sets(st.integers(1, total_cents - 1), min_size=credit_count - 1, max_size=credit_count - 1)))
        if credit_count > 1
        else []
    )
    bounds = [0, *cuts, total_cents]
    credits = [Decimal(bounds[i + 1] - bounds[i]) * CENT for i in range(credit_count)]
    pick = st.integers(min_value=0, max_value=accounts - 1)
    lines = [(draw(pick), d, Decimal(0)) for d in debits] + [(draw(pick), Decimal(0), c) for c in credits]
    return draw(st.integers(min_value=0, max_value=60)), draw(st.permutations(lines))


def postable(business) -> list[Account]:
    return list(Account.objects.filter(business=business, is_active=True, children__isnull=True).order_by("code"))


@SETTINGS
@given(data=st.data())
def test_random_valid_postings_keep_every_invariant(water, data):
    accounts = postable(water)
    entries = data.draw(st.lists(balanced_entries(len(accounts)), min_size=1, max_size=6), label="entries")
    with transaction.atomic():
        model: dict[int, Decimal] = defaultdict(Decimal)  # account id -> debit minus credit
        posted = []
        for n, (offset, lines) in enumerate(entries):
            entry = entry_post(
                business=water,
                entry_date=TODAY - dt.timedelta(days=offset),
                lines=[LineSpec(accounts[i], debit=d, credit=c) for i, d, c in lines],
                memo=f"random {n}",
                source_type="manual",
                idempotency_key=f"prop:{n}",
            )
            posted.append(entry)
            for i, d, c in lines:
                model[accounts[i].pk] += d - c
        # A reversal nets its entry to zero
        victim = posted[data.draw(st.integers(0, len(posted) - 1), label="reversed")]
        for line in victim.lines.all():
            model[line.account_id] -= line.debit - line.credit
        entry_reverse(entry=victim, entry_date=TODAY)
        fire_deferred()

        tb = trial_balance(business_ids=[water.pk], as_of=TODAY)
        # The trial balance nets to zero
        assert tb.total_debit == tb.total_credit
        # ... and matches the books kept by hand, account by account
        by_code = {a.code: a.pk for a in accounts}
        assert {by_code[r.code]: r.debit - r.credit for r in tb.rows} == {k: v for k, v in model.items() if v}
        # Assets = liabilities + equity + income - expenses
        natural: dict[str, Decimal] = defaultdict(Decimal)
        for row in tb.rows:
            natural[row.type] += row.balance
        assert natural[AccountType.ASSET] == (
            natural[AccountType.LIABILITY]
            + natural[AccountType.EQUITY]
            + natural[AccountType.INCOME]
            - natural[AccountType.EXPENSE]
        )
        sheet = balance_sheet(business_ids=[water.pk], as_of=TODAY)
        assert sheet.is_balanced
        pnl = income_statement(business_ids=[water.pk], date_from=TODAY - dt.timedelta(days=365), date_to=TODAY)
        assert pnl.net_income == sheet.current_earnings
        assert all((r.type in DEBIT_NORMAL) == (r.balance == r.debit - r.credit) for r in tb.rows)
        # Every entry is sealed and the chain verifies
        assert ledger_verify(business_ids=[water.pk], workers=1, check_totals=True).ok
        transaction.set_rollback(True)


malformed = st.sampled_from(["off-by-a-cent", "one-line", "no-lines", "both-sides", "negative", "zero"])


def malformed_lines(kind: str, amount: Decimal) -> list[tuple[Decimal, Decimal]]:
    return {
        "off-by-a-cent": [(amount, Decimal(0)), (Decimal(0), amount + CENT)],
        "one-line": [(amount, Decimal(0))],
        "no-lines": [],
        "both-sides": [(amount, amount), (Decimal(0), Decimal(0) + amount)],
        "negative": [(-amount, Decimal(0)), (Decimal(0), -amount)],
        "zero": [(Decimal(0), Decimal(0)), (Decimal(0), Decimal(0))],
    }[kind]


@SETTINGS
@given(kind=malformed, amount=amounts)
def test_malformed_entries_are_refused_by_the_service(water, kind, amount):
    cash, sales = (Account.objects.get(business=water, role=r) for r in ("cash", "sales_refill"))
    specs = [
        LineSpec(cash if i == 0 else sales, debit=d, credit=c) for i, (d, c) in enumerate(malformed_lines(kind, amount))
    ]
    with pytest.raises(LedgerError):
        entry_post(
            business=water,
            entry_date=TODAY,
            lines=specs,
            memo="bad",
            source_type="manual",
            idempotency_key=f"bad:{kind}",
        )


@SETTINGS
@given(kind=malformed, amount=amounts)
def test_malformed_entries_are_refused_by_the_database(water, kind, amount):
    cash, sales = (Account.objects.get(business=water, role=r) for r in ("cash", "sales_refill"))

    def insert_and_check() -> None:
        with transaction.atomic(), connection.cursor() as cursor:
            cursor.execute(
                "INSERT INTO accounts_journalentry (business_id, entry_date, memo, source_type, source_ref,"
                " idempotency_key, currency) VALUES (%s, %s, 'bad', 'manual', '', %s, 'KES') RETURNING id",
                [water.pk, TODAY, f"raw-bad:{kind}"],
            )
            entry_id = cursor.fetchone()[0]
            for i, (debit, credit) in enumerate(malformed_lines(kind, amount)):
                cursor.execute(
                    "INSERT INTO accounts_journalline (entry_id, account_id, debit, credit, memo)"
                    " VALUES (%s, %s, %s, %s, '')",
                    [entry_id, (cash if i == 0 else sales).pk, debit, credit],
                )
            fire_deferred()

    with pytest.raises(IntegrityError):
        insert_and_check()

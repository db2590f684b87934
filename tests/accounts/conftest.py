"""Ledger test helpers: businesses with their default chart, a posting shortcut, commit-time checks.

Deferred constraint triggers (balance, seal) fire at COMMIT. Tests in pytest-django's default
wrapper never commit, so `fire_deferred()` runs them where the test stands (SET CONSTRAINTS ALL
IMMEDIATE fires every pending deferred check at once, as COMMIT would). Tests about commit itself
use `@pytest.mark.django_db(transaction=True)`.
"""

from __future__ import annotations

import datetime as dt
import itertools
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from decimal import Decimal
from typing import Any

import pytest
from django.db import connection
from django.utils import timezone

from accounts.models import Account, JournalEntry
from accounts.selectors import account_for_role
from accounts.services import LineSpec, chart_ensure_default, entry_post
from tenancy.models import Business

_keys = itertools.count(1)


def fire_deferred() -> None:
    """Run the commit-time checks (balance, seal) now, inside the current transaction."""
    with connection.cursor() as cursor:
        cursor.execute("SET CONSTRAINTS ALL IMMEDIATE")
        cursor.execute("SET CONSTRAINTS ALL DEFERRED")


def acct(business: Business, role: str) -> Account:
    return account_for_role(business=business, role=role)


def post(
    business: Business,
    lines: Sequence[tuple[str, Any, Any]],
    *,
    day: dt.date | None = None,
    source_type: str = "sale",
    key: str | None = None,
    memo: str = "test entry",
    acting_user: Any = None,
) -> JournalEntry:
    """Post `lines` given as (role, debit, credit) through the service."""
    return entry_post(
        business=business,
        entry_date=day or timezone.localdate(),
        lines=[
            LineSpec(account=acct(business, role), debit=Decimal(str(debit)), credit=Decimal(str(credit)))
            for role, debit, credit in lines
        ],
        memo=memo,
        source_type=source_type,
        idempotency_key=key or f"test:{next(_keys)}",
        acting_user=acting_user,
    )


def sale(business: Business, amount: str = "116.00", *, via: str = "cash", **kwargs: Any) -> JournalEntry:
    """A cash (or M-Pesa) sale: Dr cash, Cr sales, Cr VAT (16%)."""
    gross = Decimal(amount)
    net = (gross / Decimal("1.16")).quantize(Decimal("0.01"))
    sales_role = Account.objects.filter(business=business, role__startswith="sales_").order_by("code")[0].role
    return post(business, [(via, gross, 0), (sales_role, 0, net), ("vat_output", 0, gross - net)], **kwargs)


@contextmanager
def superuser_bypass(*tables: str, trigger: str | None = None) -> Iterator[None]:
    """Disable the ledger's triggers on `tables` (or just `trigger`) for the block, as their owner or a superuser
    could (the test runs as the owner: `table_owner`); the application role cannot (test_db_roles.py)."""
    with connection.cursor() as cursor:
        for table in tables:
            cursor.execute(f"ALTER TABLE {table} DISABLE TRIGGER {trigger or 'ALL'}")
    try:
        yield
    finally:
        with connection.cursor() as cursor:
            for table in tables:
                cursor.execute(f"ALTER TABLE {table} ENABLE TRIGGER {trigger or 'ALL'}")


@pytest.fixture
def today() -> dt.date:
    return timezone.localdate()


@pytest.fixture
def water(water: Business) -> Business:
    chart_ensure_default(business=water)
    return water


@pytest.fixture
def laundry(laundry: Business) -> Business:
    chart_ensure_default(business=laundry)
    return laundry


@pytest.fixture
def retail(retail: Business) -> Business:
    chart_ensure_default(business=retail)
    return retail

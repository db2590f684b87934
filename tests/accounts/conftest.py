"""Ledger test helpers: businesses with their default chart, a posting shortcut, commit-time checks.

Deferred constraint triggers (balance, seal) fire at COMMIT. Tests in pytest-django's default
wrapper never commit, so `fire_deferred()` runs them where the test stands (SET CONSTRAINTS ALL
IMMEDIATE fires every pending deferred check at once, as COMMIT would). Tests about commit itself
use `@pytest.mark.django_db(transaction=True)`.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Iterator
from contextlib import contextmanager

import pytest
from django.db import connection
from django.utils import timezone

from accounts.services import chart_ensure_default
from tenancy.models import Business


def fire_deferred() -> None:
    """Run the commit-time checks (balance, seal) now, inside the current transaction."""
    with connection.cursor() as cursor:
        cursor.execute("SET CONSTRAINTS ALL IMMEDIATE")
        cursor.execute("SET CONSTRAINTS ALL DEFERRED")


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

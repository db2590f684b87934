"""Operations tests run on businesses with their books (default chart + operations accounts)."""

from __future__ import annotations

import datetime as dt
from decimal import Decimal

import pytest
from django.utils import timezone

from accounts.services import chart_ensure_default
from operations.models import Item, ItemKind
from operations.services.postings import chart_operations_ensure
from tenancy.models import Business
from tests.factories.operations import ItemFactory


def _with_books(business: Business) -> Business:
    chart_ensure_default(business=business)
    chart_operations_ensure(business=business)
    return business


@pytest.fixture
def water(water: Business) -> Business:
    return _with_books(water)


@pytest.fixture
def laundry(laundry: Business) -> Business:
    return _with_books(laundry)


@pytest.fixture
def retail(retail: Business) -> Business:
    return _with_books(retail)


@pytest.fixture
def today() -> dt.date:
    return timezone.localdate()


@pytest.fixture
def airtime(retail: Business) -> Item:
    """A scratch card sold at 580.00 VAT inclusive (the M-Pesa sale tests' item)."""
    return ItemFactory.create(
        business=retail, name="Scratch card", kind=ItemKind.SERVICE, price=Decimal("580.00"), sales_role="sales_shop"
    )

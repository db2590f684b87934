"""Operations tests run on businesses with their books (default chart + operations accounts)."""

from __future__ import annotations

import datetime as dt

import pytest
from django.utils import timezone

from accounts.services import chart_ensure_default
from operations.services.postings import chart_operations_ensure
from tenancy.models import Business


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

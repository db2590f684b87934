"""Rows of the ledger's scoped admins for tests/backoffice/test_tenancy.py (ROW_MAKERS by model)."""

from __future__ import annotations

import itertools
from collections.abc import Callable
from decimal import Decimal

from django.db.models import Model
from django.utils import timezone

from accounts.models import Account, Books, JournalEntry, JournalLine
from accounts.selectors import account_for_role
from accounts.services import LineSpec, chart_ensure_default, entry_post
from tenancy.models import Business

_keys = itertools.count(1)


def _account(business: Business) -> Account:
    chart_ensure_default(business=business)
    return account_for_role(business=business, role="cash")


def _books(business: Business) -> Books:
    chart_ensure_default(business=business)
    return Books.objects.get(business=business)


def _entry(business: Business) -> JournalEntry:
    cash = _account(business)
    return entry_post(
        business=business,
        entry_date=timezone.localdate(),
        lines=[
            LineSpec(cash, debit=Decimal("10.00")),
            LineSpec(account_for_role(business=business, role="suspense"), credit=Decimal("10.00")),
        ],
        memo=f"scoping entry of {business.name}",
        source_type="manual",
        idempotency_key=f"scoping:{next(_keys)}",
    )


def _line(business: Business) -> JournalLine:
    line = _entry(business).lines.order_by("id").first()
    assert line is not None
    return line


ROW_MAKERS: dict[type[Model], Callable[[Business], Model]] = {
    Account: _account,
    Books: _books,
    JournalEntry: _entry,
    JournalLine: _line,
}

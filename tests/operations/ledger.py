"""Reading back what a service posted, line by line, by account role."""

from __future__ import annotations

import datetime as dt
from decimal import Decimal

from django.db.models import Sum

from accounts.models import JournalEntry, JournalLine
from operations.models import StockMovement
from tenancy.models import Business


def lines_by_role(entry: JournalEntry | None) -> dict[str, tuple[Decimal, Decimal]]:
    """{role: (debit, credit)} of an entry's lines (one line per account after netting)."""
    assert entry is not None
    result: dict[str, tuple[Decimal, Decimal]] = {}
    for line in JournalLine.objects.filter(entry=entry).select_related("account"):
        assert line.account.role not in result, f"two lines on {line.account.role}"
        result[line.account.role] = (line.debit, line.credit)
    return result


def D(value: str) -> Decimal:  # noqa: N802 - reads like the literal it builds
    return Decimal(value)


def role_balance(business: Business, role: str) -> Decimal:
    """Debits minus credits on the business's account with `role`, summed from the lines (the daily
    totals are only brought up to date at commit, and a test never commits)."""
    totals = JournalLine.objects.filter(account__business=business, account__role=role).aggregate(
        d=Sum("debit"), c=Sum("credit")
    )
    return (totals["d"] or Decimal(0)) - (totals["c"] or Decimal(0))


def stock_total_value(*, business: Business, as_of: dt.date) -> Decimal:
    """What the stock movements of `business` up to `as_of` are worth (the inventory account must agree)."""
    total = StockMovement.objects.filter(business=business, movement_date__lte=as_of).aggregate(s=Sum("value"))["s"]
    return total or Decimal("0.00")

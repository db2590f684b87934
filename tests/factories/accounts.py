"""Ledger builders: an account by role, a posting shortcut through the service, a VAT sale."""

from __future__ import annotations

import datetime as dt
import itertools
from collections.abc import Sequence
from decimal import Decimal
from typing import Any

from django.utils import timezone

from accounts.models import Account, JournalEntry
from accounts.selectors import account_for_role
from accounts.services import LineSpec, entry_post
from tenancy.models import Business

_keys = itertools.count(1)


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

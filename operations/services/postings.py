"""What every operations service shares: ledger accounts by role, the open-day check, VAT,
netting journal lines, and the accounts operations adds to a business's chart.
"""

from __future__ import annotations

import datetime as dt
from collections import defaultdict
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from decimal import ROUND_HALF_UP, Decimal
from typing import Any

from django.db import transaction
from django.utils import timezone

from accounts.fields import CENT, ZERO
from accounts.models import Account, AccountType, Books, JournalEntry
from accounts.services import LineSpec, entry_post
from operations.exceptions import DayClosed, InvalidInput
from operations.models import VAT_PERCENT
from tenancy.models import Business


@dataclass(frozen=True)
class ExtraAccount:
    code: str
    name: str
    type: str
    role: str


# Roles operations needs that the default charts (accounts/charts.py) do not seed. They are added
# as top-level leaf accounts by chart_operations_ensure; tell the ledger's owner to fold them in.
EXTRA_ACCOUNTS: tuple[ExtraAccount, ...] = (
    ExtraAccount("2300", "Customer deposits on open orders", AccountType.LIABILITY, "customer_deposits"),
    ExtraAccount("5100", "Stock count differences", AccountType.EXPENSE, "stock_variance"),
)


def chart_operations_ensure(*, business: Business) -> None:
    """Add the accounts operations posts to that the default chart lacks (see EXTRA_ACCOUNTS).

    Idempotent: an account whose role exists is left alone; a taken code gets the next free one.
    """
    with transaction.atomic():
        existing = set(Account.objects.filter(business=business).values_list("role", flat=True))
        codes = set(Account.objects.filter(business=business).values_list("code", flat=True))
        for spec in EXTRA_ACCOUNTS:
            if spec.role in existing:
                continue
            code = spec.code
            while code in codes:
                code = str(int(code) + 1)
            Account.objects.create(business=business, code=code, name=spec.name, type=spec.type, role=spec.role)
            codes.add(code)


class Roles:
    """The business's account ids by role, loaded in one query."""

    def __init__(self, business: Business) -> None:
        self.business = business
        self._ids = dict(Account.objects.filter(business=business).exclude(role="").values_list("role", "id"))
        if any(spec.role not in self._ids for spec in EXTRA_ACCOUNTS):
            chart_operations_ensure(business=business)
            self._ids = dict(Account.objects.filter(business=business).exclude(role="").values_list("role", "id"))

    def __getitem__(self, role: str) -> int:
        try:
            return int(self._ids[role])
        except KeyError:
            raise InvalidInput(f"{self.business} has no ledger account for {role!r}; ask the accountant") from None


def lock_date_of(business: Business) -> dt.date | None:
    return Books.objects.filter(business=business).values_list("lock_date", flat=True).first()


def day_open_check(business: Business, day: dt.date) -> None:
    """Raise DayClosed if `day` is on or before the business's lock date, InvalidInput if it is
    a day that has not come yet."""
    if day > timezone.localdate():
        raise InvalidInput(f"{day:%d %b %Y} is in the future: record it on the day it happens.")
    lock_date = lock_date_of(business)
    if lock_date is not None and day <= lock_date:
        raise DayClosed(
            f"{day:%d %b %Y} is closed for {business}: the books are closed up to {lock_date:%d %b %Y}. "
            "Record it on an open day."
        )


def money(value: Decimal) -> Decimal:
    return value.quantize(CENT, rounding=ROUND_HALF_UP)


def vat_split(gross: Decimal, tax_rate: str) -> tuple[Decimal, Decimal]:
    """(net, VAT) of a VAT-inclusive amount: VAT = round(gross * rate / (100 + rate), 2)."""
    rate = VAT_PERCENT[tax_rate]
    if not rate:
        return gross, ZERO
    vat = money(gross * rate / (100 + rate))
    return gross - vat, vat


class Journal:
    """Collects signed amounts per account (debit positive) and nets them into entry lines."""

    def __init__(self, roles: Roles) -> None:
        self.roles = roles
        self._net: dict[int, Decimal] = defaultdict(lambda: ZERO)
        self._memo: dict[int, str] = {}

    def debit(self, role: str, amount: Decimal, memo: str = "") -> None:
        self._add(role, amount, memo)

    def credit(self, role: str, amount: Decimal, memo: str = "") -> None:
        self._add(role, -amount, memo)

    def _add(self, role: str, amount: Decimal, memo: str) -> None:
        if not amount:
            return
        account_id = self.roles[role]
        self._net[account_id] += amount
        if memo:
            self._memo.setdefault(account_id, memo[:255])

    def lines(self) -> list[LineSpec]:
        return [
            LineSpec(
                account=account_id,
                debit=amount if amount > 0 else ZERO,
                credit=-amount if amount < 0 else ZERO,
                memo=self._memo.get(account_id, ""),
            )
            for account_id, amount in self._net.items()
            if amount
        ]

    def post(
        self,
        *,
        entry_date: dt.date,
        memo: str,
        source_type: str,
        source_ref: str,
        idempotency_key: str,
        acting_user: Any,
    ) -> JournalEntry | None:
        """Post the netted lines; None when everything nets to nothing (nothing to post)."""
        lines = self.lines()
        if not lines:
            return None
        return entry_post(
            business=self.roles.business,
            entry_date=entry_date,
            lines=lines,
            memo=memo[:255],
            source_type=source_type,
            source_ref=source_ref[:100],
            idempotency_key=idempotency_key,
            acting_user=acting_user,
        )


def sales_role_of(item: Any) -> str:
    """The account role an item's sale credits; refused if the catalogue does not say."""
    if not item.sales_role:
        raise InvalidInput(f"{item} has no sales account: set its sales role in the catalogue first.")
    return str(item.sales_role)


def acting(user: Any) -> Any:
    """The user to store on a row (None for a system run)."""
    return user if getattr(user, "pk", None) else None


def same_business(business: Business, rows: Iterable[Any], what: str) -> None:
    """Refuse a related row (an item, a supplier, a till) of another business than the document's.

    Every service that takes a document with related rows calls it before moving anything: the
    admin, an import or raw SQL can put an item of one business on a document of another, and
    posting it would move that business's stock against this one's books.
    """
    for row in rows:
        if row is not None and row.business_id != business.pk:
            raise InvalidInput(f"{what} {row} belongs to another business")


def same_business_items(business: Business, items: Iterable[Any]) -> None:
    """`same_business` for catalogue items and the items they move (`stock_item`, `returns_item`)."""
    for item in items:
        same_business(business, [item], "Item")
        linked = [item.stock_item if item.stock_item_id else None, item.returns_item if item.returns_item_id else None]
        same_business(business, linked, f"The stock moved by {item},")


def require_lines(lines: Sequence[Any], what: str) -> None:
    if not lines:
        raise InvalidInput(f"A {what} needs at least one line.")

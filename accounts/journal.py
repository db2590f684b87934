"""Posting by account role: the accounts of a business by role, and a journal that nets signed
amounts per account into the lines of one entry. Operations' services build their entries with it.
"""

from __future__ import annotations

import datetime as dt
from collections import defaultdict
from decimal import Decimal
from typing import Any

from accounts.exceptions import InvalidAccount
from accounts.fields import ZERO
from accounts.models import Account, JournalEntry
from accounts.services import LineSpec, entry_post
from tenancy.models import Business


class Roles:
    """The business's account ids by role, loaded in one query."""

    def __init__(self, business: Business) -> None:
        self.business = business
        self._ids = self._load()

    def _load(self) -> dict[str, int]:
        return dict(Account.objects.filter(business=self.business).exclude(role="").values_list("role", "id"))

    def missing(self, role: str) -> Exception:
        """The error for a role the chart lacks."""
        return InvalidAccount(f"{self.business} has no ledger account for {role!r}; ask the accountant")

    def __getitem__(self, role: str) -> int:
        try:
            return int(self._ids[role])
        except KeyError:
            raise self.missing(role) from None


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

"""The double-entry ledger: chart of accounts, books, journal entries and their lines.

The rules that keep the books right are enforced by PostgreSQL itself (see
migrations/0002_ledger_rules.py and docs/ledger.md), not by these classes: every entry balances
and has two or more lines, posted rows are never updated or deleted, nothing is posted on or
before the lock date, numbers are gap-free and each business's entries form a SHA-256 chain.
Write through accounts.services only.
"""

from __future__ import annotations

from django.conf import settings
from django.db import models
from django.db.models import Q
from django.db.models.functions import Now

from accounts.fields import MoneyField
from tenancy.models import Business


class AccountType(models.TextChoices):
    ASSET = "asset", "Asset"
    LIABILITY = "liability", "Liability"
    EQUITY = "equity", "Equity"
    INCOME = "income", "Income"
    EXPENSE = "expense", "Expense"


# Accounts whose balance is normally a debit; the others are normally credits.
DEBIT_NORMAL = frozenset({AccountType.ASSET, AccountType.EXPENSE})


class Account(models.Model):
    """One account of one business's chart. Lines post only to active accounts without children."""

    business = models.ForeignKey(Business, on_delete=models.CASCADE, related_name="ledger_accounts")
    code = models.CharField(max_length=20)
    name = models.CharField(max_length=120)
    type = models.CharField(max_length=10, choices=AccountType.choices)
    parent = models.ForeignKey(
        "self", on_delete=models.PROTECT, null=True, blank=True, related_name="children", help_text="Group account"
    )
    # A stable machine name that services look accounts up by ("cash", "mpesa_clearing", ...).
    role = models.SlugField(max_length=50, blank=True, default="", db_index=False)
    is_active = models.BooleanField(default=True)
    # Money owed between the owner's own businesses: marked on the statements (consolidation adds it
    # up like any other account; the mark says where the Total column double-counts).
    intercompany = models.BooleanField(
        default=False,
        db_default=False,
        help_text="Balances with another of the owner's businesses (marked on the statements).",
    )

    class Meta:
        ordering = ["business", "code"]
        constraints = [
            models.UniqueConstraint(fields=["business", "code"], name="account_business_code_uniq"),
            models.UniqueConstraint(
                fields=["business", "role"], condition=~Q(role=""), name="account_business_role_uniq"
            ),
            models.CheckConstraint(condition=Q(type__in=AccountType.values), name="account_type_valid"),
            models.CheckConstraint(condition=~Q(code=""), name="account_code_not_empty"),
        ]

    def __str__(self) -> str:
        return f"{self.code} {self.name}"

    @property
    def is_debit_normal(self) -> bool:
        return self.type in DEBIT_NORMAL


class Books(models.Model):
    """Per business: the lock date and the last entry number.

    Posting an entry updates this row (PostgreSQL does it, in the entry's insert trigger), so the
    row lock serialises posting and period close per business and makes numbers gap-free.
    """

    business = models.OneToOneField(Business, on_delete=models.CASCADE, primary_key=True, related_name="books")
    lock_date = models.DateField(null=True, blank=True, help_text="Nothing can be posted dated on or before this date.")
    last_number = models.BigIntegerField(default=0, editable=False)

    class Meta:
        verbose_name = "books"
        verbose_name_plural = "books"
        ordering = ["business__name"]
        permissions = [
            ("close_period", "Can close a period (move the lock date forward)"),
            ("view_reports", "Can view trial balance, P&L, balance sheet and cash flow"),
        ]

    def __str__(self) -> str:
        return f"Books of {self.business}"


class PeriodClose(models.Model):
    """The audit trail of lock-date moves: who closed which period, when.

    Written by PostgreSQL (a trigger on books) for every lock-date move, whoever makes it;
    `closed_by` comes from the transaction's `ledger.acting_user_id` setting (books_close_period
    sets it). Append-only: never updated, deleted or truncated.
    """

    books = models.ForeignKey(Books, on_delete=models.PROTECT, related_name="closes")
    previous_lock_date = models.DateField(null=True, blank=True)
    lock_date = models.DateField()
    closed_by = models.ForeignKey(settings.AUTH_USER_MODEL, on_delete=models.PROTECT, null=True, blank=True)
    closed_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        ordering = ["-closed_at", "-id"]

    def __str__(self) -> str:
        return f"{self.books_id}: closed to {self.lock_date}"


class SourceType(models.TextChoices):
    SALE = "sale", "Sale"
    MPESA = "mpesa", "M-Pesa"
    MANUAL = "manual", "Manual journal"
    REVERSAL = "reversal", "Reversal"
    CLOSING = "closing", "Closing"
    EXPENSE = "expense", "Expense"
    PURCHASE = "purchase", "Purchase"
    STOCK = "stock", "Stock"
    PAYMENT = "payment", "Payment"
    OPENING = "opening", "Opening balance"
    OTHER = "other", "Other"


class JournalEntry(models.Model):
    """A posted journal entry. `number` and `posted_at` are set by PostgreSQL; its seal at commit."""

    # No single-column indexes on business / created_by: the composite indexes below lead with
    # business, and every index is paid for on each of thousands of postings a second.
    # db_constraint=False here and on the lines' and seal's keys: the ledger's triggers check these
    # references at insert and nothing referenced can be deleted (migration 0009, docs/ledger.md).
    business = models.ForeignKey(
        Business, on_delete=models.PROTECT, related_name="journal_entries", db_index=False, db_constraint=False
    )
    number = models.BigIntegerField(db_default=0, editable=False)
    entry_date = models.DateField(help_text="Business date (Africa/Nairobi)")
    posted_at = models.DateTimeField(db_default=Now(), editable=False)
    memo = models.CharField(max_length=255, blank=True, default="")
    source_type = models.CharField(max_length=20, choices=SourceType.choices)
    source_ref = models.CharField(max_length=100, blank=True, default="")
    created_by = models.ForeignKey(
        settings.AUTH_USER_MODEL, on_delete=models.PROTECT, null=True, blank=True, related_name="+", db_index=False
    )
    idempotency_key = models.CharField(max_length=200)
    reverses = models.OneToOneField(
        "self", on_delete=models.PROTECT, null=True, blank=True, related_name="reversed_by", db_constraint=False
    )
    currency = models.CharField(max_length=3, default="KES", editable=False)

    class Meta:
        verbose_name = "journal entry"
        verbose_name_plural = "journal entries"
        ordering = ["-id"]
        permissions = [("reverse_journalentry", "Can reverse journal entries")]
        constraints = [
            models.UniqueConstraint(fields=["business", "number"], name="entry_business_number_uniq"),
            models.UniqueConstraint(fields=["business", "idempotency_key"], name="entry_business_idempotency_uniq"),
            models.CheckConstraint(condition=Q(currency="KES"), name="entry_currency_kes"),
            models.CheckConstraint(condition=~Q(idempotency_key=""), name="entry_idempotency_key_not_empty"),
            models.CheckConstraint(condition=Q(source_type__in=SourceType.values), name="entry_source_type_valid"),
            models.CheckConstraint(
                condition=Q(source_type=SourceType.REVERSAL, reverses__isnull=False)
                | (~Q(source_type=SourceType.REVERSAL) & Q(reverses__isnull=True)),
                name="entry_reversal_has_original",
            ),
        ]
        indexes = [models.Index(fields=["business", "entry_date"], name="entry_business_date_idx")]

    def __str__(self) -> str:
        return f"#{self.number} {self.entry_date} {self.memo}".strip()


class JournalLine(models.Model):
    """One side of an entry: a positive debit or a positive credit, never both, never zero.

    The columns are unconstrained numeric with a CHECK of at most two decimals (migration 0004):
    numeric(14,2) would round 10.005 to 10.01 before any check could refuse it.
    """

    # Indexed with the id (below): an entry's lines come in posting order, which the seal hashes in
    # (PostgreSQL 16+ then skips sorting them).
    entry = models.ForeignKey(
        JournalEntry, on_delete=models.PROTECT, related_name="lines", db_index=False, db_constraint=False
    )
    account = models.ForeignKey(Account, on_delete=models.PROTECT, related_name="lines", db_constraint=False)
    debit = MoneyField(default=0)
    credit = MoneyField(default=0)
    memo = models.CharField(max_length=255, blank=True, default="")

    class Meta:
        verbose_name = "journal line"
        ordering = ["-id"]
        indexes = [models.Index(fields=["entry", "id"], name="line_entry_id_idx")]
        constraints = [
            models.CheckConstraint(
                condition=Q(debit__gt=0, credit=0) | Q(debit=0, credit__gt=0), name="line_one_positive_side"
            ),
        ]

    def __str__(self) -> str:
        side = f"Dr {self.debit}" if self.debit else f"Cr {self.credit}"
        return f"{self.account_id} {side}"


class EntrySeal(models.Model):
    """The entry's link in its business's hash chain, written by PostgreSQL when the entry commits.

    hash = SHA-256 of the previous entry's hash and this entry's canonical form (docs/ledger.md).
    A separate append-only row, so that entries themselves are never updated, not even once.
    """

    entry = models.OneToOneField(
        JournalEntry, on_delete=models.PROTECT, primary_key=True, related_name="seal", db_constraint=False
    )
    hash = models.CharField(max_length=64)

    def __str__(self) -> str:
        return self.hash


class AccountDayTotal(models.Model):
    """Debit and credit totals per account per entry date, kept by PostgreSQL on every line insert.

    Lines are append-only, so a total only ever grows; reports read these rows instead of millions
    of lines. verify_ledger checks they equal the sums of the lines.
    """

    account = models.ForeignKey(Account, on_delete=models.PROTECT, related_name="+", db_index=False)
    business = models.ForeignKey(Business, on_delete=models.PROTECT, related_name="+", db_index=False)
    day = models.DateField()
    debit = MoneyField(max_digits=18, default=0)
    credit = MoneyField(max_digits=18, default=0)
    line_count = models.BigIntegerField(default=0)

    class Meta:
        constraints = [models.UniqueConstraint(fields=["account", "day"], name="daytotal_account_day_uniq")]
        indexes = [models.Index(fields=["business", "day"], name="daytotal_business_day_idx")]

    def __str__(self) -> str:
        return f"{self.account_id} {self.day}: Dr {self.debit} Cr {self.credit}"

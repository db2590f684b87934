"""Every write to the ledger. Other parts of the product post through `entry_post` only.

PostgreSQL enforces the rules whatever happens here (migrations/0002_ledger_rules.py); these
services check the same rules first so that callers get a precise domain error
(accounts.exceptions) instead of a database error. A posting is one prepared SQL statement (the
entry and its lines together): one round trip, and no savepoint inside a caller's transaction.
Where its time goes: docs/ledger.md ("Where a posting's time goes").
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Sequence
from dataclasses import dataclass
from decimal import Decimal
from typing import Any, NoReturn

import psycopg
from django.db import DEFAULT_DB_ALIAS, DatabaseError, IntegrityError, connection, connections, transaction
from django.utils import timezone

from accounts.charts import default_chart
from accounts.exceptions import (
    AlreadyReversed,
    IdempotencyConflict,
    InvalidAccount,
    InvalidLine,
    InvalidLockDate,
    InvalidReversal,
    LedgerError,
    LockDateBackwards,
    ReservedIdempotencyKey,
    UnbalancedEntry,
    database_error_sqlstate,
    ledger_error_from,
)
from accounts.fields import ZERO, to_money
from accounts.models import Account, Books, JournalEntry, JournalLine, SourceType
from accounts.selectors import books_first_open_date
from tenancy.models import Business

MAX_AMOUNT = Decimal("999999999999.99")
SOURCE_TYPES = frozenset(SourceType.values)
MAX_LINES = 500

# The idempotency keys the system's own postings use ("<prefix>:<id>"). A manual entry under one of
# them would take the key first and make the real posting fail (or return the person's entry), so
# people's entries may not use them (entry_post_manual, and entry_post for source "manual").
RESERVED_KEY_PREFIXES = (
    "closing",
    "customer-payment",
    "deposit-return",
    "expense",
    "laundry-cancel",
    "laundry-collect",
    "laundry-deposit",
    "mpesa",  # and every "mpesa-..." key: receipts, allocations, reversals, charges
    "opening-stock",
    "purchase",
    "reversal",
    "sale",
    "sale-refund",
    "stock-count",
    "supplier-payment",
)


def idempotency_key_reserved(key: str) -> bool:
    """Whether `key` has the form of a system posting's key (case and spaces ignored)."""
    head = key.strip().lower().partition(":")[0].strip()
    return head in RESERVED_KEY_PREFIXES or head.startswith("mpesa")


def reserved_key_check(key: str) -> None:
    """Raise ReservedIdempotencyKey for a key that only the system's postings may use."""
    if idempotency_key_reserved(key):
        raise ReservedIdempotencyKey(
            f"the idempotency key {key.strip()!r} is reserved for the system's own postings "
            f"({key.strip().partition(':')[0]}:...); a manual entry needs another one, e.g. manual:<anything>"
        )


@dataclass(frozen=True)
class LineSpec:
    """One line to post: an account (or its id) and a positive debit or a positive credit."""

    account: Account | int
    debit: Decimal = ZERO
    credit: Decimal = ZERO
    memo: str = ""


@dataclass(frozen=True)
class _Line:
    account_id: int
    debit: Decimal
    credit: Decimal
    memo: str

    def key(self) -> tuple[int, Decimal, Decimal, str]:
        return (self.account_id, self.debit, self.credit, self.memo)


def _raise_ledger_error(exc: Exception) -> NoReturn:
    """Re-raise a database error as the ledger's domain error when a ledger rule raised it."""
    error = ledger_error_from(exc)
    if error is None:
        raise exc
    raise error from exc


def _check_text(value: str, *, field: str, max_length: int) -> str:
    if not isinstance(value, str):
        raise LedgerError(f"{field} must be text")
    if len(value) > max_length:
        raise LedgerError(f"{field} is longer than {max_length} characters")
    return value


def _normalise_lines(business: Business, lines: Sequence[LineSpec]) -> list[_Line]:
    """Check each line and the entry's balance in Python, so callers get a precise error."""
    if len(lines) < 2:
        raise UnbalancedEntry(f"an entry needs at least two lines, not {len(lines)}")
    if len(lines) > MAX_LINES:
        raise InvalidLine(f"an entry has at most {MAX_LINES} lines")
    result = []
    for number, spec in enumerate(lines, start=1):
        try:
            debit, credit = to_money(spec.debit), to_money(spec.credit)
        except ValueError as exc:
            raise InvalidLine(f"line {number}: {exc}") from exc
        if debit < 0 or credit < 0:
            raise InvalidLine(f"line {number}: amounts cannot be negative")
        if (debit > 0) == (credit > 0):
            raise InvalidLine(f"line {number}: a line is either a debit or a credit, and not zero")
        if max(debit, credit) > MAX_AMOUNT:
            raise InvalidLine(f"line {number}: amount too large")
        account = spec.account
        if isinstance(account, Account):
            if account.business_id != business.pk:
                raise InvalidAccount(f"line {number}: account {account} belongs to another business")
            if not account.is_active:
                raise InvalidAccount(f"line {number}: account {account} is inactive")
            account_id = account.pk
        elif isinstance(account, int) and not isinstance(account, bool):
            account_id = account
        else:
            raise InvalidAccount(f"line {number}: {account!r} is not an account")
        memo = _check_text(spec.memo, field=f"line {number} memo", max_length=255)
        result.append(_Line(account_id, debit, credit, memo))
    total_debit = sum((line.debit for line in result), ZERO)
    total_credit = sum((line.credit for line in result), ZERO)
    if total_debit != total_credit:
        raise UnbalancedEntry(f"debits {total_debit} and credits {total_credit} differ by {total_debit - total_credit}")
    return result


def _same_content(entry: JournalEntry, *, header: dict[str, Any], lines: list[_Line]) -> bool:
    if any(getattr(entry, name) != value for name, value in header.items()):
        return False
    stored = JournalLine.objects.filter(entry=entry).values_list("account_id", "debit", "credit", "memo")
    return sorted(stored) == sorted(line.key() for line in lines)


# One statement posts the entry and its lines. The lines go in as four arrays, passed as array
# literals (psycopg's adaptation of Python lists costs more than the rest of the call), so the text
# is the same for any number of lines and each connection prepares it once.
#
# Its own transaction (no caller's atomic block): a refusal just ends that transaction.
_POST_SQL = """
WITH e AS (
  INSERT INTO accounts_journalentry (business_id, entry_date, memo, source_type, source_ref, created_by_id,
                                     idempotency_key, reverses_id, currency)
  VALUES (%(business)s, %(day)s, %(memo)s, %(source_type)s, %(source_ref)s, %(user)s, %(key)s, %(reverses)s, 'KES')
  RETURNING id, number, posted_at
), l AS (
  INSERT INTO accounts_journalline (entry_id, account_id, debit, credit, memo)
  SELECT e.id, v.account_id, v.debit, v.credit, v.memo
    FROM e CROSS JOIN unnest(%(accounts)s::bigint[], %(debits)s::numeric[], %(credits)s::numeric[],
                             %(memos)s::text[]) WITH ORDINALITY AS v(account_id, debit, credit, memo, n)
   ORDER BY v.n
)
SELECT id, number, posted_at FROM e
"""

# Inside a caller's transaction, without a savepoint: the statement inserts nothing (instead of
# failing, which would abort the caller's transaction) when PostgreSQL would refuse the posting -
# period closed, an account that is not an active leaf account of the business, a reversal the
# rules forbid - or when the idempotency key (or the reversed entry) is taken (ON CONFLICT; the
# entry trigger gives such a row no number). The books row is locked first, so the lock date read
# is the one the entry trigger sees. The triggers check everything again, as for any insert.
_POST_CHECKED_SQL = """
WITH b AS (
  SELECT lock_date FROM accounts_books WHERE business_id = %(business)s FOR NO KEY UPDATE
), ok AS (
  SELECT 1 FROM b
   WHERE (b.lock_date IS NULL OR b.lock_date < %(day)s)
     AND (SELECT count(*) FROM accounts_account a
           WHERE a.id = ANY (%(accounts)s::bigint[]) AND a.business_id = %(business)s AND a.is_active
             AND NOT EXISTS (SELECT 1 FROM accounts_account c WHERE c.parent_id = a.id)) = %(account_count)s
     AND (%(reverses)s::bigint IS NULL OR EXISTS (
           SELECT 1 FROM accounts_journalentry o
            WHERE o.id = %(reverses)s AND o.business_id = %(business)s AND o.reverses_id IS NULL
              AND o.entry_date <= %(day)s))
), e AS (
  INSERT INTO accounts_journalentry (business_id, entry_date, memo, source_type, source_ref, created_by_id,
                                     idempotency_key, reverses_id, currency)
  SELECT %(business)s, %(day)s, %(memo)s, %(source_type)s, %(source_ref)s, %(user)s, %(key)s, %(reverses)s, 'KES'
    FROM ok
  ON CONFLICT DO NOTHING
  RETURNING id, number, posted_at
), l AS (
  INSERT INTO accounts_journalline (entry_id, account_id, debit, credit, memo)
  SELECT e.id, v.account_id, v.debit, v.credit, v.memo
    FROM e CROSS JOIN unnest(%(accounts)s::bigint[], %(debits)s::numeric[], %(credits)s::numeric[],
                             %(memos)s::text[]) WITH ORDINALITY AS v(account_id, debit, credit, memo, n)
   ORDER BY v.n
)
SELECT e.id, e.number, e.posted_at, EXISTS (SELECT 1 FROM ok) FROM b LEFT JOIN e ON true
"""

# What the checked statement did when it inserted nothing.
_REFUSED = "refused"  # PostgreSQL would refuse the posting
_TAKEN = "taken"  # the idempotency key, or the entry to reverse, is taken


def _number_array(values: Sequence[int | Decimal]) -> str:
    """A PostgreSQL array literal of integers or Decimals (str() of a quantized Decimal is plain digits)."""
    return "{" + ",".join(map(str, values)) + "}"


def _text_array(values: Sequence[str]) -> str:
    """A PostgreSQL array literal of text: each element double-quoted, backslashes and quotes escaped."""
    return "{" + ",".join('"' + value.replace("\\", "\\\\").replace('"', '\\"') + '"' for value in values) + "}"


def _execute_post(params: dict[str, Any]) -> tuple[int, int, dt.datetime] | str:
    """Post; (id, number, posted_at), or _REFUSED / _TAKEN when, inside a caller's transaction,
    the checked statement inserted nothing. One round trip and no savepoint.

    Uses a server-side-binding cursor on Django's own connection (same transaction state): Django's
    default cursor binds parameters client-side and cannot prepare statements. Errors are wrapped
    as Django's (IntegrityError, OperationalError...), as its own cursors would.
    """
    db = connections[DEFAULT_DB_ALIAS]  # the connection itself, not the per-attribute proxy
    db.ensure_connection()
    raw = db.connection
    with db.wrap_database_errors, psycopg.Cursor(raw) as cursor:
        if not db.in_atomic_block:
            # Its own transaction: the deferred checks and the seal run as it commits.
            cursor.execute(_POST_SQL, params, prepare=True)
            posted = cursor.fetchone()
            assert posted is not None
            return posted[0], posted[1], posted[2]
        cursor.execute(_POST_CHECKED_SQL, params, prepare=True)
        row = cursor.fetchone()
    if row is None:
        raise LedgerError(f"business {params['business']} has no books row (create its chart first)")
    entry_id, number, posted_at, checked = row
    if entry_id is None:
        return _TAKEN if checked else _REFUSED
    return entry_id, number, posted_at


def _execute_post_in_savepoint(params: dict[str, Any]) -> tuple[int, int, dt.datetime]:
    """Post with the plain statement in a savepoint, for PostgreSQL's own refusal (a precise error)
    of a posting the checked statement skipped; the caller's transaction stays usable. Should the
    posting go through after all (the books changed in between), it is posted."""
    db = connections[DEFAULT_DB_ALIAS]
    db.ensure_connection()
    raw = db.connection
    with db.wrap_database_errors, psycopg.Cursor(raw) as cursor:
        try:
            with raw.pipeline():
                raw.execute("SAVEPOINT ledger_post")
                cursor.execute(_POST_SQL, params, prepare=True)
                raw.execute("RELEASE SAVEPOINT ledger_post")
        except psycopg.Error:
            raw.execute("ROLLBACK TO SAVEPOINT ledger_post")
            raw.execute("RELEASE SAVEPOINT ledger_post")
            raise
        posted = cursor.fetchone()
    assert posted is not None
    return posted[0], posted[1], posted[2]


_ENTRY_FIELDS = [field.attname for field in JournalEntry._meta.concrete_fields]
_ENTRY_BUSINESS = JournalEntry._meta.get_field("business")


def _post(
    *,
    business: Business,
    entry_date: dt.date,
    lines: Sequence[LineSpec],
    memo: str,
    source_type: str,
    source_ref: str,
    idempotency_key: str,
    acting_user: Any,
    reverses_id: int | None = None,
) -> tuple[JournalEntry, bool]:
    """Insert one entry and its lines; (entry, created). See entry_post for the guarantees."""
    if not isinstance(entry_date, dt.date) or isinstance(entry_date, dt.datetime):
        raise LedgerError("entry_date must be a date (the business date), not a datetime")
    if source_type not in SOURCE_TYPES:
        raise LedgerError(f"unknown source type {source_type!r}")
    _check_text(memo, field="memo", max_length=255)
    _check_text(source_ref, field="source_ref", max_length=100)
    if not isinstance(idempotency_key, str) or not idempotency_key.strip():
        raise LedgerError("an idempotency key is required")
    _check_text(idempotency_key, field="idempotency_key", max_length=200)
    normalised = _normalise_lines(business, lines)
    created_by_id = getattr(acting_user, "pk", None)
    account_ids = [line.account_id for line in normalised]
    params: dict[str, Any] = {
        "business": business.pk,
        "day": entry_date,
        "memo": memo,
        "source_type": source_type,
        "source_ref": source_ref,
        "user": created_by_id,
        "key": idempotency_key,
        "reverses": reverses_id,
        "accounts": _number_array(account_ids),
        "debits": _number_array([line.debit for line in normalised]),
        "credits": _number_array([line.credit for line in normalised]),
        "memos": _text_array([line.memo for line in normalised]),
        "account_count": len(set(account_ids)),
    }
    try:
        outcome = _execute_post(params)
        if outcome == _TAKEN:
            return _posted_before(
                business, idempotency_key, entry_date, memo, source_type, source_ref, reverses_id, normalised
            ), False
        if outcome == _REFUSED:
            outcome = _execute_post_in_savepoint(params)  # raises PostgreSQL's own error
    except DatabaseError as exc:
        sqlstate, constraint = database_error_sqlstate(exc)
        if not (sqlstate == "23505" and constraint == "entry_business_idempotency_uniq"):
            _raise_ledger_error(exc)
        # The key was used: by this same request (a retry: return what it posted) or by another one.
        try:
            existing = _posted_before(
                business, idempotency_key, entry_date, memo, source_type, source_ref, reverses_id, normalised
            )
        except LedgerError as error:
            raise error from exc
        return existing, False

    assert isinstance(outcome, tuple)
    entry_id, number, posted_at = outcome
    values = {
        "id": entry_id,
        "business_id": business.pk,
        "number": number,
        "entry_date": entry_date,
        "posted_at": posted_at,
        "memo": memo,
        "source_type": source_type,
        "source_ref": source_ref,
        "created_by_id": created_by_id,
        "idempotency_key": idempotency_key,
        "reverses_id": reverses_id,
        "currency": "KES",
    }
    entry = JournalEntry.from_db("default", _ENTRY_FIELDS, [values[name] for name in _ENTRY_FIELDS])
    _ENTRY_BUSINESS.set_cached_value(entry, business)
    return entry, True


def _posted_before(
    business: Business,
    idempotency_key: str,
    entry_date: dt.date,
    memo: str,
    source_type: str,
    source_ref: str,
    reverses_id: int | None,
    lines: list[_Line],
) -> JournalEntry:
    """The entry already posted under `idempotency_key`, when it has this content (a retry);
    IdempotencyConflict when it has other content; AlreadyReversed when no entry has the key but the
    entry to reverse has a reversal (posted meanwhile under another key)."""
    existing = JournalEntry.objects.filter(business=business, idempotency_key=idempotency_key).first()
    if existing is None:
        if reverses_id is not None:
            raise AlreadyReversed(f"entry {reverses_id} is already reversed")
        raise LedgerError(f"the posting under key {idempotency_key!r} was not made")
    header = {
        "entry_date": entry_date,
        "memo": memo,
        "source_type": source_type,
        "source_ref": source_ref,
        "reverses_id": reverses_id,
    }
    if not _same_content(existing, header=header, lines=lines):
        raise IdempotencyConflict(
            f"idempotency key {idempotency_key!r} was already used by entry #{existing.number} with different content"
        )
    return existing


def entry_post(
    *,
    business: Business,
    entry_date: dt.date,
    lines: Sequence[LineSpec],
    memo: str,
    source_type: str,
    source_ref: str = "",
    idempotency_key: str,
    acting_user: Any = None,
) -> JournalEntry:
    """Post one balanced journal entry for `business`, dated `entry_date` (a business date).

    Guarantees: the entry has two or more lines, each a positive debit or a positive credit with at
    most two decimals, on active leaf accounts of `business`; debits equal credits; the date is
    after the lock date. PostgreSQL assigns the next gap-free number and the posting time, and at
    commit seals the entry into the business's hash chain.

    Safe to retry: the same `idempotency_key` with the same content returns the entry already
    posted (posting once, even from two threads at the same time); the same key with different
    content raises IdempotencyConflict. Raises UnbalancedEntry, InvalidLine, InvalidAccount,
    PeriodLocked or another LedgerError and posts nothing.

    Inside a caller's transaction the entry is checked and sealed when that transaction commits.
    """
    if source_type == SourceType.REVERSAL:
        raise LedgerError("reversals are posted with entry_reverse")
    if source_type == SourceType.MANUAL:
        reserved_key_check(idempotency_key)  # a person's entry: not under a system key
    entry, _created = _post(
        business=business,
        entry_date=entry_date,
        lines=lines,
        memo=memo,
        source_type=source_type,
        source_ref=source_ref,
        idempotency_key=idempotency_key,
        acting_user=acting_user,
    )
    return entry


def entry_post_manual(
    *,
    business: Business,
    entry_date: dt.date,
    lines: Sequence[LineSpec],
    memo: str,
    idempotency_key: str,
    acting_user: Any,
) -> JournalEntry:
    """Post an entry a person typed in (the manual journal): entry_post with source "manual",
    refusing an idempotency key reserved for the system's postings (ReservedIdempotencyKey)."""
    reserved_key_check(idempotency_key)
    return entry_post(
        business=business,
        entry_date=entry_date,
        lines=lines,
        memo=memo,
        source_type=SourceType.MANUAL,
        idempotency_key=idempotency_key,
        acting_user=acting_user,
    )


def entry_reverse(
    *,
    entry: JournalEntry,
    entry_date: dt.date | None = None,
    memo: str = "",
    acting_user: Any = None,
    idempotency_key: str | None = None,
) -> JournalEntry:
    """Post the reversal of `entry`: the same lines with debits and credits swapped.

    The reversal is a new entry (source "reversal") dated `entry_date`, by default today or, if
    today is closed, the first open day; never before the original. An entry has at most one
    reversal (a unique constraint), and a reversal itself is not reversed (post the original
    again instead). Raises AlreadyReversed, InvalidReversal, PeriodLocked, InvalidAccount.

    Safe to retry with the same explicit `idempotency_key`: the existing reversal is returned.
    Without one, a second call raises AlreadyReversed.
    """
    if entry.source_type == SourceType.REVERSAL:
        raise InvalidReversal(f"entry #{entry.number} is a reversal; post the original again instead")
    existing = JournalEntry.objects.filter(reverses_id=entry.pk).first()
    if existing is not None:
        if idempotency_key is not None and existing.idempotency_key == idempotency_key:
            return existing
        raise AlreadyReversed(f"entry #{entry.number} is already reversed by entry #{existing.number}")
    day = entry_date or books_first_open_date(
        business_id=entry.business_id, wanted=max(timezone.localdate(), entry.entry_date)
    )
    if day < entry.entry_date:
        raise InvalidReversal(f"a reversal cannot be dated before the original entry ({entry.entry_date})")
    lines = [
        LineSpec(account=line.account_id, debit=line.credit, credit=line.debit, memo=line.memo)
        for line in JournalLine.objects.filter(entry=entry).order_by("id")
    ]
    try:
        reversal, created = _post(
            business=entry.business,
            entry_date=day,
            lines=lines,
            memo=memo or f"Reversal of #{entry.number}: {entry.memo}"[:255],
            source_type=SourceType.REVERSAL,
            source_ref=f"entry #{entry.number}",
            idempotency_key=idempotency_key or f"reversal:{entry.pk}",
            acting_user=acting_user,
            reverses_id=entry.pk,
        )
    except IdempotencyConflict as exc:
        raise AlreadyReversed(f"entry #{entry.number} is already reversed") from exc
    if not created and idempotency_key is None:
        raise AlreadyReversed(f"entry #{entry.number} is already reversed by entry #{reversal.number}")
    return reversal


def books_close_period(*, business: Business, lock_date: dt.date, acting_user: Any = None) -> Books:
    """Close the books of `business` up to and including `lock_date`: nothing can be posted on or
    before it any more, by any code path (PostgreSQL checks every insert).

    The lock date only moves forward and never past today (PostgreSQL refuses both too). Waits for
    postings of the business in flight (they hold its books row) so none lands in the closed period
    afterwards. Records who closed it (the PeriodClose row is written by PostgreSQL for every
    lock-date move). Safe to retry: closing to the current lock date again changes nothing.
    """
    if not isinstance(lock_date, dt.date) or isinstance(lock_date, dt.datetime):
        raise InvalidLockDate("the lock date must be a date")
    if lock_date > timezone.localdate():
        raise InvalidLockDate(f"{lock_date} is in the future: only past days and today can be closed")
    try:
        with transaction.atomic():
            Books.objects.get_or_create(business=business)
            books = Books.objects.select_for_update().get(business=business)
            if books.lock_date is not None and lock_date < books.lock_date:
                raise LockDateBackwards(
                    f"the books of {business} are closed up to {books.lock_date}; the lock date only moves forward"
                )
            if books.lock_date != lock_date:
                # PostgreSQL writes the PeriodClose row (a trigger on books, for every lock-date move);
                # it reads who closed from this transaction-local setting.
                user_id = getattr(acting_user, "pk", None)
                with connection.cursor() as cursor:
                    cursor.execute("SELECT set_config('ledger.acting_user_id', %s, true)", [str(user_id or "")])
                    books.lock_date = lock_date
                    books.save(update_fields=["lock_date"])
                    cursor.execute("SELECT set_config('ledger.acting_user_id', '', true)")
    except DatabaseError as exc:
        _raise_ledger_error(exc)
    return books


def chart_ensure_default(*, business: Business) -> None:
    """Create the default chart of accounts for the business's kind, and its books row.

    Idempotent: accounts already there (by role) are left as they are, missing ones are added.
    Raises InvalidAccount if a default account's code is taken by another account.
    """
    with transaction.atomic():
        Books.objects.get_or_create(business=business)
        # Serialises concurrent calls for the same business.
        Books.objects.select_for_update().get(business=business)
        by_role = {a.role: a for a in Account.objects.filter(business=business).exclude(role="")}
        taken = set(Account.objects.filter(business=business).values_list("code", flat=True))
        for spec in default_chart(business.kind):
            if spec.role in by_role:
                continue
            if spec.code in taken:
                raise InvalidAccount(
                    f"cannot add the default account {spec.code} {spec.name} ({spec.role}): code {spec.code} is taken"
                )
            parent = by_role.get(spec.parent_role) if spec.parent_role else None
            try:
                by_role[spec.role] = Account.objects.create(
                    business=business,
                    code=spec.code,
                    name=spec.name,
                    type=spec.type,
                    role=spec.role,
                    parent=parent,
                )
            except IntegrityError as exc:
                _raise_ledger_error(exc)
            taken.add(spec.code)

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


# Several postings in one statement (entries_post): _POST_CHECKED_SQL for arrays of entries. The
# entries' columns go in as arrays, their lines as arrays too with the entry's position (`n`) on each
# line. An entry PostgreSQL would refuse (closed period, an account that is not an active leaf account
# of its business, a reversal the rules forbid) or whose key is taken is not inserted (no number
# taken: the entry trigger gives a taken key's row none); the others are, in their order, and the
# triggers check them as any insert. One row per entry, in order: its id, number and posting time
# when inserted (else NULLs).
_POSTS_CHECKED_SQL = """
WITH v AS (
  SELECT * FROM unnest(%(businesses)s::bigint[], %(days)s::date[], %(memos)s::text[], %(source_types)s::text[],
                       %(source_refs)s::text[], %(users)s::bigint[], %(keys)s::text[], %(reverses)s::bigint[],
                       %(account_counts)s::int[])
    WITH ORDINALITY AS v(business, day, memo, source_type, source_ref, usr, key, reverses, account_count, n)
), l AS (
  SELECT * FROM unnest(%(line_entries)s::bigint[], %(accounts)s::bigint[], %(debits)s::numeric[],
                       %(credits)s::numeric[], %(line_memos)s::text[])
    WITH ORDINALITY AS l(n, account_id, debit, credit, memo, ln)
), b AS (
  SELECT business_id, lock_date FROM accounts_books
   WHERE business_id IN (SELECT business FROM v) ORDER BY business_id FOR NO KEY UPDATE
), ok AS (
  SELECT v.n FROM v JOIN b ON b.business_id = v.business
   WHERE (b.lock_date IS NULL OR b.lock_date < v.day)
     AND (SELECT count(DISTINCT a.id) FROM l JOIN accounts_account a ON a.id = l.account_id
           WHERE l.n = v.n AND a.business_id = v.business AND a.is_active
             AND NOT EXISTS (SELECT 1 FROM accounts_account c WHERE c.parent_id = a.id)) = v.account_count
     AND (v.reverses IS NULL OR EXISTS (
           SELECT 1 FROM accounts_journalentry o
            WHERE o.id = v.reverses AND o.business_id = v.business AND o.reverses_id IS NULL
              AND o.entry_date <= v.day))
), e AS (
  INSERT INTO accounts_journalentry (business_id, entry_date, memo, source_type, source_ref, created_by_id,
                                     idempotency_key, reverses_id, currency)
  SELECT v.business, v.day, v.memo, v.source_type, v.source_ref, v.usr, v.key, v.reverses, 'KES'
    FROM v JOIN ok ON ok.n = v.n
   ORDER BY v.n
  ON CONFLICT DO NOTHING
  RETURNING id, number, posted_at, business_id, idempotency_key
), ins AS (
  INSERT INTO accounts_journalline (entry_id, account_id, debit, credit, memo)
  SELECT e.id, l.account_id, l.debit, l.credit, l.memo
    FROM e JOIN v ON v.business = e.business_id AND v.key = e.idempotency_key JOIN l ON l.n = v.n
   ORDER BY v.n, l.ln
)
SELECT e.id, e.number, e.posted_at
  FROM v LEFT JOIN e ON e.business_id = v.business AND e.idempotency_key = v.key
 ORDER BY v.n
"""


def _nullable_number_array(values: Sequence[int | None]) -> str:
    """A PostgreSQL array literal of integers and NULLs."""
    return "{" + ",".join("NULL" if value is None else str(value) for value in values) + "}"


def _posts_params(postings: Sequence[_Prepared]) -> dict[str, Any]:
    """The parameters of _POSTS_CHECKED_SQL for `postings` (each key once per business)."""
    line_entries: list[int] = []
    lines: list[_Line] = []
    for n, posting in enumerate(postings, start=1):
        line_entries += [n] * len(posting.lines)
        lines += posting.lines
    return {
        "businesses": _number_array([posting.business.pk for posting in postings]),
        "days": _text_array([posting.entry_date.isoformat() for posting in postings]),
        "memos": _text_array([posting.memo for posting in postings]),
        "source_types": _text_array([posting.source_type for posting in postings]),
        "source_refs": _text_array([posting.source_ref for posting in postings]),
        "users": _nullable_number_array([posting.created_by_id for posting in postings]),
        "keys": _text_array([posting.idempotency_key for posting in postings]),
        "reverses": _nullable_number_array([posting.reverses_id for posting in postings]),
        "account_counts": _number_array([posting.params["account_count"] for posting in postings]),
        "line_entries": _number_array(line_entries),
        "accounts": _number_array([line.account_id for line in lines]),
        "debits": _number_array([line.debit for line in lines]),
        "credits": _number_array([line.credit for line in lines]),
        "line_memos": _text_array([line.memo for line in lines]),
    }


def _execute_posts(postings: Sequence[_Prepared]) -> list[tuple[int, int, dt.datetime] | None]:
    """Post `postings` with one statement: for each, (id, number, posted_at), or None when it was not
    inserted (refused, key taken). When PostgreSQL refuses the statement itself (a rule of the
    triggers that the checks above do not foresee, class 22 or 23), nothing is posted and every
    result is None: the caller posts them one by one. Inside a caller's transaction the statement
    runs in a savepoint sent with it (one round trip), so the transaction stays usable."""
    db = connections[DEFAULT_DB_ALIAS]
    db.ensure_connection()
    raw = db.connection
    params = _posts_params(postings)
    nothing: list[tuple[int, int, dt.datetime] | None] = [None] * len(postings)
    with db.wrap_database_errors, psycopg.Cursor(raw) as cursor:
        if not db.in_atomic_block:
            try:
                cursor.execute(_POSTS_CHECKED_SQL, params, prepare=True)
            except psycopg.Error as exc:
                if (exc.sqlstate or "")[:2] not in ("22", "23"):
                    raise
                return nothing
            rows = cursor.fetchall()
        else:
            try:
                with raw.pipeline():
                    raw.execute("SAVEPOINT ledger_posts")
                    cursor.execute(_POSTS_CHECKED_SQL, params, prepare=True)
                    raw.execute("RELEASE SAVEPOINT ledger_posts")
            except psycopg.Error as exc:
                raw.execute("ROLLBACK TO SAVEPOINT ledger_posts")
                raw.execute("RELEASE SAVEPOINT ledger_posts")
                if (exc.sqlstate or "")[:2] not in ("22", "23"):
                    raise
                return nothing
            rows = cursor.fetchall()
    assert len(rows) == len(postings)
    return [None if row[0] is None else (row[0], row[1], row[2]) for row in rows]


_ENTRY_FIELDS = [field.attname for field in JournalEntry._meta.concrete_fields]
_ENTRY_BUSINESS = JournalEntry._meta.get_field("business")


@dataclass(frozen=True)
class EntrySpec:
    """One entry for entries_post: the arguments of entry_post."""

    business: Business
    entry_date: dt.date
    lines: Sequence[LineSpec]
    memo: str
    source_type: str
    idempotency_key: str
    source_ref: str = ""
    acting_user: Any = None


@dataclass(frozen=True)
class _Prepared:
    """A posting checked in Python, with the parameters of its statement."""

    business: Business
    entry_date: dt.date
    memo: str
    source_type: str
    source_ref: str
    idempotency_key: str
    reverses_id: int | None
    created_by_id: int | None
    lines: list[_Line]
    params: dict[str, Any]


def _prepare(
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
) -> _Prepared:
    """Check one posting in Python (LedgerError) and build its statement's parameters."""
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
    return _Prepared(
        business,
        entry_date,
        memo,
        source_type,
        source_ref,
        idempotency_key,
        reverses_id,
        created_by_id,
        normalised,
        params,
    )


def _post(**kwargs: Any) -> tuple[JournalEntry, bool]:
    """Insert one entry and its lines; (entry, created). See entry_post for the guarantees."""
    return _post_prepared(_prepare(**kwargs))


def _post_prepared(p: _Prepared) -> tuple[JournalEntry, bool]:
    """Post one checked posting alone (its own statement); (entry, created)."""
    params = p.params
    try:
        outcome = _execute_post(params)
        if outcome == _TAKEN:
            return _posted_before(
                p.business, p.idempotency_key, p.entry_date, p.memo, p.source_type, p.source_ref, p.reverses_id, p.lines
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
                p.business, p.idempotency_key, p.entry_date, p.memo, p.source_type, p.source_ref, p.reverses_id, p.lines
            )
        except LedgerError as error:
            raise error from exc
        return existing, False

    assert isinstance(outcome, tuple)
    return _entry_built(p, outcome), True


def _entry_built(p: _Prepared, posted: tuple[int, int, dt.datetime]) -> JournalEntry:
    """The JournalEntry that posting `p` inserted as (id, number, posted_at), without reading it."""
    entry_id, number, posted_at = posted
    values = {
        "id": entry_id,
        "business_id": p.business.pk,
        "number": number,
        "entry_date": p.entry_date,
        "posted_at": posted_at,
        "memo": p.memo,
        "source_type": p.source_type,
        "source_ref": p.source_ref,
        "created_by_id": p.created_by_id,
        "idempotency_key": p.idempotency_key,
        "reverses_id": p.reverses_id,
        "currency": "KES",
    }
    entry = JournalEntry.from_db("default", _ENTRY_FIELDS, [values[name] for name in _ENTRY_FIELDS])
    _ENTRY_BUSINESS.set_cached_value(entry, p.business)
    return entry


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


def entries_post(specs: Sequence[EntrySpec]) -> list[JournalEntry | LedgerError]:
    """Post several entries with one statement (a few for repeats and refusals): for each spec, in
    order, its entry or the LedgerError that refused it. The same guarantees as entry_post, entry by
    entry: the same checks, numbers taken by PostgreSQL in the specs' order, each key posted once (a
    key posted before - or earlier in `specs` - with the same content gives that entry; with other
    content, IdempotencyConflict). A refused entry sinks no other: what the statement did not insert
    (refused, key taken) goes through entry_post's own path, one by one, for the entry or the
    precise error. Database errors that are not the ledger's refusals (a lost connection, a lock
    timeout) are raised.
    """
    results: list[JournalEntry | LedgerError | None] = [None] * len(specs)
    batch: list[tuple[int, _Prepared]] = []
    alone: list[tuple[int, _Prepared]] = []
    keys: set[tuple[int, str]] = set()
    for index, spec in enumerate(specs):
        try:
            if spec.source_type == SourceType.REVERSAL:
                raise LedgerError("reversals are posted with entry_reverse")
            if spec.source_type == SourceType.MANUAL:
                reserved_key_check(spec.idempotency_key)
            prepared = _prepare(
                business=spec.business,
                entry_date=spec.entry_date,
                lines=spec.lines,
                memo=spec.memo,
                source_type=spec.source_type,
                source_ref=spec.source_ref,
                idempotency_key=spec.idempotency_key,
                acting_user=spec.acting_user,
            )
        except LedgerError as error:
            results[index] = error
            continue
        key = (spec.business.pk, prepared.idempotency_key)
        # A key repeated in `specs`: the first goes in the statement, the others after it (one by one).
        (alone if key in keys else batch).append((index, prepared))
        keys.add(key)
    if batch:
        posted = _execute_posts([prepared for _, prepared in batch])
        for (index, prepared), outcome in zip(batch, posted, strict=True):
            if outcome is None:
                alone.append((index, prepared))
            else:
                results[index] = _entry_built(prepared, outcome)
    for index, prepared in sorted(alone, key=lambda item: item[0]):
        try:
            results[index] = _post_prepared(prepared)[0]
        except LedgerError as error:
            results[index] = error
    return [result for result in results if result is not None]


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

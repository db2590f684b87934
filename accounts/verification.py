"""Recompute the ledger from its raw rows and report the first broken entry of each business.

Used by `manage.py verify_ledger`. Everything is recomputed in SQL from the rows themselves, with
the canonical-form functions the seal trigger uses (migrations/0002_ledger_rules.py):

- per entry: its number follows the previous one of its business (no gaps); it has two or more
  lines, each one positive side; debits equal credits; every line's account belongs to the
  entry's business; no line has a NULL account, amount or memo; its seal exists and equals
  sha256(previous entry's seal, canonical form of the entry and its lines) (a NULL header: a mismatch);
- per business: the books' counter equals the last number and the number of entries; debits
  equal credits in total; the lock date is the one the last period-close audit row recorded;
- with `check_totals`, the daily account totals that reports read equal the sums of the lines
  (a second pass over the lines).

The entries are checked in chunks of consecutive ids by `workers` database connections at once
(one per core), all in one snapshot; each connection takes the next chunk until none is left, and
reads each chunk's lines in one index scan, in (entry, id) order. Where the time goes:
docs/ledger.md ("Where verify_ledger's time goes").
"""

from __future__ import annotations

import datetime as dt
import queue
from collections import defaultdict
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from decimal import Decimal
from typing import Any

from django.db import connection, connections, transaction

CHUNK = 25_000

# The lines of a chunk come in (entry, id) order from the (entry, id) index (no sort), and the
# string_agg takes them in that order: the order the seal hashes them in (ORDER BY id inside the
# aggregate would sort every entry's lines again). Were they ever fed in another order, the hash
# would not match and the entry would be reported: a false alarm, never a change let through.
# A line's account must be an account of its entry's business: one hashed lookup of the pair.
_CHUNK_SQL = """
SELECT k.business_id, count(*), coalesce(sum(k.debit), 0), coalesce(sum(k.credit), 0), max(k.number),
       array_agg(k.number) FILTER (WHERE k.problem IS NOT NULL),
       array_agg(k.id) FILTER (WHERE k.problem IS NOT NULL),
       array_agg(k.problem) FILTER (WHERE k.problem IS NOT NULL)
  FROM (
    SELECT c.id, c.business_id, c.number, l.debit, l.credit,
           CASE
             WHEN c.number < 1 THEN format('entry number %%s is not a positive number', c.number)
             WHEN c.prev_hash IS NULL THEN
               format('the previous entry (no. %%s) is missing or not sealed: the numbers have a gap', c.number - 1)
             WHEN l.line_count IS NULL OR l.line_count < 2 THEN
               format('%%s line(s); an entry needs at least two', coalesce(l.line_count, 0))
             WHEN l.debit <> l.credit THEN format('debits %%s and credits %%s differ', l.debit, l.credit)
             WHEN l.foreign_account IS NOT NULL THEN
               format('a line is on account %%s, which is not an account of the entry''s business',
                      l.foreign_account)
             WHEN l.null_fields > 0 THEN
               format('%%s line(s) with no account, amount or memo (NULL)', l.null_fields)
             WHEN c.hash IS NULL THEN 'the entry is not sealed into the hash chain'
             -- IS DISTINCT FROM: a header with a NULL field hashes to NULL, and is a mismatch too
             WHEN c.hash IS DISTINCT FROM ledger_hash(c.prev_hash, c.header, l.body) THEN
               'hash mismatch: the entry or its lines changed after posting'
           END AS problem
      FROM (
        SELECT w.id, w.business_id, w.number, w.hash, w.header,
               CASE WHEN w.number = 1 THEN ledger_genesis_hash()
                    WHEN w.lag_number = w.number - 1 THEN w.lag_hash
                    -- the predecessor is in another chunk, or missing
                    ELSE (SELECT ps.hash FROM accounts_journalentry p
                            JOIN accounts_entryseal ps ON ps.entry_id = p.id
                           WHERE p.business_id = w.business_id AND p.number = w.number - 1)
               END AS prev_hash
          FROM (
            SELECT e.id, e.business_id, e.number, s.hash,
                   ledger_entry_canon(e.business_id, e.number, e.entry_date, e.posted_at, e.currency,
                                      e.source_type, e.source_ref, e.idempotency_key, e.reverses_id,
                                      e.created_by_id, e.memo) AS header,
                   lag(e.number) OVER win AS lag_number, lag(s.hash) OVER win AS lag_hash
              FROM accounts_journalentry e
              LEFT JOIN accounts_entryseal s ON s.entry_id = e.id AND s.entry_id BETWEEN %(lo)s AND %(hi)s
             WHERE e.id BETWEEN %(lo)s AND %(hi)s AND (%(all)s OR e.business_id = ANY(%(business_ids)s))
            WINDOW win AS (PARTITION BY e.business_id ORDER BY e.number)
          ) w
          OFFSET 0  -- prev_hash computed once per entry, not at each use below
      ) c
      LEFT JOIN (
        SELECT x.entry_id, count(*) AS line_count, sum(x.debit) AS debit, sum(x.credit) AS credit,
               string_agg(ledger_line_canon(x.account_id, x.debit, x.credit, x.memo), E'\\n') AS body,
               min(x.account_id) FILTER (WHERE NOT x.own_account) AS foreign_account,
               -- string_agg skips a line whose canonical text is NULL: such lines are named here
               count(*) FILTER (WHERE x.account_id IS NULL OR x.debit IS NULL OR x.credit IS NULL
                                   OR x.memo IS NULL) AS null_fields
          FROM (
            SELECT x.entry_id, x.account_id, x.debit, x.credit, x.memo,
                   (x.account_id, e.business_id) IN (SELECT a.id, a.business_id FROM accounts_account a)
                     AS own_account
              FROM accounts_journalline x JOIN accounts_journalentry e ON e.id = x.entry_id
             WHERE x.entry_id BETWEEN %(lo)s AND %(hi)s AND e.id BETWEEN %(lo)s AND %(hi)s
               AND (%(all)s OR e.business_id = ANY(%(business_ids)s))
             ORDER BY x.entry_id, x.id
          ) x
         GROUP BY x.entry_id
      ) l ON l.entry_id = c.id
    OFFSET 0  -- each entry's problem (and so its hash) computed once, not once per FILTER below
  ) k
 GROUP BY k.business_id
"""

_CHUNK_TOTALS_SQL = """
SELECT l.account_id, e.entry_date, e.business_id, sum(l.debit), sum(l.credit), count(*)
  FROM accounts_journalline l JOIN accounts_journalentry e ON e.id = l.entry_id
 WHERE l.entry_id BETWEEN %(lo)s AND %(hi)s AND e.id BETWEEN %(lo)s AND %(hi)s
   AND (%(all)s OR e.business_id = ANY(%(business_ids)s))
 GROUP BY l.account_id, e.entry_date, e.business_id
"""

# The number of entries and the last number of each business come from the chunks.
_BOOKS_SQL = """
SELECT b.id, b.name, coalesce(k.last_number, 0), k.lock_date,
       (SELECT p.lock_date FROM accounts_periodclose p WHERE p.books_id = b.id ORDER BY p.id DESC LIMIT 1)
  FROM operations_business b LEFT JOIN accounts_books k ON k.business_id = b.id
 WHERE %(all)s OR b.id = ANY(%(business_ids)s)
 ORDER BY b.id
"""

_KEPT_TOTALS_SQL = """
SELECT account_id, day, business_id, debit, credit, line_count FROM accounts_accountdaytotal
 WHERE %(all)s OR business_id = ANY(%(business_ids)s)
"""


@dataclass(frozen=True)
class BrokenEntry:
    business_id: int
    entry_id: int
    number: int
    problem: str


@dataclass
class BusinessReport:
    business_id: int
    name: str
    entries: int = 0
    broken: list[BrokenEntry] = field(default_factory=list)
    problems: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.broken and not self.problems


@dataclass
class LedgerReport:
    businesses: list[BusinessReport]

    @property
    def ok(self) -> bool:
        return all(b.ok for b in self.businesses)

    @property
    def entries(self) -> int:
        return sum(b.entries for b in self.businesses)

    @property
    def first_broken(self) -> BrokenEntry | None:
        """The lowest-numbered broken entry of the first broken business."""
        for business in self.businesses:
            if business.broken:
                return business.broken[0]
        return None


@dataclass
class _ChunkResult:
    broken: list[BrokenEntry] = field(default_factory=list)
    # per business: debits, credits, entries, highest number
    sums: dict[int, tuple[Decimal, Decimal, int, int]] = field(default_factory=dict)
    totals: list[tuple[int, dt.date, int, Decimal, Decimal, int]] = field(default_factory=list)


def _fetch(sql: str, params: dict[str, Any]) -> list[tuple[Any, ...]]:
    with connection.cursor() as cursor:
        cursor.execute(sql, params)
        return list(cursor.fetchall())


def _tune(cursor: Any) -> None:
    # Sort and hash in memory; and no JIT: its compile time (~1 s) exceeds the work it speeds up.
    cursor.execute("SET LOCAL work_mem = '64MB'")
    cursor.execute("SET LOCAL jit = off")
    # The run already uses one connection per core.
    cursor.execute("SET LOCAL max_parallel_workers_per_gather = 0")
    # A chunk's lines in one ordered index scan, not a bitmap scan and a sort of them all.
    cursor.execute("SET LOCAL enable_bitmapscan = off")


def _check_chunk(lo: int, hi: int, scope: dict[str, Any], check_totals: bool) -> _ChunkResult:
    result = _ChunkResult()
    params = {**scope, "lo": lo, "hi": hi}
    for business_id, count, debit, credit, last, numbers, ids, problems in _fetch(_CHUNK_SQL, params):
        result.sums[business_id] = (debit, credit, count, last)
        for number, entry_id, problem in zip(numbers or [], ids or [], problems or [], strict=True):
            result.broken.append(BrokenEntry(business_id, entry_id, number, problem))
    if check_totals:
        result.totals = [tuple(row) for row in _fetch(_CHUNK_TOTALS_SQL, params)]  # type: ignore[misc]
    return result


def _check_chunks_in_thread(
    chunks: queue.SimpleQueue[tuple[int, int]], scope: dict[str, Any], check_totals: bool, snapshot: str
) -> list[_ChunkResult]:
    """Chunks from `chunks` until none is left, on this worker thread's own connection, in one
    transaction in the snapshot of the whole run."""
    results: list[_ChunkResult] = []
    try:
        with transaction.atomic(), connection.cursor() as cursor:
            cursor.execute("SET TRANSACTION ISOLATION LEVEL REPEATABLE READ, READ ONLY")
            cursor.execute("SET TRANSACTION SNAPSHOT %s", [snapshot])
            _tune(cursor)
            while True:
                try:
                    lo, hi = chunks.get_nowait()
                except queue.Empty:
                    return results
                results.append(_check_chunk(lo, hi, scope, check_totals))
    finally:
        connections.close_all()  # this worker thread's connection


def ledger_verify(
    *, business_ids: Sequence[int] | None = None, limit: int = 1, workers: int = 2, check_totals: bool = False
) -> LedgerReport:
    """Verify the books of the given businesses (all by default), naming up to `limit` broken
    entries of each, lowest numbers first. Only reads, and sees the ledger as of one instant (every
    worker imports the same snapshot), so it is safe to run while the books are in use.
    """
    if connection.in_atomic_block:  # inside a caller's transaction: one connection, its snapshot
        with connection.cursor() as cursor:
            _tune(cursor)
        return _verify(
            business_ids,
            limit,
            check_totals,
            lambda chunks, scope: [_check_chunk(lo, hi, scope, check_totals) for lo, hi in chunks],
        )
    with transaction.atomic(), connection.cursor() as cursor:
        cursor.execute("SET TRANSACTION ISOLATION LEVEL REPEATABLE READ, READ ONLY")
        _tune(cursor)
        cursor.execute("SELECT pg_export_snapshot()")
        snapshot = cursor.fetchone()[0]

        def run_chunks(chunks: list[tuple[int, int]], scope: dict[str, Any]) -> list[_ChunkResult]:
            todo: queue.SimpleQueue[tuple[int, int]] = queue.SimpleQueue()
            for chunk in chunks:
                todo.put(chunk)
            count = max(1, min(workers, len(chunks)))
            with ThreadPoolExecutor(max_workers=count) as pool:
                futures = [
                    pool.submit(_check_chunks_in_thread, todo, scope, check_totals, snapshot) for _ in range(count)
                ]
                return [result for future in futures for result in future.result()]

        return _verify(business_ids, limit, check_totals, run_chunks)


def _verify(
    business_ids: Sequence[int] | None,
    limit: int,
    check_totals: bool,
    run_chunks: Callable[[list[tuple[int, int]], dict[str, Any]], list[_ChunkResult]],
) -> LedgerReport:
    scope = {"all": business_ids is None, "business_ids": list(business_ids or [])}
    books = {row[0]: row[1:] for row in _fetch(_BOOKS_SQL, scope)}
    reports = {business_id: BusinessReport(business_id=business_id, name=row[0]) for business_id, row in books.items()}
    bounds = _fetch("SELECT coalesce(min(id), 0), coalesce(max(id), -1) FROM accounts_journalentry", {})[0]
    chunks = [(lo, min(lo + CHUNK - 1, bounds[1])) for lo in range(bounds[0], bounds[1] + 1, CHUNK)]
    results = run_chunks(chunks, scope)

    sums: dict[int, list[Any]] = defaultdict(lambda: [Decimal(0), Decimal(0), 0, 0])
    actual: dict[tuple[int, dt.date], list[Any]] = defaultdict(lambda: [0, Decimal(0), Decimal(0), 0])
    for result in results:
        for broken in result.broken:
            if broken.business_id in reports:
                reports[broken.business_id].broken.append(broken)
        for business_id, (debit, credit, count, last) in result.sums.items():
            total = sums[business_id]
            total[0] += debit
            total[1] += credit
            total[2] += count
            total[3] = max(total[3], last)
        for account_id, day, business_id, debit, credit, count in result.totals:
            row = actual[(account_id, day)]
            row[0] = business_id
            row[1] += debit
            row[2] += credit
            row[3] += count

    for business_id, report in reports.items():
        report.broken = sorted(report.broken, key=lambda b: b.number)[:limit]
        debit, credit, report.entries, last_number = sums.get(business_id, (Decimal(0), Decimal(0), 0, 0))
        if debit != credit:
            report.problems.append(f"debits {debit} and credits {credit} of the business differ")
        _name, counter, lock_date, audited_lock_date = books[business_id]
        if not counter == last_number == report.entries:
            report.problems.append(
                f"the books count {counter} entries, the last entry is no. {last_number} and there are {report.entries}"
            )
        if lock_date != audited_lock_date:
            report.problems.append(
                f"the lock date is {lock_date or 'none'} but the last period close recorded is "
                f"{audited_lock_date or 'none'}: the lock date moved without its audit row"
            )

    if check_totals:
        for account_id, day, business_id, debit, credit, count in _fetch(_KEPT_TOTALS_SQL, scope):
            expected = actual.pop((account_id, day), None)
            if expected is None or expected != [business_id, debit, credit, count]:
                _report_total(reports, business_id, account_id, day)
        for (account_id, day), (business_id, *_rest) in actual.items():
            _report_total(reports, business_id, account_id, day)
    return LedgerReport(businesses=list(reports.values()))


def _report_total(reports: dict[int, BusinessReport], business_id: int, account_id: int, day: dt.date) -> None:
    report = reports.get(business_id)
    if report is not None and len(report.problems) < 5:
        report.problems.append(f"the daily total of account {account_id} on {day} differs from its lines")

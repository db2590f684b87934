"""Ledger benchmarks: posting rate, reports and verify_ledger over millions of lines, the line admin.

`run(database_url)` creates a scratch database `bench_ledger` (BENCH_LEDGER_DB: another name) on the
server of `database_url`, migrates it, loads 500,000 entries (~4 million lines) and measures:

  ledger.post_entries_per_s     entry_post, one entry (3 lines) per transaction, one connection
  ledger.trial_balance_4m_s     consolidated trial balance over ~4M lines (median of 5)
  ledger.balance_sheet_4m_s     consolidated balance sheet over ~4M lines (median of 5)
  ledger.verify_500k_s          verify_ledger over all 500,000 entries (--totals: its own key)
  ledger.admin_lines_4m_ms      the journal-line admin changelist rendered for the owner (median of 5)

and, for context (docs/ledger.md): the posting rate with 100 entries per transaction, with the
daily-totals upsert switched off (what the summary costs), and plain INSERTs of the same rows into
copies of the tables without any ledger rule (ledger.post_plain_inserts_per_s), interleaved with
entry_post in short blocks so that both see the same load; and the CPU each costs per posting,
client and server (ledger.post_cpu_us, ledger.post_plain_cpu_us; when the server is on this
machine), which the machine's other load moves far less than the rates.

The bulk load (two businesses at a time) runs with the triggers off and then builds the numbers,
seals, daily totals and books counters set-based, the way the triggers would - verify_ledger
then checks all of it; without superuser rights it goes through the triggers (much slower). The
posting figures always go through entry_post and every trigger. Everything Django runs in a
child process pointed at the scratch database, so the caller's Django set-up is untouched.
Usage: DATABASE_URL=... .venv/bin/python bench/ledger.py   (prints JSON)
"""

from __future__ import annotations

import datetime as dt
import functools
import hashlib
import json
import os
import statistics
import subprocess
import sys
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from decimal import Decimal
from pathlib import Path
from typing import Any

import psycopg

from bench.cpu import backend_cpu
from bench.scratch import drop_database, recreate_database

ROOT = Path(__file__).resolve().parent.parent
SCRATCH_DB = os.environ.get("BENCH_LEDGER_DB", "bench_ledger")  # another name to run beside another checkout
TOTAL_ENTRIES = int(os.environ.get("BENCH_LEDGER_ENTRIES", "500000"))  # smaller for a quick try
TOTAL_LINES = TOTAL_ENTRIES * 8
POSTED_ENTRIES = 3_000  # through entry_post, one per transaction
BATCHED_ENTRIES = 2_000  # through entry_post, 100 per transaction
NO_SUMMARY_ENTRIES = 2_000  # one per transaction, daily totals switched off
ROUNDS = 4  # of the batched and the without-daily-totals postings
PAIRS = 12  # entry_post and plain inserts, alternating in short blocks: the same load for both
BATCH = 25_000
DAYS = 730
SHARES = {"water": 0.4, "laundry": 0.3, "retail_lpg": 0.3}
SALES_ROLES = {
    "water": ("sales_bottled_water", "sales_refill", "sales_delivery"),
    "laundry": ("sales_wash_fold", "sales_dry_cleaning", "sales_ironing"),
    "retail_lpg": ("sales_lpg_refill", "sales_cylinders", "sales_shop"),
}


def run(database_url: str) -> dict[str, float]:
    """Create the scratch database, measure in a child process, drop the database, return figures."""
    scratch_url = recreate_database(database_url, SCRATCH_DB)
    env = dict(os.environ, DATABASE_URL=scratch_url, DJANGO_DEBUG="1", PYTHONPATH=str(ROOT))
    env.setdefault("DJANGO_SETTINGS_MODULE", "backoffice.settings")
    try:
        proc = subprocess.run(
            [sys.executable, str(Path(__file__).resolve()), "--inner"],
            env=env,
            cwd=ROOT,
            stdout=subprocess.PIPE,
            text=True,
            check=True,
        )
    finally:
        drop_database(database_url, SCRATCH_DB)
    figures: dict[str, float] = json.loads(proc.stdout.strip().splitlines()[-1])
    return figures


# --- the child process -------------------------------------------------------------------------


def _log(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def _timed(fn: Callable[[], Any], repeat: int) -> float:
    """Median seconds of `repeat` runs, after one warm-up run."""
    fn()
    samples = []
    for _ in range(repeat):
        started = time.perf_counter()
        fn()
        samples.append(time.perf_counter() - started)
    return statistics.median(samples)


# Entry no. g of `count`, spread over DAYS days: 8 lines (takings, three sales lines, VAT, cost of
# sales, inventory twice), amounts derived from the id. `number` is given for the fast path (its
# trigger is off there); with the triggers on, the database assigns it anyway.
_LOAD_SQL = """
WITH e AS (
  INSERT INTO accounts_journalentry (business_id, number, entry_date, memo, source_type, source_ref,
                                     idempotency_key, currency)
  SELECT %(business)s::bigint, g, %(start)s::date + (g * %(days)s::int / %(count)s::int)::int, 'Bench sale',
         'sale', 'bench ' || g, 'bench:' || g, 'KES'
    FROM generate_series(%(lo)s::bigint, %(hi)s::bigint) AS g
   ORDER BY g
  RETURNING id, number AS g
), amounts AS (
  SELECT id, g, a, b, c, round((a + b + c) * 0.16, 2) AS v, round((a + b + c) * 0.6, 2) AS k
    FROM (SELECT id, g, ((100 + (id * 37) %% 4900) / 100.0)::numeric(14, 2) AS a,
                 ((150 + (id * 53) %% 2900) / 100.0)::numeric(14, 2) AS b,
                 ((200 + (id * 71) %% 9900) / 100.0)::numeric(14, 2) AS c
            FROM e) s
)
INSERT INTO accounts_journalline (entry_id, account_id, debit, credit, memo)
SELECT m.id, v.account_id, v.debit, v.credit, ''
  FROM amounts m CROSS JOIN LATERAL (VALUES
    (CASE WHEN m.id %% 3 = 0 THEN %(cash)s::bigint ELSE %(mpesa)s::bigint END, m.a + m.b + m.c + m.v, 0::numeric),
    (%(sales1)s, 0, m.a), (%(sales2)s, 0, m.b), (%(sales3)s, 0, m.c), (%(vat)s, 0, m.v),
    (%(cos)s, m.k, 0), (%(inventory)s, 0, round(m.k / 2, 2)),
    -- the first `extra` entries split the inventory credit in three (a 9th line): ~4M lines in all
    (%(inventory)s, 0, CASE WHEN m.g <= %(extra)s THEN round(m.k / 4, 2) ELSE m.k - round(m.k / 2, 2) END),
    (%(inventory)s, 0, CASE WHEN m.g <= %(extra)s THEN m.k - round(m.k / 2, 2) - round(m.k / 4, 2) ELSE 0 END)
  ) AS v(account_id, debit, credit)
 WHERE v.debit > 0 OR v.credit > 0
 ORDER BY m.id
"""


_REPAIR_TOTALS_SQL = """
INSERT INTO accounts_accountdaytotal AS t (account_id, business_id, day, debit, credit, line_count)
SELECT l.account_id, e.business_id, e.entry_date, sum(l.debit), sum(l.credit), count(*)
  FROM accounts_journalline l JOIN accounts_journalentry e ON e.id = l.entry_id
 WHERE e.idempotency_key LIKE %s
 GROUP BY l.account_id, e.business_id, e.entry_date
ON CONFLICT (account_id, day) DO UPDATE
   SET debit = t.debit + EXCLUDED.debit, credit = t.credit + EXCLUDED.credit,
       line_count = t.line_count + EXCLUDED.line_count
"""


# The fast path's seals: each entry's canonical text (the same SQL functions as the seal trigger),
# in number order; Python chains the SHA-256 exactly as ledger_hash() does.
_CANONICAL_SQL = """
SELECT e.id,
       ledger_entry_canon(e.business_id, e.number, e.entry_date, e.posted_at, e.currency, e.source_type,
                          e.source_ref, e.idempotency_key, e.reverses_id, e.created_by_id, e.memo)
       || E'\\n' || string_agg(ledger_line_canon(l.account_id, l.debit, l.credit, l.memo), E'\\n' ORDER BY l.id)
  FROM accounts_journalentry e JOIN accounts_journalline l ON l.entry_id = e.id
 WHERE e.business_id = %s
 GROUP BY e.id
 ORDER BY e.number
"""

_TOTALS_SQL = """
INSERT INTO accounts_accountdaytotal (account_id, business_id, day, debit, credit, line_count)
SELECT l.account_id, e.business_id, e.entry_date, sum(l.debit), sum(l.credit), count(*)
  FROM accounts_journalline l JOIN accounts_journalentry e ON e.id = l.entry_id
 WHERE e.business_id = %s
 GROUP BY l.account_id, e.business_id, e.entry_date
"""


def _bulk_load(url: str, business: dict[str, Any], count: int, start: dt.date) -> None:
    """Load `count` entries of 8 lines for one business.

    As a superuser: with the session's triggers off (session_replication_role = replica), then
    the numbers, seals, daily totals and books counter are built set-based, exactly as the
    triggers would have (verify_ledger checks it afterwards). Otherwise through the triggers, in
    statements of BATCH entries (much slower).
    """
    with psycopg.connect(url, autocommit=True) as conn:
        superuser = conn.execute("SELECT current_setting('is_superuser') = 'on'").fetchone()
        fast = bool(superuser and superuser[0])
        if fast:
            conn.execute("SET session_replication_role = replica")
        for lo in range(1, count + 1, BATCH):
            hi = min(lo + BATCH - 1, count)
            conn.execute(_LOAD_SQL, {**business, "lo": lo, "hi": hi, "count": count, "days": DAYS, "start": start})
            _log(f"  {business['name']}: {hi}/{count} entries")
        if not fast:
            return
        with conn.transaction():
            seals = []
            previous = "0" * 64
            with conn.cursor(name="canonical") as cursor:
                cursor.itersize = 10_000
                cursor.execute(_CANONICAL_SQL, [business["business"]])
                for entry_id, canonical in cursor:
                    previous = hashlib.sha256(f"{previous}\n{canonical}".encode()).hexdigest()
                    seals.append((entry_id, previous))
            with conn.cursor() as writer, writer.copy("COPY accounts_entryseal (entry_id, hash) FROM STDIN") as copy:
                for row in seals:
                    copy.write_row(row)
            conn.execute(_TOTALS_SQL, [business["business"]])
            conn.execute(
                "UPDATE accounts_books SET last_number = %s WHERE business_id = %s", [count, business["business"]]
            )
        conn.execute("SET session_replication_role = DEFAULT")
        _log(f"  {business['name']}: sealed, totals built")


# The same one-statement posting into rule-free copies of the tables (no triggers, no foreign keys),
# its parameters passed as entry_post passes them (array literals), returning what entry_post needs
# back (id, number, posting time).
_PLAIN_SQL = """
WITH e AS (INSERT INTO bench_entry (business_id, number, entry_date, posted_at, memo, source_type,
           source_ref, idempotency_key, currency)
           VALUES (%s, %s, %s, now(), 'sale', 'sale', '', %s, 'KES') RETURNING id, number, posted_at),
l AS (INSERT INTO bench_line (entry_id, account_id, debit, credit, memo)
      SELECT e.id, v.a, v.d, v.c, '' FROM e CROSS JOIN unnest(%s::bigint[], %s::numeric[], %s::numeric[])
        AS v(a, d, c))
SELECT id, number, posted_at FROM e
"""


class _CpuMeter:
    """CPU used per posting by this process and one backend: unlike the rates, hardly moved by the
    machine's other load (which delays a posting without making it cost more)."""

    def __init__(self, backend_pid: int) -> None:
        self.backend_pid = backend_pid
        self.seconds = 0.0
        self.postings = 0
        self.available = backend_cpu(backend_pid) is not None

    def measure(self, fn: Callable[[], float], postings: int) -> float:
        client, backend = time.process_time(), backend_cpu(self.backend_pid)
        result = fn()
        after = backend_cpu(self.backend_pid)
        if backend is not None and after is not None:
            self.seconds += time.process_time() - client + after - backend
            self.postings += postings
        return result

    def us_per_posting(self) -> float | None:
        return round(self.seconds / self.postings * 1e6) if self.available and self.postings else None


def _plain_insert_rate(conn: psycopg.Connection[Any], business: dict[str, Any], start: int, n: int) -> float:
    """Entries/s for the plain posting (numbers start + 1 ... start + n), one per transaction."""
    accounts = f"{{{business['cash']},{business['sales1']},{business['vat']}}}"
    started = time.perf_counter()
    for i in range(start, start + n):
        conn.execute(
            _PLAIN_SQL,
            [business["id"], i + 1, dt.date.today(), f"plain:{i}", accounts, "{116.00,0,0}", "{0,100.00,16.00}"],
            prepare=True,
        ).fetchone()
    return n / (time.perf_counter() - started)


def _inner() -> dict[str, float]:
    sys.path.insert(0, str(ROOT))
    import django

    django.setup()
    from django.conf import settings
    from django.contrib.auth.models import User
    from django.core.management import call_command
    from django.db import connection, transaction
    from django.test import Client
    from django.utils import timezone

    settings.DEBUG = False  # no query log
    from accounts.selectors import account_for_role, balance_sheet, trial_balance
    from accounts.services import LineSpec, chart_ensure_default, entry_post
    from accounts.verification import ledger_verify
    from tenancy.models import Business

    url = os.environ["DATABASE_URL"]
    figures: dict[str, float] = {}
    call_command("migrate", verbosity=0)
    today = timezone.localdate()
    start = today - dt.timedelta(days=DAYS - 1)

    businesses: list[dict[str, Any]] = []
    for kind, share in SHARES.items():
        business = Business.objects.create(name=f"Bench {kind}", kind=kind)
        chart_ensure_default(business=business)
        sales = SALES_ROLES[kind]

        def role(name: str, business: Business = business) -> int:
            return account_for_role(business=business, role=name).pk

        businesses.append(
            {
                "id": business.pk,
                "business": business.pk,
                "name": business.name,
                "model": business,
                "count": int(TOTAL_ENTRIES * share),
                "cash": role("cash"),
                "mpesa": role("mpesa_clearing"),
                "sales1": role(sales[0]),
                "sales2": role(sales[1]),
                "sales3": role(sales[2]),
                "vat": role("vat_output"),
                "cos": role("cost_of_sales"),
                "inventory": role("inventory"),
            }
        )
    through_service = POSTED_ENTRIES + BATCHED_ENTRIES + NO_SUMMARY_ENTRIES  # 3 lines each
    businesses[0]["count"] -= through_service
    bulk = TOTAL_ENTRIES - through_service
    # Entries with a 9th line, so that the ledger holds TOTAL_LINES lines in all.
    extra = max(0, min(businesses[0]["count"], TOTAL_LINES - 8 * bulk - 3 * through_service))
    for index, item in enumerate(businesses):
        item["extra"] = extra if index == 0 else 0

    _log(f"bulk load: {bulk} entries, 8 lines each ({extra} with 9)")
    started = time.perf_counter()
    loadable = [{k: v for k, v in b.items() if k != "model"} for b in businesses]
    with ThreadPoolExecutor(max_workers=2) as pool:
        list(pool.map(lambda b: _bulk_load(url, b, b["count"], start), loadable))
    _log(f"bulk load took {time.perf_counter() - started:.0f} s")
    with connection.cursor() as cursor:
        cursor.execute("VACUUM ANALYZE")

    target = businesses[0]
    model = target["model"]

    def spec(i: int) -> list[LineSpec]:
        amount = Decimal(100 + i % 900)
        vat = (amount * Decimal("0.16")).quantize(Decimal("0.01"))
        return [
            LineSpec(account=target["cash"], debit=amount + vat),
            LineSpec(account=target["sales1"], credit=amount),
            LineSpec(account=target["vat"], credit=vat),
        ]

    def post(key: str, i: int) -> None:
        entry_post(
            business=model,
            entry_date=today,
            lines=spec(i),
            memo="Bench sale",
            source_type="sale",
            idempotency_key=f"{key}:{i}",
        )

    with connection.cursor() as cursor:
        cursor.execute("SELECT pg_get_functiondef('ledger_lines_inserted()'::regprocedure)")
        original = cursor.fetchone()[0]
    start, end = original.index("  ), totals AS ("), original.index("  SELECT coalesce(bool_or(sealed)")
    without_totals = original[:start] + "  )\n" + original[end:]

    def rate(key: str, count: int, per_transaction: int = 1) -> float:
        started = time.perf_counter()
        for lo in range(0, count, per_transaction):
            if per_transaction == 1:
                post(key, lo)
                continue
            with transaction.atomic():
                for i in range(lo, lo + per_transaction):
                    post(key, i)
        return count / (time.perf_counter() - started)

    # Interleaved rounds, medians: the machine's other load drifts during a run. entry_post and the
    # plain inserts it is compared with alternate in blocks of a fraction of a second.
    _log(f"posting {through_service} entries through entry_post, interleaved with {POSTED_ENTRIES} plain inserts")
    plain_conn = psycopg.connect(url, autocommit=True)
    plain_conn.execute("CREATE TABLE bench_entry (LIKE accounts_journalentry INCLUDING ALL)")
    plain_conn.execute("CREATE TABLE bench_line (LIKE accounts_journalline INCLUDING ALL)")
    with connection.cursor() as cursor:
        cursor.execute("SELECT pg_backend_pid()")
        post_cpu = _CpuMeter(cursor.fetchone()[0])
    plain_cpu = _CpuMeter(plain_conn.info.backend_pid)
    block = POSTED_ENTRIES // PAIRS
    single: list[float] = []
    plain: list[float] = []
    batched: list[float] = []
    no_totals: list[float] = []
    for r in range(PAIRS):
        single.append(post_cpu.measure(functools.partial(rate, f"post{r}", block), block))
        plain.append(
            plain_cpu.measure(
                functools.partial(_plain_insert_rate, plain_conn, target, r * POSTED_ENTRIES, block), block
            )
        )
        if r % (PAIRS // ROUNDS) != PAIRS // ROUNDS - 1:
            continue
        batched.append(rate(f"batched{r}", BATCHED_ENTRIES // ROUNDS, per_transaction=100))
        # What the daily totals cost: the same posting with their upsert cut out of the line
        # trigger (scratch database only; put back right after).
        with connection.cursor() as cursor:
            cursor.execute(without_totals)
        no_totals.append(rate(f"nosummary{r}", NO_SUMMARY_ENTRIES // ROUNDS))
        with connection.cursor() as cursor:
            cursor.execute(original)
    plain_conn.execute("DROP TABLE bench_line, bench_entry")
    plain_conn.close()
    figures["ledger.post_entries_per_s"] = round(statistics.median(single), 1)
    figures["ledger.post_plain_inserts_per_s"] = round(statistics.median(plain), 1)
    for key, meter in (("ledger.post_cpu_us", post_cpu), ("ledger.post_plain_cpu_us", plain_cpu)):
        us = meter.us_per_posting()
        if us is not None:
            figures[key] = us
    figures["ledger.post_entries_batched_per_s"] = round(statistics.median(batched), 1)
    figures["ledger.post_entries_without_daily_totals_per_s"] = round(statistics.median(no_totals), 1)
    with connection.cursor() as cursor:
        # Put in the daily totals those entries skipped, so the books verify (scratch database only).
        cursor.execute("ALTER TABLE accounts_accountdaytotal DISABLE TRIGGER daytotal_by_trigger")
        cursor.execute(_REPAIR_TOTALS_SQL, ["nosummary%"])
        cursor.execute("ALTER TABLE accounts_accountdaytotal ENABLE TRIGGER daytotal_by_trigger")

    with connection.cursor() as cursor:
        cursor.execute("ANALYZE")
        cursor.execute("SELECT count(*) FROM accounts_journalline")
        lines = cursor.fetchone()[0]
        cursor.execute("SELECT count(*) FROM accounts_journalentry")
        entries = cursor.fetchone()[0]
    _log(f"{entries} entries, {lines} lines")

    figures["ledger.trial_balance_4m_s"] = round(_timed(lambda: trial_balance(business_ids=None, as_of=today), 5), 4)
    figures["ledger.balance_sheet_4m_s"] = round(_timed(lambda: balance_sheet(business_ids=None, as_of=today), 5), 4)
    sheet = balance_sheet(business_ids=None, as_of=today)
    assert sheet.is_balanced, "the bench balance sheet does not balance"

    started = time.perf_counter()
    report = ledger_verify()  # what `manage.py verify_ledger` runs
    figures["ledger.verify_500k_s"] = round(time.perf_counter() - started, 2)
    started = time.perf_counter()
    with_totals = ledger_verify(check_totals=True)  # verify_ledger --totals
    figures["ledger.verify_500k_with_totals_s"] = round(time.perf_counter() - started, 2)
    assert with_totals.ok, [b.problems for b in with_totals.businesses]
    assert report.ok, f"verify_ledger found problems: {report.first_broken} {[b.problems for b in report.businesses]}"
    assert report.entries == TOTAL_ENTRIES, report.entries

    owner = User.objects.create_superuser("bench-owner", "owner@example.com", "x")
    client = Client()
    client.force_login(owner)

    def lines_page() -> None:
        response = client.get("/admin/accounts/journalline/", HTTP_HOST="localhost")
        assert response.status_code == 200, response.status_code

    figures["ledger.admin_lines_4m_ms"] = round(_timed(lines_page, 5) * 1000, 1)
    return figures


if __name__ == "__main__":
    if "--inner" in sys.argv:
        print(json.dumps(_inner()))
    else:
        print(json.dumps(run(os.environ["DATABASE_URL"]), indent=2))

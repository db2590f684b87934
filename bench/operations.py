"""Operations benchmarks: a year of demo activity, the sale service, the sales admin.

`run(database_url)` creates a scratch database `bench_ops` (or $BENCH_OPS_DB) on the server of `database_url`,
migrates it, and measures:

  ops.seed_365_days_s   `manage.py seed_demo --days 365` (three businesses, every posting through
                        the services, a closing per business per day), wall-clock, in a subprocess
  ops.sales_per_s       sale_create (2 lines: a stocked good and a service, cash, cost of sales
                        posted) one per transaction, one connection, on top of that year of data
  ops.sale_cpu_ms      CPU per sale of that loop, this process + its PostgreSQL backend (/proc, as bench/ledger.py):
                        far less moved by the machine's other load than the rate; ops.sales_load_avg beside it
  ops.sales_admin_ms    the sales changelist rendered for the owner with that year (median of 5)
  dashboard.*           the admin dashboard on that year, for the owner and a staff member, time
                        and queries (bench/dashboard.py)
  ops.rows_*            row counts after the year (sales, sale lines, journal entries, stock movements,
                        laundry orders, M-Pesa payments)
  reports.pdf_pl_year_s the consolidated profit and loss PDF of the year (the three businesses side by
                        side, the previous year beside it), median of 3
  reports.pdf_statements_s  every customer statement of the shop's customers with a balance, one PDF
                        (the seed has a dozen customers: STATEMENT_CUSTOMERS more are added, each with
                        two charges and a payment a month for the year), median of 3; with
                        reports.pdf_statements_customers and reports.pdf_statements_pages

Everything Django runs in child processes pointed at the scratch database, so the caller's set-up
is untouched. Usage: DATABASE_URL=... .venv/bin/python -m bench.operations   (prints JSON)
"""

from __future__ import annotations

import datetime as dt
import json
import os
import resource
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from bench.cpu import backend_cpu
from bench.scratch import drop_database, recreate_database

ROOT = Path(__file__).resolve().parent.parent
SCRATCH_DB = os.environ.get("BENCH_OPS_DB", "bench_ops")  # another name to run beside another checkout
DAYS = int(os.environ.get("BENCH_OPS_DAYS", "365"))  # smaller for a quick try
SALES = 1_000
STATEMENT_CUSTOMERS = 300


def run(database_url: str) -> dict[str, float]:
    """Create the scratch database, seed and measure in child processes, drop it, return figures."""
    scratch_url = recreate_database(database_url, SCRATCH_DB)
    env = dict(os.environ, DATABASE_URL=scratch_url, DJANGO_DEBUG="1", PYTHONPATH=str(ROOT))
    env.setdefault("DJANGO_SETTINGS_MODULE", "backoffice.settings")
    manage = [sys.executable, str(ROOT / "manage.py")]
    try:
        subprocess.run([*manage, "migrate", "-v0"], env=env, cwd=ROOT, check=True)
        started, children = time.monotonic(), resource.getrusage(resource.RUSAGE_CHILDREN)
        subprocess.run(
            [*manage, "seed_demo", "--days", str(DAYS)], env=env, cwd=ROOT, check=True, stdout=subprocess.DEVNULL
        )
        seed_s = time.monotonic() - started
        done = resource.getrusage(resource.RUSAGE_CHILDREN)
        seed_cpu_s = done.ru_utime + done.ru_stime - children.ru_utime - children.ru_stime
        seed_load = os.getloadavg()[0]
        proc = subprocess.run(
            [sys.executable, "-m", "bench.operations", "--inner"],
            env=env,
            cwd=ROOT,
            stdout=subprocess.PIPE,
            text=True,
            check=True,
        )
    finally:
        drop_database(database_url, SCRATCH_DB)
    figures: dict[str, float] = json.loads(proc.stdout)
    figures[f"ops.seed_{DAYS}_days_s"] = round(seed_s, 1)
    figures[f"ops.seed_{DAYS}_days_client_cpu_s"] = round(seed_cpu_s, 1)  # the seed's processes, not PostgreSQL
    figures["ops.seed_load_avg"] = round(seed_load, 2)
    return figures


def _inner() -> dict[str, float]:
    """In the child: counts, sales through the service, the changelist. Runs on the seeded database."""
    import django

    django.setup()
    from decimal import Decimal

    from django.contrib.auth.models import User
    from django.db import connection
    from django.test import Client
    from django.test.utils import setup_test_environment
    from django.urls import reverse
    from django.utils import timezone

    from accounts.models import JournalEntry
    from integrations.mpesa.models import Payment
    from operations.models import Item, ItemKind, LaundryOrder, OpeningStock, Sale, SaleLine, StockMovement
    from operations.services.sales import LineInput, sale_create
    from operations.services.stock import stock_opening_post
    from tenancy.models import Business

    figures: dict[str, float] = {
        "ops.rows_sales": Sale.objects.count(),
        "ops.rows_sale_lines": SaleLine.objects.count(),
        "ops.rows_journal_entries": JournalEntry.objects.count(),
        "ops.rows_stock_movements": StockMovement.objects.count(),
        "ops.rows_laundry_orders": LaundryOrder.objects.count(),
        "ops.rows_mpesa_payments": Payment.objects.count(),
    }

    shop = Business.objects.get(name="Duka & Gas")
    today = timezone.localdate()
    good, _ = Item.objects.get_or_create(
        business=shop, name="Bench good", defaults={"price": Decimal("116.00"), "sales_role": "sales_shop"}
    )
    service, _ = Item.objects.get_or_create(
        business=shop,
        name="Bench service",
        defaults={"kind": ItemKind.SERVICE, "price": Decimal("50.00"), "sales_role": "sales_shop"},
    )
    opening = OpeningStock.objects.create(
        business=shop, item=good, stock_date=today, quantity=Decimal(SALES * 2), unit_cost=Decimal("70.00")
    )
    stock_opening_post(opening=opening)
    lines = [LineInput(good, Decimal(1)), LineInput(service, Decimal(1))]
    with connection.cursor() as cursor:
        cursor.execute("SELECT pg_backend_pid()")
        backend_pid = cursor.fetchone()[0]
    cpu, backend = time.process_time(), backend_cpu(backend_pid)
    started = time.perf_counter()
    for _ in range(SALES):
        sale_create(business=shop, sale_date=today, lines=lines)
    figures["ops.sales_per_s"] = round(SALES / (time.perf_counter() - started), 1)
    after = backend_cpu(backend_pid)
    if backend is not None and after is not None:  # CPU per sale, client + server: less moved by load than the rate
        figures["ops.sale_cpu_ms"] = round((time.process_time() - cpu + after - backend) / SALES * 1000, 2)
    figures["ops.sales_load_avg"] = round(os.getloadavg()[0], 2)

    setup_test_environment()
    client = Client()
    client.force_login(User.objects.get(username="owner"))
    url = reverse("admin:operations_sale_changelist")
    assert client.get(url).status_code == 200  # warm up
    timings = []
    for _ in range(5):
        started = time.perf_counter()
        response = client.get(url)
        timings.append((time.perf_counter() - started) * 1000)
        assert response.status_code == 200
    figures["ops.sales_admin_ms"] = round(statistics.median(timings), 1)
    from bench.dashboard import measure as dashboard_measure

    figures.update(dashboard_measure())  # the year, with today's 1,000 sales of the shop
    figures.update(_reports(shop, today))
    connection.close()
    return figures


def _reports(shop: Any, today: dt.date) -> dict[str, float]:
    """PDF reports on the seeded year (in the child, after the other measures)."""
    import io

    from pypdf import PdfReader

    from accounts.periods import CUSTOM, PREVIOUS, Period
    from accounts.reports import statement_pdf_render
    from operations.reports import statements_pdf_render

    year = Period(kind=CUSTOM, date_from=today - dt.timedelta(days=364), date_to=today)
    timings = []
    for _ in range(3):
        started = time.perf_counter()
        statement_pdf_render(
            io.BytesIO(),
            report="profit_and_loss",
            business_ids=None,
            period=year,
            compare=PREVIOUS,
            generated_by="bench",
        )
        timings.append(time.perf_counter() - started)
    figures = {"reports.pdf_pl_year_s": round(statistics.median(timings), 3)}

    statement_customers(shop, year.date_from)
    timings, count, pdf = [], 0, b""
    for _ in range(3):
        out = io.BytesIO()
        started = time.perf_counter()
        count = statements_pdf_render(
            out, business=shop, customer_ids=None, date_from=year.date_from, date_to=today, generated_by="bench"
        )
        timings.append(time.perf_counter() - started)
        pdf = out.getvalue()
    figures["reports.pdf_statements_s"] = round(statistics.median(timings), 3)
    figures["reports.pdf_statements_customers"] = count
    figures["reports.pdf_statements_pages"] = len(PdfReader(io.BytesIO(pdf)).pages)
    return figures


def statement_customers(business: Any, first_day: dt.date) -> None:
    """STATEMENT_CUSTOMERS customers of `business`, each with two charges and a payment a month for the
    year from `first_day` (the customer statements of this bench and of bench/reports_export.py)."""
    from decimal import Decimal

    from operations.models import Customer, CustomerTransaction, CustomerTxKind

    customers = Customer.objects.bulk_create(
        Customer(business=business, name=f"Bench customer {n:03d}", phone=f"2547{n:08d}")
        for n in range(STATEMENT_CUSTOMERS)
    )
    movements = []
    for customer in customers:
        for month in range(12):
            day = first_day + dt.timedelta(days=30 * month)
            movements += [
                CustomerTransaction(business=business, customer=customer, tx_date=day, kind=CustomerTxKind.SALE,
                                    amount=Decimal("1160.00"), reference=f"S{month}a"),
                CustomerTransaction(business=business, customer=customer, tx_date=day + dt.timedelta(days=9),
                                    kind=CustomerTxKind.SALE, amount=Decimal("580.50"), reference=f"S{month}b"),
                CustomerTransaction(business=business, customer=customer, tx_date=day + dt.timedelta(days=20),
                                    kind=CustomerTxKind.PAYMENT, amount=Decimal("-1500.00"), reference=f"P{month}"),
            ]  # fmt: skip
    CustomerTransaction.objects.bulk_create(movements, batch_size=2000)


if __name__ == "__main__":
    if "--inner" in sys.argv:
        print(json.dumps(_inner()))
    else:
        print(json.dumps(run(os.environ["DATABASE_URL"]), indent=2))

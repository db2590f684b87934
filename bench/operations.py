"""Operations benchmarks: a year of demo activity, the sale service, the sales admin.

`run(database_url)` creates a scratch database `bench_ops` on the server of `database_url`,
migrates it, and measures:

  ops.seed_365_days_s   `manage.py seed_demo --days 365` (three businesses, every posting through
                        the services, a closing per business per day), wall-clock, in a subprocess
  ops.sales_per_s       sale_create (2 lines: a stocked good and a service, cash, cost of sales
                        posted) one per transaction, one connection, on top of that year of data
  ops.sales_admin_ms    the sales changelist rendered for the owner with that year (median of 5)
  ops.rows_*            row counts after the year (sales, sale lines, journal entries, stock movements,
                        laundry orders, M-Pesa payments)

Everything Django runs in child processes pointed at the scratch database, so the caller's set-up
is untouched. Usage: DATABASE_URL=... .venv/bin/python -m bench.operations   (prints JSON)
"""

from __future__ import annotations

import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

from bench.scratch import drop_database, recreate_database

ROOT = Path(__file__).resolve().parent.parent
SCRATCH_DB = "bench_ops"
DAYS = int(os.environ.get("BENCH_OPS_DAYS", "365"))  # smaller for a quick try
SALES = 1_000


def run(database_url: str) -> dict[str, float]:
    """Create the scratch database, seed and measure in child processes, drop it, return figures."""
    scratch_url = recreate_database(database_url, SCRATCH_DB)
    env = dict(os.environ, DATABASE_URL=scratch_url, DJANGO_DEBUG="1", PYTHONPATH=str(ROOT))
    env.setdefault("DJANGO_SETTINGS_MODULE", "backoffice.settings")
    manage = [sys.executable, str(ROOT / "manage.py")]
    try:
        subprocess.run([*manage, "migrate", "-v0"], env=env, cwd=ROOT, check=True)
        started = time.monotonic()
        subprocess.run(
            [*manage, "seed_demo", "--days", str(DAYS)], env=env, cwd=ROOT, check=True, stdout=subprocess.DEVNULL
        )
        seed_s = time.monotonic() - started
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
    started = time.perf_counter()
    for _ in range(SALES):
        sale_create(business=shop, sale_date=today, lines=lines)
    figures["ops.sales_per_s"] = round(SALES / (time.perf_counter() - started), 1)

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
    connection.close()
    return figures


if __name__ == "__main__":
    if "--inner" in sys.argv:
        print(json.dumps(_inner()))
    else:
        print(json.dumps(run(os.environ["DATABASE_URL"]), indent=2))

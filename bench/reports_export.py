"""Report jobs run by a real Celery worker, its memory sampled: the Excel export of 100,000 sale lines,
300 customer statements, the year's profit and loss.

`run(database_url)` creates a scratch database `bench_reports` (or $BENCH_REPORTS_DB), migrates it, makes two businesses
with one sale each through sale_create, then copies those rows in SQL (INSERT ... SELECT, every
column from the real row) into 2,500 sales x 4 lines (10,000 lines) for the first business and
25,000 sales x 4 lines (100,000 lines) for the second, and gives the second 300 customers with a year of
movements each (two charges and a payment a month, as bench/operations.py). Each job is launched as the
owner would (jobs.changelist_xlsx, the sales changelist filtered to one business, as the export button
does; operations.customer_statements of every customer with a balance over the year;
accounts.statement_pdf, the consolidated profit and loss of the year against the year before) and run by a fresh
`python -m celeryconf worker -Q reports --concurrency 1` with production settings (DJANGO_DEBUG=0, so
no query log; throw-away secrets), whose pool process RSS is sampled with psutil every 50 ms, and its
high-water mark (VmHWM, which the kernel keeps: no peak between two samples is missed) read at the end:

  reports.export_100k_rows_s            job started_at -> finished_at, 100,000 sale lines (goal <= 10 s)
  reports.export_peak_rss_mb            the pool process's peak RSS (MiB) during that export (goal < 100 MB)
  reports.export_10k_rows_peak_rss_mb   the same with 10,000 lines: flat memory means about the same
  reports.export_10k_rows_s             job time for 10,000 lines
  reports.worker_statements_300_peak_rss_mb  the pool process's peak RSS (MiB): 300 statements (~600 pages)
  reports.worker_statements_300_s       job time of those statements
  reports.worker_pl_year_peak_rss_mb    the same for the year's profit and loss (its size is the chart's,
                                        not the entries': the figures are sums in SQL)

Redis: REDIS_URL of the caller (the worker and the launch use it). Usage:
DATABASE_URL=... REDIS_URL=... .venv/bin/python -m bench.reports_export   (prints JSON)
"""

from __future__ import annotations

import base64
import datetime as dt
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from bench.operations import statement_customers
from bench.scratch import drop_database, recreate_database

ROOT = Path(__file__).resolve().parent.parent
SCRATCH_DB = os.environ.get("BENCH_REPORTS_DB", "bench_reports")  # another name to run beside another checkout
LINES_PER_SALE = 4
SIZES = {"small": 10_000, "large": 100_000}
# Each job run by a fresh worker: which business, the figures' keys (time, peak RSS of the pool process).
JOBS: dict[str, dict[str, str]] = {
    "export_small": {"business": "small", "seconds": "reports.export_10k_rows_s",
                     "peak": "reports.export_10k_rows_peak_rss_mb"},
    "export_large": {"business": "large", "seconds": "reports.export_100k_rows_s",
                     "peak": "reports.export_peak_rss_mb"},
    "statements": {"business": "large", "seconds": "reports.worker_statements_300_s",
                   "peak": "reports.worker_statements_300_peak_rss_mb"},
    "pl_year": {"business": "large", "seconds": "", "peak": "reports.worker_pl_year_peak_rss_mb"},
}  # fmt: skip


def run(database_url: str) -> dict[str, float]:
    """Scratch database, data, one worker per export; figures of the pool process."""
    import psutil

    scratch_url = recreate_database(database_url, SCRATCH_DB)
    media = tempfile.mkdtemp(prefix="bench-reports-media-")
    env = dict(os.environ, DATABASE_URL=scratch_url, DJANGO_DEBUG="1", PYTHONPATH=str(ROOT), MEDIA_ROOT=media)
    env.setdefault("DJANGO_SETTINGS_MODULE", "backoffice.settings")
    # The worker runs with production settings: DEBUG off (no query log kept per connection), with
    # throw-away secrets.
    worker_env = {
        **env,
        "DJANGO_DEBUG": "0",
        "DJANGO_SECRET_KEY": "bench-only-" + os.urandom(16).hex(),
        "MPESA_ENCRYPTION_KEY": base64.urlsafe_b64encode(os.urandom(32)).decode(),
        "LEDGER_ANCHOR_KEY": "bench-only-" + os.urandom(24).hex(),
        "DJANGO_ENV_FILE": "",
        "DJANGO_ALLOWED_HOSTS": "127.0.0.1,localhost",
        "LOG_LEVEL": "WARNING",
    }
    python = sys.executable
    figures: dict[str, float] = {}
    try:
        subprocess.run([python, str(ROOT / "manage.py"), "migrate", "-v0"], env=env, cwd=ROOT, check=True)
        made = _child(env, "--make")
        for name, job in JOBS.items():
            worker = subprocess.Popen(
                [python, "-m", "celeryconf", "worker", "-Q", "reports", "--concurrency", "1",
                 "-P", "prefork", "--without-gossip", "--without-mingle", "-l", "WARNING",
                 "-n", f"bench-reports-{name}@%h"],
                env=worker_env, cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True,
            )  # fmt: skip
            try:
                main = psutil.Process(worker.pid)
                deadline = time.monotonic() + 60
                while not main.children() and time.monotonic() < deadline:
                    time.sleep(0.1)
                time.sleep(2)  # the pool process has imported the project
                pool = main.children()[0]
                job_id = _child(env, "--launch", name, str(made[job["business"]]))["job"]
                peak = 0
                while True:
                    try:
                        peak = max(peak, pool.memory_info().rss)
                    except psutil.NoSuchProcess:
                        break
                    state = _job_state(scratch_url, job_id)
                    if state[0] in ("succeeded", "failed", "cancelled"):
                        break
                    time.sleep(0.05)
                peak = max(peak, _high_water_mark(pool.pid))
                if state[0] != "succeeded":
                    raise RuntimeError(f"{name} ended {state}")
                if job["seconds"]:
                    figures[job["seconds"]] = round(state[1], 2)
                figures[job["peak"]] = round(peak / 2**20, 1)
            finally:
                os.killpg(worker.pid, 15)
                worker.wait(30)
    finally:
        drop_database(database_url, SCRATCH_DB)
        subprocess.run(["rm", "-rf", media], check=False)
    return figures


def _high_water_mark(pid: int) -> int:
    """The process's peak RSS in bytes so far (VmHWM), 0 when it is gone."""
    try:
        status = Path(f"/proc/{pid}/status").read_text()
    except OSError:
        return 0
    return next((int(line.split()[1]) * 1024 for line in status.splitlines() if line.startswith("VmHWM:")), 0)


def _job_state(url: str, job_id: int) -> tuple[str, float]:
    import psycopg

    with psycopg.connect(url, autocommit=True) as conn:
        row = conn.execute(
            "SELECT state, extract(epoch FROM finished_at - started_at) FROM celeryconf_job WHERE id = %s", [job_id]
        ).fetchone()
    assert row is not None
    return str(row[0]), float(row[1] or 0)


def _child(env: dict[str, str], *args: str) -> dict[str, int]:
    out = subprocess.run(
        [sys.executable, "-m", "bench.reports_export", *args],
        env=env,
        cwd=ROOT,
        stdout=subprocess.PIPE,
        text=True,
        check=True,
    )
    return json.loads(out.stdout)  # type: ignore[no-any-return]


def _make() -> dict[str, int]:
    """Two businesses with a real sale each, copied in SQL to SIZES lines; {size: business id}."""
    import django

    django.setup()
    from decimal import Decimal

    from django.contrib.auth.models import User
    from django.db import connection
    from django.utils import timezone

    from accounts.services import chart_ensure_default
    from operations.models import Item, ItemKind, Sale, SaleLine
    from operations.services.postings import chart_operations_ensure
    from operations.services.sales import LineInput, sale_create
    from tenancy.models import Business, BusinessKind

    User.objects.create_superuser("owner", "owner@example.com", "bench-only")
    made: dict[str, int] = {}
    today = timezone.localdate()
    for size, lines in SIZES.items():
        business = Business.objects.create(name=f"Duka {size}", kind=BusinessKind.RETAIL_LPG)
        chart_ensure_default(business=business)
        chart_operations_ensure(business=business)
        item = Item.objects.create(
            business=business, name="Scratch card", kind=ItemKind.SERVICE, price=Decimal("100.00"),
            sales_role="sales_shop",
        )  # fmt: skip
        sale = sale_create(business=business, sale_date=today, lines=[LineInput(item, Decimal("1"))] * LINES_PER_SALE)
        sale_columns = [f.column for f in Sale._meta.concrete_fields if not f.primary_key]
        line_columns = [f.column for f in SaleLine._meta.concrete_fields if not f.primary_key]
        copies = lines // LINES_PER_SALE - 1
        # The copies are the real sale's rows (same amounts, VAT, cost and entry), on earlier dates.
        sale_select = ["s.sale_date - (g %% 365)" if c == "sale_date" else f"s.{c}" for c in sale_columns]
        with connection.cursor() as cursor:
            cursor.execute(
                f"INSERT INTO operations_sale ({', '.join(sale_columns)}) "
                f"SELECT {', '.join(sale_select)} FROM operations_sale s, generate_series(1, %s) g WHERE s.id = %s",
                [copies, sale.pk],
            )
            line_select = ["c.id" if c == "sale_id" else f"l.{c}" for c in line_columns]
            cursor.execute(
                f"INSERT INTO operations_saleline ({', '.join(line_columns)}) "
                f"SELECT {', '.join(line_select)} FROM operations_sale c JOIN operations_saleline l ON l.sale_id = %s "
                "WHERE c.business_id = %s AND c.id <> %s",
                [sale.pk, business.pk, sale.pk],
            )
        assert SaleLine.objects.filter(sale__business=business).count() == lines
        made[size] = business.pk
    statement_customers(Business.objects.get(pk=made["large"]), today - dt.timedelta(days=364))
    with connection.cursor() as cursor:
        cursor.execute("ANALYZE")
    return made


def _launch(name: str, business_id: int) -> dict[str, int]:
    import django

    django.setup()
    from django.contrib.auth.models import User
    from django.urls import reverse
    from django.utils import timezone

    from accounts.periods import CUSTOM, PREVIOUS, Period
    from accounts.statements import STATEMENT_PDF, statement_params
    from jobs.exports import CHANGELIST_XLSX
    from jobs.services import job_launch
    from operations.reports import CUSTOMER_STATEMENTS
    from tenancy.models import Business

    owner = User.objects.get(username="owner")
    business = Business.objects.get(pk=business_id)
    today = timezone.localdate()
    year = Period(kind=CUSTOM, date_from=today - dt.timedelta(days=364), date_to=today)
    if name.startswith("export"):
        job = job_launch(
            kind=CHANGELIST_XLSX,
            acting_user=owner,
            business=business,
            params={
                "model": "operations.sale",
                "query": f"business__id__exact={business_id}",
                "options": {},
                "path": reverse("admin:operations_sale_changelist"),  # as the admin's export button launches it
            },
        )
    elif name == "statements":
        params = {"customer_ids": None, "date_from": year.date_from.isoformat(), "date_to": today.isoformat()}
        job = job_launch(kind=CUSTOMER_STATEMENTS, acting_user=owner, business=business, params=params)
    else:
        params = statement_params(report="profit_and_loss", business="all", period=year, compare=PREVIOUS)
        job = job_launch(kind=STATEMENT_PDF, acting_user=owner, business=None, params=params)
    return {"job": job.pk}


if __name__ == "__main__":
    if sys.argv[1:2] == ["--make"]:
        print(json.dumps(_make()))
    elif sys.argv[1:2] == ["--launch"]:
        print(json.dumps(_launch(sys.argv[2], int(sys.argv[3]))))
    else:
        print(json.dumps(run(os.environ["DATABASE_URL"]), indent=2))

""" "Export to Excel" on the changelists: what the user sees (filters, search, ordering), typed cells,
totals equal to the database's, a Filters sheet, business scoping and permissions, cancel.

The handler runs in-process through jobs.runner.job_run (as a worker delivery would); the launch
through the admin and a delivery by a real worker are proved in tests/jobs/test_excel_worker.py.
"""

from __future__ import annotations

import datetime as dt
from decimal import Decimal
from typing import Any

import pytest
from django.contrib.auth.models import Permission
from django.contrib.messages import get_messages
from django.db.models import Model, Sum
from django.test import Client
from django.urls import reverse
from openpyxl import load_workbook
from openpyxl.workbook.workbook import Workbook

from jobs.exports import CHANGELIST_XLSX
from jobs.models import Job, JobState
from jobs.runner import job_run
from operations.models import ItemKind, PaymentMethod, Sale, SaleLine
from operations.services.sales import LineInput, sale_create
from tenancy.models import Business
from tests.factories.operations import CustomerFactory, ItemFactory
from tests.factories.tenancy import login, staff_with_perms

pytestmark = pytest.mark.django_db

D = Decimal


@pytest.fixture(autouse=True)
def _media_in_tmp(settings: Any, tmp_path: Any) -> None:
    settings.MEDIA_ROOT = tmp_path / "media"


def _no_retry(countdown: int, exc: BaseException) -> Exception:
    raise AssertionError(f"no retry expected: {exc!r}")


def run_export(user: Any, model: type[Model], query: str = "", options: dict[str, Any] | None = None) -> Job:
    """Run the export job in this process, as a worker would (through the runner)."""
    job = Job.objects.create(
        kind=CHANGELIST_XLSX,
        requested_by=user,
        params={"model": model._meta.label_lower, "query": query, "options": options or {}},
    )
    job_run(job_id=job.pk, retry=_no_retry)
    job.refresh_from_db()
    return job


def workbook_of(job: Job) -> Workbook:
    assert job.state == JobState.SUCCEEDED, (job.state, job.error)
    assert job.result_file.name.endswith(".xlsx") and job.result_size
    return load_workbook(job.result_file.path)


def table(wb: Workbook, sheet: str) -> tuple[list[Any], list[list[Any]], list[Any] | None]:
    """(header, data rows, totals row or None) of a sheet."""
    rows = [list(r) for r in wb[sheet].iter_rows(values_only=True)]
    header, body = rows[0], rows[1:]
    if body and body[-1][0] == "Total":
        return header, body[:-1], body[-1]
    return header, body, None


def filters_of(wb: Workbook) -> dict[str, Any]:
    return {row[0]: row[1] for row in wb["Filters"].iter_rows(min_row=2, values_only=True)}


def column(header: list[Any], rows: list[list[Any]], name: str) -> list[Any]:
    index = header.index(name)
    return [row[index] for row in rows]


@pytest.fixture
def sales(retail: Business, water: Business, today: dt.date) -> dict[str, Any]:
    card = ItemFactory.create(
        business=retail, name="Scratch card", kind=ItemKind.SERVICE, price=D("580.00"), sales_role="sales_shop"
    )
    refill = ItemFactory.create(
        business=water, name="Refill 20 l", kind=ItemKind.SERVICE, price=D("50.00"), sales_role="sales_refill"
    )
    amina = CustomerFactory.create(business=retail, name="Amina Duka", credit_limit=D("10000.00"))
    return {
        "cash": sale_create(business=retail, sale_date=today, lines=[LineInput(card, D("1"))]),
        "credit": sale_create(
            business=retail,
            sale_date=today - dt.timedelta(days=1),
            customer=amina,
            payment_method=PaymentMethod.ACCOUNT,
            lines=[LineInput(card, D("2")), LineInput(card, D("1"), D("600.00"))],
        ),
        "older": sale_create(business=retail, sale_date=today - dt.timedelta(days=3), lines=[LineInput(card, D("3"))]),
        "water": sale_create(business=water, sale_date=today, lines=[LineInput(refill, D("4"))]),
    }


def test_sales_export_has_typed_cells_lines_totals_and_filters(
    owner: Any, sales: dict[str, Sale], retail: Business
) -> None:
    job = run_export(owner, Sale, f"business__id__exact={retail.pk}")
    wb = workbook_of(job)
    header, rows, totals = table(wb, "Sales")
    assert header[:4] == ["Sale", "Date", "Business", "Customer"]
    in_db = Sale.objects.filter(business=retail)
    assert sorted(column(header, rows, "Sale")) == sorted(s.number for s in in_db)
    dates = column(header, rows, "Date")
    assert all(isinstance(d, dt.datetime) for d in dates)  # openpyxl reads dates back as datetimes
    assert {d.date() for d in dates} == set(in_db.values_list("sale_date", flat=True))
    total_cells = next(iter(wb["Sales"].iter_rows(min_row=2, max_row=2)))
    money = total_cells[header.index("Total")]
    assert isinstance(money.value, (int, float)) and money.number_format == "#,##0.00"
    assert money.is_date is False and total_cells[1].is_date
    assert totals is not None
    assert D(str(totals[header.index("Total")])) == in_db.aggregate(s=Sum("total"))["s"]
    assert D(str(totals[header.index("VAT")])) == in_db.aggregate(s=Sum("vat_total"))["s"]
    assert wb["Sales"].freeze_panes == "A2"
    assert wb["Sales"].auto_filter.ref == f"A1:L{len(rows) + 1}"

    line_header, lines, line_totals = table(wb, "Sale lines")
    assert line_header[:3] == ["Sale", "Date", "Item"]
    db_lines = SaleLine.objects.filter(sale__business=retail)
    assert len(lines) == db_lines.count() == 4
    assert line_totals is not None
    assert D(str(line_totals[line_header.index("Amount")])) == db_lines.aggregate(s=Sum("amount"))["s"]
    credit = sales["credit"]
    assert sorted(r[line_header.index("Unit price")] for r in lines if r[0] == credit.number) == [580, 600]

    filters = filters_of(wb)
    assert filters["Filter: business"] == retail.name
    assert filters["Search"] == "(none)"
    assert filters["Businesses"] == "All businesses"
    assert filters["Exported by"] and filters["Exported at"]
    assert filters["Rows"] == 3
    assert job.rows_done == job.rows_total == 3 and job.progress == 100


def test_sales_are_read_as_values_and_give_the_same_workbook_as_model_instances(
    owner: Any, sales: dict[str, Sale], retail: Business, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The sales export reads values_list tuples (no Sale or SaleLine instance is built); reading model
    instances instead gives exactly the same cells on every sheet."""
    from django.contrib import admin
    from django.db.models.signals import post_init

    built: list[str] = []

    def count(sender: Any, **kwargs: Any) -> None:
        built.append(sender.__name__)

    query = f"business__id__exact={retail.pk}&o=-2"
    post_init.connect(count, sender=Sale)
    post_init.connect(count, sender=SaleLine)
    try:
        fast = workbook_of(run_export(owner, Sale, query))
        assert built == []  # values only
        monkeypatch.setattr(type(admin.site._registry[Sale]), "excel_export_needs_objects", lambda self: True)
        slow = workbook_of(run_export(owner, Sale, query))
        assert "Sale" in built and "SaleLine" in built  # the other path did build instances
    finally:
        post_init.disconnect(count, sender=Sale)
        post_init.disconnect(count, sender=SaleLine)
    assert fast.sheetnames == slow.sheetnames == ["Sales", "Sale lines", "Filters"]
    for name in ("Sales", "Sale lines"):
        assert [list(r) for r in fast[name].iter_rows(values_only=True)] == [
            list(r) for r in slow[name].iter_rows(values_only=True)
        ]
    header, rows, _ = table(fast, "Sales")
    credit = sales["credit"]
    row = next(r for r in rows if r[0] == credit.number)
    assert row[header.index("Customer")] == "Amina Duka"
    assert row[header.index("Payment")] == credit.get_payment_method_display()
    assert row[header.index("Status")] == credit.get_status_display()
    assert column(header, rows, "Sale") == [
        s.number for s in Sale.objects.filter(business=retail).order_by("-sale_date")
    ]


def test_the_export_has_exactly_the_rows_of_the_list_in_its_order(
    owner: Any, owner_client: Client, sales: dict[str, Sale], retail: Business, today: dt.date
) -> None:
    # Cash sales of the shop, searched by nothing that excludes them, ordered by date ascending
    # (the 2nd list_display column), as the changelist shows them.
    query = f"business__id__exact={retail.pk}&payment_method__exact=cash&q=&o=2"
    page = owner_client.get(reverse("admin:operations_sale_changelist") + "?" + query)
    shown = [s.number for s in page.context["cl"].result_list]
    wb = workbook_of(run_export(owner, Sale, query))
    header, rows, _ = table(wb, "Sales")
    exported = column(header, rows, "Sale")
    assert exported == shown == [sales["older"].number, sales["cash"].number]
    filters = filters_of(wb)
    assert filters["Filter: payment method"] == "Cash"
    assert filters["Ordering"] == "Sale date (ascending)"

    # A search narrows it the same way.
    query = f"q={sales['credit'].customer.name.split()[0]}"  # type: ignore[union-attr]
    header, rows, _ = table(workbook_of(run_export(owner, Sale, query)), "Sales")
    assert column(header, rows, "Sale") == [sales["credit"].number]


def test_a_staff_member_never_exports_another_businesses_rows_even_with_a_forged_filter(
    sales: dict[str, Sale], water: Business, retail: Business
) -> None:
    staff = staff_with_perms(water, ["operations.view_sale"])
    for query in ("", f"business__id__exact={retail.pk}", f"business__id__in={retail.pk}"):
        job = run_export(staff, Sale, query)
        if job.state == JobState.FAILED:  # a lookup the list does not offer is refused, not widened
            assert "not valid" in job.error
            continue
        header, rows, _ = table(workbook_of(job), "Sales")
        assert set(column(header, rows, "Business")) <= {water.name}
        if not query:
            assert column(header, rows, "Sale") == [sales["water"].number]


def test_launch_needs_the_view_permission_and_the_button_carries_the_lists_query(
    sales: dict[str, Sale], water: Business, retail: Business
) -> None:
    changelist = reverse("admin:operations_sale_changelist")
    export_url = reverse("admin:operations_sale_export_to_excel")
    viewer = login(staff_with_perms(water, ["operations.view_sale", "jobs.view_job"]))
    page = viewer.get(changelist + "?payment_method__exact=cash&o=2")
    assert page.status_code == 200
    assert f'href="{export_url}?payment_method__exact=cash&amp;o=2"'.encode() in page.content

    confirm = viewer.get(export_url + "?payment_method__exact=cash&o=2")
    assert confirm.status_code == 200 and b"payment method" in confirm.content
    response = viewer.post(export_url, {"_changelist_query": "payment_method__exact=cash&o=2"})
    assert response.status_code == 302 and response["Location"].endswith("?payment_method__exact=cash&o=2")
    job = Job.objects.get()
    assert job.kind == CHANGELIST_XLSX and job.business == water  # his only business
    assert job.params == {
        "model": "operations.sale",
        "query": "payment_method__exact=cash&o=2",
        "options": {},
        "path": changelist,  # the worker builds its request with it, without loading the URLconf
    }
    shown = [str(m) for m in get_messages(response.wsgi_request)]
    assert any("Export queued" in m and reverse("admin:jobs_job_changelist") in m for m in shown)

    # Change rights without the view right are not enough (has_view_permission accepts "change" too,
    # as Django does: an add-only clerk is the case to refuse).
    clerk = login(staff_with_perms(water, ["operations.add_sale"], username="clerk"))
    assert export_url.encode() not in clerk.get(changelist).content
    assert clerk.get(export_url).status_code == 403
    assert clerk.post(export_url, {"_changelist_query": ""}).status_code == 403
    assert Job.objects.count() == 1


def test_the_job_fails_clearly_when_the_view_permission_is_gone(sales: dict[str, Sale], water: Business) -> None:
    staff = staff_with_perms(water, ["operations.view_sale"])
    client = login(staff)
    client.post(reverse("admin:operations_sale_export_to_excel"), {"_changelist_query": ""})
    job = Job.objects.get()
    staff.user_permissions.remove(Permission.objects.get(codename="view_sale"))
    job_run(job_id=job.pk, retry=_no_retry)
    job.refresh_from_db()
    assert job.state == JobState.FAILED
    assert job.message == "staff_a may no longer view sales: nothing exported."
    assert not job.result_file


def test_cancel_while_running_stops_the_export_and_keeps_no_file(
    owner: Any, sales: dict[str, Sale], monkeypatch: pytest.MonkeyPatch
) -> None:
    import jobs.exports

    monkeypatch.setattr(jobs.exports, "CHUNK_SIZE", 1)
    job = Job.objects.create(kind=CHANGELIST_XLSX, requested_by=owner, params={"model": "operations.sale"})
    real_rows = jobs.exports.JobContext.rows
    calls: list[int] = []

    def rows_then_cancel(self: Any, done: int, total: int, message: str = "") -> None:
        calls.append(done)
        if done == 2:  # someone presses "cancel" on the Jobs page mid-export
            Job.objects.filter(pk=self.job.pk).update(cancel_requested_at=dt.datetime.now(dt.UTC))
        real_rows(self, done, total, message)

    monkeypatch.setattr(jobs.exports.JobContext, "rows", rows_then_cancel)
    job_run(job_id=job.pk, retry=_no_retry)
    job.refresh_from_db()
    assert job.state == JobState.CANCELLED
    assert calls == [0, 1, 2]  # stopped at the report where the cancel was seen, before the 3rd sale
    assert not job.result_file and job.result_size is None


# --- every other export: the same rules, with one row of each kind per business ---------------------

# model -> (main sheet, a money column with a total, the field it sums, the business path)
EXPORTS: dict[str, tuple[str, str, str, str]] = {
    "operations.StockMovement": ("Stock movements", "Value", "value", "business"),
    "operations.Purchase": ("Purchases", "Total", "total", "business"),
    "operations.Expense": ("Expenses", "Amount", "amount", "business"),
    "operations.LaundryOrder": ("Laundry orders", "Total", "total", "business"),
    "operations.Customer": ("Customers", "Balance", "transactions__amount", "business"),
    "accounts.JournalEntry": ("Journal entries", "Amount", "lines__debit", "business"),
    "integrations.Payment": ("M-Pesa payments", "Amount", "amount", "business"),
    "operations.StockLevel": ("Stock", "Value", "value", "business"),
}


@pytest.mark.parametrize("label", list(EXPORTS))
def test_each_export_is_typed_totalled_and_scoped(
    label: str, owner: Any, water: Business, laundry: Business, today: dt.date
) -> None:
    from django.apps import apps

    from tests.backoffice.test_tenancy import ALL_MAKERS

    model = apps.get_model(label)
    sheet, money_header, summed, path = EXPORTS[label]
    for business in (water, laundry):
        ALL_MAKERS[model](business)
        ALL_MAKERS[model](business)
    in_water = model._default_manager.filter(**{path: water})

    options = {"as_of": today.isoformat()} if label in ("operations.Customer", "operations.StockLevel") else {}
    wb = workbook_of(run_export(owner, model, f"business__id__exact={water.pk}", options))
    header, rows, totals = table(wb, sheet)
    assert len(rows) == in_water.count() == 2
    assert set(column(header, rows, "Business")) == {water.name}
    assert totals is not None
    expected = in_water.aggregate(s=Sum(summed))["s"] or 0
    if label == "operations.StockLevel":  # as of today: the movements' sum, like stock_value_as_of
        from operations.models import StockMovement

        moved = StockMovement.objects.filter(business=water, movement_date__lte=today)
        expected = moved.aggregate(s=Sum("value"))["s"] or 0
    assert D(str(totals[header.index(money_header)])) == expected
    first = next(iter(wb[sheet].iter_rows(min_row=2, max_row=2)))[header.index(money_header)]
    assert first.number_format == "#,##0.00" and (first.value is None or isinstance(first.value, (int, float)))
    filters = filters_of(wb)
    assert filters["Filter: business"] == water.name and filters["Rows"] == 2
    if options:
        assert filters["As of"] == today.isoformat()

    # Staff of water, even asking for laundry by a forged filter, gets none of laundry's rows.
    app, name = model._meta.app_label, model._meta.model_name
    staff = staff_with_perms(water, [f"{app}.view_{name}"])
    client = login(staff)
    for query in ("", f"business__id__exact={laundry.pk}"):
        job = run_export(staff, model, query, options)
        header, rows, _ = table(workbook_of(job), sheet)
        assert set(column(header, rows, "Business")) <= {water.name}
        page = client.get(reverse(f"admin:{app}_{name}_changelist") + "?" + query)
        assert len(rows) == page.context["cl"].result_count <= 2  # what his page shows: never laundry's
        assert filters_of(workbook_of(job))["Businesses"] == water.name


def _copy_sale(sale: Sale, copies: int) -> None:
    """`copies` more sales like `sale` (its lines too), inserted in SQL as bench/reports_export.py does."""
    from django.db import connection

    sale_columns = [f.column for f in Sale._meta.concrete_fields if not f.primary_key]
    line_columns = [f.column for f in SaleLine._meta.concrete_fields if not f.primary_key]
    with connection.cursor() as cursor:
        cursor.execute(
            f"INSERT INTO operations_sale ({', '.join(sale_columns)}) "
            f"SELECT {', '.join(f's.{c}' for c in sale_columns)} FROM operations_sale s, generate_series(1, %s) g "
            "WHERE s.id = %s",
            [copies, sale.pk],
        )
        line_select = ["c.id" if c == "sale_id" else f"l.{c}" for c in line_columns]
        cursor.execute(
            f"INSERT INTO operations_saleline ({', '.join(line_columns)}) "
            f"SELECT {', '.join(line_select)} FROM operations_sale c JOIN operations_saleline l ON l.sale_id = %s "
            "WHERE c.business_id = %s AND NOT EXISTS (SELECT 1 FROM operations_saleline x WHERE x.sale_id = c.id)",
            [sale.pk, sale.business_id],
        )


def _traced_peak_of_export(user: Any, business: Business) -> tuple[int, Job]:
    import gc
    import tracemalloc

    gc.collect()
    tracemalloc.start()
    try:
        job = run_export(user, Sale, f"business__id__exact={business.pk}")
        return tracemalloc.get_traced_memory()[1], job
    finally:
        tracemalloc.stop()


def test_the_export_streams_its_rows_so_memory_does_not_grow_with_their_number(
    owner: Any, retail: Business, today: dt.date, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Five times the rows take about the same memory: rows and lines are read and written a chunk at a
    time, never all held at once (Python allocations traced by tracemalloc, not time)."""
    import jobs.exports

    monkeypatch.setattr(jobs.exports, "CHUNK_SIZE", 100)
    card = ItemFactory.create(
        business=retail, name="Scratch card", kind=ItemKind.SERVICE, price=D("580.00"), sales_role="sales_shop"
    )
    first = sale_create(business=retail, sale_date=today, lines=[LineInput(card, D("1"))] * 4)
    run_export(owner, Sale, f"business__id__exact={retail.pk}")  # first use: imports, caches
    # Enough rows for the writer's buffers (FLUSH_CHARS) to fill already in the smaller export.
    _copy_sale(first, 599)
    small, job = _traced_peak_of_export(owner, retail)
    assert job.rows_done == 600
    _copy_sale(first, 2_400)
    large, job = _traced_peak_of_export(owner, retail)
    assert job.rows_done == 3_000
    _, rows, _ = table(workbook_of(job), "Sale lines")
    assert len(rows) == 12_000
    # 2,400 more sales and 9,600 more lines held at once take ~10 MB more (measured: 4.2 -> 15.0 MB with
    # CHUNK_SIZE = 100,000); streamed they add ~0.3 MB (2.4 -> 2.7).
    assert large - small < 1_000_000

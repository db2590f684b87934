"""Customer statements as PDF: every figure read back equals the selectors and an independent sum
of the customer ledger; a statement per customer from a new page under its own header; scoping of
the admin page and of the worker; a real worker on the reports queue."""

from __future__ import annotations

import datetime as dt
import io
import re
from decimal import Decimal
from typing import Any

import pytest
from django.contrib import admin
from django.db.models import Sum
from django.test import RequestFactory
from django.urls import reverse
from django.utils import timezone
from pypdf import PdfReader

from accounts.pdf import money
from jobs.models import Job, JobState
from jobs.registry import JobCancelled, JobContext
from jobs.runner import job_run
from jobs.services import job_launch
from operations.models import Customer, CustomerTransaction, CustomerTxKind
from operations.reports import (
    CUSTOMER_STATEMENTS,
    customer_statements_job,
    default_statement_period,
    statements_pdf_render,
)
from operations.selectors import customer_ageing, customer_statement
from tenancy.models import Business
from tests.factories.jobs import job_finished
from tests.factories.operations import CustomerFactory
from tests.factories.tenancy import login, staff_with_perms

D = Decimal
FROM, TO = dt.date(2026, 4, 1), dt.date(2026, 6, 30)


def _tx(customer: Customer, day: dt.date, amount: str, reference: str = "") -> None:
    kind = CustomerTxKind.SALE if D(amount) > 0 else CustomerTxKind.PAYMENT
    CustomerTransaction.objects.create(
        business=customer.business, customer=customer, tx_date=day, kind=kind, amount=D(amount), reference=reference
    )


@pytest.fixture
def customers(retail: Business, laundry: Business) -> dict[str, Customer]:
    wafula = CustomerFactory.create(business=retail, name="Wafula Traders", phone="254712345678", account_code="W01")
    _tx(wafula, dt.date(2026, 1, 10), "1500.00", "S0000001")  # before the period: opening, over 90 days
    _tx(wafula, dt.date(2026, 3, 20), "-400.00", "cash")
    _tx(wafula, dt.date(2026, 4, 15), "730.50", "S0000002")  # 61-90 on 30 Jun
    _tx(wafula, dt.date(2026, 5, 20), "260.00", "S0000003")  # 31-60
    _tx(wafula, dt.date(2026, 6, 2), "-900.00", "mpesa QWE123")
    _tx(wafula, dt.date(2026, 6, 25), "118.25", "S0000004")  # current
    _tx(wafula, dt.date(2026, 7, 3), "999.00", "S0000005")  # after the period: not shown
    akinyi = CustomerFactory.create(business=retail, name="Akinyi Shop")
    _tx(akinyi, dt.date(2026, 5, 5), "640.00", "S0000006")
    settled = CustomerFactory.create(business=retail, name="Settled Sam")
    _tx(settled, dt.date(2026, 4, 2), "300.00", "S0000007")
    _tx(settled, dt.date(2026, 4, 3), "-300.00", "cash")
    other = CustomerFactory.create(business=laundry, name="Other Business Customer")
    _tx(other, dt.date(2026, 5, 1), "80.00", "tag 7")
    return {"wafula": wafula, "akinyi": akinyi, "settled": settled, "other": other}


def _pages(pdf: bytes) -> list[str]:
    """Each page's text with every run of white space (a table cell ends a line) as one space."""
    return [" ".join(page.extract_text().split()) for page in PdfReader(io.BytesIO(pdf)).pages]


def _render(business: Business, ids: list[int] | None = None) -> list[str]:
    out = io.BytesIO()
    statements_pdf_render(out, business=business, customer_ids=ids, date_from=FROM, date_to=TO, generated_by="owner")
    return _pages(out.getvalue())


def _fifo_ageing(customer: Customer, as_of: dt.date) -> list[Decimal]:
    """Independent of the SQL: settle the oldest charges first, in Python, and bucket what is left."""
    rows = list(CustomerTransaction.objects.filter(customer=customer, tx_date__lte=as_of).order_by("tx_date", "id"))
    paid = -sum((r.amount for r in rows if r.amount < 0), D(0))
    buckets = [D(0)] * 4
    for r in (r for r in rows if r.amount > 0):
        settled = min(paid, r.amount)
        paid -= settled
        left = r.amount - settled
        age = (as_of - r.tx_date).days
        buckets[0 if age <= 30 else 1 if age <= 60 else 2 if age <= 90 else 3] += left
    return buckets


@pytest.mark.django_db
def test_every_figure_of_the_statement_equals_the_selectors_and_the_ledger(
    retail: Business, customers: dict[str, Customer]
) -> None:
    wafula = customers["wafula"]
    [page] = [p for p in _render(retail) if "Wafula Traders" in p]
    statement = customer_statement(customer=wafula, date_from=FROM, date_to=TO)
    ledger = CustomerTransaction.objects.filter(customer=wafula)
    opening = ledger.filter(tx_date__lt=FROM).aggregate(s=Sum("amount"))["s"]
    closing = ledger.filter(tx_date__lte=TO).aggregate(s=Sum("amount"))["s"]
    assert (statement.opening, statement.closing) == (opening, closing) == (D("1100.00"), D("1308.75"))
    assert f"01 Apr 2026 Opening balance {money(opening)}" in page
    assert f"30 Jun 2026 Closing balance {money(closing)}" in page
    running = opening
    movements = list(ledger.filter(tx_date__range=(FROM, TO)).order_by("tx_date", "id"))
    assert len(movements) == len(statement.lines) == 4
    for tx, line in zip(movements, statement.lines, strict=True):
        running += tx.amount
        assert line.balance == running
        expected = f"{tx.tx_date:%d %b %Y} {tx.get_kind_display()} {tx.reference} {money(tx.amount)} {money(running)}"
        assert expected in page
    assert "999.00" not in page  # after the period
    # The customer's name, phone and account code; the page header says whose statement it is.
    assert "Customer statement: Wafula Traders" in page and "Duka & Gas" in page
    assert "0712 345 678" in page and "W01" in page and "01 Apr 2026 to 30 Jun 2026" in page
    # Ageing on the statement's last day: the selector, an independent FIFO in Python, the PDF.
    [aged] = customer_ageing(business_ids=[retail.pk], as_of=TO, customer_id=wafula.pk)
    buckets = [aged.current, aged.days_30, aged.days_60, aged.days_90]
    assert buckets == _fifo_ageing(wafula, TO) == [D("118.25"), D("260.00"), D("730.50"), D("200.00")]
    assert sum(buckets) == closing
    assert " ".join(money(v) for v in [*buckets, closing]) in page


@pytest.mark.django_db
def test_a_page_per_customer_with_a_balance_each_under_its_own_header(
    retail: Business, customers: dict[str, Customer]
) -> None:
    pages = _render(retail)
    # Customers with a balance on the last day, by name; the settled one and the laundry's are left out.
    assert len(pages) == 2
    assert "Customer statement: Akinyi Shop" in pages[0] and "Wafula" not in pages[0]
    assert "Customer statement: Wafula Traders" in pages[1] and "Akinyi" not in pages[1]
    everything = "\n".join(pages)
    assert "Settled Sam" not in everything and "Other Business Customer" not in everything
    # Chosen customers are printed even without a balance; another business's id is not.
    chosen = _render(retail, [customers["settled"].pk, customers["other"].pk])
    assert len(chosen) == 1 and "Customer statement: Settled Sam" in chosen[0]
    assert "Other Business Customer" not in chosen[0]


@pytest.mark.django_db
def test_a_long_statement_runs_over_pages_each_naming_the_customer(retail: Business) -> None:
    busy = CustomerFactory.create(business=retail, name="Busy Buyer")
    for i in range(90):
        _tx(busy, FROM + dt.timedelta(days=i), "10.00", f"S{i:07d}")
    quiet = CustomerFactory.create(business=retail, name="Quiet Buyer")
    _tx(quiet, FROM, "5.00")
    pages = _render(retail, [busy.pk, quiet.pk])
    assert len(pages) >= 3
    busy_pages = [p for p in pages if "Customer statement: Busy Buyer" in p]
    assert len(busy_pages) == len(pages) - 1 and "Customer statement: Quiet Buyer" in pages[-1]
    assert all(re.search(rf"Page {n} of {len(pages)}", p) for n, p in enumerate(pages, start=1))
    assert f"Closing balance {money(D('900.00'))}" in "\n".join(busy_pages)


def test_the_default_period_is_the_last_three_full_months_and_this_month_to_date() -> None:
    assert default_statement_period(dt.date(2026, 3, 15)) == (dt.date(2025, 12, 1), dt.date(2026, 3, 15))
    assert default_statement_period(dt.date(2026, 7, 1)) == (dt.date(2026, 4, 1), dt.date(2026, 7, 1))


def _statements_url(*ids: int) -> str:
    url = reverse("admin:operations_customer_statements")
    return f"{url}?ids={','.join(map(str, ids))}" if ids else url


@pytest.mark.django_db
def test_statements_are_queued_as_a_job_per_business(
    owner_client, retail: Business, laundry: Business, customers: dict[str, Customer]
) -> None:
    wafula, akinyi, other = customers["wafula"], customers["akinyi"], customers["other"]
    changelist = reverse("admin:operations_customer_changelist")
    response = owner_client.post(changelist, {"action": "statements_pdf", "_selected_action": [wafula.pk, other.pk]})
    assert response.status_code == 302 and response["Location"] == _statements_url(wafula.pk, other.pk)
    assert owner_client.get(_statements_url(wafula.pk)).status_code == 200
    period = {"date_from": "2026-04-01", "date_to": "2026-06-30"}
    response = owner_client.post(_statements_url(), {"ids": str(wafula.pk), **period})
    job = Job.objects.get(kind=CUSTOMER_STATEMENTS)
    assert response.status_code == 302 and response["Location"] == reverse("admin:jobs_job_change", args=[job.pk])
    assert job.params == {"date_from": "2026-04-01", "date_to": "2026-06-30", "customer_ids": [wafula.pk]}
    job = _run(job)
    assert job.state == JobState.SUCCEEDED, job.error
    with job.result_file.open("rb") as handle:
        [page] = _pages(handle.read())
    assert "Customer statement: Wafula Traders" in page and money(D("1308.75")) in page
    Job.objects.all().delete()
    # Two businesses' customers: a job for each, with only that business's customers.
    response = owner_client.post(_statements_url(), {"ids": f"{wafula.pk},{akinyi.pk},{other.pk}", **period})
    assert response.status_code == 302
    jobs = {job.business_id: job for job in Job.objects.filter(kind=CUSTOMER_STATEMENTS)}
    assert sorted(jobs[retail.pk].params["customer_ids"]) == sorted([wafula.pk, akinyi.pk])
    assert jobs[laundry.pk].params["customer_ids"] == [other.pk]
    # Every customer of a business with a balance: the business is chosen on the page.
    owner_client.post(_statements_url(), {"business": retail.pk, **period})
    assert Job.objects.filter(kind=CUSTOMER_STATEMENTS, business=retail, params__customer_ids=None).count() == 1


@pytest.mark.django_db
def test_staff_of_one_business_cannot_print_another_business_customers(
    retail: Business, laundry: Business, customers: dict[str, Customer]
) -> None:
    staff = staff_with_perms(retail, ["operations.view_customer"])
    client = login(staff)
    other = customers["other"]
    period = {"date_from": "2026-04-01", "date_to": "2026-06-30"}
    assert client.get(_statements_url(customers["wafula"].pk)).status_code == 200
    assert client.get(_statements_url(other.pk)).status_code == 403
    assert client.post(_statements_url(), {"ids": str(other.pk), **period}).status_code == 403
    assert client.get(_statements_url(customers["wafula"].pk, other.pk)).status_code == 403
    # The business chooser offers only his business; another one is refused by the form.
    response = client.post(_statements_url(), {"business": laundry.pk, **period})
    assert response.status_code == 200 and laundry.name not in response.content.decode()
    # The action works on his own rows only (the changelist's queryset).
    changelist = reverse("admin:operations_customer_changelist")
    response = client.post(changelist, {"action": "statements_pdf", "_selected_action": [other.pk]})
    assert response.status_code in (200, 302) and str(other.pk) not in response.get("Location", "")
    assert not Job.objects.filter(kind=CUSTOMER_STATEMENTS).exists()


@pytest.mark.django_db
def test_a_person_without_the_customer_page_is_not_offered_statements(retail: Business) -> None:
    staff = staff_with_perms(retail, ["operations.view_sale", "operations.change_sale"], username="cashier")
    model_admin: Any = admin.site._registry[Customer]  # Unfold's get_actions_list
    request = RequestFactory().get("/")
    request.user = staff
    assert "statements_pdf" not in model_admin.get_actions(request)
    assert model_admin.get_actions_list(request) == []
    assert login(staff).get(_statements_url()).status_code == 403
    reader = staff_with_perms(retail, ["operations.view_customer"], username="reader")
    request.user = reader
    assert "statements_pdf" in model_admin.get_actions(request)


def _run(job: Job) -> Job:
    def retry(countdown: int, exc: BaseException) -> Exception:
        return RuntimeError("no retry expected")

    job_run(job_id=job.pk, retry=retry)
    job.refresh_from_db()
    return job


@pytest.mark.django_db
def test_the_worker_refuses_forged_ids_and_businesses_the_person_does_not_see(
    retail: Business, laundry: Business, customers: dict[str, Customer]
) -> None:
    staff = staff_with_perms(retail, ["operations.view_customer"])
    params = {"date_from": "2026-04-01", "date_to": "2026-06-30"}
    forged = job_launch(
        kind=CUSTOMER_STATEMENTS,
        acting_user=staff,
        business=retail,
        params={**params, "customer_ids": [customers["wafula"].pk, customers["other"].pk]},
    )
    forged = _run(forged)
    assert forged.state == JobState.FAILED and "not customers of" in forged.message and not forged.result_file
    elsewhere = _run(
        job_launch(
            kind=CUSTOMER_STATEMENTS, acting_user=staff, business=laundry, params={**params, "customer_ids": None}
        )
    )
    assert elsewhere.state == JobState.FAILED and "may not print" in elsewhere.message
    mine = _run(
        job_launch(
            kind=CUSTOMER_STATEMENTS, acting_user=staff, business=retail, params={**params, "customer_ids": None}
        )
    )
    assert mine.state == JobState.SUCCEEDED and (mine.rows_done, mine.rows_total) == (2, 2)
    assert len(_pages(mine.result_file.read())) == 2


@pytest.mark.django_db
def test_a_cancelled_job_stops_at_its_next_customer(retail: Business, customers: dict[str, Customer]) -> None:
    job = Job.objects.create(
        kind=CUSTOMER_STATEMENTS,
        business=retail,
        state=JobState.RUNNING,
        params={"date_from": "2026-04-01", "date_to": "2026-06-30", "customer_ids": None},
    )
    ctx = JobContext(job)
    Job.objects.filter(pk=job.pk).update(cancel_requested_at=timezone.now())
    with pytest.raises(JobCancelled):
        customer_statements_job(ctx)
    job.refresh_from_db()
    assert not job.result_file


def test_statements_through_a_real_worker_on_the_reports_queue(
    worker, owner, retail: Business, customers: dict[str, Customer]
) -> None:
    job = job_launch(
        kind=CUSTOMER_STATEMENTS,
        acting_user=owner,
        business=retail,
        params={"date_from": FROM.isoformat(), "date_to": TO.isoformat(), "customer_ids": None},
    )
    job = job_finished(job, timeout=60)
    assert job.state == JobState.SUCCEEDED, job.error
    assert (job.rows_done, job.rows_total, job.progress) == (2, 2, 100)
    pages = _pages(job.result_file.read())
    assert ["Akinyi Shop" in pages[0], "Wafula Traders" in pages[1]] == [True, True]

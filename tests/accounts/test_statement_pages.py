"""The statement pages' period chooser and "Download PDF", the Books PDF actions, and who may launch
which statement PDF (checked on the page and again when the job runs, also on a real worker)."""

from __future__ import annotations

import datetime as dt
import io
import re
from decimal import Decimal
from html import escape

import pytest
from django.contrib.auth.models import Permission
from django.urls import reverse
from pypdf import PdfReader

from accounts.models import Account, AccountType
from accounts.periods import MONTH, period_containing
from accounts.selectors import Column, income_statement_columns
from accounts.services import LineSpec, entry_post
from accounts.statements import STATEMENT_PDF, statement_params
from jobs.models import Job, JobState
from jobs.runner import job_run
from jobs.services import job_launch
from tenancy.models import Membership
from tests.factories.accounts import acct, sale
from tests.factories.jobs import job_finished
from tests.factories.tenancy import login, staff_with_perms

REPORTS = ["trial_balance", "profit_and_loss", "balance_sheet", "cash_flow"]
BOOKS_ACTIONS = [
    "pdf_profit_and_loss_this_month",
    "pdf_profit_and_loss_last_month",
    "pdf_balance_sheet_last_month",
    "pdf_trial_balance_last_month",
    "pdf_cash_flow_last_month",
]


def url(name: str, *args: object) -> str:
    return reverse(f"admin:{name}", args=args)


@pytest.fixture
def reader(water, laundry):  # type: ignore[no-untyped-def]
    """A staff member of the water business who may view reports."""
    return staff_with_perms(water, ["accounts.view_books", "accounts.view_reports", "jobs.view_job"], username="reader")


def _file_name(job: Job) -> str:
    """The result file's name as the handler chose it (storage may add "_abc1234" if the name was taken)."""
    return re.sub(r"_[A-Za-z0-9]{7}(?=\.pdf$)", "", job.result_file.name.rsplit("/", 1)[-1])


def _no_retry(countdown: int, exc: BaseException) -> Exception:
    return RuntimeError("no retry expected")


# --- the period chooser on the pages --------------------------------------------------------------


@pytest.mark.django_db
@pytest.mark.parametrize("report", REPORTS)
def test_pages_show_the_period_and_its_comparison(owner_client, water, laundry, report):
    sale(water, "116.00", day=dt.date(2025, 3, 31))
    sale(laundry, "232.00", day=dt.date(2025, 1, 2))
    query = {"business": "all", "period": "quarter", "anchor": "2025-02-14", "compare": "last_year"}
    body = owner_client.get(url(f"accounts_report_{report}"), query).content.decode()
    assert 'value="2025-01-01"' in body and 'value="2025-03-31"' in body  # the quarter's dates shown
    if report in ("trial_balance", "balance_sheet"):
        assert "As of 31 Mar 2025 (end of Q1 2025), compared with 31 Mar 2024" in body
        assert 'data-balanced="1"' in body
    else:
        assert "Q1 2025: 1 Jan 2025 to 31 Mar 2025 (compared with Q1 2024)" in body
    # One column per business and a Total, then the totals compared.
    assert f">{escape(laundry.name)}</th>" in body and ">Total</th>" in body
    assert 'id="report-pdf"' in body and "csrfmiddlewaretoken" in body


@pytest.mark.django_db
def test_the_page_figures_are_the_selectors(owner_client, water, laundry):
    sale(water, "116.00", day=dt.date(2025, 3, 10))
    sale(water, "232.00", day=dt.date(2025, 2, 10))
    body = owner_client.get(
        url("accounts_report_profit_and_loss"), {"business": water.pk, "period": "month", "anchor": "2025-03-01"}
    ).content.decode()
    march = period_containing(MONTH, dt.date(2025, 3, 1))
    s = income_statement_columns(
        columns=[
            Column("m", (water.pk,), march.date_to, march.date_from),
            Column("f", (water.pk,), dt.date(2025, 2, 28), dt.date(2025, 2, 1)),
        ]
    )
    assert s.net_income == (100, 200)
    assert 'data-total="net_income">100.00' in body and 'data-total="net_income-1">200.00' in body
    assert 'data-total="net_income-2">-100.00' in body  # the change


@pytest.mark.django_db
@pytest.mark.parametrize(
    ("query", "error"),
    [
        ({"period": "custom", "date_from": "2025-03-10", "date_to": "2025-03-01"}, "From must be on or before To."),
        ({"period": "custom", "date_from": "2025-02-30"}, "Enter a valid date."),
        ({"period": "month", "anchor": "tomorrow"}, "Enter a valid date."),
        ({"period": "fortnight"}, "Select a valid choice."),
        ({"compare": "never"}, "Select a valid choice."),
        ({"period": "year", "anchor": "0001-01-01", "compare": "last_year"}, "Choose a date from 1900 to 2999."),
        ({"period": "custom", "date_from": "0001-01-01", "date_to": "0001-01-05"}, "Choose a date from 1900 to 2999."),
    ],
)
def test_bad_filters_are_said_on_the_page(owner_client, water, query, error):
    response = owner_client.get(url("accounts_report_profit_and_loss"), {"business": water.pk, **query})
    assert response.status_code == 200
    body = response.content.decode()
    assert escape(error) in body and 'id="report-pdf"' not in body


# --- Download PDF ---------------------------------------------------------------------------------


@pytest.mark.django_db
def test_download_pdf_launches_a_job_with_the_pages_filters(owner_client, water, laundry):
    data = {"business": "all", "period": "month", "anchor": "2025-03-05", "compare": "previous"}
    response = owner_client.post(url("accounts_report_profit_and_loss_pdf"), data, follow=True)
    job = Job.objects.get()
    assert job.kind == STATEMENT_PDF and job.business is None
    assert job.params == {
        "report": "profit_and_loss",
        "business": "all",
        "period": "month",
        "date_from": "2025-03-01",
        "date_to": "2025-03-31",
        "compare": "previous",
    }
    body = response.content.decode()
    assert f"job #{job.pk}" in body and url("jobs_job_changelist") in body
    assert response.redirect_chain[-1][0].startswith(url("accounts_report_profit_and_loss") + "?business=all")
    assert owner_client.get(url("accounts_report_profit_and_loss_pdf")).status_code == 405


@pytest.mark.django_db
def test_download_pdf_with_bad_dates_launches_nothing(owner_client, water):
    data = {"business": water.pk, "period": "custom", "date_from": "2025-03-10", "date_to": "2025-03-01"}
    response = owner_client.post(url("accounts_report_balance_sheet_pdf"), data, follow=True)
    assert response.status_code == 200 and "No PDF" in response.content.decode()
    assert not Job.objects.exists()


@pytest.mark.django_db
@pytest.mark.parametrize("report", REPORTS)
def test_a_staff_member_cannot_launch_another_businesses_or_the_consolidated_pdf(reader, water, laundry, report):
    client = login(reader)
    pdf = url(f"accounts_report_{report}_pdf")
    assert client.post(pdf, {"business": laundry.pk}).status_code == 403
    assert client.post(pdf, {"business": "all"}).status_code == 403
    assert client.get(url(f"accounts_report_{report}"), {"business": laundry.pk}).status_code == 403
    assert not Job.objects.exists()
    assert client.post(pdf, {"business": water.pk}).status_code == 302
    assert Job.objects.get().business == water
    clerk = staff_with_perms(water, ["accounts.view_books"], username="clerk")
    assert login(clerk).post(pdf, {"business": water.pk}).status_code == 403


@pytest.mark.django_db
def test_the_job_checks_the_rights_again_when_it_runs(reader, water, laundry, owner):
    params = statement_params(
        report="profit_and_loss",
        business=str(laundry.pk),
        period=period_containing(MONTH, dt.date(2025, 3, 1)),
        compare="previous",
    )
    theirs = job_launch(kind=STATEMENT_PDF, acting_user=reader, business=laundry, params=params)
    job_run(job_id=theirs.pk, retry=_no_retry)
    theirs.refresh_from_db()
    assert theirs.state == JobState.FAILED and "may not see these books" in theirs.error
    consolidated = job_launch(kind=STATEMENT_PDF, acting_user=reader, params={**params, "business": "all"})
    job_run(job_id=consolidated.pk, retry=_no_retry)
    consolidated.refresh_from_db()
    assert consolidated.state == JobState.FAILED and "Only the owner" in consolidated.error
    # His own business, but he lost the business (or the permission) while the job waited.
    mine = job_launch(
        kind=STATEMENT_PDF, acting_user=reader, business=water, params={**params, "business": str(water.pk)}
    )
    Membership.objects.filter(user=reader).delete()
    job_run(job_id=mine.pk, retry=_no_retry)
    mine.refresh_from_db()
    assert mine.state == JobState.FAILED and not mine.result_file
    allowed = job_launch(
        kind=STATEMENT_PDF, acting_user=owner, business=water, params={**params, "business": str(water.pk)}
    )
    job_run(job_id=allowed.pk, retry=_no_retry)
    allowed.refresh_from_db()
    assert allowed.state == JobState.SUCCEEDED
    assert _file_name(allowed) == "profit-and-loss-maji-safi-water-2025-03.pdf"
    reader.user_permissions.remove(Permission.objects.get(codename="view_reports"))
    Membership.objects.create(user=reader, business=water)
    again = job_launch(
        kind=STATEMENT_PDF, acting_user=reader, business=water, params={**params, "business": str(water.pk)}
    )
    job_run(job_id=again.pk, retry=_no_retry)
    again.refresh_from_db()
    assert again.state == JobState.FAILED and "may no longer view reports" in again.error


# --- the Books actions ----------------------------------------------------------------------------


@pytest.mark.django_db
def test_books_pdf_actions_launch_one_job_per_business(owner_client, water, laundry):
    last_month = period_containing(MONTH, dt.date.today().replace(day=1) - dt.timedelta(days=1))
    response = owner_client.post(
        url("accounts_books_changelist"),
        {"action": "pdf_balance_sheet_last_month", "_selected_action": [water.pk, laundry.pk]},
        follow=True,
    )
    jobs = list(Job.objects.order_by("business__name"))
    assert [j.business for j in jobs] == [laundry, water]
    assert all(j.params["report"] == "balance_sheet" for j in jobs)
    assert {j.params["date_to"] for j in jobs} == {last_month.date_to.isoformat()}
    assert url("jobs_job_changelist") in response.content.decode()
    owner_client.post(
        url("accounts_books_changelist"),
        {"action": "pdf_consolidated_profit_and_loss_last_month", "_selected_action": [water.pk]},
    )
    consolidated = Job.objects.get(params__business="all")
    assert consolidated.business is None and consolidated.params["report"] == "profit_and_loss"


@pytest.mark.django_db
def test_books_pdf_actions_for_staff(reader, water, laundry):
    client = login(reader)
    page = client.get(url("accounts_books_changelist")).content.decode()
    for name in BOOKS_ACTIONS:
        assert f'value="{name}"' in page, name
    assert 'value="pdf_consolidated_profit_and_loss_last_month"' not in page
    client.post(
        url("accounts_books_changelist"), {"action": "pdf_profit_and_loss_last_month", "_selected_action": [laundry.pk]}
    )
    client.post(
        url("accounts_books_changelist"),
        {"action": "pdf_consolidated_profit_and_loss_last_month", "_selected_action": [water.pk]},
    )
    assert not Job.objects.exists()  # another business's books are not in his list; the consolidated action is not his
    client.post(
        url("accounts_books_changelist"), {"action": "pdf_profit_and_loss_this_month", "_selected_action": [water.pk]}
    )
    assert Job.objects.get().business == water
    viewer = staff_with_perms(water, ["accounts.view_books"], username="viewer")
    page = login(viewer).get(url("accounts_books_changelist")).content.decode()
    assert not any(f'value="{name}"' in page for name in BOOKS_ACTIONS)
    login(viewer).post(
        url("accounts_books_changelist"), {"action": "pdf_profit_and_loss_this_month", "_selected_action": [water.pk]}
    )
    assert Job.objects.count() == 1


# --- on a real worker -----------------------------------------------------------------------------


@pytest.mark.worker
@pytest.mark.django_db(transaction=True)
def test_a_statement_pdf_runs_on_a_worker_of_the_reports_queue(clean_broker, owner_client, water, laundry, reader):
    from tests.celery_support import WorkerProcess

    sale(water, "116.00", day=dt.date(2025, 3, 10))
    sale(laundry, "232.00", day=dt.date(2025, 3, 11))
    worker = WorkerProcess("reports-worker", queues="reports", include_test_tasks=False).start()
    try:
        owner_client.post(
            url("accounts_report_profit_and_loss_pdf"),
            {"business": "all", "period": "month", "anchor": "2025-03-01", "compare": "previous"},
        )
        job = job_finished(Job.objects.get())
        assert job.state == JobState.SUCCEEDED, job.error
        assert _file_name(job) == "profit-and-loss-all-businesses-consolidated-2025-03.pdf"
        download = owner_client.get(url("jobs_job_download", job.pk))
        pdf = b"".join(download.streaming_content)  # type: ignore[attr-defined]
        text = "\n".join(page.extract_text() for page in PdfReader(io.BytesIO(pdf)).pages)
        assert "Total income\n200.00\n100.00\n300.00" in text  # laundry, water, total
        assert "Generated at" in text and "by owner" in text
        # A staff member's job for another business is refused on the worker.
        params = statement_params(
            report="trial_balance",
            business=str(laundry.pk),
            period=period_containing(MONTH, dt.date(2025, 3, 1)),
            compare="none",
        )
        refused = job_finished(job_launch(kind=STATEMENT_PDF, acting_user=reader, business=laundry, params=params))
        assert refused.state == JobState.FAILED and "may not see these books" in refused.error
        assert not refused.result_file
    finally:
        worker.stop()


@pytest.mark.django_db
def test_the_owner_marks_an_account_intercompany_in_the_chart_and_the_statement_marks_it(owner_client, water):
    loan = Account.objects.create(business=water, code="1400", name="Due from the laundry", type=AccountType.ASSET)
    data = {"code": "1400", "name": "Due from the laundry", "type": "asset", "parent": "", "is_active": "on"}
    response = owner_client.post(url("accounts_account_change", loan.pk), {**data, "intercompany": "on"})
    assert response.status_code == 302
    loan.refresh_from_db()
    assert loan.intercompany
    entry_post(
        business=water,
        entry_date=dt.date(2025, 3, 3),
        lines=[
            LineSpec(account=loan, debit=Decimal("40.00")),
            LineSpec(account=acct(water, "cash"), credit=Decimal("40.00")),
        ],
        memo="lent to the laundry",
        source_type="manual",
        idempotency_key="test:loan",
    )
    body = owner_client.get(
        url("accounts_report_balance_sheet"), {"business": water.pk, "period": "month", "anchor": "2025-03-01"}
    ).content.decode()
    assert 'data-intercompany="1"' in body and "Due from the laundry *" in body
    assert 'data-note="intercompany"' in body
    # Not marked: the note is not there either.
    owner_client.post(url("accounts_account_change", loan.pk), data)
    body = owner_client.get(
        url("accounts_report_balance_sheet"), {"business": water.pk, "period": "month", "anchor": "2025-03-01"}
    ).content.decode()
    assert "Due from the laundry" in body and 'data-note="intercompany"' not in body

"""The dashboard, the owner's morning page: its figures equal independent sums over the journal
lines and the sales, each person sees only his businesses (numbers, chart data and links), the
business selector refuses what he may not see, the queries do not grow with days or businesses,
and the charts' JSON is what Chart.js needs."""

from __future__ import annotations

import datetime as dt
import json
import random
import re
from collections import defaultdict
from decimal import Decimal
from html import unescape
from typing import Any

import pytest
from django.contrib.auth.models import Group, User
from django.core.management import call_command
from django.db import connection, transaction
from django.db.models import F, Q, Sum
from django.test import Client
from django.test.utils import CaptureQueriesContext
from django.urls import reverse
from django.utils import timezone
from django.utils.html import escape

from accounts.models import JournalLine
from accounts.selectors import COST_OF_SALES_ROLES, income_statement
from accounts.services import chart_ensure_default
from backoffice.models import Alert, AlertCheck, AlertRule, Backup, BackupState, VerifyState
from integrations.mpesa.models import InboxMessage, Payment, PaymentStatus
from jobs.models import Job, JobState
from operations.management.commands.seed_demo import SEEDERS
from operations.models import ClosingStatus, DayClosing, Item, LaundryOrderLine, OrderStatus, SaleLine, SaleStatus
from operations.selectors import unclosed_days
from operations.services.postings import chart_operations_ensure
from operations.services.sales import sale_refund
from tenancy.models import Business, Membership
from tests.factories.accounts import post, sale
from tests.factories.mpesa import TillFactory, unallocated_payment
from tests.factories.tenancy import UserFactory, login, staff_with_perms

pytestmark = pytest.mark.django_db

D = Decimal
ZERO = D("0.00")
INDEX = "admin:index"
TAKINGS_SOURCES = ("sale", "mpesa", "payment")


# --------------------------------------------------------------------------- helpers


def page_charts(body: str) -> dict[str, dict[str, Any]]:
    """Every chart canvas of the page by its name (the class given to Unfold's component): type, data, options."""
    charts = {}
    pattern = r'<div class="relative w-full dash-chart-([\w-]+)">\s*<canvas class="chart" ([^>]*)>'
    for name, attrs in re.findall(pattern, body):
        values = {k: unescape(v) for k, v in re.findall(r'data-(\w+)="([^"]*)"', attrs)}
        charts[name] = {
            "type": values["type"],
            "data": json.loads(values["value"]),
            "options": json.loads(values["options"]),
        }
    return charts


def series(chart: dict[str, Any]) -> dict[str, list[Decimal]]:
    """A chart's datasets as {label: [Decimal per label]} (the values are exact decimal strings)."""
    return {d["label"]: [D(v) for v in d["data"]] for d in chart["data"]["datasets"]}


def hrefs(body: str) -> set[str]:
    return {unescape(h) for h in re.findall(r'href="([^"]*)"', body)}


def window(today: dt.date) -> tuple[list[dt.date], dt.date]:
    days = [today - dt.timedelta(days=29 - n) for n in range(30)]
    return days, today - dt.timedelta(days=today.weekday())


def ledger_takings(days: list[dt.date]) -> dict[tuple[int, dt.date], dict[str, Decimal]]:
    """Per (business, day): cash and M-Pesa received, summed from the journal lines with the ORM
    (sales, M-Pesa receipts, payments, and reversals of those)."""
    lines = (
        JournalLine.objects.filter(
            entry__entry_date__range=(days[0], days[-1]), account__role__in=["cash", "mpesa_clearing"]
        )
        .filter(
            Q(entry__source_type__in=TAKINGS_SOURCES)
            | Q(entry__source_type="reversal", entry__reverses__source_type__in=TAKINGS_SOURCES)
        )
        .values("entry__business", "entry__entry_date", "account__role")
        .annotate(net=Sum("debit") - Sum("credit"))
    )
    result: dict[tuple[int, dt.date], dict[str, Decimal]] = defaultdict(lambda: {"cash": ZERO, "mpesa_clearing": ZERO})
    for row in lines:
        result[(row["entry__business"], row["entry__entry_date"])][row["account__role"]] = row["net"]
    return result


def ledger_pnl(days: list[dt.date]) -> dict[tuple[int, dt.date], dict[str, Decimal]]:
    """Per (business, day): income, cost of sales and other expenses, from the journal lines."""
    lines = (
        JournalLine.objects.filter(
            entry__entry_date__range=(days[0], days[-1]), account__type__in=["income", "expense"]
        )
        .values("entry__business", "entry__entry_date", "account__type", "account__role")
        .annotate(debit=Sum("debit"), credit=Sum("credit"))
    )
    result: dict[tuple[int, dt.date], dict[str, Decimal]] = defaultdict(
        lambda: {"income": ZERO, "cost": ZERO, "expenses": ZERO}
    )
    for row in lines:
        figures = result[(row["entry__business"], row["entry__entry_date"])]
        if row["account__type"] == "income":
            figures["income"] += row["credit"] - row["debit"]
        elif row["account__role"] in COST_OF_SALES_ROLES:
            figures["cost"] += row["debit"] - row["credit"]
        else:
            figures["expenses"] += row["debit"] - row["credit"]
    return result


def sold_items(business_ids: list[int], days: list[dt.date]) -> dict[int, Decimal]:
    """Per item: what posted sales and collected laundry brought in over `days` (deposits left out)."""
    value: dict[int, Decimal] = defaultdict(lambda: ZERO)
    for row in (
        SaleLine.objects.filter(
            sale__business__in=business_ids, sale__sale_date__range=(days[0], days[-1]), sale__status=SaleStatus.POSTED
        )
        .exclude(item__kind="deposit")
        .values("item")
        .annotate(v=Sum("amount"))
    ):
        value[row["item"]] += row["v"]
    for row in (
        LaundryOrderLine.objects.filter(
            order__business__in=business_ids,
            order__collected_date__range=(days[0], days[-1]),
            order__status=OrderStatus.COLLECTED,
        )
        .values("item")
        .annotate(v=Sum("amount"))
    ):
        value[row["item"]] += row["v"]
    return value


def books(*businesses: Business) -> None:
    for business in businesses:
        chart_ensure_default(business=business)
        chart_operations_ensure(business=business)


# --------------------------------------------------------------------------- seeded data


@pytest.fixture
def seeded(db: None) -> dict[str, Business]:
    """The demo (owner, three businesses, staff maji/fold/duka): 6 closed days (the week so far is
    at most 7 days), then today's activity through the same services, left open, with a sale of
    an earlier day refunded today."""
    call_command("seed_demo", "--days", "6", verbosity=0)
    today = timezone.localdate()
    rng = random.Random(13)
    businesses = {b.kind: b for b in Business.objects.all()}
    for business in businesses.values():
        seeder = SEEDERS[business.kind](business, rng)
        with transaction.atomic():
            seeder.setup(today)
            seeder.day(today)
    old = (
        SaleLine.objects.filter(sale__business=businesses["water"], sale__status=SaleStatus.POSTED)
        .filter(sale__payment_method="cash", sale__sale_date__lt=today)
        .order_by("sale__sale_date")
        .first()
    )
    assert old is not None
    sale_refund(sale=old.sale, refund_date=today, reason="test")
    return businesses


def figures_of(row: Any) -> dict[str, Decimal]:
    """The figures of a business row (a dict) or of the total (a Figures)."""
    f = row["figures"] if isinstance(row, dict) else row
    return {
        "today_cash": f.takings_today.cash,
        "today_mpesa": f.takings_today.mpesa,
        "week_total": f.takings_week.total,
        "today_income": f.trading_today.income,
        "week_gross": f.trading_week.gross_profit,
        "week_expenses": f.trading_week.expenses,
    }


def expected_figures(ids: list[int], today: dt.date, week_start: dt.date, takings: Any, pnl: Any) -> dict[str, Any]:
    week = [today - dt.timedelta(days=n) for n in range((today - week_start).days + 1)]
    return {
        "today_cash": sum((takings[(b, today)]["cash"] for b in ids), ZERO),
        "today_mpesa": sum((takings[(b, today)]["mpesa_clearing"] for b in ids), ZERO),
        "week_total": sum((sum(takings[(b, d)].values(), ZERO) for b in ids for d in week), ZERO),
        "today_income": sum((pnl[(b, today)]["income"] for b in ids), ZERO),
        "week_gross": sum((pnl[(b, d)]["income"] - pnl[(b, d)]["cost"] for b in ids for d in week), ZERO),
        "week_expenses": sum((pnl[(b, d)]["expenses"] for b in ids for d in week), ZERO),
    }


@pytest.mark.slow
def test_figures_and_charts_equal_independent_sums_of_the_ledger_and_the_sales(
    seeded: dict[str, Business], owner_client: Client
) -> None:
    today = timezone.localdate()
    days, week_start = window(today)
    takings, pnl = ledger_takings(days), ledger_pnl(days)
    businesses = sorted(seeded.values(), key=lambda b: b.name)
    ids = [b.pk for b in businesses]
    assert any(takings[(b, today)]["cash"] for b in ids) and any(pnl[(b, today)]["income"] for b in ids)

    page = owner_client.get(reverse(INDEX))

    assert page.status_code == 200
    rows = {row["business"].pk: row for row in page.context["business_rows"]}
    assert list(rows) == ids
    for b in ids:
        assert figures_of(rows[b]) == expected_figures([b], today, week_start, takings, pnl), b
    assert figures_of(page.context["total_figures"]) == expected_figures(ids, today, week_start, takings, pnl)
    total_today = sum((sum(takings[(b, today)].values(), ZERO) for b in ids), ZERO)
    assert page.context["all_businesses"]["takings"] == total_today
    body = page.content.decode()
    assert f"KES {total_today:,.2f}" in body

    charts = page_charts(body)
    assert set(charts) == {"takings", "payment-mix", "profit", "top-items"}
    per_business = series(charts["takings"])
    assert list(per_business) == [b.name for b in businesses]
    for business in businesses:
        assert per_business[business.name] == [sum(takings[(business.pk, d)].values(), ZERO) for d in days]
    mix = series(charts["payment-mix"])
    assert mix["Cash"] == [sum((takings[(b, d)]["cash"] for b in ids), ZERO) for d in days]
    assert mix["M-Pesa"] == [sum((takings[(b, d)]["mpesa_clearing"] for b in ids), ZERO) for d in days]
    profit = series(charts["profit"])
    assert profit["Sales (net of VAT)"] == [sum((pnl[(b, d)]["income"] for b in ids), ZERO) for d in days]
    assert profit["Gross profit"] == [
        sum((pnl[(b, d)]["income"] - pnl[(b, d)]["cost"] for b in ids), ZERO) for d in days
    ]
    # The 30 days of sales equal the P&L of the same days (the daily totals agree with the lines).
    assert (
        sum(profit["Sales (net of VAT)"], ZERO)
        == income_statement(business_ids=None, date_from=days[0], date_to=today).total_income
    )

    sold = sold_items(ids, days)
    names = dict(Item.objects.filter(pk__in=sold).values_list("pk", "name"))
    top = sorted(sold.items(), key=lambda kv: (-kv[1], names[kv[0]], kv[0]))[:10]
    assert [(i.item_id, i.value) for i in page.context["top_items"]] == top
    assert series(charts["top-items"])["Value, VAT included"] == [value for _, value in top]


@pytest.mark.slow
def test_staff_see_only_their_business_in_numbers_chart_data_and_links(seeded: dict[str, Business]) -> None:
    """maji (the demo's water staff, in the Business staff group) against the demo's other businesses."""
    water, others = seeded["water"], [b for b in seeded.values() if b.kind != "water"]
    today = timezone.localdate()
    days, week_start = window(today)
    takings = ledger_takings(days)
    Job.objects.create(kind="operations.export_businesses", business=water, state=JobState.FAILED)
    for other in others:
        Job.objects.create(kind="operations.export_businesses", business=other, state=JobState.FAILED)
    client = Client()
    client.force_login(User.objects.get(username="maji"))
    page = client.get(reverse(INDEX))

    assert page.status_code == 200
    body = page.content.decode()
    assert [row["business"] for row in page.context["business_rows"]] == [water]
    assert page.context["business_rows"][0]["figures"].takings_week.total == sum(
        (sum(takings[(water.pk, d)].values(), ZERO) for d in days if d >= week_start), ZERO
    )
    assert "all_businesses" not in page.context and page.context["total_figures"] is None
    for other in others:
        assert other.name not in body
        assert not [h for h in hrefs(body) if f"business__id__exact={other.pk}" in h or f"business={other.pk}" in h]
    # Chart data: his business only, whatever the others sold.
    charts = page_charts(body)
    assert list(series(charts["takings"])) == [water.name]
    assert series(charts["takings"])[water.name] == [sum(takings[(water.pk, d)].values(), ZERO) for d in days]
    assert {i.business_id for i in page.context["top_items"]} == {water.pk}
    assert (
        series(charts["top-items"])["Value, VAT included"]
        == sorted(sold_items([water.pk], days).values(), reverse=True)[:10]
    )
    # No P&L without accounts.view_reports (the right of the P&L pages): no profit figure, no profit chart.
    assert "profit" not in charts and "Gross profit" not in body
    # His failed job is linked (he may view jobs), filtered to his business.
    jobs = reverse("admin:jobs_job_changelist")
    assert f"{jobs}?business__id__exact={water.pk}&state__exact=failed" in hrefs(body)
    # Asking for another business's charts is refused, his own is fine.
    for other in others:
        assert client.get(reverse(INDEX), {"business": other.pk}).status_code == 403
    assert client.get(reverse(INDEX), {"business": water.pk}).status_code == 200


@pytest.mark.slow
def test_the_queries_do_not_grow_with_days_or_businesses(seeded: dict[str, Business]) -> None:
    """The same number of queries for the owner on an empty business and on three with ten days of
    activity, open alerts, a backup, failed jobs and payments in suspense (no per-day or per-business loop)."""
    owner, maji = User.objects.get(username="owner"), User.objects.get(username="maji")
    water = seeded["water"]
    rule = AlertRule.objects.create(name="Deep queue", check_kind=AlertCheck.QUEUE_DEPTH, threshold=1)
    rule2 = AlertRule.objects.create(name="Disk", check_kind=AlertCheck.DISK_FREE, threshold=10)
    now = timezone.now()
    for r in (rule, rule2):
        Alert.objects.create(rule=r, message=f"{r.name} fired", first_seen_at=now, last_seen_at=now)
    Backup.objects.create(
        state=BackupState.SUCCEEDED, started_at=now, finished_at=now, verify_state=VerifyState.VERIFIED
    )
    for business in seeded.values():
        Job.objects.create(kind="operations.export_businesses", business=business, state=JobState.FAILED)
        unallocated_payment(TillFactory.create(business=business), f"TQC{business.pk:07d}")
    assert DayClosing.objects.filter(business=water).exists()  # the seeded closings

    def count(user: Any, **query: Any) -> int:
        client = Client()
        client.force_login(user)
        client.get(reverse(INDEX), query)  # sessions, permissions cached: measure a second view
        with CaptureQueriesContext(connection) as queries:
            assert client.get(reverse(INDEX), query).status_code == 200
        return len(queries)

    big = {"owner": count(owner), "owner one business": count(owner, business=water.pk), "staff": count(maji)}
    # A staff member of one new business with nothing in it, beside the seeded ones.
    empty = Business.objects.create(name="Empty", kind="laundry")
    books(empty)
    newcomer = UserFactory.create(username="newcomer")
    newcomer.groups.add(Group.objects.get(name="Business staff"))
    Membership.objects.create(user=newcomer, business=empty)

    assert big["owner"] == big["owner one business"]
    assert count(newcomer) == big["staff"]
    assert big["owner"] <= 20 and big["staff"] <= 20


# --------------------------------------------------------------------------- small data


@pytest.fixture
def three(water: Business, laundry: Business, retail: Business) -> list[Business]:
    books(water, laundry, retail)
    return [water, laundry, retail]


def test_the_query_count_does_not_depend_on_the_number_of_days_or_businesses(
    water: Business, owner_client: Client
) -> None:
    """One empty business, then four with 30 days of sales and expenses: the same queries."""
    books(water)
    today = timezone.localdate()

    def count() -> int:
        owner_client.get(reverse(INDEX))
        with CaptureQueriesContext(connection) as queries:
            assert owner_client.get(reverse(INDEX)).status_code == 200
        return len(queries)

    before = count()
    businesses = [water] + [Business.objects.create(name=f"Shop {n}", kind="retail_lpg") for n in range(3)]
    books(*businesses[1:])
    for n in range(30):
        for business in businesses:
            sale(business, f"{100 + n}.00", day=today - dt.timedelta(days=n))
            post(
                business,
                [("expense_rent", "10.00", 0), ("cash", 0, "10.00")],
                day=today - dt.timedelta(days=n),
                source_type="expense",
            )
    after = count()
    assert after == before
    assert after <= 20


def test_the_business_selector_draws_the_charts_of_one_business_and_refuses_the_rest(
    three: list[Business], owner_client: Client
) -> None:
    water, laundry, retail = three
    today = timezone.localdate()
    sale(water, "116.00")
    sale(laundry, "232.00", day=today - dt.timedelta(days=3))
    sale(retail, "58.00", via="mpesa_clearing", source_type="mpesa")

    page = owner_client.get(reverse(INDEX), {"business": laundry.pk})

    assert page.status_code == 200
    assert page.context["selected_business"] == laundry
    charts = page_charts(page.content.decode())
    assert list(series(charts["takings"])) == [laundry.name]
    assert sum(series(charts["takings"])[laundry.name]) == D("232.00")
    assert sum(series(charts["payment-mix"])["M-Pesa"]) == ZERO
    # The cards still show every business: the selector is for the charts.
    assert len(page.context["business_rows"]) == 3
    tabs = {t["title"]: t for t in page.context["business_tabs"]}
    assert tabs[laundry.name]["active"] and not tabs["All businesses"]["active"]

    everything = owner_client.get(reverse(INDEX), {"business": "all"})
    assert sum(sum(v) for v in series(page_charts(everything.content.decode())["takings"]).values()) == D("406.00")
    assert owner_client.get(reverse(INDEX), {"business": ""}).status_code == 200
    for bad in ("abc", "999999", "-1", f"{water.pk},{laundry.pk}", f"0{water.pk}", "1e3", "%00", "None"):
        assert owner_client.get(reverse(INDEX), {"business": bad}).status_code == 403, bad


def test_a_staff_member_of_two_businesses_sees_those_two_and_their_total(three: list[Business]) -> None:
    water, laundry, retail = three
    sale(water, "116.00")
    sale(laundry, "232.00")
    sale(retail, "580.00")
    staff = staff_with_perms(water, ["tenancy.view_business"], username="two_shops")
    Membership.objects.create(user=staff, business=laundry)
    client = login(staff)

    page = client.get(reverse(INDEX))

    body = page.content.decode()
    assert [row["business"] for row in page.context["business_rows"]] == [laundry, water]
    assert page.context["total_figures"].takings_today.total == D("348.00")
    assert "Your businesses" in body and retail.name not in body
    assert [t["title"] for t in page.context["business_tabs"]] == ["All businesses", laundry.name, water.name]
    assert set(series(page_charts(body)["takings"])) == {water.name, laundry.name}
    assert client.get(reverse(INDEX), {"business": retail.pk}).status_code == 403
    one = client.get(reverse(INDEX), {"business": water.pk})
    assert list(series(page_charts(one.content.decode())["takings"])) == [water.name]


def test_needs_a_person_links_lead_to_the_rows_to_handle(three: list[Business], owner_client: Client) -> None:
    water, laundry, _ = three
    till = TillFactory.create(business=water)
    parked = unallocated_payment(till, "TQN0000001", D("750.00"))
    failed = Job.objects.create(kind="operations.export_businesses", business=water, state=JobState.FAILED)
    Job.objects.create(kind="operations.export_businesses", business=laundry, state=JobState.SUCCEEDED)
    InboxMessage.objects.create(till=till, kind="c2b_confirmation", daraja_id="TQN0000002", state="attention")

    page = owner_client.get(reverse(INDEX))

    body = page.content.decode()
    row = next(r for r in page.context["business_rows"] if r["business"] == water)
    needs = {n["key"]: n for n in row["needs"]}
    assert needs["payments-in-suspense"]["count"] == 1 and needs["payments-in-suspense"]["amount"] == D("750.00")
    assert "1 M-Pesa payment in suspense to allocate" in body and "KES 750.00" in body
    assert needs["failed-jobs"]["count"] == 1 and needs["payments-waiting"]["count"] == 1
    assert page.context["all_businesses"]["suspense_count"] == 1
    suspense = owner_client.get(needs["payments-in-suspense"]["url"])
    assert [p.pk for p in suspense.context["cl"].result_list] == [parked.pk]
    jobs = owner_client.get(needs["failed-jobs"]["url"])
    assert [j.pk for j in jobs.context["cl"].result_list] == [failed.pk]
    inbox = owner_client.get(needs["payments-waiting"]["url"])
    assert [m.daraja_id for m in inbox.context["cl"].result_list] == ["TQN0000002"]
    for need in needs.values():
        if need["count"]:
            assert f'href="{escape(need["url"])}"' in body
    # Laundry has nothing waiting: said so, no link.
    laundry_row = next(r for r in page.context["business_rows"] if r["business"] == laundry)
    assert laundry_row["needs_count"] == 0
    assert f'data-business="{laundry.pk}"' in body and "Nothing waits for a person." in body


def test_days_not_closed_count_the_ended_days_since_the_last_closing(
    three: list[Business], owner_client: Client
) -> None:
    water, laundry, retail = three
    today = timezone.localdate()
    water.closing_time = dt.time(21, 0)
    water.save()
    DayClosing.objects.create(business=water, day=today - dt.timedelta(days=4), status=ClosingStatus.CLOSED)
    DayClosing.objects.create(business=water, day=today - dt.timedelta(days=2), status=ClosingStatus.PENDING)
    retail.is_active = False
    retail.save()
    nairobi = timezone.get_current_timezone()
    before_closing = dt.datetime.combine(today, dt.time(20, 59), tzinfo=nairobi)
    after_closing = dt.datetime.combine(today, dt.time(21, 0), tzinfo=nairobi)

    early = unclosed_days(businesses=[water, laundry, retail], now=before_closing)
    late = unclosed_days(businesses=[water, laundry, retail], now=after_closing)

    # Closed up to 4 days ago: 3, 2 (a closing waiting to run is not closed) and yesterday; today once 21:00 has passed.
    assert (early[water.pk].count, early[water.pk].first_day) == (3, today - dt.timedelta(days=3))
    assert late[water.pk].count == 4 and late[water.pk].last_closed == today - dt.timedelta(days=4)
    # Never closed: counted from the day the business was created (today): nothing ended before 21:00.
    assert early[laundry.pk].count == 0 and late[laundry.pk].count == 1
    assert late[retail.pk].count == 0  # inactive

    # On the page (its own clock): the same rule, and the link to the closings of the business.
    before = timezone.localtime()
    page = owner_client.get(reverse(INDEX))
    after = timezone.localtime()
    row = next(r for r in page.context["business_rows"] if r["business"] == water)
    possible = {3 + (t.time() >= dt.time(21, 0)) for t in (before, after)}
    assert row["days_not_closed"] in possible
    need = next(n for n in row["needs"] if n["key"] == "days-not-closed")
    assert need["url"] == f"{reverse('admin:operations_dayclosing_changelist')}?business__id__exact={water.pk}"
    assert owner_client.get(need["url"]).status_code == 200


def test_a_view_only_person_gets_the_figures_and_only_the_links_he_may_open(three: list[Business]) -> None:
    water, laundry, _ = three
    sale(water, "116.00")
    unallocated_payment(TillFactory.create(business=water), "TQV0000001")
    Job.objects.create(kind="operations.export_businesses", business=water, state=JobState.FAILED)
    DayClosing.objects.create(
        business=laundry, day=timezone.localdate() - dt.timedelta(days=3), status=ClosingStatus.CLOSED
    )
    viewer = UserFactory.create(
        username="auditor",
        perms=[
            "tenancy.view_all_businesses",
            "accounts.view_reports",
            "operations.view_sale",
            "integrations.view_unallocatedpayment",
            "jobs.view_job",
        ],
    )
    client = login(viewer)

    page = client.get(reverse(INDEX))

    assert page.status_code == 200
    body = page.content.decode()
    assert "Gross profit" in body and "all_businesses" in page.context
    links = {n["key"]: n["url"] for r in page.context["business_rows"] for n in r["needs"] if n["count"]}
    assert links["payments-in-suspense"] and links["failed-jobs"]
    assert links["days-not-closed"] == ""  # he may not view the closings: counted, not linked
    assert "2 days not closed" in body or "3 days not closed" in body
    for url in {h for h in hrefs(body) if "?" in h and "/admin/" in h and "business=" not in h}:
        assert client.get(url).status_code == 200, url
    # The system state is the owner's: a backup link only for whoever may view backups.
    assert reverse("admin:operations_dayclosing_changelist") not in body


def test_a_staff_member_with_the_least_rights_sees_his_takings_and_nothing_more(three: list[Business]) -> None:
    water, laundry, _ = three
    sale(water, "116.00")
    sale(laundry, "999.00")
    unallocated_payment(TillFactory.create(business=water), "TQL0000001")
    staff = staff_with_perms(water, ["tenancy.view_business"], username="least")

    page = login(staff).get(reverse(INDEX))

    body = page.content.decode()
    # 116.00 in the drawer and the 250.00 M-Pesa payment (in suspense, but received into the till).
    assert page.context["business_rows"][0]["takings"].total == D("366.00")
    assert "1 M-Pesa payment in suspense to allocate" in body
    assert not [h for h in hrefs(body) if "?" in h and "/admin/" in h]  # no page he could open is linked
    assert "Gross profit" not in body and "Top items" not in body and "profit" not in page_charts(body)
    assert laundry.name not in body and "999.00" not in body


def test_the_owner_sees_open_alerts_and_the_last_backup_and_staff_do_not(
    three: list[Business], owner_client: Client
) -> None:
    water = three[0]
    now = timezone.now()
    assert "none made yet" in owner_client.get(reverse(INDEX)).content.decode()

    rule = AlertRule.objects.create(name="Deep queue", check_kind=AlertCheck.QUEUE_DEPTH, threshold=1)
    AlertRule.objects.create(name="Old", check_kind=AlertCheck.DISK_FREE, threshold=10)
    Alert.objects.create(rule=rule, message="Queue reports holds 73 messages", first_seen_at=now, last_seen_at=now)
    Alert.objects.create(
        rule=AlertRule.objects.get(name="Old"),
        message="Resolved long ago",
        first_seen_at=now,
        last_seen_at=now,
        resolved_at=now,
    )
    Backup.objects.create(
        state=BackupState.SUCCEEDED,
        started_at=now - dt.timedelta(hours=30, minutes=5),
        finished_at=now - dt.timedelta(hours=30),
        verify_state=VerifyState.VERIFIED,
    )
    page = owner_client.get(reverse(INDEX))
    body = page.content.decode()
    assert [a.message for a in page.context["all_businesses"]["alerts"]] == ["Queue reports holds 73 messages"]
    assert "1 open alert" in body and "Resolved long ago" not in body
    backup = page.context["all_businesses"]["backup"]
    assert not backup.ok and backup.problem == "older than 26 hours"

    Backup.objects.create(
        state=BackupState.SUCCEEDED,
        started_at=now - dt.timedelta(hours=2),
        finished_at=now - dt.timedelta(hours=1),
        verify_state=VerifyState.VERIFIED,
        size_bytes=2_000_000,
    )
    backup = owner_client.get(reverse(INDEX)).context["all_businesses"]["backup"]
    assert backup.ok and backup.problem == "" and 0.9 < backup.age_hours < 1.2

    Backup.objects.create(state=BackupState.FAILED, started_at=now, finished_at=now, error="pg_dump: disk full")
    backup = owner_client.get(reverse(INDEX)).context["all_businesses"]["backup"]
    assert not backup.ok and backup.problem == "the last backup failed"
    Backup.objects.create(state=BackupState.SUCCEEDED, started_at=now, finished_at=now, verify_state=VerifyState.FAILED)
    assert owner_client.get(reverse(INDEX)).context["all_businesses"]["backup"].problem == "the restore check failed"

    staff_page = login(staff_with_perms(water, ["tenancy.view_business"], username="no_system")).get(reverse(INDEX))
    staff_body = staff_page.content.decode()
    assert "Last backup" not in staff_body and "Queue reports" not in staff_body and "open alert" not in staff_body


def test_the_page_holds_no_django_app_list(three: list[Business], owner_client: Client) -> None:
    body = owner_client.get(reverse(INDEX)).content.decode()
    assert "Models in the" not in body and 'class="app-auth module' not in body
    assert "Recent actions" not in body
    assert reverse("admin:jobs_job_changelist") in body  # the sidebar still navigates


def test_the_chart_json_is_what_chart_js_reads(three: list[Business], owner_client: Client) -> None:
    water, laundry, _ = three
    sale(water, "116.00")
    sale(laundry, "58.00", via="mpesa_clearing", source_type="mpesa")

    body = owner_client.get(reverse(INDEX)).content.decode()

    charts = page_charts(body)
    assert set(charts) == {"takings", "payment-mix", "profit"}  # no top items: nothing sold through sales
    assert "Nothing sold in the last 30 days." in body
    for name, chart in charts.items():
        data, options = chart["data"], chart["options"]
        assert chart["type"] in ("bar", "line"), name
        assert len(data["labels"]) == 30, name
        for dataset in data["datasets"]:
            assert len(dataset["data"]) == 30 and all(isinstance(v, str) for v in dataset["data"]), name
            assert all(D(v) == D(v).quantize(D("0.01")) for v in dataset["data"]), name
        # Unfold's script sets the grid colour of both axes when the theme changes: they must exist.
        assert "grid" in options["scales"]["x"] and "grid" in options["scales"]["y"], name
    assert charts["takings"]["options"]["scales"]["y"]["stacked"] is True
    assert charts["takings"]["data"]["labels"][-1] == f"{timezone.localdate().day} {timezone.localdate():%b}"


def test_an_item_name_cannot_break_out_of_the_chart_attribute(three: list[Business], owner_client: Client) -> None:
    """Item names are typed by staff: one made of markup stays text inside the JSON of the chart."""
    from operations.services.sales import LineInput, sale_create

    water = three[0]
    evil = Item.objects.create(
        business=water, name='"><script>alert(1)</script>', kind="service", price=D("10.00"), sales_role="sales_refill"
    )
    sale_create(business=water, sale_date=timezone.localdate(), lines=[LineInput(evil, D(1))])

    body = owner_client.get(reverse(INDEX)).content.decode()

    assert "<script>alert(1)</script>" not in body
    assert page_charts(body)["top-items"]["data"]["labels"][0] == [evil.name, water.name]


def test_payments_in_suspense_count_each_payment_once_with_what_still_waits(
    three: list[Business], owner_client: Client
) -> None:
    water = three[0]
    till = TillFactory.create(business=water)
    unallocated_payment(till, "TQS0000001", D("100.00"))
    unallocated_payment(till, "TQS0000002", D("40.00"))
    done = unallocated_payment(till, "TQS0000003", D("60.00"))
    Payment.objects.filter(pk=done.pk).update(status=PaymentStatus.ALLOCATED, unallocated_amount=0)
    Payment.objects.filter(receipt="TQS0000002").update(unallocated_amount=F("amount") - D("15.00"))

    page = owner_client.get(reverse(INDEX))

    row = next(r for r in page.context["business_rows"] if r["business"] == water)
    assert (row["suspense_count"], row["suspense_amount"]) == (2, D("125.00"))
    assert page.context["all_businesses"]["suspense_amount"] == D("125.00")


def test_a_staff_member_with_no_business_gets_an_empty_page(three: list[Business]) -> None:
    nobody = UserFactory.create(username="nobody", perms=["accounts.view_reports", "operations.view_sale"])
    client = login(nobody)

    page = client.get(reverse(INDEX))

    assert page.status_code == 200
    assert page.context["business_rows"] == [] and page_charts(page.content.decode()) == {}
    assert "You are not assigned to any business yet." in page.content.decode()
    assert client.get(reverse(INDEX), {"business": three[0].pk}).status_code == 403

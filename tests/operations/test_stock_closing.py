"""Stock quantity and value through purchases, sales and counts; stock as of a date; end-of-day closing."""

from __future__ import annotations

import datetime as dt

import pytest

from accounts.exceptions import PeriodLocked
from accounts.models import Books
from accounts.selectors import account_for_role
from accounts.services import LineSpec, entry_post
from operations.exceptions import DayClosed, InvalidState
from operations.models import ClosingStatus, DayClosing, PaidFrom, StockLevel
from operations.selectors import stock_value_as_of
from operations.services.closing import closing_run
from operations.services.purchases import expense_create, purchase_create
from operations.services.sales import LineInput, sale_create
from operations.services.stock import stock_count_create
from tenancy.models import Business
from tests.factories.operations import ItemFactory, SupplierFactory
from tests.operations.ledger import D, lines_by_role, role_balance, stock_total_value

pytestmark = pytest.mark.django_db


def test_weighted_average_cost_through_purchases_sales_and_a_count(retail: Business, today: dt.date) -> None:
    day1, day2, day3 = today - dt.timedelta(days=2), today - dt.timedelta(days=1), today
    oil = ItemFactory.create(business=retail, name="Cooking oil 1 L", price=D("350.00"), sales_role="sales_shop")
    supplier = SupplierFactory.create(business=retail)
    purchase_create(business=retail, supplier=supplier, purchase_date=day1, lines=[(oil, D("10"), D("2000.00"))])
    purchase_create(business=retail, supplier=supplier, purchase_date=day1, lines=[(oil, D("20"), D("5000.00"))])
    # average (2000 + 5000) / 30 = 233.333...: 3 cost round(700.00)
    sale = sale_create(business=retail, sale_date=day2, lines=[LineInput(oil, D("3"))])
    assert sale.cost_total == D("700.00")
    level = StockLevel.objects.get(item=oil)
    assert (level.quantity, level.value) == (D("27"), D("6300.00"))
    # a count finds 25: 2 missing at the average (6300 / 27 * 2 = 466.67) go to stock variance
    count = stock_count_create(business=retail, count_date=day3, counted={oil: D("25")})
    assert lines_by_role(count.entry) == {"stock_variance": (D("466.67"), 0), "inventory": (0, D("466.67"))}
    line = count.lines.get()
    assert (line.expected_quantity, line.variance_quantity, line.variance_value) == (D("27"), D("-2"), D("-466.67"))
    # a count finding more than the books takes the extra in at the average cost
    gain = stock_count_create(business=retail, count_date=day3, counted={oil: D("26")})
    assert lines_by_role(gain.entry) == {"inventory": (D("233.33"), 0), "stock_variance": (0, D("233.33"))}

    # stock as of each day, from the movements; the last equals the levels and the inventory account
    assert [(v.quantity, v.value) for v in stock_value_as_of(business=retail, as_of=day1)] == [(D("30"), D("7000.00"))]
    assert [(v.quantity, v.value) for v in stock_value_as_of(business=retail, as_of=day2)] == [(D("27"), D("6300.00"))]
    assert stock_total_value(business=retail, as_of=day3) == D("6066.66")
    assert StockLevel.objects.get(item=oil).value == D("6066.66")
    assert role_balance(retail, "inventory") == D("6066.66")


def test_closing_posts_the_variance_locks_the_day_and_is_idempotent(retail: Business, today: dt.date) -> None:
    yesterday = today - dt.timedelta(days=1)
    soap = ItemFactory.create(business=retail, name="Soap", price=D("100.00"), sales_role="sales_shop")
    purchase_create(
        business=retail,
        supplier=SupplierFactory.create(business=retail),
        purchase_date=yesterday,
        paid_from=PaidFrom.CREDIT,
        lines=[(soap, D("10"), D("500.00"))],
    )
    sale_create(business=retail, sale_date=yesterday, lines=[LineInput(soap, D("5"))])
    expense_create(business=retail, expense_date=yesterday, category="expense_transport", amount=D("120.00"))

    closing = closing_run(business=retail, day=yesterday, counted_cash=D("370.00"))
    # 500 taken, 120 paid out: 380 expected, 370 counted, 10 short
    assert closing.status == ClosingStatus.CLOSED
    assert (closing.cash_takings, closing.mpesa_takings) == (D("500.00"), D("0.00"))
    assert (closing.expected_cash, closing.variance) == (D("380.00"), D("-10.00"))
    assert lines_by_role(closing.entry) == {"cash_over_short": (D("10.00"), 0), "cash": (0, D("10.00"))}
    assert Books.objects.get(business=retail).lock_date == yesterday

    # run twice: the same closing comes back, nothing more is posted
    again = closing_run(business=retail, day=yesterday, counted_cash=D("370.00"))
    assert again.pk == closing.pk and again.entry_id == closing.entry_id
    assert closing_run(business=retail, day=yesterday, counted_cash=None).pk == closing.pk
    with pytest.raises(InvalidState, match=r"already closed with KES 370\.00"):
        closing_run(business=retail, day=yesterday, counted_cash=D("380.00"))

    # the day is closed: operations refuse it, and the ledger refuses it too
    with pytest.raises(DayClosed):
        sale_create(business=retail, sale_date=yesterday, lines=[LineInput(soap, D("1"))])
    cash = account_for_role(business=retail, role="cash")
    sales = account_for_role(business=retail, role="sales_shop")
    with pytest.raises(PeriodLocked):
        entry_post(
            business=retail,
            entry_date=yesterday,
            memo="late",
            source_type="manual",
            idempotency_key="late",
            lines=[LineSpec(account=cash, debit=D("1.00")), LineSpec(account=sales, credit=D("1.00"))],
        )
    assert DayClosing.objects.filter(business=retail).count() == 1


def test_closing_an_over_count_and_an_uncounted_day(retail: Business, today: dt.date) -> None:
    day1, day2 = today - dt.timedelta(days=2), today - dt.timedelta(days=1)
    soap = ItemFactory.create(business=retail, name="Soap", kind="service", price=D("100.00"), sales_role="sales_shop")
    sale_create(business=retail, sale_date=day1, lines=[LineInput(soap, D("2"))])
    over = closing_run(business=retail, day=day1, counted_cash=D("205.00"))
    assert lines_by_role(over.entry) == {"cash": (D("5.00"), 0), "cash_over_short": (0, D("5.00"))}
    uncounted = closing_run(business=retail, day=day2, counted_cash=None)
    assert (uncounted.expected_cash, uncounted.variance, uncounted.entry) == (D("205.00"), D("0.00"), None)
    # an earlier day can no longer be closed once a later one is
    with pytest.raises(DayClosed):
        closing_run(business=retail, day=today - dt.timedelta(days=3), counted_cash=None)

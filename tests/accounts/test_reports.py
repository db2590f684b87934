"""Balances and statements, per business and consolidated, and the day's takings."""

from __future__ import annotations

import datetime as dt
from decimal import Decimal

import pytest

from accounts.models import AccountType
from accounts.selectors import (
    Takings,
    Trading,
    account_balance,
    balance_sheet,
    cash_balance,
    cash_flow_statement,
    income_statement,
    takings_by_business,
    takings_by_day,
    trading_by_day,
    trial_balance,
)
from accounts.services import entry_reverse
from tests.factories.accounts import acct, post, sale

pytestmark = pytest.mark.django_db

D = Decimal


@pytest.fixture
def activity(water, laundry, today):
    """A month of two businesses: capital, sales by cash and M-Pesa, stock bought on credit, expenses."""
    start = today - dt.timedelta(days=20)
    post(water, [("bank", "50000.00", 0), ("owner_equity", 0, "50000.00")], day=start, source_type="opening")
    post(water, [("inventory", "8000.00", 0), ("payables", 0, "8000.00")], day=start, source_type="purchase")
    sale(water, "1160.00", day=start + dt.timedelta(days=1))
    sale(water, "580.00", via="mpesa_clearing", day=start + dt.timedelta(days=2), source_type="mpesa")
    post(
        water,
        [("cost_of_sales", "900.00", 0), ("inventory", 0, "900.00")],
        day=start + dt.timedelta(days=2),
        source_type="stock",
    )
    post(
        water,
        [("expense_rent", "3000.00", 0), ("bank", 0, "3000.00")],
        day=start + dt.timedelta(days=3),
        source_type="expense",
    )
    post(
        water,
        [("mpesa_charges", "7.00", 0), ("mpesa_clearing", 0, "7.00")],
        day=start + dt.timedelta(days=3),
        source_type="mpesa",
    )
    post(
        water,
        [("owner_equity", "1000.00", 0), ("cash", 0, "1000.00")],
        day=start + dt.timedelta(days=4),
        source_type="manual",
    )
    post(laundry, [("cash", "2000.00", 0), ("owner_equity", 0, "2000.00")], day=start, source_type="opening")
    sale(laundry, "232.00", day=start + dt.timedelta(days=5))
    return start


def test_account_balance_as_of_a_date(water, activity, today):
    cash = acct(water, "cash")
    assert account_balance(account=cash, as_of=activity) == D("0.00")
    assert account_balance(account=cash, as_of=activity + dt.timedelta(days=1)) == D("1160.00")
    assert account_balance(account=cash, as_of=today) == D("160.00")


def test_trial_balance_per_business_and_consolidated(water, laundry, activity, today):
    per_business = trial_balance(business_ids=[water.pk], as_of=today)
    assert per_business.is_balanced and per_business.total_debit == per_business.total_credit
    rows = {r.code: r for r in per_business.rows}
    assert rows["1030"].debit_balance == D("47000.00")  # bank
    assert rows["3000"].credit_balance == D("49000.00")  # owner's equity
    everything = trial_balance(business_ids=None, as_of=today)
    assert everything.is_balanced
    laundry_tb = trial_balance(business_ids=[laundry.pk], as_of=today)
    assert everything.total_debit == per_business.total_debit + laundry_tb.total_debit
    # Same code and name add up across businesses
    cash = {r.code: r for r in everything.rows}["1010"]
    assert cash.debit_balance == D("160.00") + D("2232.00")


def test_income_statement_and_balance_sheet_agree(water, activity, today):
    pnl = income_statement(business_ids=[water.pk], date_from=activity, date_to=today)
    assert pnl.total_income == D("1500.00")  # 1160 + 580 net of 16% VAT
    assert pnl.total_expenses == D("3907.00")
    assert pnl.net_income == D("-2407.00")
    sheet = balance_sheet(business_ids=[water.pk], as_of=today)
    assert sheet.is_balanced
    assert sheet.current_earnings == pnl.net_income
    assert sheet.total_assets == sheet.total_liabilities + sheet.total_equity
    assert {r.code for r in sheet.liabilities} == {"2000", "2100"}


def test_net_income_equals_the_change_in_equity(water, activity, today):
    before = balance_sheet(business_ids=[water.pk], as_of=activity + dt.timedelta(days=1))
    after = balance_sheet(business_ids=[water.pk], as_of=today)
    pnl = income_statement(business_ids=[water.pk], date_from=activity + dt.timedelta(days=2), date_to=today)
    owner_withdrawal = D("-1000.00")  # an equity movement that is not income
    assert after.total_equity - before.total_equity == pnl.net_income + owner_withdrawal


def test_cash_flow_explains_the_change_in_cash(water, laundry, activity, today):
    for business_ids in ([water.pk], None):
        flow = cash_flow_statement(business_ids=business_ids, date_from=activity + dt.timedelta(days=1), date_to=today)
        assert flow.opening_cash == cash_balance(business_ids=business_ids, as_of=activity)
        assert flow.closing_cash == cash_balance(business_ids=business_ids, as_of=today)
    flow = cash_flow_statement(business_ids=[water.pk], date_from=activity, date_to=today)
    by_code = {r.code: r for r in flow.operating}
    assert by_code["6010"].outflow == D("3000.00")  # rent paid from the bank
    assert {r.code: r.net for r in flow.financing} == {"3000": D("49000.00")}
    assert "1200" not in by_code  # stock bought on credit moved no cash


def test_takings_count_sales_and_receipts_into_cash_and_mpesa(water, laundry, retail, today):
    sale(water, "116.00")
    sale(water, "232.00", via="mpesa_clearing", source_type="mpesa")
    post(water, [("cash", "50.00", 0), ("receivables", 0, "50.00")], source_type="payment")
    post(water, [("cash", "500.00", 0), ("owner_equity", 0, "500.00")], source_type="manual")  # not takings
    post(water, [("expense_transport", "20.00", 0), ("cash", 0, "20.00")], source_type="expense")  # not takings
    sale(water, "999.00", day=today - dt.timedelta(days=1))  # another day
    refunded = sale(laundry, "58.00")
    entry_reverse(entry=refunded)
    result = takings_by_business(business_ids=[water.pk, laundry.pk, retail.pk], day=today)
    assert result[water.pk] == Takings(cash=D("166.00"), mpesa=D("232.00"), total=D("398.00"))
    assert result[laundry.pk] == Takings(cash=D("0.00"), mpesa=D("0.00"), total=D("0.00"))
    assert result[retail.pk] == Takings()
    assert takings_by_business(business_ids=[], day=today) == {}


def test_takings_by_day_groups_the_same_takings_per_business_and_day(water, laundry, retail, today):
    yesterday = today - dt.timedelta(days=1)
    sale(water, "116.00")
    sale(water, "232.00", via="mpesa_clearing", source_type="mpesa")
    sale(water, "999.00", day=yesterday)
    post(water, [("cash", "500.00", 0), ("owner_equity", 0, "500.00")], source_type="manual")  # not takings
    entry_reverse(entry=sale(laundry, "58.00", day=yesterday), entry_date=today)  # refunded today: -58 today
    sale(retail, "10.00", day=today - dt.timedelta(days=5))  # before the window

    result = takings_by_day(business_ids=[water.pk, laundry.pk, retail.pk], date_from=yesterday, date_to=today)

    assert result == {
        (water.pk, today): Takings(cash=D("116.00"), mpesa=D("232.00"), total=D("348.00")),
        (water.pk, yesterday): Takings(cash=D("999.00"), mpesa=D("0.00"), total=D("999.00")),
        (laundry.pk, yesterday): Takings(cash=D("58.00"), mpesa=D("0.00"), total=D("58.00")),
        (laundry.pk, today): Takings(cash=D("-58.00"), mpesa=D("0.00"), total=D("-58.00")),
    }
    # The same figures as the one-day selector, day by day.
    for day in (yesterday, today):
        one_day = takings_by_business(business_ids=[water.pk, laundry.pk, retail.pk], day=day)
        assert all(one_day[b] == result.get((b, day), Takings()) for b in one_day)
    assert takings_by_day(business_ids=[], date_from=yesterday, date_to=today) == {}


def test_trading_by_day_splits_income_cost_of_sales_and_expenses(water, laundry, activity, today):
    start = today - dt.timedelta(days=30)
    water_day = today - dt.timedelta(days=18)  # the activity's M-Pesa sale and its cost
    post(water, [("stock_variance", "12.50", 0), ("inventory", 0, "12.50")], day=water_day, source_type="stock")

    result = trading_by_day(business_ids=[water.pk, laundry.pk], date_from=start, date_to=today)

    # 580.00 VAT inclusive is 500.00 of sales; cost of sales 900.00 plus a 12.50 stock count shortage.
    assert result[(water.pk, water_day)] == Trading(income=D("500.00"), cost_of_sales=D("912.50"), expenses=D("0.00"))
    assert result[(water.pk, water_day)].gross_profit == D("-412.50")
    # Rent and M-Pesa charges are expenses below gross profit.
    assert result[(water.pk, water_day + dt.timedelta(days=1))] == Trading(expenses=D("3007.00"))
    # Over the period the split adds up to the P&L of the same days, per business.
    for business in (water, laundry):
        pnl = income_statement(business_ids=[business.pk], date_from=start, date_to=today)
        days = [t for (b, _), t in result.items() if b == business.pk]
        total = sum(days, Trading())
        assert total.income == pnl.total_income
        assert total.cost_of_sales + total.expenses == pnl.total_expenses
        assert total.net_profit == pnl.net_income
    assert trading_by_day(business_ids=[], date_from=start, date_to=today) == {}


def test_statements_read_only_the_businesses_asked_for(water, laundry, activity, today):
    sheet = balance_sheet(business_ids=[laundry.pk], as_of=today)
    assert sheet.total_assets == D("2232.00")
    assert all(
        r.type in (AccountType.INCOME, AccountType.EXPENSE)
        for r in income_statement(business_ids=None, date_from=activity, date_to=today).income
        + income_statement(business_ids=None, date_from=activity, date_to=today).expenses
    )

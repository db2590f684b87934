"""Retail sales: VAT rates, credit limit, closed days, voids and refunds, customer statements."""

from __future__ import annotations

import datetime as dt
import threading

import pytest
from django.db import connection
from django.test.utils import CaptureQueriesContext

from accounts.models import JournalEntry
from accounts.services import books_close_period
from operations.exceptions import CreditLimitExceeded, DayClosed, InsufficientStock, InvalidInput
from operations.models import OpeningStock, PaymentMethod, Sale, SaleStatus, StockLevel, TaxRate
from operations.selectors import customer_balance, customer_balances, customer_statement, low_stock
from operations.services.sales import LineInput, customer_payment_record, sale_create, sale_refund, sale_void
from operations.services.stock import stock_opening_post
from tenancy.models import Business
from tests.factories.operations import CustomerFactory, ItemFactory
from tests.operations.ledger import D, lines_by_role


@pytest.fixture
def shop(retail: Business, today: dt.date) -> dict:
    soap = ItemFactory.create(
        business=retail, name="Bar soap", price=D("116.00"), sales_role="sales_shop", reorder_level=D("5")
    )
    flour = ItemFactory.create(
        business=retail, name="Maize flour 2 kg", price=D("180.00"), tax_rate=TaxRate.ZERO, sales_role="sales_shop"
    )
    bread = ItemFactory.create(
        business=retail, name="Bread", price=D("65.00"), tax_rate=TaxRate.EXEMPT, sales_role="sales_shop"
    )
    for item, qty, cost in ((soap, "20", "80.00"), (flour, "10", "150.00"), (bread, "10", "50.00")):
        opening = OpeningStock.objects.create(
            business=retail, item=item, stock_date=today, quantity=D(qty), unit_cost=D(cost)
        )
        stock_opening_post(opening=opening)
    return {"soap": soap, "flour": flour, "bread": bread}


@pytest.mark.django_db
def test_standard_zero_rated_and_exempt_lines_in_one_sale(retail: Business, shop: dict, today: dt.date) -> None:
    sale = sale_create(
        business=retail,
        sale_date=today,
        lines=[LineInput(shop["soap"], D("3")), LineInput(shop["flour"], D("1")), LineInput(shop["bread"], D("2"))],
    )
    # 348 incl. 48.00 VAT + 180 zero-rated + 130 exempt = 658; cost 240 + 150 + 100
    assert (sale.total, sale.vat_total, sale.cost_total) == (D("658.00"), D("48.00"), D("490.00"))
    assert lines_by_role(sale.entry) == {
        "cash": (D("658.00"), 0),
        "sales_shop": (0, D("610.00")),
        "vat_output": (0, D("48.00")),
        "cost_of_sales": (D("490.00"), 0),
        "inventory": (0, D("490.00")),
    }


@pytest.mark.django_db
def test_opening_stock_is_equity(retail: Business, shop: dict) -> None:
    opening = OpeningStock.objects.get(item=shop["soap"])
    assert lines_by_role(opening.entry) == {"inventory": (D("1600.00"), 0), "owner_equity": (0, D("1600.00"))}


@pytest.mark.django_db
def test_a_customer_over_the_credit_limit_is_refused(retail: Business, shop: dict, today: dt.date) -> None:
    customer = CustomerFactory.create(business=retail, name="Otieno", credit_limit=D("500.00"))
    sale_create(
        business=retail,
        sale_date=today,
        customer=customer,
        payment_method=PaymentMethod.ACCOUNT,
        lines=[LineInput(shop["soap"], D("3"))],
    )
    with pytest.raises(CreditLimitExceeded, match=r"Otieno cannot take KES 232\.00 more"):
        sale_create(
            business=retail,
            sale_date=today,
            customer=customer,
            payment_method=PaymentMethod.ACCOUNT,
            lines=[LineInput(shop["soap"], D("2"))],
        )
    assert Sale.objects.filter(customer=customer).count() == 1  # the refused sale left nothing
    assert StockLevel.objects.get(item=shop["soap"]).quantity == D("17")
    # Paying down the balance makes room again.
    customer_payment_record(customer=customer, amount=D("348.00"), payment_date=today)
    sale_create(
        business=retail,
        sale_date=today,
        customer=customer,
        payment_method=PaymentMethod.ACCOUNT,
        lines=[LineInput(shop["soap"], D("2"))],
    )
    assert customer_balance(customer=customer) == D("232.00")


@pytest.mark.django_db
def test_a_sale_on_account_needs_a_customer(retail: Business, shop: dict, today: dt.date) -> None:
    with pytest.raises(InvalidInput, match="needs a customer"):
        sale_create(
            business=retail,
            sale_date=today,
            payment_method=PaymentMethod.ACCOUNT,
            lines=[LineInput(shop["soap"], D("1"))],
        )


@pytest.mark.django_db
def test_selling_more_than_in_stock_is_refused(retail: Business, shop: dict, today: dt.date) -> None:
    with pytest.raises(InsufficientStock, match="Only 10 of Bread in stock"):
        sale_create(business=retail, sale_date=today, lines=[LineInput(shop["bread"], D("11"))])


@pytest.mark.django_db
def test_a_closed_day_refuses_new_records(retail: Business, shop: dict, today: dt.date) -> None:
    yesterday = today - dt.timedelta(days=1)
    books_close_period(business=retail, lock_date=yesterday)
    with pytest.raises(DayClosed, match="closed"):
        sale_create(business=retail, sale_date=yesterday, lines=[LineInput(shop["soap"], D("1"))])
    opening = OpeningStock.objects.create(
        business=retail, item=shop["soap"], stock_date=yesterday, quantity=D("1"), unit_cost=D("1.00")
    )
    with pytest.raises(DayClosed):
        stock_opening_post(opening=opening)
    assert not Sale.objects.filter(sale_date=yesterday).exists()


@pytest.mark.django_db
def test_refund_restores_stock_and_money(retail: Business, shop: dict, today: dt.date) -> None:
    sale = sale_create(business=retail, sale_date=today, lines=[LineInput(shop["soap"], D("4"))])
    before = StockLevel.objects.get(item=shop["soap"])
    assert (before.quantity, before.value) == (D("16"), D("1280.00"))

    refunded = sale_refund(sale=sale, refund_date=today, reason="wrong soap")
    assert refunded.status == SaleStatus.REFUNDED
    assert lines_by_role(refunded.reversal_entry) == {
        "cash": (0, D("464.00")),
        "sales_shop": (D("400.00"), 0),
        "vat_output": (D("64.00"), 0),
        "cost_of_sales": (0, D("320.00")),
        "inventory": (D("320.00"), 0),
    }
    after = StockLevel.objects.get(item=shop["soap"])
    assert (after.quantity, after.value) == (D("20"), D("1600.00"))
    # A second refund changes nothing.
    assert sale_refund(sale=sale, refund_date=today).reversal_entry_id == refunded.reversal_entry_id
    assert JournalEntry.objects.filter(reverses=sale.entry).count() == 1


@pytest.mark.django_db
def test_voiding_a_sale_on_account_clears_the_customer_balance(retail: Business, shop: dict, today: dt.date) -> None:
    customer = CustomerFactory.create(business=retail, name="Akinyi", credit_limit=D("1000.00"))
    sale = sale_create(
        business=retail,
        sale_date=today,
        customer=customer,
        payment_method=PaymentMethod.ACCOUNT,
        lines=[LineInput(shop["flour"], D("2"))],
    )
    assert customer_balance(customer=customer) == D("360.00")
    assert list(customer_balances(business=retail)) == [customer]
    sale_void(sale=sale, reason="typed twice")
    assert customer_balance(customer=customer) == 0
    statement = customer_statement(customer=customer, date_from=today, date_to=today)
    assert [line.amount for line in statement.lines] == [D("360.00"), D("-360.00")]
    assert statement.opening == 0 and statement.closing == 0


@pytest.mark.django_db
def test_low_stock_flags(retail: Business, shop: dict, today: dt.date) -> None:
    assert list(low_stock(business=retail)) == []
    sale_create(business=retail, sale_date=today, lines=[LineInput(shop["soap"], D("15"))])
    assert [level.item for level in low_stock(business=retail)] == [shop["soap"]]


@pytest.mark.django_db
def test_the_credit_check_locks_the_customer_row(retail: Business, shop: dict, today: dt.date) -> None:
    """Two concurrent sales on account serialise on the customer row, so both cannot pass the limit.

    (A two-thread test needs committed rows, and the append-only ledger cannot be flushed after
    it; the lock is checked on the SQL instead.)
    """
    customer = CustomerFactory.create(business=retail, name="Wafula", credit_limit=D("300.00"))
    with CaptureQueriesContext(connection) as queries:
        sale_create(
            business=retail,
            sale_date=today,
            customer=customer,
            payment_method=PaymentMethod.ACCOUNT,
            lines=[LineInput(shop["flour"], D("1"))],
        )
    sqls = [q["sql"] for q in queries.captured_queries]
    lock = next(i for i, sql in enumerate(sqls) if 'FROM "operations_customer"' in sql and "FOR UPDATE" in sql)
    balance = next(i for i, sql in enumerate(sqls) if 'FROM "operations_customertransaction"' in sql)
    assert lock < balance


@pytest.mark.django_db(transaction=True)
def test_two_concurrent_sales_on_account_cannot_both_pass_the_limit(retail: Business, today: dt.date) -> None:
    flour = ItemFactory.create(
        business=retail, name="Flour", kind="service", price=D("180.00"), tax_rate=TaxRate.ZERO, sales_role="sales_shop"
    )
    customer = CustomerFactory.create(business=retail, name="Wafula", credit_limit=D("300.00"))
    outcomes: list[str] = []
    barrier = threading.Barrier(2)

    def sell() -> None:
        try:
            barrier.wait()
            sale_create(
                business=retail,
                sale_date=today,
                customer=customer,
                payment_method=PaymentMethod.ACCOUNT,
                lines=[LineInput(flour, D("1"))],
            )
            outcomes.append("ok")
        except CreditLimitExceeded:
            outcomes.append("refused")
        finally:
            connection.close()

    threads = [threading.Thread(target=sell) for _ in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert sorted(outcomes) == ["ok", "refused"]
    assert customer_balance(customer=customer) == D("180.00")


@pytest.mark.django_db
def test_a_sale_cannot_be_dated_in_the_future(retail: Business, shop: dict, today: dt.date) -> None:
    with pytest.raises(InvalidInput, match="in the future"):
        sale_create(business=retail, sale_date=today + dt.timedelta(days=1), lines=[LineInput(shop["soap"], D("1"))])


@pytest.mark.django_db
def test_an_item_must_credit_an_account_of_its_business(retail: Business) -> None:
    from django.core.exceptions import ValidationError

    item = ItemFactory.build(business=retail, name="Mystery", sales_role="sales_refill")  # a water account
    with pytest.raises(ValidationError, match="no ledger account"):
        item.full_clean()
    item.sales_role = "sales_shop"
    item.full_clean()

"""Laundry orders (revenue on collection) and LPG cylinders (refill, new, deposit, depot refills)."""

from __future__ import annotations

import datetime as dt
from decimal import Decimal

import pytest

from operations.exceptions import CreditLimitExceeded, InvalidInput, InvalidState
from operations.models import Item, ItemKind, OpeningStock, OrderStatus, PaidFrom, PaymentMethod, StockLevel, TaxRate
from operations.selectors import uncollected_orders
from operations.services.laundry import (
    laundry_order_advance,
    laundry_order_cancel,
    laundry_order_collect,
    laundry_order_create,
)
from operations.services.lpg import lpg_cylinder_ensure
from operations.services.purchases import purchase_create
from operations.services.sales import LineInput, sale_create, sale_refund
from operations.services.stock import stock_opening_post
from tenancy.models import Business
from tests.factories.operations import CustomerFactory, ItemFactory, SupplierFactory
from tests.operations.ledger import D, lines_by_role

pytestmark = pytest.mark.django_db


@pytest.fixture
def services(laundry: Business) -> dict:
    return {
        "wash": ItemFactory.create(
            business=laundry,
            name="Wash and fold (kg)",
            kind=ItemKind.SERVICE,
            unit="kg",
            price=D("150.00"),
            sales_role="sales_wash_fold",
        ),
        "suit": ItemFactory.create(
            business=laundry,
            name="Suit dry clean",
            kind=ItemKind.SERVICE,
            price=D("580.00"),
            sales_role="sales_dry_cleaning",
        ),
        "customer": CustomerFactory.create(business=laundry, name="Wanjiru", phone="254712345678"),
    }


def test_laundry_deposit_is_a_liability_until_collection(laundry: Business, services: dict, today: dt.date) -> None:
    order = laundry_order_create(
        business=laundry,
        customer=services["customer"],
        tag="T-041",
        received_date=today,
        promised_date=today + dt.timedelta(days=2),
        deposit=D("500.00"),
        lines=[(services["wash"], D("6.5")), (services["suit"], D("1"))],
    )
    # 975 + 580 = 1555, VAT 134.48 + 80.00
    assert (order.status, order.total, order.vat_total) == (OrderStatus.RECEIVED, D("1555.00"), D("214.48"))
    assert lines_by_role(order.deposit_entry) == {"cash": (D("500.00"), 0), "customer_deposits": (0, D("500.00"))}

    order = laundry_order_advance(order=order)
    order = laundry_order_advance(order=order)
    assert order.status == OrderStatus.READY
    with pytest.raises(InvalidState):
        laundry_order_advance(order=order)

    order = laundry_order_collect(order=order, collected_date=today)
    assert lines_by_role(order.collection_entry) == {
        "customer_deposits": (D("500.00"), 0),
        "cash": (D("1055.00"), 0),
        "sales_wash_fold": (0, D("840.52")),
        "sales_dry_cleaning": (0, D("500.00")),
        "vat_output": (0, D("214.48")),
    }
    assert laundry_order_collect(order=order, collected_date=today).collection_entry_id == order.collection_entry_id


def test_a_tag_is_used_by_one_open_order_and_cancelling_gives_the_deposit_back(
    laundry: Business, services: dict, today: dt.date
) -> None:
    kwargs = {
        "business": laundry,
        "customer": services["customer"],
        "tag": "T-7",
        "received_date": today,
        "promised_date": today,
        "lines": [(services["wash"], D("2"))],
    }
    order = laundry_order_create(deposit=D("100.00"), **kwargs)  # type: ignore[arg-type]
    with pytest.raises(InvalidInput, match="Tag T-7 is on another open order"):
        laundry_order_create(**kwargs)  # type: ignore[arg-type]
    order = laundry_order_cancel(order=order, cancel_date=today)
    assert order.status == OrderStatus.CANCELLED
    laundry_order_create(**kwargs)  # type: ignore[arg-type]  # the tag is free again


def test_collection_on_account_respects_the_credit_limit(laundry: Business, services: dict, today: dt.date) -> None:
    order = laundry_order_create(
        business=laundry,
        customer=services["customer"],
        tag="T-9",
        received_date=today,
        promised_date=today,
        lines=[(services["suit"], D("1"))],
    )
    with pytest.raises(CreditLimitExceeded):
        laundry_order_collect(order=order, collected_date=today, balance_method=PaymentMethod.ACCOUNT)


def test_uncollected_orders_are_those_past_their_promised_date(
    laundry: Business, services: dict, today: dt.date
) -> None:
    late = laundry_order_create(
        business=laundry,
        customer=services["customer"],
        tag="T-1",
        received_date=today - dt.timedelta(days=5),
        promised_date=today - dt.timedelta(days=3),
        lines=[(services["wash"], D("3"))],
    )
    laundry_order_create(
        business=laundry,
        customer=services["customer"],
        tag="T-2",
        received_date=today,
        promised_date=today,
        lines=[(services["wash"], D("3"))],
    )
    assert list(uncollected_orders(business=laundry, as_of=today)) == [late]


@pytest.fixture
def gas(retail: Business, today: dt.date) -> dict:
    items = lpg_cylinder_ensure(
        business=retail,
        size_kg=D("13"),
        brand="Total",
        refill_price=D("2900.00"),
        new_cylinder_price=D("6500.00"),
        deposit_price=D("3000.00"),
    )
    assert (
        lpg_cylinder_ensure(
            business=retail,
            size_kg=D("13"),
            brand="Total",
            refill_price=D("2900.00"),
            new_cylinder_price=D("6500.00"),
            deposit_price=D("3000.00"),
        )
        == items
    )
    opening = OpeningStock.objects.create(
        business=retail, item=items.empty, stock_date=today, quantity=D("10"), unit_cost=D("2000.00")
    )
    stock_opening_post(opening=opening)
    depot = SupplierFactory.create(business=retail, name="Total depot")
    return {"items": items, "depot": depot}


def _stock(item: Item) -> tuple[Decimal, Decimal]:
    level = StockLevel.objects.get(item=item)
    return level.quantity, level.value


def test_lpg_depot_refills_then_refill_new_and_deposit_sales(retail: Business, gas: dict, today: dt.date) -> None:
    items = gas["items"]
    # Given 5 refills bought from the depot for cash: 5 empties go, 5 full come in at shell + gas cost
    purchase = purchase_create(
        business=retail,
        supplier=gas["depot"],
        purchase_date=today,
        paid_from=PaidFrom.CASH,
        lines=[(items.full, D("5"), D("11500.00"))],
    )
    assert lines_by_role(purchase.entry) == {"inventory": (D("11500.00"), 0), "cash": (0, D("11500.00"))}
    assert _stock(items.full) == (D("5"), D("21500.00"))
    assert _stock(items.empty) == (D("5"), D("10000.00"))

    # When a refill is sold: full out (4300), empty in (2000): the gas (2300) is the cost of sales
    refill = sale_create(business=retail, sale_date=today, lines=[LineInput(items.refill, D("1"))])
    assert lines_by_role(refill.entry) == {
        "cash": (D("2900.00"), 0),
        "sales_lpg_refill": (0, D("2500.00")),
        "vat_output": (0, D("400.00")),
        "cost_of_sales": (D("2300.00"), 0),
        "inventory": (0, D("2300.00")),
    }
    assert _stock(items.full) == (D("4"), D("17200.00"))
    assert _stock(items.empty) == (D("6"), D("12000.00"))

    # A new cylinder with gas: the full cylinder leaves, nothing comes back
    new = sale_create(business=retail, sale_date=today, lines=[LineInput(items.new_cylinder, D("1"))])
    assert lines_by_role(new.entry)["cost_of_sales"] == (D("4300.00"), 0)
    assert lines_by_role(new.entry)["sales_cylinders"] == (0, D("5603.45"))

    # Gas with the cylinder on deposit: the deposit is held as a liability, not income
    deposit = sale_create(
        business=retail,
        sale_date=today,
        lines=[LineInput(items.gas_on_deposit, D("1")), LineInput(items.deposit, D("1"))],
    )
    assert lines_by_role(deposit.entry)["cylinder_deposits"] == (0, D("3000.00"))
    assert items.deposit.tax_rate == TaxRate.EXEMPT
    assert _stock(items.full) == (D("2"), D("8600.00"))

    # A refunded refill puts the full cylinder back and takes the empty out again, at the same costs
    sale_refund(sale=refill, refund_date=today)
    assert _stock(items.full) == (D("3"), D("12900.00"))
    assert _stock(items.empty) == (D("5"), D("10000.00"))

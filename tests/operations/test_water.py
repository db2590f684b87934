"""Water packaging: purchases of materials, production, sales with deposits, route deliveries."""

from __future__ import annotations

import datetime as dt

import pytest

from operations.exceptions import InvalidInput
from operations.models import ItemKind, PaidFrom, PaymentMethod, StockLevel, TaxRate
from operations.selectors import supplier_balance
from operations.services.purchases import purchase_create, supplier_payment_create
from operations.services.sales import LineInput, deposit_return, sale_create
from operations.services.water import production_batch_create
from tenancy.models import Business
from tests.factories.operations import CustomerFactory, ItemFactory, SupplierFactory
from tests.operations.ledger import D, lines_by_role

pytestmark = pytest.mark.django_db


@pytest.fixture
def plant(water: Business) -> dict:
    return {
        "preform": ItemFactory.create(business=water, name="Preform 500 ml", kind=ItemKind.MATERIAL, sales_role=""),
        "cap": ItemFactory.create(business=water, name="Cap", kind=ItemKind.MATERIAL, sales_role=""),
        "crate": ItemFactory.create(
            business=water, name="500 ml x 24 crate", price=D("600.00"), sales_role="sales_bottled_water"
        ),
        "refill": ItemFactory.create(
            business=water, name="20 L refill", kind=ItemKind.SERVICE, price=D("50.00"), sales_role="sales_refill"
        ),
        "deposit": ItemFactory.create(
            business=water,
            name="20 L bottle deposit",
            kind=ItemKind.DEPOSIT,
            price=D("300.00"),
            tax_rate=TaxRate.EXEMPT,
            sales_role="bottle_deposits",
        ),
        "supplier": SupplierFactory.create(business=water, name="Plastics Ltd"),
    }


def test_materials_bought_on_credit_then_produced_then_sold_at_rolled_up_cost(
    water: Business, plant: dict, today: dt.date
) -> None:
    # Given materials bought on credit
    purchase = purchase_create(
        business=water,
        supplier=plant["supplier"],
        purchase_date=today,
        paid_from=PaidFrom.CREDIT,
        lines=[(plant["preform"], D("1000"), D("5000.00")), (plant["cap"], D("1000"), D("1000.00"))],
    )
    assert lines_by_role(purchase.entry) == {"inventory": (D("6000.00"), 0), "payables": (0, D("6000.00"))}

    # When 40 crates are produced from 960 preforms and 960 caps
    batch = production_batch_create(
        business=water,
        batch_date=today,
        output_item=plant["crate"],
        output_quantity=D("40"),
        inputs=[(plant["preform"], D("960")), (plant["cap"], D("960"))],
    )
    # Then the materials' cost is rolled into the crates (4800 + 960), and the ledger is untouched
    assert batch.total_cost == D("5760.00") and batch.entry is None
    crate_stock = StockLevel.objects.get(item=plant["crate"])
    assert (crate_stock.quantity, crate_stock.value) == (D("40"), D("5760.00"))
    assert StockLevel.objects.get(item=plant["preform"]).value == D("200.00")

    # When 2 crates are sold for cash at 600 each (VAT inclusive)
    sale = sale_create(business=water, sale_date=today, lines=[LineInput(plant["crate"], D("2"))])
    # Then VAT = round(1200 * 16 / 116) and the cost of 2 crates at 144 is posted with the sale
    assert lines_by_role(sale.entry) == {
        "cash": (D("1200.00"), 0),
        "sales_bottled_water": (0, D("1034.48")),
        "vat_output": (0, D("165.52")),
        "cost_of_sales": (D("288.00"), 0),
        "inventory": (0, D("288.00")),
    }
    assert StockLevel.objects.get(item=plant["crate"]).value == D("5472.00")


def test_refill_with_a_new_bottle_deposit_and_its_return(water: Business, plant: dict, today: dt.date) -> None:
    sale = sale_create(
        business=water,
        sale_date=today,
        lines=[LineInput(plant["refill"], D("1")), LineInput(plant["deposit"], D("1"))],
    )
    assert lines_by_role(sale.entry) == {
        "cash": (D("350.00"), 0),
        "sales_refill": (0, D("43.10")),
        "vat_output": (0, D("6.90")),
        "bottle_deposits": (0, D("300.00")),
    }
    entry = deposit_return(
        business=water, item=plant["deposit"], quantity=D("1"), return_date=today, reference="slip-1"
    )
    assert lines_by_role(entry) == {"bottle_deposits": (D("300.00"), 0), "cash": (0, D("300.00"))}
    again = deposit_return(
        business=water, item=plant["deposit"], quantity=D("1"), return_date=today, reference="slip-1"
    )
    assert again.pk == entry.pk


def test_route_delivery_to_a_shop_on_credit(water: Business, plant: dict, today: dt.date) -> None:
    shop = CustomerFactory.create(business=water, name="Mama Njeri shop", credit_limit=D("5000.00"))
    purchase_create(
        business=water,
        supplier=plant["supplier"],
        purchase_date=today,
        paid_from=PaidFrom.CASH,
        lines=[(plant["crate"], D("10"), D("3000.00"))],
    )
    sale = sale_create(
        business=water,
        sale_date=today,
        customer=shop,
        payment_method=PaymentMethod.ACCOUNT,
        route="Kayole",
        lines=[LineInput(plant["crate"], D("5"), unit_price=D("580.00"))],
    )
    assert lines_by_role(sale.entry) == {
        "receivables": (D("2900.00"), 0),
        "sales_bottled_water": (0, D("2500.00")),
        "vat_output": (0, D("400.00")),
        "cost_of_sales": (D("1500.00"), 0),
        "inventory": (0, D("1500.00")),
    }
    assert sale.amount_paid == 0 and sale.route == "Kayole"


def test_paying_a_supplier_what_is_owed(water: Business, plant: dict, today: dt.date) -> None:
    supplier = plant["supplier"]
    purchase_create(
        business=water,
        supplier=supplier,
        purchase_date=today,
        paid_from=PaidFrom.CREDIT,
        lines=[(plant["cap"], D("500"), D("600.00"))],
    )
    purchase_create(
        business=water,
        supplier=supplier,
        purchase_date=today,
        paid_from=PaidFrom.CASH,
        lines=[(plant["cap"], D("500"), D("600.00"))],
    )  # paid at once: not owed
    assert supplier_balance(supplier=supplier) == D("600.00")
    with pytest.raises(InvalidInput, match="is owed KES 600"):
        supplier_payment_create(supplier=supplier, payment_date=today, amount=D("700.00"))
    payment = supplier_payment_create(
        supplier=supplier, payment_date=today, amount=D("400.00"), paid_from=PaidFrom.MPESA, reference="QK123"
    )
    assert lines_by_role(payment.entry) == {"payables": (D("400.00"), 0), "mpesa_clearing": (0, D("400.00"))}
    assert supplier_balance(supplier=supplier) == D("200.00")

"""The operations admin through the owner's client: every changelist, add form and action."""

from __future__ import annotations

import datetime as dt
from decimal import Decimal
from typing import Any

import pytest
import tablib
from django.contrib import admin
from django.contrib.messages import get_messages
from django.db.models import Model
from django.test import Client
from django.urls import reverse

from accounts.services import books_close_period
from jobs.models import Job
from jobs.registry import REGISTRY, JobContext
from operations.admin.customers import CustomerResource
from operations.jobs import CLOSING
from operations.models import (
    ClosingStatus,
    Customer,
    DayClosing,
    Expense,
    ItemKind,
    LaundryOrder,
    OpeningStock,
    OrderStatus,
    ProductionBatch,
    Purchase,
    Sale,
    SaleStatus,
    StockCount,
    StockLevel,
)
from tenancy.models import Business
from tenancy.services import STAFF_PERMISSIONS, staff_group_ensure
from tests.factories.operations import CustomerFactory, ItemFactory, SupplierFactory
from tests.operations.scoping import ROW_MAKERS

pytestmark = pytest.mark.django_db


def _url(model: type[Model], view: str, *args: Any) -> str:
    return reverse(f"admin:{model._meta.app_label}_{model._meta.model_name}_{view}", args=args)


def _inline(prefix: str, rows: list[dict[str, Any]]) -> dict[str, Any]:
    data: dict[str, Any] = {
        f"{prefix}-TOTAL_FORMS": len(rows),
        f"{prefix}-INITIAL_FORMS": 0,
        f"{prefix}-MIN_NUM_FORMS": 0,
        f"{prefix}-MAX_NUM_FORMS": 1000,
    }
    for i, row in enumerate(rows):
        data.update({f"{prefix}-{i}-{k}": v for k, v in row.items()})
    return data


def _messages(response: Any) -> list[str]:
    return [str(m) for m in get_messages(response.wsgi_request)]


@pytest.mark.parametrize("model", list(ROW_MAKERS), ids=lambda m: m.__name__)
def test_changelist_change_and_add_pages_render(model: type[Model], owner_client: Client, water: Business) -> None:
    row = ROW_MAKERS[model](water)
    listing = owner_client.get(_url(model, "changelist"))
    assert listing.status_code == 200
    assert _url(model, "change", row.pk) in listing.content.decode()
    assert owner_client.get(_url(model, "change", row.pk)).status_code == 200
    model_admin = admin.site._registry[model]
    add = owner_client.get(_url(model, "add"))
    assert add.status_code == (200 if model_admin.has_add_permission(add.wsgi_request) else 403)


def test_sale_drafted_posted_printed_and_voided_in_the_admin(
    owner_client: Client, retail: Business, today: dt.date
) -> None:
    soap = ItemFactory.create(
        business=retail, name="Soap", kind=ItemKind.SERVICE, price=Decimal("116.00"), sales_role="sales_shop"
    )
    response = owner_client.post(
        _url(Sale, "add"),
        {
            "business": retail.pk,
            "sale_date": today.isoformat(),
            "payment_method": "cash",
            "route": "",
            "mpesa_phone": "",
            "note": "",
            **_inline("lines", [{"item": soap.pk, "quantity": "2", "unit_price": ""}]),
        },
    )
    assert response.status_code == 302, response.content.decode()[:3000]
    sale = Sale.objects.get(business=retail)
    assert sale.status == SaleStatus.DRAFT

    response = owner_client.post(_url(Sale, "changelist"), {"action": "post_sales", "_selected_action": [sale.pk]})
    assert "Sales posted: 1." in _messages(response)
    sale.refresh_from_db()
    assert (sale.status, sale.total) == (SaleStatus.POSTED, Decimal("232.00"))

    receipt = owner_client.get(reverse("admin:operations_sale_receipt", args=[sale.pk]))
    assert receipt.status_code == 200
    assert sale.number in receipt.content.decode() and "232.00" in receipt.content.decode()
    # posted: the change page is read-only, nothing can be edited
    page = owner_client.get(_url(Sale, "change", sale.pk)).content.decode()
    assert 'name="payment_method"' not in page

    response = owner_client.post(_url(Sale, "changelist"), {"action": "void_sales", "_selected_action": [sale.pk]})
    assert "Sales voided: 1." in _messages(response)
    sale.refresh_from_db()
    assert sale.status == SaleStatus.VOIDED
    response = owner_client.post(_url(Sale, "changelist"), {"action": "refund_sales", "_selected_action": [sale.pk]})
    sale.refresh_from_db()
    assert sale.status == SaleStatus.VOIDED  # a voided sale is left alone
    assert owner_client.get(_url(Sale, "changelist"), {"q": sale.number}).status_code == 200


def test_a_refused_action_shows_the_reason(owner_client: Client, retail: Business, today: dt.date) -> None:
    books_close_period(business=retail, lock_date=today)
    expense = Expense.objects.create(
        business=retail, expense_date=today, category="expense_rent", amount=Decimal("5000.00")
    )
    response = owner_client.post(
        _url(Expense, "changelist"), {"action": "post_expenses", "_selected_action": [expense.pk]}
    )
    assert any("is closed" in m for m in _messages(response))
    expense.refresh_from_db()
    assert expense.status == "draft"


def test_customer_added_in_the_admin_gets_a_normalised_phone(owner_client: Client, retail: Business) -> None:
    response = owner_client.post(
        _url(Customer, "add"),
        {
            "business": retail.pk,
            "name": "Mama Mboga",
            "phone": "0712 345 678",
            "account_code": "",
            "credit_limit": "1000.00",
            "is_active": "on",
        },
    )
    assert response.status_code == 302, response.content.decode()[:2000]
    customer = Customer.objects.get(name="Mama Mboga")
    assert customer.phone == "254712345678"
    assert len(customer.phone_sha256) == 64


def test_customers_import_normalises_phones(owner: Any, retail: Business) -> None:
    headers = ["id", "business", "name", "phone", "account_code", "credit_limit", "is_active"]
    good = tablib.Dataset(["", retail.pk, "Kamau", "+254 722 000 111", "", "500.00", "1"], headers=headers)
    result = CustomerResource().import_data(good, dry_run=False, user=owner, raise_errors=False)
    assert [row.import_type for row in result.rows] == ["new"]
    kamau = Customer.objects.get(name="Kamau")
    assert kamau.phone == "254722000111" and len(kamau.phone_sha256) == 64

    bad = tablib.Dataset(["", retail.pk, "Bad number", "12345", "", "0", "1"], headers=headers)
    result = CustomerResource().import_data(bad, dry_run=False, user=owner, raise_errors=False)
    assert result.has_validation_errors()
    assert "phone" in result.invalid_rows[0].field_specific_errors
    assert not Customer.objects.filter(name="Bad number").exists()


def test_stock_documents_posted_from_the_admin(owner_client: Client, water: Business, today: dt.date) -> None:
    preform = ItemFactory.create(business=water, name="Preform", kind=ItemKind.MATERIAL, sales_role="")
    bottle = ItemFactory.create(business=water, name="1 L bottle", sales_role="sales_bottled_water")
    supplier = SupplierFactory.create(business=water)

    owner_client.post(
        _url(OpeningStock, "add"),
        {
            "business": water.pk,
            "item": preform.pk,
            "stock_date": today.isoformat(),
            "quantity": "100",
            "unit_cost": "5.00",
        },
    )
    opening = OpeningStock.objects.get(item=preform)
    owner_client.post(_url(OpeningStock, "changelist"), {"action": "post_opening", "_selected_action": [opening.pk]})

    response = owner_client.post(
        _url(Purchase, "add"),
        {
            "business": water.pk,
            "supplier": supplier.pk,
            "purchase_date": today.isoformat(),
            "paid_from": "cash",
            "invoice_number": "INV-1",
            **_inline("lines", [{"item": preform.pk, "quantity": "50", "amount": "300.00"}]),
        },
    )
    assert response.status_code == 302, response.content.decode()[:2000]
    purchase = Purchase.objects.get(business=water)
    owner_client.post(_url(Purchase, "changelist"), {"action": "post_purchases", "_selected_action": [purchase.pk]})

    response = owner_client.post(
        _url(ProductionBatch, "add"),
        {
            "business": water.pk,
            "batch_date": today.isoformat(),
            "output_item": bottle.pk,
            "output_quantity": "100",
            "note": "",
            **_inline("inputs", [{"item": preform.pk, "quantity": "100"}]),
        },
    )
    assert response.status_code == 302, response.content.decode()[:2000]
    batch = ProductionBatch.objects.get(business=water)
    owner_client.post(_url(ProductionBatch, "changelist"), {"action": "post_batches", "_selected_action": [batch.pk]})

    response = owner_client.post(
        _url(StockCount, "add"),
        {
            "business": water.pk,
            "count_date": today.isoformat(),
            "note": "",
            **_inline("lines", [{"item": preform.pk, "counted_quantity": "48"}]),
        },
    )
    assert response.status_code == 302, response.content.decode()[:2000]
    count = StockCount.objects.get(business=water)
    owner_client.post(_url(StockCount, "changelist"), {"action": "post_counts", "_selected_action": [count.pk]})

    # 100 @ 5 + 50 for 300, 100 used (average 5.3333: 533.33), 50 left (266.67), 48 counted (256.00)
    assert StockLevel.objects.get(item=bottle).value == Decimal("533.33")
    preforms = StockLevel.objects.get(item=preform)
    assert (preforms.quantity, preforms.value) == (Decimal("48"), Decimal("256.00"))
    for doc in (opening, purchase, batch, count):
        doc.refresh_from_db()
        assert doc.status == "posted"
    assert owner_client.get(_url(StockLevel, "changelist"), {"low": "yes"}).status_code == 200

    expense = Expense.objects.create(
        business=water, expense_date=today, category="expense_electricity", amount=Decimal("2500.00"), paid_from="bank"
    )
    response = owner_client.post(
        _url(Expense, "changelist"), {"action": "post_expenses", "_selected_action": [expense.pk]}
    )
    assert "Expenses posted: 1." in _messages(response)


def test_laundry_order_through_the_admin(owner_client: Client, laundry: Business, today: dt.date) -> None:
    wash = ItemFactory.create(
        business=laundry, name="Wash kg", kind=ItemKind.SERVICE, price=Decimal("150.00"), sales_role="sales_wash_fold"
    )
    customer = CustomerFactory.create(business=laundry)
    response = owner_client.post(
        _url(LaundryOrder, "add"),
        {
            "business": laundry.pk,
            "customer": customer.pk,
            "tag": "A12",
            "received_date": today.isoformat(),
            "promised_date": today.isoformat(),
            "deposit": "100.00",
            "deposit_method": "cash",
            "note": "",
            **_inline("lines", [{"item": wash.pk, "quantity": "4", "unit_price": ""}]),
        },
    )
    assert response.status_code == 302, response.content.decode()[:2000]
    order = LaundryOrder.objects.get(tag="A12")
    changelist = _url(LaundryOrder, "changelist")
    owner_client.post(changelist, {"action": "receive_orders", "_selected_action": [order.pk]})
    owner_client.post(changelist, {"action": "advance_orders", "_selected_action": [order.pk]})
    owner_client.post(changelist, {"action": "collect_orders", "_selected_action": [order.pk]})
    order.refresh_from_db()
    assert (order.status, order.total) == (OrderStatus.COLLECTED, Decimal("600.00"))
    response = owner_client.post(changelist, {"action": "cancel_orders", "_selected_action": [order.pk]})
    assert any("was collected" in m for m in _messages(response))
    assert owner_client.get(changelist, {"uncollected": "late"}).status_code == 200


def test_closing_is_launched_as_a_job_that_runs_the_service(
    owner_client: Client, owner: Any, retail: Business, today: dt.date
) -> None:
    yesterday = today - dt.timedelta(days=1)
    response = owner_client.post(
        _url(DayClosing, "add"),
        {
            "business": retail.pk,
            "day": yesterday.isoformat(),
            "counted_cash": "0.00",
        },
    )
    assert response.status_code == 302, response.content.decode()[:2000]
    closing = DayClosing.objects.get(business=retail, day=yesterday)
    response = owner_client.post(
        _url(DayClosing, "changelist"), {"action": "run_closing", "_selected_action": [closing.pk]}
    )
    job = Job.objects.get(kind=CLOSING)
    assert job.business == retail and job.params == {"day": yesterday.isoformat(), "counted_cash": "0.00"}
    assert any(f"#{job.pk}" in m for m in _messages(response))

    # What the worker does with it (the job mechanism itself is tested in tests/jobs):
    REGISTRY[CLOSING].handler(JobContext(job))
    REGISTRY[CLOSING].handler(JobContext(job))  # a redelivery is harmless
    closing.refresh_from_db()
    assert closing.status == ClosingStatus.CLOSED and closing.closed_by == owner
    assert DayClosing.objects.filter(business=retail).count() == 1


def test_staff_group_gets_day_to_day_permissions_but_no_deletes() -> None:
    group = staff_group_ensure()
    codenames = set(group.permissions.values_list("codename", flat=True))
    assert {"add_sale", "change_sale", "view_stocklevel", "add_laundryorder", "add_dayclosing"} <= codenames
    assert not any(c.startswith("delete_") for c in codenames)
    assert "change_stocklevel" not in codenames
    assert len(STAFF_PERMISSIONS) == len(codenames)


def test_mpesa_request_without_a_till_says_so(owner_client: Client, retail: Business, today: dt.date) -> None:
    from operations.services.sales import LineInput, sale_create

    card = ItemFactory.create(business=retail, name="Card", kind=ItemKind.SERVICE, sales_role="sales_shop")
    sale = sale_create(business=retail, sale_date=today, payment_method="mpesa", lines=[LineInput(card, Decimal(1))])
    response = owner_client.post(_url(Sale, "changelist"), {"action": "request_mpesa", "_selected_action": [sale.pk]})
    assert any("has no active M-Pesa till" in m for m in _messages(response))


def test_supplier_payment_posted_from_the_admin(owner_client: Client, water: Business, today: dt.date) -> None:
    from operations.models import SupplierPayment
    from operations.services.purchases import purchase_create

    cap = ItemFactory.create(business=water, name="Cap", kind=ItemKind.MATERIAL, sales_role="")
    supplier = SupplierFactory.create(business=water)
    purchase_create(business=water, supplier=supplier, purchase_date=today, lines=[(cap, Decimal(10), Decimal(50))])
    response = owner_client.post(
        _url(SupplierPayment, "add"),
        {
            "business": water.pk,
            "supplier": supplier.pk,
            "payment_date": today.isoformat(),
            "amount": "50.00",
            "paid_from": "bank",
            "reference": "EFT 1",
        },
    )
    assert response.status_code == 302, response.content.decode()[:2000]
    payment = SupplierPayment.objects.get(supplier=supplier)
    response = owner_client.post(
        _url(SupplierPayment, "changelist"), {"action": "post_payments", "_selected_action": [payment.pk]}
    )
    assert "Supplier payments posted: 1." in _messages(response)


def test_a_receipt_of_another_business_is_not_found(water: Business, retail: Business, today: dt.date) -> None:
    from operations.services.sales import LineInput, sale_create
    from tests.factories.tenancy import login, staff_with_perms

    card = ItemFactory.create(business=retail, name="Card", kind=ItemKind.SERVICE, sales_role="sales_shop")
    sale = sale_create(business=retail, sale_date=today, lines=[LineInput(card, Decimal(1))])
    client = login(staff_with_perms(water, ["operations.view_sale"]))
    assert client.get(reverse("admin:operations_sale_receipt", args=[sale.pk])).status_code == 404
    owner_of_retail = login(staff_with_perms(retail, ["operations.view_sale"], username="duka_staff"))
    assert owner_of_retail.get(reverse("admin:operations_sale_receipt", args=[sale.pk])).status_code == 200

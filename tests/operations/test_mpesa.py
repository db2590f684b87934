"""M-Pesa sales: posted to receivables, paid by a payment the M-Pesa module records and matches to the
sale by its number (operations' resolver) or allocates from suspense by hand (sale_settle_mpesa)."""

from __future__ import annotations

import datetime as dt
from decimal import Decimal

import pytest
from django.test import Client
from django.urls import reverse
from django.utils import timezone

from integrations.mpesa.models import Payment, Till
from integrations.mpesa.payments import payment_record, sale_settle_mpesa
from operations.models import Item, ItemKind, PaymentMethod, Sale
from operations.payments import reference_resolve
from operations.selectors import customer_balance
from operations.services.laundry import laundry_order_create
from operations.services.sales import LineInput, sale_create
from tenancy.models import Business
from tests.factories.operations import CustomerFactory, ItemFactory
from tests.operations.ledger import lines_by_role, role_balance

pytestmark = pytest.mark.django_db


def _till(business: Business) -> Till:
    return Till.objects.create(business=business, name="Till", shortcode=f"5{business.pk:05d}")


def _pay(till: Till, receipt: str, amount: Decimal, reference: str, msisdn: str = "") -> Payment:
    payment, _ = payment_record(
        till=till,
        receipt=receipt,
        amount=amount,
        paid_at=timezone.now(),
        msisdn=msisdn,
        payer_name="JOHN",
        account_reference=reference,
        payment_request=None,
    )
    return payment


def test_an_mpesa_sale_is_paid_when_the_payment_quotes_its_number(
    retail: Business, airtime: Item, today: dt.date
) -> None:
    sale = sale_create(
        business=retail, sale_date=today, payment_method=PaymentMethod.MPESA, lines=[LineInput(airtime, Decimal("1"))]
    )
    assert lines_by_role(sale.entry) == {
        "receivables": (Decimal("580.00"), 0),
        "sales_shop": (0, Decimal("500.00")),
        "vat_output": (0, Decimal("80.00")),
    }
    assert reference_resolve(retail, sale.number.lower()) is not None

    payment = _pay(_till(retail), "QKA1B2C3D4", Decimal("580.00"), sale.number)
    assert payment.status == "allocated" and payment.reference_kind == "sale" and payment.reference_id == sale.pk
    sale.refresh_from_db()
    assert (sale.amount_paid, sale.mpesa_receipt) == (Decimal("580.00"), "QKA1B2C3D4")
    assert role_balance(retail, "receivables") == 0
    assert role_balance(retail, "mpesa_clearing") == Decimal("580.00")


def test_an_unmatched_payment_is_allocated_to_the_sale_by_hand(retail: Business, airtime: Item, today: dt.date) -> None:
    customer = CustomerFactory.create(business=retail, name="Chebet")
    sale = sale_create(
        business=retail,
        sale_date=today,
        customer=customer,
        payment_method=PaymentMethod.MPESA,
        lines=[LineInput(airtime, Decimal("1"))],
    )
    assert customer_balance(customer=customer) == Decimal("580.00")
    payment = _pay(_till(retail), "QKZZZ00001", Decimal("580.00"), "no such ref")
    assert payment.status == "unallocated"

    sale = sale_settle_mpesa(sale=sale, payment=payment)
    assert sale.amount_paid == Decimal("580.00")
    payment.refresh_from_db()
    assert payment.status == "allocated"
    assert customer_balance(customer=customer) == 0
    assert role_balance(retail, "suspense") == 0 and role_balance(retail, "receivables") == 0
    assert Sale.objects.get(pk=sale.pk).mpesa_receipt == "QKZZZ00001"


def test_a_laundry_deposit_paid_by_mpesa_quoting_the_tag(laundry: Business, today: dt.date) -> None:
    wash = ItemFactory.create(
        business=laundry, name="Wash", kind=ItemKind.SERVICE, price=Decimal("150.00"), sales_role="sales_wash_fold"
    )
    customer = CustomerFactory.create(business=laundry, name="Njoki")
    laundry_order_create(
        business=laundry,
        customer=customer,
        tag="B77",
        received_date=today,
        promised_date=today,
        lines=[(wash, Decimal("4"))],
        deposit=Decimal("300.00"),
        deposit_method=PaymentMethod.MPESA,
    )
    assert customer_balance(customer=customer) == Decimal("300.00")
    payment = _pay(_till(laundry), "QKLAUNDRY1", Decimal("300.00"), "b77")
    assert payment.reference_kind == "laundry_order"
    assert customer_balance(customer=customer) == 0
    assert role_balance(laundry, "receivables") == 0
    assert role_balance(laundry, "customer_deposits") == Decimal("-300.00")


def test_the_sales_admin_settles_a_sale_with_a_payment_from_suspense(
    retail: Business, airtime: Item, today: dt.date, owner_client: Client
) -> None:
    sale = sale_create(
        business=retail, sale_date=today, payment_method=PaymentMethod.MPESA, lines=[LineInput(airtime, Decimal("1"))]
    )
    payment = _pay(_till(retail), "QKADMIN001", Decimal("580.00"), "typo ref")
    url = reverse("admin:operations_sale_changelist")
    form_page = owner_client.post(url, {"action": "settle_with_mpesa", "_selected_action": [sale.pk]})
    assert form_page.status_code == 200
    assert b"QKADMIN001" in form_page.content  # offered in the list of payments in suspense

    done = owner_client.post(
        url,
        {"action": "settle_with_mpesa", "_selected_action": [sale.pk], "confirm": "1", "payment": payment.pk},
        follow=True,
    )
    assert f"Sale {sale.number} settled by M-Pesa".encode() in done.content
    sale.refresh_from_db()
    payment.refresh_from_db()
    assert (sale.amount_paid, sale.mpesa_receipt, payment.status) == (Decimal("580.00"), "QKADMIN001", "allocated")
    assert role_balance(retail, "suspense") == 0 and role_balance(retail, "receivables") == 0

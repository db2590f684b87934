"""M-Pesa money lands in the right books exactly: only what a sale owes is applied to it, the rest is
the customer's credit or waits in suspense for a person; the automatic match, the admin's allocation
and the sale's "settle" action all record the customer's side; a sale's amount paid never exceeds
its total."""

from __future__ import annotations

import datetime as dt
from decimal import Decimal

import pytest
from django.db import IntegrityError, transaction
from django.test import Client
from django.urls import reverse
from django.utils import timezone

from accounts.models import JournalEntry
from integrations.mpesa.exceptions import InvalidRequest
from integrations.mpesa.models import Payment, PaymentApplication, PaymentStatus, Till
from integrations.mpesa.payments import payment_allocate, payment_record, sale_settle_mpesa
from operations.models import Customer, CustomerTransaction, CustomerTxKind, Item, PaymentMethod, Sale
from operations.selectors import customer_balance, customer_statement
from operations.services.sales import LineInput, sale_create
from tenancy.models import Business
from tests.factories.operations import CustomerFactory
from tests.operations.ledger import lines_by_role, role_balance

pytestmark = pytest.mark.django_db

PRICE = Decimal("580.00")


@pytest.fixture
def till(retail: Business) -> Till:
    return Till.objects.create(business=retail, name="Till", shortcode=f"5{retail.pk:05d}")


@pytest.fixture
def chebet(retail: Business) -> Customer:
    return CustomerFactory.create(business=retail, name="Chebet", credit_limit=Decimal("10000.00"))


def _sale(business: Business, today: dt.date, method: str, customer: Customer | None = None) -> Sale:
    return sale_create(
        business=business,
        sale_date=today,
        payment_method=method,
        customer=customer,
        lines=[LineInput(business.items.get(name="Scratch card"), Decimal("1"))],
    )


def _pay(till: Till, receipt: str, amount: str, reference: str) -> Payment:
    payment, created = payment_record(
        till=till,
        receipt=receipt,
        amount=Decimal(amount),
        paid_at=timezone.now(),
        msisdn="",
        payer_name="JOHN",
        account_reference=reference,
        payment_request=None,
    )
    assert created
    return payment


def _kinds(customer: Customer) -> list[tuple[str, Decimal]]:
    return [(tx.kind, tx.amount) for tx in CustomerTransaction.objects.filter(customer=customer).order_by("id")]


# ------------------------------------------------------------------------------------ point 1: overpayment


@pytest.mark.parametrize(
    ("paid", "amount_paid", "balance"),
    [("580.00", "580.00", "0.00"), ("300.00", "300.00", "280.00")],
    ids=["exact", "partial"],
)
def test_exact_and_partial_payments_are_applied_whole(
    retail: Business,
    airtime: Item,
    till: Till,
    chebet: Customer,
    today: dt.date,
    paid: str,
    amount_paid: str,
    balance: str,
) -> None:
    sale = _sale(retail, today, PaymentMethod.MPESA, chebet)
    payment = _pay(till, "QKEX000001", paid, sale.number)
    sale.refresh_from_db()
    assert (payment.status, payment.unallocated_amount) == (PaymentStatus.ALLOCATED, 0)
    assert sale.amount_paid == Decimal(amount_paid)
    assert customer_balance(customer=chebet) == Decimal(balance)
    assert lines_by_role(payment.entry) == {
        "mpesa_clearing": (Decimal(paid), 0),
        "receivables": (0, Decimal(paid)),
    }
    assert role_balance(retail, "suspense") == 0


def test_an_overpayment_with_a_customer_applies_what_is_owed_and_credits_the_rest(
    retail: Business, airtime: Item, till: Till, chebet: Customer, today: dt.date
) -> None:
    sale = _sale(retail, today, PaymentMethod.MPESA, chebet)
    payment = _pay(till, "QKOV000001", "1000.00", sale.number)

    sale.refresh_from_db()
    assert sale.amount_paid == PRICE  # never above the total
    assert payment.status == PaymentStatus.ALLOCATED and payment.customer == chebet
    assert "KES 420.00 paid over it is the customer's credit" in payment.match_description
    assert _kinds(chebet) == [
        (CustomerTxKind.SALE, PRICE),
        (CustomerTxKind.PAYMENT, -PRICE),
        (CustomerTxKind.CREDIT, Decimal("-420.00")),
    ]
    assert customer_balance(customer=chebet) == Decimal("-420.00")  # the shop owes Chebet 420
    # The ledger agrees with the sub-ledger: receivables hold the customer's credit; nothing in suspense.
    assert role_balance(retail, "receivables") == Decimal("-420.00")
    assert role_balance(retail, "suspense") == 0
    placed = PaymentApplication.objects.get(payment=payment)
    assert (placed.applied, placed.credit, placed.unallocated) == (PRICE, Decimal("420.00"), 0)


def test_a_payment_quoting_a_cash_sale_without_customer_waits_in_suspense(
    retail: Business, airtime: Item, till: Till, today: dt.date
) -> None:
    sale = _sale(retail, today, PaymentMethod.CASH)
    payment = _pay(till, "QKCASH0001", "580.00", sale.number)

    sale.refresh_from_db()
    assert sale.amount_paid == PRICE  # paid in cash already: unchanged
    assert (payment.status, payment.unallocated_amount) == (PaymentStatus.UNALLOCATED, PRICE)
    assert f"sale {sale.number} owed KES 0.00" in payment.match_description
    assert "waits in suspense (no customer to credit)" in payment.match_description
    assert lines_by_role(payment.entry) == {"mpesa_clearing": (PRICE, 0), "suspense": (0, PRICE)}
    assert role_balance(retail, "receivables") == 0


def test_a_second_payment_of_a_paid_sale_waits_in_suspense(
    retail: Business, airtime: Item, till: Till, today: dt.date
) -> None:
    sale = _sale(retail, today, PaymentMethod.MPESA)
    _pay(till, "QKPAID0001", "580.00", sale.number)
    again = _pay(till, "QKPAID0002", "580.00", sale.number)

    sale.refresh_from_db()
    assert (sale.amount_paid, sale.mpesa_receipt) == (PRICE, "QKPAID0001")
    assert (again.status, again.unallocated_amount) == (PaymentStatus.UNALLOCATED, PRICE)
    assert role_balance(retail, "receivables") == 0 and role_balance(retail, "suspense") == -PRICE


def test_an_overpaid_anonymous_sale_leaves_the_excess_in_suspense_for_a_person(
    retail: Business, airtime: Item, till: Till, chebet: Customer, today: dt.date
) -> None:
    sale = _sale(retail, today, PaymentMethod.MPESA)
    payment = _pay(till, "QKANON0001", "1000.00", sale.number)

    sale.refresh_from_db()
    assert sale.amount_paid == PRICE
    assert (payment.status, payment.unallocated_amount) == (PaymentStatus.UNALLOCATED, Decimal("420.00"))
    assert lines_by_role(payment.entry) == {
        "mpesa_clearing": (Decimal("1000.00"), 0),
        "receivables": (0, PRICE),
        "suspense": (0, Decimal("420.00")),
    }
    # The person gives the 420 to the customer who paid it: their credit.
    payment_allocate(
        payment=payment, customer=chebet, reference_kind="customer", reference_id=chebet.pk, acting_user=None
    )
    payment.refresh_from_db()
    assert (payment.status, payment.unallocated_amount) == (PaymentStatus.ALLOCATED, 0)
    assert lines_by_role(payment.allocation_entry) == {
        "suspense": (Decimal("420.00"), 0),
        "receivables": (0, Decimal("420.00")),
    }
    assert customer_balance(customer=chebet) == Decimal("-420.00")
    assert role_balance(retail, "suspense") == 0


def test_the_database_refuses_a_sale_paid_above_its_total(retail: Business, airtime: Item, today: dt.date) -> None:
    sale = _sale(retail, today, PaymentMethod.MPESA)
    with pytest.raises(IntegrityError), transaction.atomic():
        Sale.objects.filter(pk=sale.pk).update(amount_paid=sale.total + 1)


# ------------------------------------------------------------------------------------ point 2: one path


def test_allocating_suspense_to_a_customer_reduces_what_they_owe(
    retail: Business, airtime: Item, till: Till, chebet: Customer, today: dt.date
) -> None:
    _sale(retail, today, PaymentMethod.ACCOUNT, chebet)
    assert customer_balance(customer=chebet) == PRICE
    payment = _pay(till, "QKALLOC001", "500.00", "typo")
    assert payment.status == PaymentStatus.UNALLOCATED

    payment_allocate(
        payment=payment, customer=chebet, reference_kind="customer", reference_id=chebet.pk, acting_user=None
    )

    statement = customer_statement(customer=chebet, date_from=today, date_to=today)
    assert statement.closing == Decimal("80.00")
    assert [(line.kind, line.reference, line.amount) for line in statement.lines][-1] == (
        "Payment",
        "QKALLOC001",
        Decimal("-500.00"),
    )
    assert role_balance(retail, "receivables") == Decimal("80.00") and role_balance(retail, "suspense") == 0


def test_the_allocate_action_to_a_sale_reference_pays_the_sale(
    retail: Business, airtime: Item, till: Till, chebet: Customer, today: dt.date, owner_client: Client
) -> None:
    sale = _sale(retail, today, PaymentMethod.MPESA, chebet)
    payment = _pay(till, "QKALLOC002", "580.00", "no such ref")
    done = owner_client.post(
        reverse("admin:integrations_unallocatedpayment_changelist"),
        {
            "action": "allocate",
            "_selected_action": [payment.pk],
            "confirm": "1",
            "customer": "",
            "credit_role": "receivables",
            "reference_kind": "sale",
            "reference_id": sale.pk,
        },
        follow=True,
    )
    assert "Payments allocated: 1" in done.content.decode()
    sale.refresh_from_db()
    payment.refresh_from_db()
    assert (sale.amount_paid, sale.mpesa_receipt) == (PRICE, "QKALLOC002")
    assert payment.status == PaymentStatus.ALLOCATED and payment.customer == chebet  # the sale's customer
    assert customer_balance(customer=chebet) == 0
    assert role_balance(retail, "receivables") == 0 and role_balance(retail, "suspense") == 0


def test_settling_a_sale_with_a_larger_payment_credits_the_customer_the_rest(
    retail: Business, airtime: Item, till: Till, chebet: Customer, today: dt.date
) -> None:
    sale = _sale(retail, today, PaymentMethod.MPESA, chebet)
    payment = _pay(till, "QKSETTLE01", "600.00", "typo")
    sale = sale_settle_mpesa(sale=sale, payment=payment)
    assert sale.amount_paid == PRICE
    assert _kinds(chebet)[1:] == [(CustomerTxKind.PAYMENT, -PRICE), (CustomerTxKind.CREDIT, Decimal("-20.00"))]
    assert customer_balance(customer=chebet) == Decimal("-20.00")
    payment.refresh_from_db()
    assert payment.status == PaymentStatus.ALLOCATED
    assert JournalEntry.objects.filter(idempotency_key="mpesa-allocate:QKSETTLE01").count() == 1


def test_settling_an_anonymous_sale_with_a_larger_payment_keeps_the_rest_in_suspense(
    retail: Business, airtime: Item, till: Till, today: dt.date
) -> None:
    sale = _sale(retail, today, PaymentMethod.MPESA)
    payment = _pay(till, "QKSETTLE02", "600.00", "typo")
    sale = sale_settle_mpesa(sale=sale, payment=payment)
    payment.refresh_from_db()
    assert sale.amount_paid == PRICE
    assert (payment.status, payment.unallocated_amount) == (PaymentStatus.UNALLOCATED, Decimal("20.00"))
    assert role_balance(retail, "suspense") == Decimal("-20.00") and role_balance(retail, "receivables") == 0
    # Settled already: the rest cannot go to it again.
    with pytest.raises(InvalidRequest):
        payment_allocate(payment=payment, reference_kind="sale", reference_id=sale.pk, acting_user=None)

"""Customer ageing: payments settle the oldest charges first; the buckets add up to the balance."""

from __future__ import annotations

import datetime as dt
from decimal import Decimal

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra.django import TestCase as HypothesisTestCase

from operations.models import Customer, CustomerTransaction, CustomerTxKind
from operations.selectors import customer_ageing
from tenancy.models import Business
from tests.factories.operations import CustomerFactory
from tests.factories.tenancy import BusinessFactory

D = Decimal
AS_OF = dt.date(2026, 6, 30)


def _tx(customer: Customer, days_ago: int, amount: str) -> None:
    kind = CustomerTxKind.SALE if D(amount) > 0 else CustomerTxKind.PAYMENT
    CustomerTransaction.objects.create(
        business=customer.business,
        customer=customer,
        tx_date=AS_OF - dt.timedelta(days=days_ago),
        kind=kind,
        amount=D(amount),
    )


@pytest.mark.django_db
def test_payments_settle_the_oldest_charges_first(retail: Business) -> None:
    wafula = CustomerFactory.create(business=retail, name="Wafula")
    _tx(wafula, 120, "1000.00")  # 90+
    _tx(wafula, 75, "500.00")  # 61-90
    _tx(wafula, 40, "300.00")  # 31-60
    _tx(wafula, 5, "200.00")  # current
    _tx(wafula, 3, "-1200.00")  # pays the 1000 and 200 of the 500
    _tx(wafula, -1, "999.00")  # after the date: not counted
    [row] = customer_ageing(business_ids=[retail.pk], as_of=AS_OF)
    assert (row.balance, row.current, row.days_30, row.days_60, row.days_90) == (
        D("800.00"),
        D("200.00"),
        D("300.00"),
        D("300.00"),
        D("0.00"),
    )
    assert row.customer_id == wafula.pk and row.name == "Wafula"


@pytest.mark.django_db
def test_settled_customers_are_left_out_and_credit_is_current(retail: Business, laundry: Business) -> None:
    settled = CustomerFactory.create(business=retail, name="Settled")
    _tx(settled, 50, "400.00")
    _tx(settled, 10, "-400.00")
    in_credit = CustomerFactory.create(business=retail, name="Paid ahead")
    _tx(in_credit, 100, "100.00")
    _tx(in_credit, 2, "-250.00")
    other = CustomerFactory.create(business=laundry, name="Other business")
    _tx(other, 1, "70.00")
    rows = customer_ageing(business_ids=[retail.pk], as_of=AS_OF)
    assert [(r.name, r.balance, r.current, r.days_90) for r in rows] == [
        ("Paid ahead", D("-150.00"), D("-150.00"), D("0.00"))
    ]
    everyone = customer_ageing(business_ids=None, as_of=AS_OF)
    assert [r.name for r in everyone] == ["Other business", "Paid ahead"]  # biggest debt first
    assert customer_ageing(business_ids=None, as_of=AS_OF, customer_id=other.pk)[0].balance == D("70.00")
    assert customer_ageing(business_ids=None, as_of=AS_OF, customer_id=settled.pk) == []


class AgeingProperties(HypothesisTestCase):
    @settings(max_examples=25, deadline=None)
    @given(
        st.lists(
            st.tuples(st.integers(0, 200), st.decimals(D("-500"), D("500"), places=2).filter(lambda d: d != 0)),
            min_size=1,
            max_size=12,
        )
    )
    def test_buckets_add_up_to_the_balance(self, movements: list[tuple[int, Decimal]]) -> None:
        business = BusinessFactory.create(name="Shop (ageing)")
        customer = CustomerFactory.create(business=business)
        for days_ago, amount in movements:
            _tx(customer, days_ago, str(amount))
        balance = sum((a for _, a in movements), D("0"))
        rows = customer_ageing(business_ids=[business.pk], as_of=AS_OF)
        if balance == 0:
            assert rows == []
            return
        [row] = rows
        assert row.balance == balance
        assert row.current + row.days_30 + row.days_60 + row.days_90 == balance
        if balance > 0:  # what is owed is never older than the charges that make it up
            assert min(row.current, row.days_30, row.days_60, row.days_90) >= 0

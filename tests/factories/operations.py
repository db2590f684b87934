"""Factories for operations rows (catalogue, customers, suppliers)."""

from __future__ import annotations

from decimal import Decimal

import factory

from operations.models import Customer, Item, ItemKind, Supplier, TaxRate
from tests.factories.tenancy import BusinessFactory


class CustomerFactory(factory.django.DjangoModelFactory[Customer]):
    class Meta:
        model = Customer

    business = factory.SubFactory(BusinessFactory)
    name = factory.Sequence(lambda n: f"Customer {n}")
    credit_limit = Decimal("0.00")


class SupplierFactory(factory.django.DjangoModelFactory[Supplier]):
    class Meta:
        model = Supplier

    business = factory.SubFactory(BusinessFactory)
    name = factory.Sequence(lambda n: f"Supplier {n}")


class ItemFactory(factory.django.DjangoModelFactory[Item]):
    class Meta:
        model = Item

    business = factory.SubFactory(BusinessFactory)
    name = factory.Sequence(lambda n: f"Item {n}")
    kind = ItemKind.GOOD
    price = Decimal("100.00")
    tax_rate = TaxRate.STANDARD
    sales_role = ""

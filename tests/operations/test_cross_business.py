"""A document of one business never points to rows of another: not through an import (every
foreign key of the imported row is checked), not through a service (each refuses a related row of
another business before moving stock or money)."""

from __future__ import annotations

import datetime as dt
from typing import Any

import pytest
import tablib
from django.contrib import admin
from django.contrib.auth.models import User
from django.core.files.uploadedfile import SimpleUploadedFile
from django.urls import reverse

from accounts.models import JournalEntry
from integrations.mpesa.stk import sale_request_mpesa
from operations.exceptions import InvalidInput
from operations.models import Expense, Item, ItemKind, OpeningStock, PaidFrom, StockLevel, StockMovement
from operations.services.purchases import expense_post, purchase_create
from operations.services.sales import LineInput, deposit_return, sale_create
from operations.services.stock import stock_count_create, stock_opening_post
from tenancy.models import Business
from tenancy.scoping import BusinessScopedResource
from tenancy.services import staff_group_ensure
from tests.factories.mpesa import TillFactory
from tests.factories.operations import ItemFactory, SupplierFactory
from tests.factories.tenancy import MembershipFactory, UserFactory, login
from tests.operations.ledger import D

pytestmark = pytest.mark.django_db


def _water_staff() -> User:
    """A staff member with the default staff group and a membership in the water business only."""
    user = UserFactory.create(username="maji_staff")
    user.groups.add(staff_group_ensure())
    return user


def _nothing_moved() -> tuple[int, int, int, int]:
    return (
        OpeningStock.objects.count(),
        StockLevel.objects.count(),
        StockMovement.objects.count(),
        JournalEntry.objects.count(),
    )


def _csv_format_index(model_admin: Any) -> int:
    names = [fmt().get_title() for fmt in model_admin.get_import_formats()]
    return names.index("csv")


def test_opening_stock_import_for_an_item_of_another_business_is_refused(
    water: Business, laundry: Business, today: dt.date
) -> None:
    staff = _water_staff()
    MembershipFactory.create(user=staff, business=water)
    theirs = ItemFactory.create(business=laundry, name="Detergent 5 kg", kind=ItemKind.GOOD)
    before = _nothing_moved()
    model_admin: Any = admin.site._registry[OpeningStock]
    csv = f"id,business,item,stock_date,quantity,unit_cost\r\n,{water.pk},{theirs.pk},{today},5,10\r\n"
    client = login(staff)

    # The preview shows the refusal against the row, and offers no "confirm import".
    preview = client.post(
        reverse("admin:operations_openingstock_import"),
        {
            "format": str(_csv_format_index(model_admin)),
            "resource": "0",
            "import_file": SimpleUploadedFile("opening.csv", csv.encode(), content_type="text/csv"),
        },
    )
    assert preview.status_code == 200
    body = preview.content.decode()
    assert f"item {theirs.pk} does not belong to business {water.pk}" in body.lower()
    assert 'name="import_file_name"' not in body

    # Posting the confirmation anyway (skipping the preview) imports nothing either.
    import_format = model_admin.get_import_formats()[_csv_format_index(model_admin)]()
    stored = model_admin.write_to_tmp_storage(SimpleUploadedFile("opening.csv", csv.encode()), import_format)
    client.post(
        reverse("admin:operations_openingstock_process_import"),
        {
            "import_file_name": stored.name,
            "original_file_name": "opening.csv",
            "format": str(_csv_format_index(model_admin)),
            "resource": "0",
        },
    )
    assert _nothing_moved() == before
    assert not OpeningStock.objects.filter(item=theirs).exists()


class ItemWithLinks(BusinessScopedResource):
    """Any scoped resource: the check reads the model's foreign keys, not a list per resource."""

    class Meta:
        model = Item
        fields = ("id", "business", "name", "kind", "stock_item", "returns_item")


def test_an_imported_row_may_not_point_into_another_business_even_for_the_owner(
    owner: User, water: Business, laundry: Business
) -> None:
    theirs = ItemFactory.create(business=laundry, name="Empty jerrycan", kind=ItemKind.GOOD)
    dataset = tablib.Dataset(headers=["id", "business", "name", "kind", "stock_item", "returns_item"])
    dataset.append(["", water.pk, "Refill 20 L", ItemKind.SERVICE, "", theirs.pk])
    dataset.append(["", water.pk, "Bottle 1 L", ItemKind.GOOD, "", ""])
    result = ItemWithLinks().import_data(dataset, dry_run=False, user=owner, raise_errors=False)
    assert [row.import_type for row in result.rows] == ["invalid", "new"]
    assert "returns_item" in result.invalid_rows[0].error_dict
    assert not Item.objects.filter(name="Refill 20 L").exists()


def test_opening_stock_of_an_item_of_another_business_is_not_posted(
    water: Business, laundry: Business, today: dt.date
) -> None:
    theirs = ItemFactory.create(business=laundry, name="Detergent 5 kg", kind=ItemKind.GOOD)
    opening = OpeningStock.objects.create(
        business=water, item=theirs, stock_date=today, quantity=D("5"), unit_cost=D("10")
    )
    before = _nothing_moved()
    with pytest.raises(InvalidInput, match="belongs to another business"):
        stock_opening_post(opening=opening)
    assert _nothing_moved() == before
    opening.refresh_from_db()
    assert opening.status == "draft" and opening.entry is None


def test_services_refuse_related_rows_of_another_business(water: Business, laundry: Business, today: dt.date) -> None:
    theirs = ItemFactory.create(business=laundry, name="Soap bar", kind=ItemKind.GOOD)
    their_supplier = SupplierFactory.create(business=laundry)
    refill = ItemFactory.create(business=water, name="20 L refill", kind=ItemKind.SERVICE, sales_role="sales_refill")
    sold_from_theirs = ItemFactory.create(
        business=water, name="Refill", kind=ItemKind.SERVICE, sales_role="sales_refill", stock_item=theirs
    )
    swaps_theirs = ItemFactory.create(business=water, name="Swap", kind=ItemKind.GOOD, returns_item=theirs)
    deposit = ItemFactory.create(business=laundry, name="Hanger deposit", kind=ItemKind.DEPOSIT, sales_role="x")
    supplier = SupplierFactory.create(business=water)
    before = _nothing_moved()

    with pytest.raises(InvalidInput, match="belongs to another business"):
        sale_create(business=water, sale_date=today, lines=[LineInput(sold_from_theirs, D("1"))])
    with pytest.raises(InvalidInput, match="belongs to another business"):
        purchase_create(business=water, supplier=supplier, purchase_date=today, lines=[(swaps_theirs, D("1"), D("5"))])
    with pytest.raises(InvalidInput, match="belongs to another business"):
        stock_count_create(business=water, count_date=today, counted={theirs: D("3")})
    with pytest.raises(InvalidInput, match="belongs to another business"):
        deposit_return(business=water, item=deposit, quantity=D("1"), return_date=today, reference="slip 1")
    expense = Expense.objects.create(
        business=water,
        expense_date=today,
        category="expense_transport",
        amount=D("100"),
        paid_from=PaidFrom.CASH,
        supplier=their_supplier,
    )
    with pytest.raises(InvalidInput, match="belongs to another business"):
        expense_post(expense=expense)
    assert _nothing_moved() == before

    # An STK Push for a water sale is never sent from the laundry's till.
    sale = sale_create(
        business=water, sale_date=today, lines=[LineInput(refill, D("1"), D("50"))], payment_method="mpesa"
    )
    with pytest.raises(InvalidInput, match="belongs to another business"):
        sale_request_mpesa(sale=sale, till=TillFactory.create(business=laundry), phone="254708374149")


def test_a_member_of_both_businesses_still_cannot_mix_them_through_an_import(
    water: Business, laundry: Business, today: dt.date
) -> None:
    staff = _water_staff()
    MembershipFactory.create(user=staff, business=water)
    MembershipFactory.create(user=staff, business=laundry)
    staff = User.objects.get(pk=staff.pk)
    theirs = ItemFactory.create(business=laundry, name="Detergent 5 kg", kind=ItemKind.GOOD)
    ours = ItemFactory.create(business=water, name="Bottle 1 L", kind=ItemKind.GOOD)
    from operations.admin.stock import OpeningStockResource

    dataset = tablib.Dataset(headers=["id", "business", "item", "stock_date", "quantity", "unit_cost"])
    dataset.append(["", water.pk, theirs.pk, today.isoformat(), "5", "10"])
    dataset.append(["", water.pk, ours.pk, today.isoformat(), "5", "10"])
    result = OpeningStockResource().import_data(dataset, dry_run=False, user=staff, raise_errors=False)
    assert [row.import_type for row in result.rows] == ["invalid", "new"]
    assert list(OpeningStock.objects.values_list("item_id", flat=True)) == [ours.pk]

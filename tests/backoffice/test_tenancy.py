"""Per-business access: a staff member of business A can neither read nor change business B's
rows, on any admin built on BusinessScopedAdmin - lists, search, filters, exports, actions and
object URLs alike. The owner sees everything."""

from __future__ import annotations

from collections.abc import Callable
from html import escape
from typing import Any

import pytest
import tablib
from django.contrib import admin
from django.contrib.auth.models import Permission
from django.db.models import Model
from django.test import Client
from django.urls import reverse

from jobs.models import Job
from operations.jobs import EXPORT_BUSINESSES
from tenancy.models import Business, Membership
from tenancy.scoping import BusinessScopedAdmin, BusinessScopedResource, visible_businesses
from tests.factories.tenancy import MembershipFactory, UserFactory, login, staff_with_perms

# One way to make a row of each scoped model for a given business. A new scoped admin without an
# entry here fails test_every_scoped_admin_is_covered, so none can slip past these tests.
ROW_MAKERS: dict[type[Model], Callable[[Business], Model]] = {
    Business: lambda b: b,
    Membership: lambda b: MembershipFactory.create(business=b, user=UserFactory.create()),
    Job: lambda b: Job.objects.create(kind=EXPORT_BUSINESSES, business=b, message=f"job of {b.name}"),
}


def extra_row_makers() -> dict[type[Model], Callable[[Business], Model]]:
    """Row makers contributed by other apps' test packages (tests/<app>/scoping.py: ROW_MAKERS)."""
    import importlib

    makers: dict[type[Model], Callable[[Business], Model]] = {}
    for module in ("tests.accounts.scoping", "tests.operations.scoping", "tests.integrations.scoping"):
        try:
            makers.update(importlib.import_module(module).ROW_MAKERS)
        except ModuleNotFoundError:
            continue
    return makers


ALL_MAKERS = {**ROW_MAKERS, **extra_row_makers()}


def scoped_models() -> list[type[Model]]:
    return [model for model, ma in admin.site._registry.items() if isinstance(ma, BusinessScopedAdmin)]


def _perms(model: type[Model]) -> list[str]:
    app, name = model._meta.app_label, model._meta.model_name
    return [f"{app}.{action}_{name}" for action in ("view", "change", "delete", "add")] + ["tenancy.view_business"]


def _url(model: type[Model], view: str, *args: Any) -> str:
    return reverse(f"admin:{model._meta.app_label}_{model._meta.model_name}_{view}", args=args)


def test_every_scoped_admin_is_covered() -> None:
    assert set(scoped_models()) <= set(ALL_MAKERS), "add a row maker for each new scoped admin"


def test_every_admin_for_business_rows_is_scoped() -> None:
    """Any registered model that belongs to a business must use BusinessScopedAdmin."""
    for model, model_admin in admin.site._registry.items():
        names = {f.name for f in model._meta.get_fields()}
        if "business" in names or model is Business:
            assert isinstance(model_admin, BusinessScopedAdmin), f"{model.__name__} admin is not business-scoped"


@pytest.fixture
def two_businesses(water: Business, laundry: Business) -> tuple[Business, Business]:
    return water, laundry


@pytest.mark.django_db
@pytest.mark.parametrize("model", list(ALL_MAKERS), ids=lambda m: m.__name__)
def test_staff_of_one_business_cannot_read_or_change_another(
    model: type[Model], two_businesses: tuple[Business, Business]
) -> None:
    water, laundry = two_businesses
    row_a, row_b = ALL_MAKERS[model](water), ALL_MAKERS[model](laundry)
    staff = staff_with_perms(water, _perms(model))
    client = login(staff)

    # The list shows his business's row and not the other's, also when searching for it.
    listing = client.get(_url(model, "changelist"))
    assert listing.status_code == 200
    body = listing.content.decode()
    assert _url(model, "change", row_a.pk) in body
    assert _url(model, "change", row_b.pk) not in body
    search = client.get(_url(model, "changelist"), {"q": str(row_b)[:20]})
    assert _url(model, "change", row_b.pk) not in search.content.decode()
    # Asking the list for the other business by filter gives nothing of it.
    filtered = client.get(_url(model, "changelist"), {"business__id__exact": laundry.pk})
    assert _url(model, "change", row_b.pk) not in filtered.content.decode()

    # By URL id, the other business's row does not exist for him: read, change, delete, history.
    for view in ("change", "delete", "history"):
        response = client.get(_url(model, view, row_b.pk))
        assert response.status_code in (302, 403, 404), (view, response.status_code)
        assert str(row_b) not in response.content.decode() or response.status_code != 200
    before = model._default_manager.get(pk=row_b.pk)
    client.post(_url(model, "delete", row_b.pk), {"post": "yes"})
    assert model._default_manager.filter(pk=row_b.pk).exists()
    assert model._default_manager.get(pk=row_b.pk).__dict__.keys() == before.__dict__.keys()

    # An action posted with the other business's id acts on nothing of it.
    client.post(_url(model, "changelist"), {"action": "delete_selected", "_selected_action": [row_b.pk], "post": "yes"})
    assert model._default_manager.filter(pk=row_b.pk).exists()


@pytest.mark.django_db
def test_the_business_filter_offers_only_his_businesses(water: Business, laundry: Business, retail: Business) -> None:
    staff = staff_with_perms(water, _perms(Membership))
    MembershipFactory.create(user=staff, business=retail)
    body = login(staff).get(_url(Membership, "changelist")).content.decode()
    assert escape(water.name) in body and escape(retail.name) in body
    assert escape(laundry.name) not in body
    assert list(visible_businesses(staff).order_by("name")) == sorted([water, retail], key=lambda b: b.name)


@pytest.mark.django_db
def test_a_staff_member_cannot_assign_rows_to_another_business(water: Business, laundry: Business) -> None:
    staff = staff_with_perms(water, _perms(Membership))
    other_user = UserFactory.create(username="kamau")
    response = login(staff).post(
        _url(Membership, "add"), {"user": other_user.pk, "business": laundry.pk, "role": "staff"}
    )
    assert response.status_code == 200  # the form comes back with an error
    assert "Select a valid choice" in response.content.decode()
    assert not Membership.objects.filter(business=laundry).exists()


@pytest.mark.django_db
def test_a_staff_member_cannot_change_a_row_of_his_into_another_business(water: Business, laundry: Business) -> None:
    staff = staff_with_perms(water, _perms(Membership))
    row = MembershipFactory.create(business=water, user=UserFactory.create(username="akinyi"))
    login(staff).post(
        _url(Membership, "change", row.pk), {"user": row.user_id, "business": laundry.pk, "role": "staff"}
    )
    row.refresh_from_db()
    assert row.business == water


@pytest.mark.django_db
def test_export_contains_only_his_business(water: Business, laundry: Business) -> None:
    staff = staff_with_perms(water, _perms(Business))
    client = login(staff)
    response = client.post(
        reverse("admin:tenancy_business_export"),
        {
            "format": "0",
            "resource": "0",
            "export_items": [water.pk, laundry.pk],
            "businessresource_id": "on",
            "businessresource_name": "on",
        },
    )
    assert response.status_code == 200, response.content[:500]
    text = response.content.decode()
    assert water.name in text
    assert laundry.name not in text


@pytest.mark.django_db
def test_the_owner_sees_every_business(owner_client: Client, water: Business, laundry: Business) -> None:
    body = owner_client.get(_url(Business, "changelist")).content.decode()
    assert _url(Business, "change", water.pk) in body and _url(Business, "change", laundry.pk) in body


@pytest.mark.django_db
def test_a_user_granted_view_all_businesses_sees_every_business(water: Business, laundry: Business) -> None:
    accountant = UserFactory.create(
        username="accountant", perms=["tenancy.view_business", "tenancy.view_all_businesses"]
    )
    body = login(accountant).get(_url(Business, "changelist")).content.decode()
    assert water.name in body and laundry.name in body
    assert Permission.objects.filter(codename="view_all_businesses").exists()


class MembershipImport(BusinessScopedResource):
    class Meta:
        model = Membership
        fields = ("id", "user", "business", "role")


@pytest.mark.django_db
def test_an_import_cannot_create_or_overwrite_rows_of_another_business(water: Business, laundry: Business) -> None:
    staff = staff_with_perms(water, _perms(Membership))
    theirs = MembershipFactory.create(business=laundry, user=UserFactory.create(username="otieno"))
    newcomer = UserFactory.create(username="njeri")
    dataset = tablib.Dataset(headers=["id", "user", "business", "role"])
    dataset.append(["", newcomer.pk, water.pk, "staff"])  # his business: fine
    dataset.append(["", newcomer.pk, laundry.pk, "staff"])  # another business: refused
    dataset.append([theirs.pk, theirs.user_id, water.pk, "manager"])  # steal another's row: refused
    result = MembershipImport().import_data(dataset, dry_run=False, user=staff, raise_errors=False)
    assert [row.import_type for row in result.rows] == ["new", "invalid", "invalid"]
    assert Membership.objects.filter(user=newcomer, business=water).exists()
    assert not Membership.objects.filter(user=newcomer, business=laundry).exists()
    theirs.refresh_from_db()
    assert theirs.business == laundry and theirs.role == "staff"

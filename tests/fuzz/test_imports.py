"""Fuzzing every import resource of the admin (django-import-export: every admin with an import
button, found in the registry, so a new one is fuzzed without editing this file).

A CSV file of arbitrary rows and values - ids of this and another business's rows, ids of nothing,
awkward text, numbers, dates and flags - goes through the admin's two steps as the owner or a staff
member of one business: the preview (a dry run) changes no row of any table; a file the preview
accepts is then imported whole (every row it announced, nothing else), and no imported row belongs
to, or points into, a business the importer may not see.
"""

from __future__ import annotations

import csv
import datetime as dt
import io
from typing import Any

import pytest
from django.contrib import admin
from django.contrib.auth.models import User
from django.core.files.uploadedfile import SimpleUploadedFile
from django.db import models
from django.test import Client, RequestFactory
from django.urls import reverse
from hypothesis import event, given
from hypothesis import strategies as st
from import_export.admin import ImportMixin
from import_export.formats.base_formats import CSV
from import_export.resources import ModelResource

from accounts.models import Account
from operations.models import Customer, Item, Supplier
from operations.services.businesses import business_ensure
from tenancy.models import Business, BusinessKind
from tenancy.scoping import business_path_of, visible_business_ids
from tenancy.services import membership_assign, staff_group_ensure
from tests.fuzz.support import awkward_text, bool_text, changed, date_text, fuzz, number_text, row_counts


def import_resources() -> list[tuple[type[models.Model], type[ModelResource]]]:
    """(model, resource class) of every admin offering an import, as the owner sees them."""
    owner = User(is_superuser=True, is_staff=True, is_active=True)
    request = RequestFactory().get("/admin/")
    request.user = owner
    found = []
    for model, model_admin in admin.site._registry.items():
        if isinstance(model_admin, ImportMixin):
            found += [(model, resource) for resource in model_admin.get_import_resource_classes(request)]
    return sorted(found, key=lambda pair: pair[0]._meta.label)


RESOURCES = import_resources()


@pytest.fixture
def people(db: None) -> dict[str, Any]:
    """Two businesses with a few rows each; the owner and a staff member of the first (the demo's role)."""
    water = business_ensure(name="Maji Safi Water", kind=BusinessKind.WATER)
    laundry = business_ensure(name="Fresh Fold Laundry", kind=BusinessKind.LAUNDRY)
    for business in (water, laundry):
        Customer.objects.create(business=business, name=f"Customer of {business.name}")
        Supplier.objects.create(business=business, name=f"Supplier of {business.name}")
        Item.objects.create(business=business, name=f"Item of {business.name}", price=100)
    owner = User.objects.create_superuser("owner", password="x")
    staff = User.objects.create_user("maji", password="x", is_staff=True)
    staff.groups.add(staff_group_ensure())
    membership_assign(user=staff, business=water)
    return {"owner": owner, "staff": User.objects.get(pk=staff.pk)}


def ids_of(model: type[models.Model]) -> st.SearchStrategy[str]:
    """Ids of existing rows (of either business). Drawn as a position, looked up as the rows are
    then (the examples add rows, and Hypothesis needs the same draws to make the same choices)."""

    def nth(position: int) -> str:
        existing = list(model._default_manager.order_by("pk").values_list("pk", flat=True)[:20])
        return str(existing[position % len(existing)]) if existing else "1"

    return st.integers(0, 19).map(nth)


def income_roles() -> st.SearchStrategy[str]:
    """Roles of the businesses' income accounts (an item's sales role), drawn as a position."""

    def nth(position: int) -> str:
        roles = sorted(set(Account.objects.filter(type="income").exclude(role="").values_list("role", flat=True)))
        return roles[position % len(roles)]

    return st.integers(0, 40).map(nth)


def good(field: models.Field | None) -> st.SearchStrategy[str]:  # type: ignore[type-arg]
    """A value of the field's kind, as a person's spreadsheet would hold it."""
    if field is None:
        return st.just("")
    if field.name == "phone":
        return st.from_regex(r"07[0-9]{8}", fullmatch=True) | st.just("")
    if field.name == "sales_role":
        return income_roles() | st.just("")
    if isinstance(field, models.AutoField):
        return st.just("") | ids_of(field.model)  # type: ignore[arg-type]
    if field.is_relation:
        return ids_of(field.related_model)  # type: ignore[arg-type]
    if field.choices:
        return st.sampled_from([str(value) for value, _ in field.flatchoices])
    if isinstance(field, models.DecimalField):
        return st.decimals(0, 10**6, places=2).map(str)
    if isinstance(field, models.IntegerField):
        return st.integers(0, 1000).map(str)
    if isinstance(field, models.DateField):
        return st.dates(dt.date(2020, 1, 1), dt.date(2030, 12, 31)).map(str)
    if isinstance(field, models.BooleanField):
        return st.sampled_from(["1", "0", "TRUE", "FALSE"])
    size = min(getattr(field, "max_length", None) or 30, 30)
    return st.text(alphabet="abcdefghijklmnopqrstuvwxyz ABC-0123456789", min_size=1, max_size=size)


# What a damaged file, a hand edit or another system might put in any cell.
anything = awkward_text | number_text | date_text | bool_text | st.sampled_from(["", "0", "999999", "-1", "x"])


@st.composite
def files(draw: st.DrawFn, model: type[models.Model], resource: type[ModelResource]) -> str:
    """A CSV file for `resource`: its columns (now and then one left out, a stray one added), rows of
    values of each column's kind, a cell here and there replaced by anything."""
    columns = [field.column_name for field in resource().get_import_fields()]
    if draw(st.integers(0, 7)) == 0:
        columns.remove(draw(st.sampled_from(columns)))
    columns += draw(st.lists(st.sampled_from(["notes", ""]), max_size=1))
    model_fields: dict[str, Any] = {field.name: field for field in model._meta.concrete_fields}
    model_fields["id"] = model._meta.pk
    rows = draw(st.lists(st.tuples(*[good(model_fields.get(c)) for c in columns]).map(list), min_size=1, max_size=4))
    for row in rows:
        if draw(st.integers(0, 2)) == 0:
            row[draw(st.integers(0, len(row) - 1))] = draw(anything)
    out = io.StringIO()
    writer = csv.writer(out)
    writer.writerow(columns)
    writer.writerows(rows)
    return out.getvalue()


@st.composite
def imports(draw: st.DrawFn) -> tuple[type[models.Model], type[ModelResource], str, str]:
    model, resource = draw(st.sampled_from(RESOURCES))
    return model, resource, draw(st.sampled_from(["owner", "staff"])), draw(files(model, resource))


def read(text: str) -> Any:
    """The uploaded CSV as the admin reads it (a file it cannot read is an error on the form)."""
    try:
        return CSV(encoding="utf-8").create_dataset(text)
    except Exception:
        return None


def import_dataset(resource: type[ModelResource], dataset: Any, user: User, *, dry_run: bool) -> Any:
    """The admin's import of a dataset: the preview (dry_run) or, once confirmed, the import."""
    return resource().import_data(
        dataset, dry_run=dry_run, raise_errors=False, file_name="fuzz.csv", user=user, use_transactions=True
    )


@fuzz(150)
@given(case=imports())
def test_an_import_is_previewed_without_writing_then_imported_whole(
    people: dict[str, Any], case: tuple[type[models.Model], type[ModelResource], str, str]
) -> None:
    model, resource, who, text = case
    user = people[who]
    dataset = read(text)
    if dataset is None:
        event("unreadable file")
        return
    before = row_counts()

    preview = import_dataset(resource, dataset, user, dry_run=True)

    assert changed(before, row_counts()) == {}, "the preview wrote rows"
    # A cell that cannot be read is an error against its column (a validation error); only an id
    # that is not a number, read to find the row, is an error of the whole line, and says so.
    line_errors = [row_error.error for row in preview.rows for row_error in row.errors]
    assert all(isinstance(error, ValueError) and "whole number" in str(error) for error in line_errors), line_errors
    if preview.has_errors() or preview.has_validation_errors():
        event(f"{model.__name__}: refused")
        return
    event(f"{model.__name__}: imported ({who})")

    result = import_dataset(resource, dataset, user, dry_run=False)

    errors = [error.error for row in result.rows for error in row.errors]
    assert not errors and not result.has_validation_errors(), (errors, result.invalid_rows)
    new = preview.totals["new"]
    assert changed(before, row_counts()) == ({model._meta.db_table: new} if new else {})
    path = business_path_of(model)
    if path is not None and who == "staff":
        ids = [row.object_id for row in result.rows if row.object_id is not None]
        businesses = set(model._default_manager.filter(pk__in=ids).values_list(path, flat=True))
        assert businesses <= visible_business_ids(user)


@pytest.mark.parametrize(
    ("resource", "columns", "cells", "field", "message"),
    [
        ("Customer", "name,credit_limit", "Amina,abc", "credit_limit", "'abc' is not a number"),
        ("Customer", "name,credit_limit", "Amina,NaN", "credit_limit", "'NaN' is not a number"),
        ("Supplier", "name,phone", "Juma," + "7" * 25, "phone", "at most 20 characters"),
        ("OpeningStock", "item,stock_date,quantity,unit_cost", "{item},2026-11-01,1,1e20", "unit_cost", "14 digits"),
        ("OpeningStock", "item,stock_date,quantity,unit_cost", "999999,2026-11-01,1,1", "item_id", "no item '999999'"),
        ("Supplier", "name,phone", "Ju\x00ma,0722000000", "name", "NUL character"),
        (
            "Expense",
            "expense_date,category,amount,paid_from,description",
            "2020-01-01,expense_rent,0.01,cash,\x00",
            "description",
            "NUL character",
        ),
    ],
)
def test_a_bad_cell_is_shown_against_its_column(
    people: dict[str, Any], resource: str, columns: str, cells: str, field: str, message: str
) -> None:
    """The minimal examples the fuzzing found: each was an error of the whole line, shown as
    "[<class 'decimal.ConversionSyntax'>]", "value too long for type character varying(20)",
    "numeric field overflow", "Item matching query does not exist." or "PostgreSQL text fields cannot
    contain NUL (0x00) bytes"."""
    resource_class = next(r for model, r in RESOURCES if model.__name__ == resource)
    business = Business.objects.get(name="Maji Safi Water")
    item = Item.objects.get(business=business)
    text = f"business,{columns}\n{business.pk},{cells.format(item=item.pk)}\n"

    preview = import_dataset(resource_class, read(text), people["owner"], dry_run=True)

    assert not preview.has_errors()
    [invalid] = preview.invalid_rows
    assert any(message in str(error) for error in invalid.error_dict[field]), invalid.error_dict


@fuzz(20)
@given(case=imports())
def test_the_import_pages_answer_any_file_without_a_server_error(
    people: dict[str, Any], case: tuple[type[models.Model], type[ModelResource], str, str]
) -> None:
    """The same files through the admin's pages: the upload (a preview) and its confirmation."""
    model, _, who, text = case
    client = Client()
    client.force_login(people[who])
    info = f"admin:{model._meta.app_label}_{model._meta.model_name}"
    formats = admin.site._registry[model].get_import_formats()  # type: ignore[attr-defined]
    upload = SimpleUploadedFile("fuzz.csv", text.encode(), content_type="text/csv")
    before = row_counts()

    page = client.post(reverse(f"{info}_import"), {"format": formats.index(CSV), "import_file": upload})

    assert page.status_code in (200, 403), page.status_code  # 403: a staff member importing businesses
    assert changed(before, row_counts()) == {}
    confirm = page.context and page.context.get("confirm_form")
    event(f"{model.__name__}: {'confirmed' if confirm else 'refused'} ({who})")
    if not confirm:
        return
    done = client.post(reverse(f"{info}_process_import"), confirm.initial)
    assert done.status_code == 302, done.status_code
    moved = changed(before, row_counts())
    assert set(moved) <= {model._meta.db_table, "django_admin_log"}, moved

"""Tills of different businesses never share a store number (C2B confirmations are accepted on a
till for its shortcode or its store number): refused by the database and by the admin form."""

from __future__ import annotations

from typing import Any

import pytest
from django.db import IntegrityError, connection, transaction
from django.test import Client
from django.urls import reverse

from integrations.mpesa.models import DarajaEnvironment, Till, TillKind
from tenancy.models import Business
from tests.factories.mpesa import TillFactory

pytestmark = pytest.mark.django_db


def test_the_database_refuses_a_store_number_used_by_another_till(water: Business, laundry: Business) -> None:
    TillFactory.create(business=water, kind=TillKind.TILL, shortcode="5123456", store_number="5123400")
    with pytest.raises(IntegrityError), transaction.atomic():
        TillFactory.create(business=laundry, kind=TillKind.TILL, shortcode="5129999", store_number="5123400")
    other = TillFactory.create(business=laundry, kind=TillKind.TILL, shortcode="5128888")
    with pytest.raises(IntegrityError), transaction.atomic(), connection.cursor() as cursor:
        cursor.execute("UPDATE integrations_till SET store_number = '5123400' WHERE id = %s", [other.pk])
    # Blank store numbers, and the same number in the other environment, are fine.
    TillFactory.create(business=laundry, shortcode="5127777", store_number="")
    TillFactory.create(business=water, shortcode="5126666", store_number="")
    TillFactory.create(
        business=laundry, shortcode="5125555", store_number="5123400", environment=DarajaEnvironment.PRODUCTION
    )


def till_form(business: Business, **overrides: Any) -> dict[str, Any]:
    form = {
        "business": business.pk,
        "name": "Laundry till",
        "shortcode": "5129999",
        "kind": "till",
        "store_number": "5123400",
        "environment": "sandbox",
        "credentials_env_prefix": "",
        "initiator_name": "",
        "callback_base_url": "",
        "allowed_ips": "",
        "min_amount": "1",
        "max_amount": "150000",
        "is_active": "on",
    }
    form.update(overrides)
    return form


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        ({}, "Another till already uses this store number."),
        ({"store_number": "5123456"}, "Another till has this number as its shortcode."),
        ({"shortcode": "5123400", "store_number": ""}, "Another till has this number as its store number."),
    ],
)
def test_the_till_form_refuses_numbers_of_another_till(
    owner_client: Client, water: Business, laundry: Business, overrides: dict[str, Any], message: str
) -> None:
    TillFactory.create(business=water, kind=TillKind.TILL, shortcode="5123456", store_number="5123400")
    response = owner_client.post(reverse("admin:integrations_till_add"), till_form(laundry, **overrides))
    assert response.status_code == 200 and message in response.content.decode()
    assert not Till.objects.filter(business=laundry).exists()
    ok = owner_client.post(
        reverse("admin:integrations_till_add"), till_form(laundry, shortcode="5120001", store_number="5120000")
    )
    assert ok.status_code == 302 and Till.objects.filter(business=laundry).count() == 1

"""The admin's add forms that ask Daraja (STK request, receipt check) commit their row before Daraja
is called: while Daraja handles the call, another database connection already sees the row."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest
from django.db import connection
from django.test import Client
from django.urls import reverse

from integrations.mpesa.client import DarajaClient
from integrations.mpesa.models import PaymentRequest, PaymentRequestState, StatusQuery, StatusQueryState, Till
from tests.integrations.mpesa.fake_daraja import (
    FakeDaraja,
)

# Another connection must see what the admin committed: real transactions, not the test's.
pytestmark = pytest.mark.django_db(transaction=True)


def seen_elsewhere(sql: str, params: list[Any]) -> int:
    """A count read through a new database connection (sees committed rows only)."""
    other = connection.copy()
    try:
        with other.cursor() as cursor:
            cursor.execute(sql, params)
            return int(cursor.fetchone()[0])
    finally:
        other.close()


def spy(monkeypatch: pytest.MonkeyPatch, method: str, check: Callable[[dict[str, Any]], int]) -> list[int]:
    """Wrap DarajaClient.<method>: before the HTTP call, record what another connection sees."""
    seen: list[int] = []
    original = getattr(DarajaClient, method)

    def wrapped(self: DarajaClient, **kwargs: Any) -> Any:
        seen.append(check(kwargs))
        return original(self, **kwargs)

    monkeypatch.setattr(DarajaClient, method, wrapped)
    return seen


def test_a_receipt_check_is_committed_before_daraja_is_asked(
    daraja_till: Till, owner_client: Client, monkeypatch: pytest.MonkeyPatch
) -> None:
    seen = spy(
        monkeypatch,
        "transaction_status",
        lambda kw: seen_elsewhere(
            "SELECT count(*) FROM integrations_statusquery WHERE receipt = %s", [kw["transaction_id"]]
        ),
    )
    url = reverse("admin:integrations_statusquery_add")
    response = owner_client.post(url, {"till": daraja_till.pk, "receipt": "tkcmt00001", "account_reference": ""})

    assert response.status_code == 302, response.content[:2000]
    assert seen == [1]
    query = StatusQuery.objects.get()
    assert query.state == StatusQueryState.SENT and query.conversation_id and query.requested_by is not None


def test_a_payment_request_is_committed_before_daraja_is_asked(
    daraja_till: Till, owner_client: Client, monkeypatch: pytest.MonkeyPatch
) -> None:
    seen = spy(
        monkeypatch,
        "stk_push",
        lambda kw: seen_elsewhere(
            "SELECT count(*) FROM integrations_paymentrequest WHERE phone = %s AND state = 'sending'", [kw["phone"]]
        ),
    )
    url = reverse("admin:integrations_paymentrequest_add")
    data = {
        "till": daraja_till.pk,
        "phone": "0712 345 678",
        "amount": "150",
        "account_reference": "INV-9",
        "description": "Water",
    }
    response = owner_client.post(url, data, follow=True)

    assert response.status_code == 200
    assert seen == [1]
    request = PaymentRequest.objects.get()
    assert request.state == PaymentRequestState.SENT and request.checkout_request_id
    assert "was added successfully" in response.content.decode()


def test_an_invalid_add_form_is_shown_again_and_asks_nothing(
    daraja_till: Till, owner_client: Client, fake_daraja: FakeDaraja
) -> None:
    url = reverse("admin:integrations_paymentrequest_add")
    response = owner_client.post(url, {"till": daraja_till.pk, "phone": "", "amount": ""})
    assert response.status_code == 200 and "This field is required" in response.content.decode()
    assert not PaymentRequest.objects.exists() and not fake_daraja.received

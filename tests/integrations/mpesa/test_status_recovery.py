"""Recovery of lost C2B confirmations: a receipt is asked about again (with backoff) until Daraja gives a
definite answer, then left to a person; a call Daraja may have taken keeps its late result."""

from __future__ import annotations

import datetime as dt
import json
from decimal import Decimal
from typing import Any

import pytest
from celery.exceptions import SoftTimeLimitExceeded
from django.test import Client
from django.urls import reverse
from django.utils import timezone

from accounts.models import JournalEntry
from integrations.mpesa.client import DarajaClient
from integrations.mpesa.models import InboxKind, InboxState, Payment, StatusQuery, StatusQueryState, Till
from integrations.mpesa.status_queries import lost_confirmations_recover, status_query_request
from tests.factories.mpesa import deliver, sample, status_result, validated
from tests.integrations.mpesa.fake_daraja import (
    TRANSACTION_STATUS,
    FakeDaraja,
)

pytestmark = pytest.mark.django_db

REFUSAL = {"requestId": "x", "errorCode": "400.002.02", "errorMessage": "Bad Request - Invalid Initiator"}


@pytest.fixture(autouse=True)
def _no_client_backoff(monkeypatch: pytest.MonkeyPatch) -> None:
    """The client's own retries of a 503 wait 0.5 s, 1 s, 2 s: not here."""
    monkeypatch.setattr(DarajaClient, "_wait", lambda self, *args: None)


def asked(fake: FakeDaraja) -> list[str]:
    return [r.json["TransactionID"] for r in fake.requests_to(TRANSACTION_STATUS)]


def make_due(query: StatusQuery) -> None:
    """As if its next try's time had come."""
    StatusQuery.objects.filter(pk=query.pk).update(next_attempt_at=timezone.now() - dt.timedelta(seconds=1))


def timeout_body(query: StatusQuery) -> bytes:
    body = sample("09_reversal_result_failure_R000002.json")
    body["Result"]["ConversationID"] = query.conversation_id
    body["Result"]["OriginatorConversationID"] = query.originator_conversation_id
    return json.dumps(body).encode()


def test_a_lost_confirmation_is_asked_again_with_backoff_until_a_definite_answer(
    daraja_till: Till, fake_daraja: FakeDaraja
) -> None:
    validated(daraja_till, "TKRETRY001", minutes_ago=30)

    # Try 1: Daraja refuses (nothing sent): asked again in 2 minutes, not at once.
    fake_daraja.script(TRANSACTION_STATUS, status=400, body=REFUSAL)
    before = timezone.now()
    assert lost_confirmations_recover(older_than_seconds=600) == {StatusQueryState.RETRY: 1}
    query = StatusQuery.objects.get()
    assert query.attempts == 1 and query.next_attempt_at is not None
    assert dt.timedelta(minutes=2) <= query.next_attempt_at - before < dt.timedelta(minutes=3)
    assert lost_confirmations_recover(older_than_seconds=600) == {}
    assert asked(fake_daraja) == ["TKRETRY001"]

    # Try 2: taken, then Daraja's queue times out: asked again in 4 minutes.
    make_due(query)
    assert lost_confirmations_recover(older_than_seconds=600) == {StatusQueryState.SENT: 1}
    query.refresh_from_db()
    assert query.attempts == 2 and query.conversation_id
    before = timezone.now()
    deliver(daraja_till, InboxKind.STATUS_TIMEOUT, timeout_body(query), query.conversation_id)
    query.refresh_from_db()
    assert query.state == StatusQueryState.RETRY and "queue timeout" in query.result_desc
    assert query.next_attempt_at is not None
    assert dt.timedelta(minutes=4) <= query.next_attempt_at - before < dt.timedelta(minutes=5)

    # Try 3: Daraja answers that it cannot tell: asked again.
    make_due(query)
    lost_confirmations_recover(older_than_seconds=600)
    query.refresh_from_db()
    third = query.conversation_id
    deliver(daraja_till, InboxKind.STATUS_RESULT, status_result(query, result_code=2001), third)
    query.refresh_from_db()
    assert query.state == StatusQueryState.RETRY and query.attempts == 3

    # Try 4: its "completed" answer posts the payment.
    make_due(query)
    lost_confirmations_recover(older_than_seconds=600)
    query.refresh_from_db()
    assert query.attempts == 4 and query.conversation_id != third
    deliver(daraja_till, InboxKind.STATUS_RESULT, status_result(query, amount="40"), query.conversation_id)
    query.refresh_from_db()
    assert query.state == StatusQueryState.CONFIRMED and query.next_attempt_at is None
    assert Payment.objects.get(receipt="TKRETRY001").amount == Decimal("40.00")
    assert asked(fake_daraja) == ["TKRETRY001"] * 4
    make_due(query)
    assert lost_confirmations_recover(older_than_seconds=600) == {}  # settled: never asked again


def test_a_late_result_of_an_earlier_try_still_posts(daraja_till: Till, fake_daraja: FakeDaraja) -> None:
    validated(daraja_till, "TKRETRY002", minutes_ago=30)
    lost_confirmations_recover(older_than_seconds=600)
    first = StatusQuery.objects.get()
    make_due(first)  # no result came in time: asked again
    lost_confirmations_recover(older_than_seconds=600)
    second = StatusQuery.objects.get()
    assert second.attempts == 2 and second.conversation_id != first.conversation_id

    msg = deliver(daraja_till, InboxKind.STATUS_RESULT, status_result(first, amount="40"), first.conversation_id)

    assert msg.state == InboxState.PROCESSED, msg.error
    second.refresh_from_db()
    assert second.state == StatusQueryState.CONFIRMED
    assert JournalEntry.objects.filter(idempotency_key="mpesa:TKRETRY002").count() == 1


def test_after_the_last_try_the_query_needs_a_person(
    daraja_till: Till, fake_daraja: FakeDaraja, settings: Any, owner_client: Client
) -> None:
    settings.MPESA_STATUS_MAX_ATTEMPTS = 2
    validated(daraja_till, "TKRETRY003", minutes_ago=30)
    fake_daraja.script(TRANSACTION_STATUS, status=400, body=REFUSAL, times=2)
    lost_confirmations_recover(older_than_seconds=600)
    query = StatusQuery.objects.get()
    make_due(query)
    assert lost_confirmations_recover(older_than_seconds=600) == {StatusQueryState.NEEDS_ATTENTION: 1}
    query.refresh_from_db()
    assert query.next_attempt_at is None and "after 2 tries" in query.result_desc
    make_due(query)
    assert lost_confirmations_recover(older_than_seconds=600) == {}
    assert len(asked(fake_daraja)) == 2

    page = owner_client.get(reverse("admin:integrations_statusquery_changelist"), {"state__exact": "attention"})
    assert page.status_code == 200 and "TKRETRY003" in page.content.decode()


def test_a_query_left_sent_by_a_killed_task_is_asked_again(
    daraja_till: Till, fake_daraja: FakeDaraja, settings: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    settings.MPESA_STATUS_RESULT_WAIT_SECONDS = 0  # "too long" without a result is now
    validated(daraja_till, "TKRETRY004", minutes_ago=30)
    original = DarajaClient.transaction_status

    def soft_limit(self: DarajaClient, **kwargs: Any) -> Any:
        raise SoftTimeLimitExceeded()

    monkeypatch.setattr(DarajaClient, "transaction_status", soft_limit)
    with pytest.raises(SoftTimeLimitExceeded):
        lost_confirmations_recover(older_than_seconds=600)
    assert StatusQuery.objects.get().state == StatusQueryState.SENT  # committed before Daraja was called

    monkeypatch.setattr(DarajaClient, "transaction_status", original)
    assert lost_confirmations_recover(older_than_seconds=600) == {StatusQueryState.SENT: 1}
    query = StatusQuery.objects.get()
    assert query.attempts == 2 and query.conversation_id
    assert asked(fake_daraja) == ["TKRETRY004"]


@pytest.mark.parametrize("answer", [{"status": 503}, {"drop": True}])
def test_a_call_daraja_may_have_taken_is_not_an_error_and_its_result_applies(
    daraja_till: Till, fake_daraja: FakeDaraja, owner: Any, answer: dict[str, Any]
) -> None:
    fake_daraja.script(TRANSACTION_STATUS, times=4, **answer)  # the client's first try and its 3 retries

    query = status_query_request(till=daraja_till, receipt="TKMAYBE001", acting_user=owner)

    assert query.state == StatusQueryState.SENT and "no clear answer" in query.result_desc
    assert not query.conversation_id  # Daraja's ids never reached us
    late = json.loads(status_result(query, amount="75"))
    late["Result"]["ConversationID"] = "AG_20251106_LATE000001"
    late["Result"]["OriginatorConversationID"] = "9999-late-originator"
    msg = deliver(daraja_till, InboxKind.STATUS_RESULT, json.dumps(late).encode(), "AG_20251106_LATE000001")

    assert msg.state == InboxState.PROCESSED, msg.error
    query.refresh_from_db()
    assert query.state == StatusQueryState.CONFIRMED and query.conversation_id == "AG_20251106_LATE000001"
    assert Payment.objects.get(receipt="TKMAYBE001").amount == Decimal("75.00")

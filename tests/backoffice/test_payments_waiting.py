"""What waits for a person is counted on /healthz and on the admin dashboard: M-Pesa callbacks
parked in the inbox, lost confirmations no retry could settle (Transaction Status queries "needs a
person"), and the callback spool's pending and rejected files (owner only: one spool for all)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import redis
from django.test import Client
from django.urls import reverse
from django.utils.html import escape

from accounts.services import chart_ensure_default
from backoffice import health
from celeryconf.config import QUEUES
from integrations.mpesa.models import (
    InboxKind,
    InboxMessage,
    InboxState,
    StatusQuery,
    StatusQueryReason,
    StatusQueryState,
    Till,
)
from integrations.mpesa.spool import REJECTED, spool_write
from tenancy.models import Business
from tests.factories.mpesa import TillFactory, unallocated_payment
from tests.factories.tenancy import login, staff_with_perms

pytestmark = pytest.mark.django_db


def inbox_row(till: Till, daraja_id: str, state: str) -> InboxMessage:
    return InboxMessage.objects.create(till=till, kind=InboxKind.C2B_CONFIRMATION, daraja_id=daraja_id, state=state)


def test_healthz_counts_payments_waiting_for_a_person_without_failing(
    water: Business, clean_broker: redis.Redis, monkeypatch: pytest.MonkeyPatch, settings: Any
) -> None:
    settings.HEALTHZ_TOKEN = "monitor-token"  # the count is a detail: for the owner or a monitor
    monitor = Client(headers={"Authorization": "Bearer monitor-token"})

    def all_up(client: Any) -> tuple[dict[str, Any], dict[str, Any]]:
        return {q: {"ok": True, "workers": [f"{q}@test"]} for q in QUEUES}, {"ok": True, "seconds_ago": 1.0}

    monkeypatch.setattr(health, "_heartbeats", all_up)
    till = TillFactory.create(business=water)
    inbox_row(till, "TKH0000001", InboxState.PROCESSED)
    inbox_row(till, "TKH0000002", InboxState.FAILED)
    assert monitor.get("/healthz").json()["payments_waiting_for_person"] == 0
    assert "payments_waiting_for_person" not in Client().get("/healthz").json()  # not public

    inbox_row(till, "TKH0000003", InboxState.NEEDS_ATTENTION)
    inbox_row(till, "TKH0000004", InboxState.NEEDS_ATTENTION)
    response = monitor.get("/healthz")

    body = response.json()
    assert body["payments_waiting_for_person"] == 2
    assert response.status_code == 200 and body["status"] == "ok"  # work for a person, not an outage


def test_the_dashboard_shows_payments_waiting_per_business_with_a_link(
    water: Business, laundry: Business, owner_client: Client
) -> None:
    water_till, laundry_till = TillFactory.create(business=water), TillFactory.create(business=laundry)
    parked = inbox_row(water_till, "TKH0000005", InboxState.NEEDS_ATTENTION)
    inbox_row(water_till, "TKH0000006", InboxState.PROCESSED)
    inbox_row(laundry_till, "TKH0000007", InboxState.RECEIVED)

    page = owner_client.get(reverse("admin:index"))

    rows = {row["business"].pk: row for row in page.context["business_rows"]}
    assert rows[water.pk]["payments_waiting"] == 1 and rows[laundry.pk]["payments_waiting"] == 0
    assert page.context["all_businesses"]["payments_waiting"] == 1
    body = page.content.decode()
    assert "1 M-Pesa callback waiting for a person" in body
    inbox = reverse("admin:integrations_inboxmessage_changelist")
    link = f"{inbox}?till__business__id__exact={water.pk}&state__exact=attention"
    assert f'href="{escape(link)}"' in body
    # The link leads to the parked row (the filter is accepted, not refused with ?e=1).
    listing = owner_client.get(link)
    assert listing.status_code == 200
    assert [row.pk for row in listing.context["cl"].result_list] == [parked.pk]


def test_staff_see_only_their_business_count_and_no_link_without_the_inbox(water: Business, laundry: Business) -> None:
    inbox_row(TillFactory.create(business=water), "TKH0000008", InboxState.NEEDS_ATTENTION)
    inbox_row(TillFactory.create(business=laundry), "TKH0000009", InboxState.NEEDS_ATTENTION)
    inbox_row(TillFactory.create(business=laundry), "TKH0000010", InboxState.NEEDS_ATTENTION)
    staff = staff_with_perms(water, ["tenancy.view_business"], username="wanjiru")

    page = login(staff).get(reverse("admin:index"))

    assert [row["payments_waiting"] for row in page.context["business_rows"]] == [1]
    assert "1 M-Pesa callback waiting for a person" in page.content.decode()
    assert reverse("admin:integrations_inboxmessage_changelist") not in page.content.decode()


# ------------------------------------------- lost confirmations and the callback spool


def parked_query(till: Till, receipt: str, state: str = StatusQueryState.NEEDS_ATTENTION) -> StatusQuery:
    return StatusQuery.objects.create(
        business=till.business, till=till, receipt=receipt, reason=StatusQueryReason.LOST_CONFIRMATION, state=state
    )


def spool_files(directory: Path, pending: int, rejected: int) -> None:
    for _ in range(pending):
        spool_write(
            token="t", kind=InboxKind.STK_CALLBACK, body=b"{}", headers={}, remote_addr=None, directory=directory
        )
    (directory / REJECTED).mkdir(parents=True, exist_ok=True)
    for n in range(rejected):
        (directory / REJECTED / f"{n}.json").write_bytes(b"{}")


def test_healthz_counts_lost_confirmations_and_the_spool_without_failing(
    water: Business, clean_broker: redis.Redis, monkeypatch: pytest.MonkeyPatch, settings: Any, tmp_path: Path
) -> None:
    settings.HEALTHZ_TOKEN = "monitor-token"
    settings.MPESA_SPOOL_DIR = tmp_path / "spool"
    monitor = Client(headers={"Authorization": "Bearer monitor-token"})

    def all_up(client: Any) -> tuple[dict[str, Any], dict[str, Any]]:
        return {q: {"ok": True, "workers": [f"{q}@test"]} for q in QUEUES}, {"ok": True, "seconds_ago": 1.0}

    monkeypatch.setattr(health, "_heartbeats", all_up)
    till = TillFactory.create(business=water)
    parked_query(till, "TKQ0000001", StatusQueryState.RETRY)  # still being asked: not a person's yet
    body = monitor.get("/healthz").json()
    assert body["status_queries_waiting_for_person"] == 0
    assert body["spool"] == {"pending": 0, "rejected": 0, "oldest_pending_seconds": None}

    parked_query(till, "TKQ0000002")
    parked_query(till, "TKQ0000003")
    chart_ensure_default(business=water)
    unallocated_payment(till, "TKQ0000003")  # a person recorded it meanwhile: settled
    spool_files(tmp_path / "spool", pending=2, rejected=3)
    response = monitor.get("/healthz")

    body = response.json()
    assert body["status_queries_waiting_for_person"] == 1
    assert body["spool"]["pending"] == 2 and body["spool"]["rejected"] == 3
    assert body["spool"]["oldest_pending_seconds"] >= 0
    assert response.status_code == 200 and body["status"] == "ok"  # work for a person, not an outage
    assert set(Client().get("/healthz").json()) == {"status"}  # not public


def test_the_dashboard_shows_lost_confirmations_per_business_and_the_spool_to_the_owner(
    water: Business, laundry: Business, owner_client: Client, settings: Any, tmp_path: Path
) -> None:
    settings.MPESA_SPOOL_DIR = tmp_path / "spool"
    spool_files(tmp_path / "spool", pending=1, rejected=2)
    water_till, laundry_till = TillFactory.create(business=water), TillFactory.create(business=laundry)
    parked = parked_query(water_till, "TKQ0000004")
    parked_query(laundry_till, "TKQ0000005", StatusQueryState.CONFIRMED)

    page = owner_client.get(reverse("admin:index"))

    rows = {row["business"].pk: row for row in page.context["business_rows"]}
    assert rows[water.pk]["status_queries_waiting"] == 1 and rows[laundry.pk]["status_queries_waiting"] == 0
    assert page.context["all_businesses"]["status_queries_waiting"] == 1
    spool = page.context["all_businesses"]["spool"]
    assert spool["pending"] == 1 and spool["rejected"] == 2
    body = page.content.decode()
    assert "1 lost confirmation waiting for a person" in body
    assert "Callback spool: 1 waiting to import, 2 rejected" in body
    queries = reverse("admin:integrations_statusquery_changelist")
    link = f"{queries}?business__id__exact={water.pk}&state__exact=attention"
    assert f'href="{escape(link)}"' in body
    listing = owner_client.get(link)
    assert listing.status_code == 200
    assert [row.pk for row in listing.context["cl"].result_list] == [parked.pk]


def test_staff_see_their_lost_confirmations_but_not_the_spool(
    water: Business, laundry: Business, settings: Any, tmp_path: Path
) -> None:
    settings.MPESA_SPOOL_DIR = tmp_path / "spool"
    spool_files(tmp_path / "spool", pending=1, rejected=1)
    parked_query(TillFactory.create(business=water), "TKQ0000006")
    parked_query(TillFactory.create(business=laundry), "TKQ0000007")
    staff = staff_with_perms(water, ["tenancy.view_business"], username="wanjiru")

    page = login(staff).get(reverse("admin:index"))

    assert [row["status_queries_waiting"] for row in page.context["business_rows"]] == [1]
    body = page.content.decode()
    assert "1 lost confirmation waiting for a person" in body
    assert "Callback spool" not in body and "all_businesses" not in page.context
    assert reverse("admin:integrations_statusquery_changelist") not in body

"""The Backups page: read-only, the owner's only, "Back up now" behind backoffice.run_backup."""

from __future__ import annotations

import base64
import datetime as dt
import json
from typing import Any

import pytest
import redis
from django.urls import reverse
from django.utils import timezone

from backoffice.models import Backup, BackupState, VerifyState
from tenancy.models import Business
from tests.factories.tenancy import UserFactory, login, staff_with_perms

pytestmark = pytest.mark.django_db

LIST = reverse("admin:backoffice_backup_changelist")
NOW = reverse("admin:backoffice_backup_back_up_now")


def queued_backups(broker: redis.Redis) -> list[dict[str, Any]]:
    """The backoffice.backup messages waiting in the reports queue (kombu's Redis list), as (args, kwargs)."""
    found = []
    for raw in broker.lrange("reports", 0, -1):
        message = json.loads(raw)
        if message["headers"]["task"] == "backoffice.backup":
            _args, kwargs, _embed = json.loads(base64.b64decode(message["body"]))
            found.append(kwargs)
    return found


@pytest.fixture
def rows() -> list[Backup]:
    now = timezone.now()
    good = Backup.objects.create(
        state=BackupState.SUCCEEDED,
        started_at=now - dt.timedelta(hours=3),
        finished_at=now - dt.timedelta(hours=3) + dt.timedelta(minutes=2),
        duration_seconds=95.4,
        database_file="backoffice-20261130T230000Z-1.dump",
        media_file="backoffice-20261130T230000Z-1.media.tar.gz",
        size_bytes=12_345_678,
        sha256="ab" * 32,
        ledger_heads={"1": {"business": "Maji Safi Water", "number": 42, "hash": "cd" * 32}},
        row_counts={"accounts_journalentry": 4242, "operations_sale": 999},
        verify_state=VerifyState.VERIFIED,
        verify_message="Restored in 30.0 s into a scratch database (dropped): all match.",
        offsite_location="s3://offsite/backoffice-20261130T230000Z-1.dump",
    )
    failed = Backup.objects.create(
        state=BackupState.FAILED, started_at=now - dt.timedelta(hours=1), error="pg_dump exited with status 1: boom"
    )
    return [good, failed]


def test_the_owner_reads_the_list_and_a_backup(owner_client: Any, rows: list[Backup]) -> None:
    good, failed = rows
    page = owner_client.get(LIST)
    assert page.status_code == 200
    html = page.content.decode()
    assert 'id="backup-status"' in html and "(3 h ago), 11.8 MB, verified." in html
    assert "The last backup attempt failed: pg_dump exited with status 1: boom" in html
    assert "abababababab" in html and "11.8\xa0MB" in html and "95 s" in html and "copied" in html
    assert NOW in html  # the button

    detail = owner_client.get(reverse("admin:backoffice_backup_change", args=[good.pk]))
    assert detail.status_code == 200
    html = detail.content.decode()
    assert "Maji Safi Water (1)" in html and "no. 42" in html and "cd" * 32 in html
    assert "4,242" in html and "all match." in html
    # Read-only: no form to save, nothing to add or delete.
    assert 'name="_save"' not in html
    assert owner_client.get(reverse("admin:backoffice_backup_add")).status_code == 403
    assert owner_client.post(reverse("admin:backoffice_backup_delete", args=[failed.pk])).status_code == 403
    assert Backup.objects.count() == 2


def test_back_up_now_asks_then_queues_the_task(owner_client: Any, owner: Any, clean_broker: redis.Redis) -> None:
    confirm = owner_client.get(NOW)
    assert confirm.status_code == 200 and b"restores the dump into a scratch database" in confirm.content
    assert queued_backups(clean_broker) == []  # a GET queues nothing

    done = owner_client.post(NOW, follow=True)
    assert done.redirect_chain[-1][0] == LIST
    assert b"Backup queued" in done.content
    assert queued_backups(clean_broker) == [{"requested_by_id": owner.pk}]


def test_staff_without_every_business_never_see_backups(water: Business, clean_broker: redis.Redis) -> None:
    """A backup holds every business's books: "view backup" and "run backup" alone are not enough."""
    staff = staff_with_perms(water, ["backoffice.view_backup", "backoffice.run_backup"], username="wanjiru")
    client = login(staff)
    assert client.get(LIST).status_code == 403
    assert client.get(NOW).status_code == 403
    assert client.post(NOW).status_code == 403
    assert queued_backups(clean_broker) == []


def test_back_up_now_needs_its_permission(rows: list[Backup], clean_broker: redis.Redis) -> None:
    reader = UserFactory.create(username="auditor", perms=["backoffice.view_backup", "tenancy.view_all_businesses"])
    client = login(reader)
    page = client.get(LIST)
    assert page.status_code == 200 and NOW not in page.content.decode()
    assert client.get(NOW).status_code == 403
    assert client.post(NOW).status_code == 403
    assert queued_backups(clean_broker) == []

    runner = UserFactory.create(
        username="manager",
        perms=["backoffice.view_backup", "backoffice.run_backup", "tenancy.view_all_businesses"],
    )
    client = login(runner)
    assert NOW in client.get(LIST).content.decode()
    assert client.post(NOW).status_code == 302
    assert queued_backups(clean_broker) == [{"requested_by_id": runner.pk}]

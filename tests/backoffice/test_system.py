"""The System page (owner only) shows the readings: queues, workers from real heartbeats, beat and
periodic tasks, failures of the last 24 hours with tracebacks, M-Pesa work waiting, the host, the
last backup, open alerts; /healthz lists open alerts without changing its status."""

from __future__ import annotations

import datetime as dt
import json
import re
import time
from decimal import Decimal
from html import unescape
from typing import Any

import pytest
import redis
from django.test import Client
from django.urls import reverse
from django.utils import timezone
from django_celery_beat.models import IntervalSchedule, PeriodicTask

from accounts.services import chart_ensure_default
from backoffice.models import Alert, AlertCheck, AlertRule, Backup, BackupState, VerifyState
from celeryconf.heartbeat import BEAT_KEY, worker_reading_key
from integrations.mpesa.models import InboxKind, InboxMessage, InboxState, ReconciliationRun, ReconciliationState, Till
from integrations.mpesa.payloads import NAIROBI
from integrations.mpesa.payments import payment_record
from jobs.models import TaskEvent, TaskEventKind
from tenancy.models import Business
from tests.celery_support import BeatProcess, WorkerProcess, wait_for
from tests.factories.mpesa import TillFactory
from tests.factories.tenancy import UserFactory, login, staff_with_perms
from tests.worker_tasks import record_and_sleep

pytestmark = pytest.mark.django_db

URL = "/admin/system/"
TOKEN = "system-test-token-9a2e"


def text(response: Any) -> str:
    """The page's visible text, one space between words."""
    body = response.content.decode()
    body = re.sub(r"<(script|style)[^>]*>.*?</\1>", " ", body, flags=re.S)
    return re.sub(r"\s+", " ", unescape(re.sub(r"<[^>]+>", " ", body)))


def part(response: Any, name: str) -> str:
    """The visible text of one data-part of the page."""
    body = response.content.decode()
    match = re.search(rf'data-part="{name}"(.*?)(?=data-part="|\Z)', body, flags=re.S)
    assert match, name
    return re.sub(r"\s+", " ", unescape(re.sub(r"<[^>]+>", " ", match.group(1))))


@pytest.mark.worker
@pytest.mark.django_db(transaction=True)
def test_the_owner_sees_queues_and_workers_from_real_heartbeats(clean_broker: redis.Redis) -> None:
    owner = UserFactory.create(username="boss", is_superuser=True)
    worker = WorkerProcess("system", queues="default,payments", concurrency=2).start()
    try:
        for n in range(3):  # nobody consumes reports here: they wait
            record_and_sleep.apply_async(args=(f"r{n}", 0), queue="reports")
        children = wait_for(lambda: len(worker.child_pids()) == 2 and worker.child_pids(), 30, "the pool")
        wait_for(
            lambda: (
                (page := login(owner).get(URL))
                and all(f'data-pool-pid="{c}"' in page.content.decode() for c in children)
            ),
            30,
            "both pool processes on the page",
        )
        page = login(owner).get(URL)
    finally:
        worker.stop()
    assert page.status_code == 200
    queues = part(page, "queues")
    assert re.search(r"reports 3 0 3 \d+ s none", queues), queues
    assert re.search(rf"default 0 0 0 - {re.escape(worker.hostname)}", queues), queues
    workers = part(page, "workers")
    assert worker.proc is not None and f"{worker.hostname} {worker.proc.pid} default, payments" in workers
    for child in children:
        assert re.search(rf"{child}: [\d,.]+ MB", workers), workers
    # No beat in this test: said plainly.
    assert "No heartbeat from beat" in part(page, "beat")


@pytest.mark.worker
@pytest.mark.django_db(transaction=True)
def test_beats_tick_and_each_periodic_tasks_last_run_success_and_failure(clean_broker: redis.Redis) -> None:
    owner = UserFactory.create(username="boss", is_superuser=True)
    every_hour, _ = IntervalSchedule.objects.get_or_create(every=1, period=IntervalSchedule.HOURS)
    PeriodicTask.objects.create(name="Backups: nightly", task="backoffice.backup", interval=every_hour)
    PeriodicTask.objects.create(name="Emails: daily", task="backoffice.daily_email", interval=every_hour)
    now = timezone.now()
    events = [
        ("Backups: nightly", TaskEventKind.SUCCEEDED, 30, ""),
        ("Backups: nightly", TaskEventKind.FAILED, 2, "CalledProcessError: pg_dump exited with status 1"),
        ("Emails: daily", TaskEventKind.FAILED, 5, "SMTPServerDisconnected: gone"),
        ("Emails: daily", TaskEventKind.SUCCEEDED, 1, ""),
    ]
    for name, kind, hours, exception in events:
        TaskEvent.objects.create(
            kind=kind, task_name="t", periodic_task=name, exception=exception, at=now - dt.timedelta(hours=hours)
        )
    beat = BeatProcess().start()
    try:
        page = wait_for(
            lambda: (p := login(owner).get(URL)) and "scheduler last ticked" in p.content.decode() and p,
            30,
            "beat's tick on the page",
        )
    finally:
        beat.stop()
    assert beat.proc is not None and f"(PID {beat.proc.pid}," in part(page, "beat")
    body = page.content.decode()
    backups = re.search(r'<tr data-periodic="Backups: nightly" class="system-bad">(.*?)</tr>', body, flags=re.S)
    assert backups and "pg_dump exited with status 1" in backups.group(1)  # failing: no success since
    emails = re.search(r'<tr data-periodic="Emails: daily"\s*>(.*?)</tr>', body, flags=re.S)
    assert emails and "SMTPServerDisconnected" in emails.group(1)  # failed, then succeeded: not failing


def test_failed_and_retried_tasks_of_the_last_day_with_tracebacks(owner_client: Client) -> None:
    now = timezone.now()
    failed = TaskEvent.objects.create(
        kind=TaskEventKind.FAILED, task_name="jobs.run", worker="reports@box", exception="ValueError: bad row 12",
        traceback='Traceback (most recent call last):\n  File "jobs/runner.py", line 3\nValueError: bad row 12',
        at=now - dt.timedelta(hours=3),
    )  # fmt: skip
    retried = TaskEvent.objects.create(
        kind=TaskEventKind.RETRIED, task_name="backoffice.send_email", exception="SMTPConnectError: refused",
        at=now - dt.timedelta(minutes=5),
    )  # fmt: skip
    old = TaskEvent.objects.create(
        kind=TaskEventKind.FAILED,
        task_name="jobs.run",
        exception="KeyError: yesterday's",
        at=now - dt.timedelta(hours=25),
    )
    TaskEvent.objects.create(kind=TaskEventKind.SUCCEEDED, task_name="ledger.anchor", at=now)
    page = owner_client.get(URL)
    failures = part(page, "failures")
    assert "bad row 12" in failures and "jobs/runner.py" in failures and "reports@box" in failures
    assert "SMTPConnectError" in failures and "Retried" in failures
    assert "yesterday" not in failures and "ledger.anchor" not in failures
    body = page.content.decode()
    assert body.index(f'data-task-event="{retried.pk}"') < body.index(f'data-task-event="{failed.pk}"')
    assert f'data-task-event="{old.pk}"' not in body


def _payment(till: Till, receipt: str, day: dt.date) -> None:
    payment_record(
        till=till,
        receipt=receipt,
        amount=Decimal("120.00"),
        paid_at=dt.datetime.combine(day, dt.time(9), tzinfo=NAIROBI),
        msisdn="",
        payer_name="WALK IN",
        account_reference="",
        payment_request=None,
    )


def test_mpesa_backlog_waiting_work_and_unreconciled_days(water: Business, owner_client: Client) -> None:
    chart_ensure_default(business=water)
    till = TillFactory.create(business=water, name="Main till")
    other = TillFactory.create(business=water, name="Second till")
    received = timezone.now() - dt.timedelta(minutes=12)
    for n, state in enumerate(
        [InboxState.RECEIVED, InboxState.FAILED, InboxState.NEEDS_ATTENTION, InboxState.PROCESSED]
    ):
        row = InboxMessage.objects.create(till=till, kind=InboxKind.C2B_CONFIRMATION, daraja_id=f"RKA{n}", state=state)
        InboxMessage.objects.filter(pk=row.pk).update(received_at=received + dt.timedelta(minutes=n))
    today = timezone.localdate()
    for n, days_ago in enumerate((1, 2, 3, 40)):
        _payment(till, f"RKB{n}", today - dt.timedelta(days=days_ago))
    _payment(other, "RKC1", today - dt.timedelta(days=2))
    _payment(till, "RKD1", today)  # today is not over: not listed
    # A finished reconciliation of the main till covers two and three days ago; a failed one covers nothing.
    ReconciliationRun.objects.create(
        business=water, till=till, statement="s.csv", state=ReconciliationState.DONE,
        period_start=today - dt.timedelta(days=3), period_end=today - dt.timedelta(days=2),
    )  # fmt: skip
    ReconciliationRun.objects.create(
        business=water, till=till, statement="t.csv", state=ReconciliationState.FAILED,
        period_start=today - dt.timedelta(days=1), period_end=today - dt.timedelta(days=1),
    )  # fmt: skip

    page = owner_client.get(URL)
    mpesa = part(page, "mpesa")
    assert "Callbacks not processed yet 2 oldest 12 min ago" in mpesa
    assert "Callbacks waiting for a person 1" in mpesa
    assert "Days not reconciled (last 30) 2" in mpesa
    body = page.content.decode()
    assert f'data-unreconciled="{till.pk}:{today - dt.timedelta(days=1):%Y-%m-%d}"' in body
    assert f'data-unreconciled="{other.pk}:{today - dt.timedelta(days=2):%Y-%m-%d}"' in body
    assert f'data-unreconciled="{till.pk}:{today - dt.timedelta(days=2):%Y-%m-%d}"' not in body


def test_host_database_backup_and_open_alerts(owner_client: Client, clean_broker: redis.Redis) -> None:
    now = timezone.now()
    Backup.objects.create(
        state=BackupState.SUCCEEDED, started_at=now - dt.timedelta(hours=3), finished_at=now - dt.timedelta(hours=3),
        verify_state=VerifyState.VERIFIED,
    )  # fmt: skip
    Backup.objects.create(
        state=BackupState.SUCCEEDED, started_at=now - dt.timedelta(hours=1), finished_at=now - dt.timedelta(hours=1),
        verify_state=VerifyState.FAILED, verify_message="head hash of Maji differs",
    )  # fmt: skip
    rule = AlertRule.objects.create(name="Disk", check_kind=AlertCheck.DISK_FREE, threshold=10)
    Alert.objects.create(
        rule=rule, message="Disk free below 10%: 4.0% free", value="4.0%", first_seen_at=now, last_seen_at=now
    )
    page = owner_client.get(URL)
    host = part(page, "host")
    assert re.search(r"Memory used [\d,.]+ MB of [\d,.]+ MB \(\d+%\)", host), host
    assert re.search(r"Disk: Uploaded files \(MEDIA_ROOT\) \S+ [\d.]+% free", host), host
    assert re.search(r"Database size [\d,.]+ MB", host), host
    backup = part(page, "backup")
    assert "head hash of Maji differs" in backup and "succeeded, failed" in backup
    assert "Disk free below 10%: 4.0% free" in part(page, "alerts")


def test_the_broker_down_is_said_and_the_rest_still_shown(owner_client: Client, settings: Any) -> None:
    settings.REDIS_URL = "redis://127.0.0.1:1/0"  # nothing listens there
    page = owner_client.get(URL)
    assert page.status_code == 200
    assert "does not answer" in part(page, "broker-error")
    assert "Unknown (the broker does not answer)" in part(page, "queues")
    assert "Database size" in part(page, "host")


def test_malformed_heartbeats_are_left_out_not_a_crash(owner_client: Client, clean_broker: redis.Redis) -> None:
    """Whatever sits under the heartbeat keys (an older writer, a hand-typed SET), the page answers."""
    clean_broker.set(worker_reading_key("garbage@box"), b"{not json")
    clean_broker.set(worker_reading_key("list@box"), json.dumps([1, 2]))
    clean_broker.set(worker_reading_key("partial@box"), json.dumps({"hostname": "partial@box"}))
    clean_broker.set(worker_reading_key("types@box"), json.dumps({"hostname": "types@box", "pid": "x", "at": 1}))
    good = {"hostname": "good@box", "pid": 42, "queues": ["default"], "at": time.time(), "rss": 50 * 1024 * 1024}
    clean_broker.set(worker_reading_key("good@box"), json.dumps(good))
    clean_broker.set(BEAT_KEY, json.dumps({"at": "yesterday"}))
    page = owner_client.get(URL)
    assert page.status_code == 200
    workers = part(page, "workers")
    assert "good@box 42 default 50.0 MB" in workers
    assert not any(f"{name}@box" in workers for name in ("garbage", "list", "partial", "types"))
    assert "No heartbeat from beat" in part(page, "beat")


def test_auto_refresh_only_when_asked(owner_client: Client) -> None:
    assert b'http-equiv="refresh"' not in owner_client.get(URL).content
    assert b'<meta http-equiv="refresh" content="30">' in owner_client.get(URL, {"refresh": "30"}).content
    assert b'http-equiv="refresh"' not in owner_client.get(URL, {"refresh": "1"}).content
    assert b'http-equiv="refresh"' not in owner_client.get(URL, {"refresh": "x"}).content


def test_only_the_owner_may_open_it(water: Business) -> None:
    assert Client().get(URL).status_code == 302  # to the login page
    everything = [
        "backoffice.view_alert",
        "backoffice.view_alertrule",
        "backoffice.change_alertrule",
        "jobs.view_job",
        "integrations.view_inboxmessage",
    ]
    staff = staff_with_perms(water, everything)
    assert login(staff).get(URL).status_code == 403
    partner = UserFactory.create(username="partner", perms=["tenancy.view_all_businesses"])
    assert login(partner).get(URL).status_code == 200
    assert login(partner).post(URL).status_code == 405  # nothing on it changes data


def test_the_sidebar_offers_the_page_to_the_owner_only(water: Business, owner_client: Client) -> None:
    link = f'href="{URL}"'
    assert link in owner_client.get(reverse("admin:index")).content.decode()
    staff = staff_with_perms(water, ["tenancy.view_business"])
    assert link not in login(staff).get(reverse("admin:index")).content.decode()


# -- /healthz --------------------------------------------------------------------------------------


def monitor() -> Client:
    return Client(headers={"Authorization": f"Bearer {TOKEN}"})


def test_healthz_lists_open_alerts_to_the_owner_and_monitor_only(settings: Any, clean_broker: redis.Redis) -> None:
    settings.HEALTHZ_TOKEN = TOKEN
    now = timezone.now()
    rule = AlertRule.objects.create(name="Backup stale", check_kind=AlertCheck.BACKUP_STALE, threshold=26)
    Alert.objects.create(
        rule=rule, message="The last good backup finished 30 h ago", value="30.0 h", first_seen_at=now, last_seen_at=now
    )
    Alert.objects.create(rule=rule, message="resolved", first_seen_at=now, last_seen_at=now, resolved_at=now)
    body = monitor().get("/healthz").json()
    assert body["alerts"]["open"] == [
        {
            "rule": "Backup stale",
            "check": "backup_stale",
            "message": "The last good backup finished 30 h ago",
            "value": "30.0 h",
            "since": now.isoformat(),
        }
    ]
    assert Client().get("/healthz").json() == {"status": "down"}  # no worker here; no details for the public


@pytest.mark.worker
@pytest.mark.django_db(transaction=True)
def test_an_open_alert_does_not_turn_a_healthy_status_down(settings: Any, clean_broker: redis.Redis) -> None:
    settings.HEALTHZ_TOKEN = TOKEN
    now = timezone.now()
    rule = AlertRule.objects.create(name="Disk", check_kind=AlertCheck.DISK_FREE, threshold=10)
    Alert.objects.create(rule=rule, message="Disk free below 10%", value="9%", first_seen_at=now, last_seen_at=now)
    worker = WorkerProcess("all-queues").start()
    beat = BeatProcess().start()
    try:
        response = monitor().get("/healthz")
        public = Client().get("/healthz")
    finally:
        beat.stop()
        worker.stop()
    assert response.status_code == 200 and public.status_code == 200
    body = response.json()
    assert body["status"] == "ok" and [a["message"] for a in body["alerts"]["open"]] == ["Disk free below 10%"]
    assert public.json() == {"status": "ok"}

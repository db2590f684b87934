"""Alert rules: each kind judged on the readings it uses, alerts opened, emailed at most once per
period per rule, resolved when the condition clears; the seeded rules and schedule; the task on a
real worker; the admin pages and who may use them; open_alerts for the dashboard."""

from __future__ import annotations

import datetime as dt
import threading
from decimal import Decimal
from typing import Any

import pytest
import redis
from django.contrib.auth.models import AnonymousUser, User
from django.db import IntegrityError, connection, transaction
from django.test import Client
from django.urls import reverse
from django.utils import timezone
from django_celery_beat.models import IntervalSchedule, PeriodicTask

from backoffice.alerts import (
    RULE_SPECS,
    alert_rule_validate,
    alerts_check,
    alerts_checked_at,
    open_alerts,
    rule_evaluate,
)
from backoffice.models import (
    Alert,
    AlertCheck,
    AlertRule,
    Backup,
    BackupState,
    EmailKind,
    EmailLog,
    EmailState,
    OwnerEmail,
    OwnerEmailKind,
    VerifyState,
)
from backoffice.readings import (
    MB,
    BackupStatus,
    BeatStatus,
    DiskStatus,
    HostStatus,
    MpesaStatus,
    ProcessMemory,
    QueueStatus,
    Readings,
    WorkerStatus,
    readings_collect,
)
from celeryconf.config import QUEUES
from celeryconf.queues import queue_depths
from integrations.mpesa.models import InboxKind, InboxMessage, InboxState
from jobs.models import TaskEvent, TaskEventKind
from jobs.selectors import PeriodicTaskStatus, is_failing
from tenancy.models import Business
from tests.celery_support import WorkerProcess, wait_for
from tests.factories.mpesa import TillFactory
from tests.factories.tenancy import OwnerFactory, UserFactory, login, staff_with_perms
from tests.migration_support import data_migration_apply
from tests.worker_tasks import record_and_sleep

RULES_MIGRATION = ("backoffice", "0004_alert_rules")
SCHEDULE_MIGRATION = ("backoffice", "0005_check_alerts_schedule")
NOW = dt.datetime(2026, 11, 30, 6, 0, tzinfo=dt.UTC)


def apply_migration(node: tuple[str, str]) -> None:
    data_migration_apply(node)


@pytest.fixture
def rules(db: None) -> dict[str, AlertRule]:
    """The seeded rules, by check kind."""
    apply_migration(RULES_MIGRATION)
    return {r.check_kind: r for r in AlertRule.objects.all()}


def only(rules: dict[str, AlertRule], kind: str) -> AlertRule:
    """Keep one rule: the others would fire on this machine too (no workers, no backups...)."""
    AlertRule.objects.exclude(check_kind=kind).delete()
    return rules[kind]


@pytest.fixture
def owner_recipients(db: None) -> None:
    OwnerEmail.objects.update_or_create(kind=OwnerEmailKind.DAILY, defaults={"recipients": "owner@example.com"})


# -- Readings built by hand: each rule on the numbers it uses -------------------------------------


def queues(**depths: tuple[int, float | None]) -> dict[str, QueueStatus]:
    result = {
        name: QueueStatus(name=name, waiting=0, unacked=0, oldest_seconds=None, workers=["w@h"]) for name in QUEUES
    }
    for name, (depth, oldest) in depths.items():
        result[name] = QueueStatus(name=name, waiting=depth - 1, unacked=1, oldest_seconds=oldest, workers=["w@h"])
    return result


def worker(
    hostname: str = "default@h",
    worker_queues: tuple[str, ...] = QUEUES,
    *,
    main_mb: float = 90,
    pool_mb: tuple[float, ...] = (80, 80),
    restarts: int = 0,
) -> WorkerStatus:
    return WorkerStatus(
        hostname=hostname,
        pid=100,
        queues=list(worker_queues),
        rss=int(main_mb * MB),
        pool=[ProcessMemory(pid=101 + i, rss=int(mb * MB), role="pool") for i, mb in enumerate(pool_mb)],
        tasks_done=5,
        started_at=NOW - dt.timedelta(hours=1),
        seen_at=NOW,
        restarts_last_hour=restarts,
        pool_started=len(pool_mb),
    )


def beat(*, tick_seconds_ago: float | None = 1) -> BeatStatus:
    tick = None if tick_seconds_ago is None else NOW - dt.timedelta(seconds=tick_seconds_ago)
    return BeatStatus(hostname="h", pid=7, rss=50 * MB, seen_at=NOW, last_tick_at=tick)


def host(*, used_mb: float = 1000, free_percent: float = 50) -> HostStatus:
    total = 100 * 1024 * MB
    disk = DiskStatus(
        label="Uploaded files (MEDIA_ROOT)", path="/app/media", total=total, free=int(total * free_percent / 100)
    )
    return HostStatus(memory_total=4096 * MB, memory_used=int(used_mb * MB), disks=[disk])


def backup(
    *, good_hours_ago: float | None = 2, state: str = BackupState.SUCCEEDED, verify: str = VerifyState.VERIFIED
) -> BackupStatus:
    good = None if good_hours_ago is None else NOW - dt.timedelta(hours=good_hours_ago)
    return BackupStatus(
        last_good_at=good,
        last_id=1,
        last_started_at=NOW - dt.timedelta(hours=(good_hours_ago or 0) + 0.1),
        last_finished_at=good,
        last_state=state,
        last_verify_state=verify,
        last_verify_message="restored into a scratch database: head hashes differ"
        if verify == VerifyState.FAILED
        else "",
    )


def mpesa(*, callbacks: int = 0, queries: int = 0) -> MpesaStatus:
    return MpesaStatus(
        inbox_backlog=0, inbox_oldest_at=None, callbacks_waiting=callbacks, status_queries_waiting=queries
    )


def periodic(*, failed_hours_ago: float | None, succeeded_hours_ago: float | None) -> list[PeriodicTaskStatus]:
    def at(hours: float | None) -> dt.datetime | None:
        return None if hours is None else NOW - dt.timedelta(hours=hours)

    return [
        PeriodicTaskStatus(
            id=1,
            name="Backups: nightly",
            task="backoffice.backup",
            enabled=True,
            schedule="At 02:00 AM",
            last_run_at=at(1),
            last_success_at=at(succeeded_hours_ago),
            last_failure_at=at(failed_hours_ago),
            last_error="CalledProcessError: pg_dump exited with 1" if failed_hours_ago is not None else "",
            last_failure_id=7 if failed_hours_ago is not None else None,
            failing=is_failing(last_success_at=at(succeeded_hours_ago), last_failure_at=at(failed_hours_ago)),
        )
    ]


def healthy(**parts: Any) -> Readings:
    """Every part read and fine, but for `parts`."""
    values: dict[str, Any] = {
        "queues": queues(),
        "workers": [worker()],
        "beat": beat(),
        "host": host(),
        "database_bytes": 50 * MB,
        "backup": backup(),
        "mpesa": mpesa(),
        "periodic": periodic(failed_hours_ago=None, succeeded_hours_ago=1),
    }
    values.update(parts)
    return Readings(at=NOW, **values)


CASES: list[tuple[str, dict[str, Any], dict[str, Any], str]] = [
    # (check, parts that fire it, parts on the edge that do not, what the message says)
    (
        AlertCheck.QUEUE_DEPTH,
        {"queues": queues(payments=(501, 1))},
        {"queues": queues(payments=(500, 1))},
        "payments: 501",
    ),
    (AlertCheck.QUEUE_AGE, {"queues": queues(default=(3, 301))}, {"queues": queues(default=(3, 300))}, "default waits"),
    (
        AlertCheck.WORKER_MISSING,
        {"workers": [worker("default@h", ("default", "payments"))]},
        {"workers": [worker("a@h", ("default", "payments")), worker("r@h", ("reports",))]},
        "reports",
    ),
    (
        AlertCheck.WORKER_MEMORY,
        {"workers": [worker(pool_mb=(80, 100.5))]},
        {"workers": [worker(main_mb=100, pool_mb=(100, 100))]},
        "pool process 102",
    ),
    (AlertCheck.WORKER_RESTARTS, {"workers": [worker(restarts=6)]}, {"workers": [worker(restarts=5)]}, "6 times"),
    (AlertCheck.HOST_MEMORY, {"host": host(used_mb=3585)}, {"host": host(used_mb=3584)}, "3,585 MB"),
    (AlertCheck.DISK_FREE, {"host": host(free_percent=9.9)}, {"host": host(free_percent=10)}, "9.9% free"),
    (AlertCheck.BACKUP_STALE, {"backup": backup(good_hours_ago=26.5)}, {"backup": backup(good_hours_ago=26)}, "ago"),
    (
        AlertCheck.BACKUP_UNVERIFIED,
        {"backup": backup(verify=VerifyState.FAILED)},
        {"backup": backup(good_hours_ago=1.9, verify=VerifyState.PENDING)},
        "head hashes differ",
    ),
    (AlertCheck.PAYMENTS_WAITING, {"mpesa": mpesa(queries=1)}, {"mpesa": mpesa()}, "1 receipt checks"),
    (
        AlertCheck.PERIODIC_TASK_FAILED,
        {"periodic": periodic(failed_hours_ago=3, succeeded_hours_ago=20)},
        {"periodic": periodic(failed_hours_ago=3, succeeded_hours_ago=2)},
        "pg_dump exited",
    ),
    (
        AlertCheck.BEAT_MISSING,
        {"beat": beat(tick_seconds_ago=121)},
        {"beat": beat(tick_seconds_ago=120)},
        "ticked 2 min",
    ),
]


def test_every_check_has_a_case_and_a_spec() -> None:
    assert {c for c, _, _, _ in CASES} == set(AlertCheck.values) == set(RULE_SPECS)


@pytest.mark.parametrize(("kind", "firing", "clear", "says"), CASES, ids=[c[0] for c in CASES])
def test_each_rule_fires_above_its_threshold_and_not_at_it(
    rules: dict[str, AlertRule], kind: str, firing: dict[str, Any], clear: dict[str, Any], says: str
) -> None:
    rule = rules[kind]
    assert rule_evaluate(rule=rule, readings=healthy()) == rule_evaluate(rule=rule, readings=healthy(**clear))
    assert rule_evaluate(rule=rule, readings=healthy(**clear)).firing is False  # type: ignore[union-attr]
    finding = rule_evaluate(rule=rule, readings=healthy(**firing))
    assert finding is not None and finding.firing, finding
    assert says in finding.message and finding.value


UNREADABLE: dict[str, dict[str, Any]] = {
    AlertCheck.QUEUE_DEPTH: {"queues": None},
    AlertCheck.QUEUE_AGE: {"queues": None},
    AlertCheck.WORKER_MISSING: {"workers": None},
    AlertCheck.WORKER_MEMORY: {"workers": None},
    AlertCheck.WORKER_RESTARTS: {"workers": None},
    AlertCheck.HOST_MEMORY: {"host": None},
    AlertCheck.DISK_FREE: {"host": None},
    AlertCheck.BACKUP_STALE: {"backup": None, "database_error": "connection refused"},
    AlertCheck.BACKUP_UNVERIFIED: {"backup": None, "database_error": "connection refused"},
    AlertCheck.PAYMENTS_WAITING: {"mpesa": None, "database_error": "connection refused"},
    AlertCheck.PERIODIC_TASK_FAILED: {"periodic": None, "database_error": "connection refused"},
    AlertCheck.BEAT_MISSING: {"workers": None, "beat": None},
}


@pytest.mark.parametrize("kind", list(UNREADABLE))
def test_a_rule_whose_numbers_could_not_be_read_says_nothing(rules: dict[str, AlertRule], kind: str) -> None:
    assert rule_evaluate(rule=rules[kind], readings=healthy(**UNREADABLE[kind])) is None


def test_the_broker_down_is_a_missing_worker_and_a_missing_beat(rules: dict[str, AlertRule]) -> None:
    down = Readings(at=NOW, broker_error="Error 111 connecting to redis:6379. Connection refused.")
    for kind in (AlertCheck.WORKER_MISSING, AlertCheck.BEAT_MISSING):
        finding = rule_evaluate(rule=rules[kind], readings=down)
        assert finding is not None and finding.firing and "Connection refused" in finding.message
    assert rule_evaluate(rule=rules[AlertCheck.QUEUE_DEPTH], readings=down) is None


def test_targets_narrow_queue_and_worker_rules(rules: dict[str, AlertRule]) -> None:
    depth = rules[AlertCheck.QUEUE_DEPTH]
    depth.target = "reports"
    busy_payments = healthy(queues=queues(payments=(900, 1)))
    assert rule_evaluate(rule=depth, readings=busy_payments).firing is False  # type: ignore[union-attr]
    depth.target = "payments"
    assert rule_evaluate(rule=depth, readings=busy_payments).firing is True  # type: ignore[union-attr]

    memory = rules[AlertCheck.WORKER_MEMORY]
    memory.target = "reports"
    fat_default = healthy(workers=[worker("default@h", main_mb=300), worker("reports@h", ("reports",))])
    assert rule_evaluate(rule=memory, readings=fat_default).firing is False  # type: ignore[union-attr]
    memory.target = ""
    assert rule_evaluate(rule=memory, readings=fat_default).firing is True  # type: ignore[union-attr]


def test_backup_edge_cases(rules: dict[str, AlertRule]) -> None:
    stale, unverified = rules[AlertCheck.BACKUP_STALE], rules[AlertCheck.BACKUP_UNVERIFIED]
    never = healthy(backup=BackupStatus(last_good_at=None))
    finding = rule_evaluate(rule=stale, readings=never)
    assert finding is not None and finding.firing and "No backup has succeeded" in finding.message
    assert rule_evaluate(rule=unverified, readings=never).firing is False  # type: ignore[union-attr]
    # Verification still pending past the allowed two hours.
    late = healthy(backup=backup(good_hours_ago=2.5, verify=VerifyState.PENDING))
    finding = rule_evaluate(rule=unverified, readings=late)
    assert finding is not None and finding.firing and "not verified" in finding.message
    # The last backup failed outright: the stale rule speaks for it, not this one.
    failed = healthy(backup=backup(state=BackupState.FAILED, verify=VerifyState.PENDING, good_hours_ago=30))
    assert rule_evaluate(rule=unverified, readings=failed).firing is False  # type: ignore[union-attr]


def test_a_periodic_failure_older_than_a_day_or_followed_by_a_success_is_clear(rules: dict[str, AlertRule]) -> None:
    rule = rules[AlertCheck.PERIODIC_TASK_FAILED]
    old = healthy(periodic=periodic(failed_hours_ago=25, succeeded_hours_ago=None))
    assert rule_evaluate(rule=rule, readings=old).firing is False  # type: ignore[union-attr]
    never_succeeded = healthy(periodic=periodic(failed_hours_ago=1, succeeded_hours_ago=None))
    assert rule_evaluate(rule=rule, readings=never_succeeded).firing is True  # type: ignore[union-attr]


def test_beat_alive_without_tick_reports_is_clear_but_missing_beat_fires(rules: dict[str, AlertRule]) -> None:
    rule = rules[AlertCheck.BEAT_MISSING]
    assert rule_evaluate(rule=rule, readings=healthy(beat=beat(tick_seconds_ago=None))).firing is False  # type: ignore[union-attr]
    finding = rule_evaluate(rule=rule, readings=healthy(beat=None))
    assert finding is not None and finding.firing and "No heartbeat from beat" in finding.message


# -- Real conditions, read by readings_collect ---------------------------------------------------


def test_real_conditions_fire_their_rules(
    rules: dict[str, AlertRule], water: Business, clean_broker: redis.Redis
) -> None:
    """No worker, no beat, no backup on this test Redis and database; a held M-Pesa callback; a
    periodic task that failed; messages waiting; thresholds the host always passes."""
    till = TillFactory.create(business=water)
    InboxMessage.objects.create(
        till=till, kind=InboxKind.C2B_CONFIRMATION, daraja_id="RKX1", state=InboxState.NEEDS_ATTENTION
    )
    every_day, _ = IntervalSchedule.objects.get_or_create(every=1, period=IntervalSchedule.DAYS)
    PeriodicTask.objects.create(name="Backups: nightly", task="backoffice.backup", interval=every_day)
    TaskEvent.objects.create(
        kind=TaskEventKind.FAILED, task_name="backoffice.backup", periodic_task="Backups: nightly",
        exception="OSError: disk full", at=timezone.now() - dt.timedelta(hours=1),
    )  # fmt: skip
    for n in range(3):
        record_and_sleep.apply_async(args=(f"wait-{n}", 0), queue="reports")
    AlertRule.objects.filter(check_kind=AlertCheck.QUEUE_DEPTH).update(threshold=2)
    AlertRule.objects.filter(check_kind__in=[AlertCheck.HOST_MEMORY, AlertCheck.WORKER_MEMORY]).update(threshold=1)
    AlertRule.objects.filter(check_kind=AlertCheck.DISK_FREE).update(threshold=Decimal("99.99"))
    Backup.objects.create(
        state=BackupState.SUCCEEDED, started_at=timezone.now() - dt.timedelta(hours=30),
        finished_at=timezone.now() - dt.timedelta(hours=29), verify_state=VerifyState.FAILED,
        verify_message="row counts differ: integrations_payment 10 != 9",
    )  # fmt: skip

    # Five minutes and a bit later: the messages have waited past the age limit.
    later = timezone.now() + dt.timedelta(seconds=301)
    alerts_check(now=later)

    firing = {a.rule.check_kind: a for a in Alert.objects.filter(resolved_at__isnull=True).select_related("rule")}
    assert set(firing) == {
        AlertCheck.QUEUE_DEPTH,
        AlertCheck.QUEUE_AGE,
        AlertCheck.WORKER_MISSING,
        AlertCheck.HOST_MEMORY,
        AlertCheck.DISK_FREE,
        AlertCheck.BACKUP_STALE,
        AlertCheck.BACKUP_UNVERIFIED,
        AlertCheck.PAYMENTS_WAITING,
        AlertCheck.PERIODIC_TASK_FAILED,
        AlertCheck.BEAT_MISSING,
    }  # not worker memory or restarts: no worker is alive to measure
    assert "reports: 3 messages" in firing[AlertCheck.QUEUE_DEPTH].message
    assert firing[AlertCheck.WORKER_MISSING].value == ", ".join(QUEUES)
    assert "row counts differ" in firing[AlertCheck.BACKUP_UNVERIFIED].message
    assert "OSError: disk full" in firing[AlertCheck.PERIODIC_TASK_FAILED].message
    assert firing[AlertCheck.PAYMENTS_WAITING].value == "1"
    checked = alerts_checked_at()
    assert checked is not None and abs((checked - later).total_seconds()) < 0.001


@pytest.mark.worker
@pytest.mark.django_db(transaction=True)
def test_a_live_worker_is_measured_by_the_worker_rules(clean_broker: redis.Redis) -> None:
    apply_migration(RULES_MIGRATION)
    AlertRule.objects.exclude(
        check_kind__in=[AlertCheck.WORKER_MISSING, AlertCheck.WORKER_MEMORY, AlertCheck.WORKER_RESTARTS]
    ).delete()
    AlertRule.objects.filter(check_kind=AlertCheck.WORKER_MEMORY).update(threshold=1)
    AlertRule.objects.filter(check_kind=AlertCheck.WORKER_RESTARTS).update(threshold=0)
    first = WorkerProcess("looping", queues="default")
    first.start()
    first.stop()
    again = WorkerProcess("looping", queues="default").start()
    try:
        wait_for(lambda: readings_collect().workers, 30, "the worker's reading")
        alerts_check()
    finally:
        again.stop()
    firing = {a.rule.check_kind: a for a in Alert.objects.filter(resolved_at__isnull=True).select_related("rule")}
    assert set(firing) == {AlertCheck.WORKER_MISSING, AlertCheck.WORKER_MEMORY, AlertCheck.WORKER_RESTARTS}
    assert firing[AlertCheck.WORKER_MISSING].value == "payments, reports"  # default has its worker
    assert f"{again.hostname} main process {again.proc.pid}" in firing[AlertCheck.WORKER_MEMORY].message  # type: ignore[union-attr]
    assert f"{again.hostname} restarted 1 time" in firing[AlertCheck.WORKER_RESTARTS].message


# -- Opening, emailing, resolving ------------------------------------------------------------------


def payments(n: int) -> Readings:
    return healthy(mpesa=mpesa(callbacks=n))


def alert_emails(rule: AlertRule) -> list[EmailLog]:
    return list(EmailLog.objects.filter(kind=EmailKind.ALERT, period__startswith=f"{rule.pk}:").order_by("id"))


def test_a_firing_rule_is_emailed_once_per_period_and_resolved_when_it_clears(
    rules: dict[str, AlertRule], owner_recipients: None
) -> None:
    rule = only(rules, AlertCheck.PAYMENTS_WAITING)
    assert rule.email_every_minutes == 240

    outcome = alerts_check(now=NOW, readings=payments(2))
    alert = Alert.objects.get(rule=rule)
    assert (outcome.opened, outcome.emailed) == (1, 1)
    assert alert.resolved_at is None and alert.value == "2" and alert.last_emailed_at == NOW
    [email] = alert_emails(rule)
    assert email.recipients == "owner@example.com"
    assert rule.name in email.subject and "2 held callbacks" in email.body and "Callback inbox" in email.body

    # Still firing a minute and three hours later: updated, not emailed again.
    for minutes in (1, 180):
        outcome = alerts_check(now=NOW + dt.timedelta(minutes=minutes), readings=payments(3))
        assert (outcome.opened, outcome.updated, outcome.emailed) == (0, 1, 0)
    alert.refresh_from_db()
    assert alert.value == "3" and alert.last_seen_at == NOW + dt.timedelta(minutes=180)
    assert len(alert_emails(rule)) == 1

    # Four hours after the first email: once more.
    alerts_check(now=NOW + dt.timedelta(minutes=240), readings=payments(3))
    assert len(alert_emails(rule)) == 2

    # Cleared: resolved, with a notice (it had been emailed).
    outcome = alerts_check(now=NOW + dt.timedelta(minutes=250), readings=payments(0))
    alert.refresh_from_db()
    assert outcome.resolved == 1 and alert.resolved_at == NOW + dt.timedelta(minutes=250)
    notice = alert_emails(rule)[-1]
    assert notice.subject.startswith("[Back office] Resolved") and len(alert_emails(rule)) == 3
    # Clear again: nothing more.
    outcome = alerts_check(now=NOW + dt.timedelta(minutes=251), readings=payments(0))
    assert (outcome.resolved, outcome.emailed) == (0, 0) and len(alert_emails(rule)) == 3


def test_a_flapping_rule_opens_new_alerts_but_is_not_emailed_more_than_once_per_period(
    rules: dict[str, AlertRule], owner_recipients: None
) -> None:
    rule = only(rules, AlertCheck.PAYMENTS_WAITING)
    for minute in range(0, 20, 2):
        alerts_check(now=NOW + dt.timedelta(minutes=minute), readings=payments(1))
        alerts_check(now=NOW + dt.timedelta(minutes=minute + 1), readings=payments(0))
    assert Alert.objects.filter(rule=rule).count() == 10
    assert Alert.objects.filter(rule=rule, resolved_at__isnull=True).count() == 0
    # One alert email and one resolution notice, for the first alert (the only one emailed).
    subjects = [e.subject for e in alert_emails(rule)]
    assert len(subjects) == 2 and subjects[1].startswith("[Back office] Resolved")


def test_unreadable_numbers_leave_the_alert_open(rules: dict[str, AlertRule], owner_recipients: None) -> None:
    rule = only(rules, AlertCheck.PAYMENTS_WAITING)
    alerts_check(now=NOW, readings=payments(1))
    outcome = alerts_check(
        now=NOW + dt.timedelta(minutes=1), readings=healthy(mpesa=None, database_error="server closed the connection")
    )
    assert outcome.unknown == 1
    assert Alert.objects.get(rule=rule).resolved_at is None


def test_a_disabled_rule_is_not_judged_and_its_alert_is_closed_silently(
    rules: dict[str, AlertRule], owner_recipients: None
) -> None:
    rule = only(rules, AlertCheck.PAYMENTS_WAITING)
    alerts_check(now=NOW, readings=payments(1))
    AlertRule.objects.filter(pk=rule.pk).update(enabled=False)
    alerts_check(now=NOW + dt.timedelta(minutes=1), readings=payments(5))
    alert = Alert.objects.get(rule=rule)
    assert alert.resolved_at == NOW + dt.timedelta(minutes=1) and alert.value == "1"
    assert len(alert_emails(rule)) == 1  # no resolution notice for a rule turned off


def test_the_rules_own_recipients_win_and_nobody_is_recorded_as_a_failure(rules: dict[str, AlertRule]) -> None:
    rule = only(rules, AlertCheck.PAYMENTS_WAITING)
    alerts_check(now=NOW, readings=payments(1))
    [email] = alert_emails(rule)
    assert email.state == EmailState.FAILED and "No recipients" in email.last_error

    AlertRule.objects.filter(pk=rule.pk).update(recipients="ops@example.com; owner@example.com")
    OwnerEmail.objects.update_or_create(kind=OwnerEmailKind.DAILY, defaults={"recipients": "daily@example.com"})
    alerts_check(now=NOW + dt.timedelta(hours=5), readings=payments(1))
    assert alert_emails(rule)[-1].recipients == "ops@example.com, owner@example.com"


def test_one_open_alert_per_rule_is_a_database_rule(rules: dict[str, AlertRule]) -> None:
    rule = rules[AlertCheck.BEAT_MISSING]
    Alert.objects.create(rule=rule, message="first", first_seen_at=NOW, last_seen_at=NOW)
    with pytest.raises(IntegrityError), transaction.atomic():
        Alert.objects.create(rule=rule, message="second", first_seen_at=NOW, last_seen_at=NOW)
    Alert.objects.create(rule=rule, message="old", first_seen_at=NOW, last_seen_at=NOW, resolved_at=NOW)


@pytest.mark.django_db(transaction=True)
def test_two_checks_at_once_open_one_alert_and_send_one_email() -> None:
    apply_migration(RULES_MIGRATION)
    AlertRule.objects.exclude(check_kind=AlertCheck.PAYMENTS_WAITING).delete()
    OwnerEmail.objects.update_or_create(kind=OwnerEmailKind.DAILY, defaults={"recipients": "owner@example.com"})
    start = threading.Barrier(4)
    errors: list[BaseException] = []

    def check() -> None:
        try:
            start.wait()
            alerts_check(now=NOW, readings=payments(1))
        except BaseException as exc:  # reported below
            errors.append(exc)
        finally:
            connection.close()

    threads = [threading.Thread(target=check) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert errors == []
    assert Alert.objects.count() == 1
    assert EmailLog.objects.filter(kind=EmailKind.ALERT).count() == 1


@pytest.mark.django_db(transaction=True)
def test_the_alert_email_is_handed_to_the_default_queue_after_commit(clean_broker: redis.Redis) -> None:
    apply_migration(RULES_MIGRATION)
    AlertRule.objects.exclude(check_kind=AlertCheck.PAYMENTS_WAITING).delete()
    OwnerEmail.objects.update_or_create(kind=OwnerEmailKind.DAILY, defaults={"recipients": "owner@example.com"})
    alerts_check(now=NOW, readings=payments(1))
    assert queue_depths(clean_broker)["default"].waiting == 1  # backoffice.send_email, for a worker
    assert EmailLog.objects.get(kind=EmailKind.ALERT).state == EmailState.QUEUED


# -- The task, the schedule and the seeded rules ---------------------------------------------------


def test_the_default_rules_are_seeded_once_each(db: None) -> None:
    apply_migration(RULES_MIGRATION)
    AlertRule.objects.filter(check_kind=AlertCheck.QUEUE_DEPTH).update(threshold=800)  # the owner's own
    apply_migration(RULES_MIGRATION)  # safe to run again: keeps his change
    seeded = {r.check_kind: r for r in AlertRule.objects.all()}
    assert AlertRule.objects.count() == len(AlertCheck.values) == len(seeded)
    assert {kind: seeded[kind].threshold for kind in seeded} == {
        AlertCheck.QUEUE_DEPTH: Decimal(800),
        AlertCheck.QUEUE_AGE: Decimal(300),
        AlertCheck.WORKER_MISSING: Decimal(0),
        AlertCheck.WORKER_MEMORY: Decimal(100),
        AlertCheck.WORKER_RESTARTS: Decimal(5),
        AlertCheck.HOST_MEMORY: Decimal(3584),
        AlertCheck.DISK_FREE: Decimal(10),
        AlertCheck.BACKUP_STALE: Decimal(26),
        AlertCheck.BACKUP_UNVERIFIED: Decimal(2),
        AlertCheck.PAYMENTS_WAITING: Decimal(0),
        AlertCheck.PERIODIC_TASK_FAILED: Decimal(0),
        AlertCheck.BEAT_MISSING: Decimal(120),
    }
    assert all(r.enabled and r.target == "" and r.recipients == "" for r in seeded.values())
    for rule in seeded.values():  # each seeded rule passes the admin's validation
        assert alert_rule_validate(check_kind=rule.check_kind, threshold=rule.threshold, target="", recipients="") == {}


def test_the_check_is_scheduled_every_minute_on_the_default_queue_and_expires(db: None) -> None:
    apply_migration(SCHEDULE_MIGRATION)
    apply_migration(SCHEDULE_MIGRATION)
    task = PeriodicTask.objects.get(task="backoffice.check_alerts")
    assert task.enabled and task.queue == "default" and task.crontab is None
    assert task.interval is not None and (task.interval.every, task.interval.period) == (60, "seconds")
    assert task.expire_seconds == 50


@pytest.mark.worker
@pytest.mark.django_db(transaction=True)
def test_a_default_worker_runs_the_check(clean_broker: redis.Redis) -> None:
    from backoffice.tasks import check_alerts

    apply_migration(RULES_MIGRATION)
    AlertRule.objects.exclude(check_kind=AlertCheck.PAYMENTS_WAITING).delete()
    business = Business.objects.create(name="Maji", kind="water")
    till = TillFactory.create(business=business)
    InboxMessage.objects.create(
        till=till, kind=InboxKind.C2B_CONFIRMATION, daraja_id="RKW1", state=InboxState.NEEDS_ATTENTION
    )
    worker = WorkerProcess("alerts", queues="default").start()
    try:
        check_alerts.delay()
        alert = wait_for(lambda: Alert.objects.filter(resolved_at__isnull=True).first(), 30, "the alert")
        # The alert row commits before the task returns: stop the worker only once it said so (on a
        # busy machine a stop right after the row was seen ended the task mid-way, SIGTERM).
        wait_for(lambda: "succeeded" in worker.output(), 30, "the task's success in the worker's log")
    finally:
        worker.stop()
    assert alert.value == "1"
    assert "succeeded" in worker.output() and "opened 1" in worker.output()


# -- Who sees alerts -------------------------------------------------------------------------------


def test_open_alerts_are_the_owners(rules: dict[str, AlertRule], water: Business) -> None:
    rule = rules[AlertCheck.DISK_FREE]
    current = Alert.objects.create(rule=rule, message="disk", first_seen_at=NOW, last_seen_at=NOW)
    Alert.objects.create(
        rule=rules[AlertCheck.BEAT_MISSING], message="old", first_seen_at=NOW, last_seen_at=NOW, resolved_at=NOW
    )
    owner = OwnerFactory.create()
    partner = UserFactory.create(username="partner", perms=["tenancy.view_all_businesses"])
    staff = staff_with_perms(water, ["backoffice.view_alert", "backoffice.view_alertrule"])
    assert list(open_alerts(owner)) == [current]
    assert list(open_alerts(User.objects.get(pk=partner.pk))) == [current]
    assert list(open_alerts(User.objects.get(pk=staff.pk))) == []
    assert list(open_alerts(AnonymousUser())) == []


# -- The admin -------------------------------------------------------------------------------------


def rule_form(rule: AlertRule, **changes: Any) -> dict[str, Any]:
    data = {
        "name": rule.name,
        "check_kind": rule.check_kind,
        "enabled": "on" if rule.enabled else "",
        "threshold": str(rule.threshold),
        "target": rule.target,
        "email_every_minutes": str(rule.email_every_minutes),
        "recipients": rule.recipients,
    }
    data.update(changes)
    return {k: v for k, v in data.items() if v != "" or k in ("target", "recipients")}


def change_url(rule: AlertRule) -> str:
    return reverse("admin:backoffice_alertrule_change", args=[rule.pk])


def test_the_owner_edits_a_rule(rules: dict[str, AlertRule], owner_client: Client) -> None:
    rule = rules[AlertCheck.QUEUE_DEPTH]
    assert owner_client.get(reverse("admin:backoffice_alertrule_changelist")).status_code == 200
    page = owner_client.get(change_url(rule))
    assert page.status_code == 200 and "Disk free below (%) - %" in page.content.decode()
    response = owner_client.post(
        change_url(rule), rule_form(rule, threshold="750", target="payments", recipients="ops@example.com")
    )
    assert response.status_code == 302, response.content.decode()[:2000]
    rule.refresh_from_db()
    assert (rule.threshold, rule.target, rule.recipients) == (Decimal(750), "payments", "ops@example.com")


@pytest.mark.parametrize(
    ("kind", "changes", "field", "says"),
    [
        (AlertCheck.DISK_FREE, {"threshold": "150"}, "threshold", "Between 0.01 and 99.99"),
        (AlertCheck.DISK_FREE, {"threshold": "-1"}, "threshold", "Between"),
        (AlertCheck.QUEUE_DEPTH, {"threshold": "10.5"}, "threshold", "A whole number"),
        (AlertCheck.WORKER_MISSING, {"threshold": "3"}, "threshold", "Not used by this check"),
        (AlertCheck.BEAT_MISSING, {"threshold": "5"}, "threshold", "Between 10"),
        (AlertCheck.QUEUE_AGE, {"target": "emails"}, "target", "One of the queues"),
        (AlertCheck.WORKER_MEMORY, {"target": "reports worker"}, "target", "without spaces"),
        (AlertCheck.HOST_MEMORY, {"target": "payments"}, "target", "no target"),
        (AlertCheck.BACKUP_STALE, {"recipients": "owner@example.com, not-an-address"}, "recipients", "not-an-address"),
        (AlertCheck.BACKUP_STALE, {"email_every_minutes": "0"}, "email_every_minutes", "At least one minute"),
    ],
)
def test_a_rule_with_a_wrong_setting_is_refused(
    rules: dict[str, AlertRule], owner_client: Client, kind: str, changes: dict[str, str], field: str, says: str
) -> None:
    rule = rules[kind]
    before = AlertRule.objects.filter(pk=rule.pk).values().get()
    response = owner_client.post(change_url(rule), rule_form(rule, **changes))
    assert response.status_code == 200
    errors = response.context["adminform"].form.errors
    assert field in errors and says in " ".join(errors[field]), errors
    assert AlertRule.objects.filter(pk=rule.pk).values().get() == before


def test_changing_a_rule_needs_the_change_right(rules: dict[str, AlertRule]) -> None:
    rule = rules[AlertCheck.QUEUE_DEPTH]
    reader = UserFactory.create(
        username="reader", perms=["tenancy.view_all_businesses", "backoffice.view_alertrule", "backoffice.view_alert"]
    )
    client = login(reader)
    assert client.get(reverse("admin:backoffice_alertrule_changelist")).status_code == 200
    assert client.post(change_url(rule), rule_form(rule, threshold="1")).status_code == 403
    assert client.post(reverse("admin:backoffice_alertrule_delete", args=[rule.pk]), {"post": "yes"}).status_code == 403
    rule.refresh_from_db()
    assert rule.threshold == Decimal(500)


def test_staff_of_one_business_cannot_open_rules_or_alerts_whatever_rights_they_hold(
    rules: dict[str, AlertRule], water: Business
) -> None:
    rule = rules[AlertCheck.QUEUE_DEPTH]
    staff = staff_with_perms(
        water,
        [
            "backoffice.view_alertrule",
            "backoffice.change_alertrule",
            "backoffice.delete_alertrule",
            "backoffice.view_alert",
        ],
    )
    client = login(staff)
    for url in (
        reverse("admin:backoffice_alertrule_changelist"),
        change_url(rule),
        reverse("admin:backoffice_alert_changelist"),
    ):
        assert client.get(url).status_code == 403, url
    assert client.post(change_url(rule), rule_form(rule, threshold="1")).status_code == 403
    rule.refresh_from_db()
    assert rule.threshold == Decimal(500)


def test_alerts_are_a_read_only_list(rules: dict[str, AlertRule], owner_client: Client) -> None:
    alert = Alert.objects.create(
        rule=rules[AlertCheck.DISK_FREE], message="Disk free below 10%: 8.0% free", value="8.0%",
        first_seen_at=NOW, last_seen_at=NOW,
    )  # fmt: skip
    page = owner_client.get(reverse("admin:backoffice_alert_changelist"))
    assert page.status_code == 200 and "8.0% free" in page.content.decode()
    assert owner_client.get(reverse("admin:backoffice_alert_add")).status_code == 403
    edit = owner_client.post(reverse("admin:backoffice_alert_change", args=[alert.pk]), {"message": "edited"})
    assert edit.status_code == 403
    assert (
        owner_client.post(reverse("admin:backoffice_alert_delete", args=[alert.pk]), {"post": "yes"}).status_code == 403
    )
    alert.refresh_from_db()
    assert alert.message.startswith("Disk free") and Alert.objects.count() == 1
    # Open alerts only, by the "resolved" filter.
    page = owner_client.get(reverse("admin:backoffice_alert_changelist"), {"resolved_at__isempty": "1"})
    assert page.status_code == 200 and "8.0% free" in page.content.decode()

"""Task events: a real worker records failed and retried tasks (any task) and the successes of tasks
beat sent (the "periodic_task_name" header), never a plain success; the record never breaks the task,
survives a task that left its transaction aborted, and a database refusing it is only logged.
Plus the selectors the System page reads, and the 30-day pruning."""

from __future__ import annotations

import contextlib
import datetime as dt
from collections.abc import Iterator
from types import SimpleNamespace
from typing import Any

import pytest
import redis
from django.db import DatabaseError, connection, transaction
from django.utils import timezone
from django_celery_beat.models import IntervalSchedule, PeriodicTask

from celeryconf.app import app
from jobs import taskevents
from jobs.models import TaskEvent, TaskEventKind
from jobs.selectors import periodic_task_status, task_failures
from jobs.taskevents import PERIODIC_HEADER, periodic_task_name, task_event_record, task_events_prune
from jobs.tasks import cleanup_files
from tests.celery_support import BeatProcess, WorkerProcess, wait_for
from tests.conftest import TEST_APP_ROLE
from tests.worker_tasks import runs_key

pytestmark = pytest.mark.django_db(transaction=True)

PERIODIC = "Test: a periodic task"


@pytest.fixture
def events_worker(clean_broker: redis.Redis) -> Iterator[WorkerProcess]:
    worker = WorkerProcess("events", queues="default").start()
    yield worker
    worker.stop()


def send(name: str, *args: Any, periodic: str = "") -> str:
    headers = {PERIODIC_HEADER: periodic} if periodic else None
    return str(app.send_task(name, args=args, queue="default", routing_key="default", headers=headers).id)


def periodic_task(name: str = PERIODIC, task: str = "tests.succeed") -> PeriodicTask:
    every, _ = IntervalSchedule.objects.get_or_create(every=1, period=IntervalSchedule.HOURS)
    return PeriodicTask.objects.create(name=name, task=task, interval=every, args='["beat"]')


def event(task_id: str) -> TaskEvent | None:
    return TaskEvent.objects.filter(task_id=task_id).first()


def ran(worker: WorkerProcess, task_id: str, outcome: str) -> bool:
    return any(f"[{task_id}] {outcome}" in line for line in worker.output().splitlines())


@pytest.mark.worker
def test_a_worker_records_failures_retries_and_periodic_successes_never_a_plain_success(
    events_worker: WorkerProcess, redis_client: redis.Redis
) -> None:
    periodic_task()
    started = timezone.now()
    plain = send("tests.succeed", "plain")
    failed = send("tests.fail", "boom")
    retried = send("tests.retry_once", "flaky")
    first = send("tests.succeed", "beat-1", periodic=PERIODIC)
    wait_for(lambda: event(first), 30, "the periodic success")
    second = send("tests.succeed", "beat-2", periodic=PERIODIC)
    wait_for(lambda: TaskEvent.objects.filter(task_id=second).exists(), 30, "the second periodic success")

    # the plain success ran before the periodic ones (one pool process, in order) and wrote nothing
    assert redis_client.lrange(runs_key("plain"), 0, -1) and ran(events_worker, plain, "succeeded")
    assert not TaskEvent.objects.filter(task_id=plain).exists()

    failure = event(failed)
    assert failure is not None and failure.kind == TaskEventKind.FAILED and failure.task_name == "tests.fail"
    assert failure.exception == "ValueError: the test task failed on purpose (boom)"
    assert "Traceback" in failure.traceback and "raise ValueError" in failure.traceback
    assert failure.worker == events_worker.hostname and failure.periodic_task == ""

    wait_for(lambda: redis_client.llen(runs_key("flaky")) == 2, 30, "the retried task's second attempt")
    retry = TaskEvent.objects.get(task_id=retried)  # one event: the second attempt succeeded (not periodic)
    assert retry.kind == TaskEventKind.RETRIED and retry.task_name == "tests.retry_once"
    assert retry.exception == "ConnectionError: transient trouble, try again"
    assert "ConnectionError" in retry.traceback

    # a periodic task's successes: its one "succeeded" row, moved to the last run
    success = TaskEvent.objects.get(kind=TaskEventKind.SUCCEEDED)
    assert (success.periodic_task, success.task_name, success.task_id) == (PERIODIC, "tests.succeed", second)
    assert success.at >= started

    # then it fails: the failure carries the periodic task's name, and the selectors say it is failing
    broken = send("tests.fail", "beat-3", periodic=PERIODIC)
    wait_for(lambda: event(broken), 30, "the periodic failure")
    assert event(broken).periodic_task == PERIODIC  # type: ignore[union-attr]
    [status] = periodic_task_status()
    assert status["name"] == PERIODIC and status["failing"]
    assert status["last_success_at"] == success.at and status["last_failure_id"] == event(broken).pk  # type: ignore[union-attr]
    assert status["last_error"] == "ValueError: the test task failed on purpose (beat-3)"
    assert [e.task_id for e in task_failures(started)] == [broken, retried, failed]
    assert [e.task_id for e in task_failures(started, include_retries=False)] == [broken, failed]


@pytest.mark.worker
def test_a_task_leaving_its_transaction_aborted_is_still_recorded(
    events_worker: WorkerProcess, redis_client: redis.Redis
) -> None:
    raw = send("tests.fail_in_open_transaction", "raw", "raw")
    off = send("tests.fail_in_open_transaction", "off", "autocommit")
    wait_for(lambda: event(raw) and event(off), 30, "both failures")
    assert event(raw).exception == "RuntimeError: failed inside an aborted transaction (raw)"  # type: ignore[union-attr]
    assert event(off).exception == "RuntimeError: failed inside an aborted transaction (autocommit)"  # type: ignore[union-attr]
    # the worker's connection was dropped after those tasks: the next one records as usual
    periodic_task()
    after = send("tests.succeed", "after", periodic=PERIODIC)
    wait_for(lambda: event(after), 30, "the success after the aborted transactions")
    assert "task event not recorded" not in events_worker.output()


@pytest.mark.worker
def test_a_database_refusing_the_record_is_logged_and_the_task_is_unaffected(
    events_worker: WorkerProcess, redis_client: redis.Redis, owner_cursor: Any
) -> None:
    periodic_task()
    owner_cursor.execute(f"REVOKE INSERT, UPDATE ON jobs_taskevent FROM {TEST_APP_ROLE}")
    try:
        ok = send("tests.succeed", "refused-ok", periodic=PERIODIC)
        bad = send("tests.fail", "refused-bad")
        wait_for(lambda: ran(events_worker, bad, "raised unexpected"), 30, "the failing task")
        assert ran(events_worker, ok, "succeeded") and redis_client.lrange(runs_key("refused-ok"), 0, -1)
        assert events_worker.output().count("task event not recorded") == 2
        assert "permission denied" in events_worker.output()
        assert not TaskEvent.objects.exists()
    finally:
        owner_cursor.execute(f"GRANT INSERT, UPDATE ON jobs_taskevent TO {TEST_APP_ROLE}")
    again = send("tests.succeed", "granted", periodic=PERIODIC)
    wait_for(lambda: event(again), 30, "a record once the database takes it again")


@pytest.mark.worker
@pytest.mark.slow
def test_what_beat_sends_carries_its_periodic_task_name_to_the_record(
    events_worker: WorkerProcess, redis_client: redis.Redis
) -> None:
    """The real chain: celery beat's DatabaseScheduler (django-celery-beat) sends the row's task with
    its header; the worker's records name the PeriodicTask, success and failure alike."""
    every, _ = IntervalSchedule.objects.get_or_create(every=1, period=IntervalSchedule.SECONDS)
    PeriodicTask.objects.create(
        name="Beat: fine", task="tests.succeed", args='["by-beat"]', interval=every, queue="default"
    )
    PeriodicTask.objects.create(
        name="Beat: broken", task="tests.fail", args='["by-beat"]', interval=every, queue="default"
    )
    beat = BeatProcess()
    try:
        beat.start()
        wait_for(
            lambda: (
                TaskEvent.objects.filter(periodic_task="Beat: fine", kind=TaskEventKind.SUCCEEDED).exists()
                and TaskEvent.objects.filter(periodic_task="Beat: broken", kind=TaskEventKind.FAILED).exists()
            ),
            30,
            "beat's tasks to be recorded under their PeriodicTask names",
        )
    finally:
        beat.stop()
    assert redis_client.lrange(runs_key("by-beat"), 0, -1)
    rows = {r["name"]: r for r in periodic_task_status()}
    assert rows["Beat: broken"]["failing"] and not rows["Beat: fine"]["failing"]


# -- in this process: the connection rules, the header, the selectors and the pruning --------------


@pytest.fixture
def in_pool_process(monkeypatch: pytest.MonkeyPatch) -> None:
    """As in a worker's pool process: the worker's own connection is used when it is clean."""
    monkeypatch.setattr(taskevents, "_in_pool_process", True)


def test_inside_an_aborted_transaction_the_event_goes_through_its_own_connection(in_pool_process: None) -> None:
    with transaction.atomic():
        with contextlib.suppress(DatabaseError), transaction.atomic(), connection.cursor() as cursor:
            cursor.execute("SELECT 1 / 0")
        with connection.cursor() as cursor:
            cursor.execute("SELECT 1")  # the outer transaction still works...
        assert task_event_record(kind=TaskEventKind.FAILED, task_name="tests.inside", exception="E: x")
        transaction.set_rollback(True)  # ...and is rolled back: the event, written beside it, stays
    assert TaskEvent.objects.filter(task_name="tests.inside").count() == 1

    with transaction.atomic():
        with connection.cursor() as cursor, contextlib.suppress(DatabaseError):
            cursor.execute("SELECT 1 / 0")  # aborts the transaction itself
        assert task_event_record(kind=TaskEventKind.FAILED, task_name="tests.aborted")
        transaction.set_rollback(True)
    assert TaskEvent.objects.filter(task_name="tests.aborted").count() == 1


def test_a_clean_connection_is_used_as_it_is(in_pool_process: None) -> None:
    connection.ensure_connection()
    before = connection.connection
    assert task_event_record(kind=TaskEventKind.RETRIED, task_name="tests.clean")
    assert connection.connection is before  # no second connection for the usual case
    assert TaskEvent.objects.get().task_name == "tests.clean"


def test_recording_never_raises() -> None:
    assert not task_event_record(kind="x" * 50, task_name="tests.too_long_kind")  # varchar(10) refuses it
    assert not TaskEvent.objects.exists()


def test_the_periodic_header_is_read_from_the_request() -> None:
    assert periodic_task_name(SimpleNamespace(periodic_task_name="Nightly")) == "Nightly"
    assert periodic_task_name(SimpleNamespace(periodic_task_name=None, headers={PERIODIC_HEADER: "Hourly"})) == "Hourly"
    assert periodic_task_name(SimpleNamespace(headers=None)) == ""
    assert periodic_task_name(None) == ""


def test_a_success_without_the_header_touches_no_database(django_assert_num_queries: Any) -> None:
    task = SimpleNamespace(name="payments.process_inbox", request=SimpleNamespace(id="abc", hostname="w1"))
    with django_assert_num_queries(0):
        taskevents.on_task_success(sender=task, result=["posted"])
    assert not TaskEvent.objects.exists()


def _event(kind: str, at: dt.datetime, periodic: str = "", name: str = "t") -> TaskEvent:
    return TaskEvent.objects.create(kind=kind, task_name=name, periodic_task=periodic, at=at, exception=f"E: {kind}")


def test_events_are_kept_30_days_and_a_live_periodic_task_keeps_its_last_success() -> None:
    now = timezone.now()
    periodic_task("Still scheduled")
    old_failure = _event(TaskEventKind.FAILED, now - dt.timedelta(days=31))
    old_retry = _event(TaskEventKind.RETRIED, now - dt.timedelta(days=45))
    kept_failure = _event(TaskEventKind.FAILED, now - dt.timedelta(days=29))
    live_success = _event(TaskEventKind.SUCCEEDED, now - dt.timedelta(days=60), periodic="Still scheduled")
    gone_success = _event(TaskEventKind.SUCCEEDED, now - dt.timedelta(days=60), periodic="Deleted since")

    assert task_events_prune(now=now) == 3
    assert set(TaskEvent.objects.values_list("pk", flat=True)) == {kept_failure.pk, live_success.pk}
    assert not TaskEvent.objects.filter(pk__in=[old_failure.pk, old_retry.pk, gone_success.pk]).exists()
    assert task_events_prune(now=now) == 0  # idempotent

    _event(TaskEventKind.FAILED, now - dt.timedelta(days=40))
    assert cleanup_files()["task_events"] == 1  # the daily clean-up task prunes them


def test_periodic_task_status_says_which_task_is_failing() -> None:
    now = timezone.now()
    periodic_task("A: recovered")
    periodic_task("B: failing")
    periodic_task("C: never ran")
    _event(TaskEventKind.FAILED, now - dt.timedelta(hours=2), periodic="A: recovered")
    _event(TaskEventKind.SUCCEEDED, now - dt.timedelta(hours=1), periodic="A: recovered")
    _event(TaskEventKind.SUCCEEDED, now - dt.timedelta(hours=3), periodic="B: failing")
    _event(TaskEventKind.FAILED, now - dt.timedelta(hours=4), periodic="B: failing")
    last = _event(TaskEventKind.FAILED, now - dt.timedelta(minutes=5), periodic="B: failing")

    rows = {r["name"]: r for r in periodic_task_status()}
    assert list(rows) == ["A: recovered", "B: failing", "C: never ran"]
    assert not rows["A: recovered"]["failing"] and rows["A: recovered"]["last_error"] == "E: failed"
    assert rows["B: failing"]["failing"] and rows["B: failing"]["last_failure_id"] == last.pk
    assert rows["B: failing"]["last_failure_at"] == last.at
    never = rows["C: never ran"]
    assert (never["failing"], never["last_success_at"], never["last_failure_at"]) == (False, None, None)
    assert never["schedule"] == "every hour" and never["task"] == "tests.succeed" and never["enabled"]

"""The safety nets' beat schedules with the real processes: `celery beat` (DatabaseScheduler) reads
the PeriodicTask rows of the data migration and sends the sweeper on schedule to a payments worker,
which re-enqueues an inbox row nobody sent and gets it posted once."""

from __future__ import annotations

import datetime as dt
from decimal import Decimal
from itertools import pairwise

import pytest
import redis
from django.utils import timezone
from django_celery_beat.models import PeriodicTask

from accounts.models import JournalEntry
from integrations.mpesa.inbox import inbox_store
from integrations.mpesa.models import InboxKind, InboxMessage, InboxState, Payment, Till
from tests.celery_support import BeatProcess, WorkerProcess, wait_for, worker_env
from tests.factories.mpesa import c2b_confirmation
from tests.migration_support import data_migration_apply

pytestmark = [pytest.mark.worker, pytest.mark.slow, pytest.mark.django_db(transaction=True)]

SCHEDULE_MIGRATION = ("integrations", "0002_beat_schedules")
SWEEP = "payments.sweep_inbox"
RECOVER = "payments.recover_requests"
SWEEP_EVERY = 2  # seconds, in the test database only (the migration says 60)
RECOVER_EVERY = 3  # (the migration says 120)


def apply_schedule_migration() -> None:
    data_migration_apply(SCHEDULE_MIGRATION)


def sends(beat: BeatProcess, task: str) -> list[dt.datetime]:
    """When beat sent `task`, from its log ("<asctime> INFO celery.beat Scheduler: Sending due task ... (<task>)")."""
    times = []
    for line in beat.log.read_text(errors="replace").splitlines():
        if "Sending due task" in line and line.rstrip().endswith(f"({task})"):
            times.append(dt.datetime.strptime(line[:23], "%Y-%m-%d %H:%M:%S,%f"))
    return times


def entries(receipt: str) -> int:
    return JournalEntry.objects.filter(idempotency_key=f"mpesa:{receipt}").count()


def _state(inbox_id: int) -> str:
    return str(InboxMessage.objects.get(pk=inbox_id).state)


def _ran(worker: WorkerProcess, task: str, outcome: str) -> bool:
    """The worker's log has "Task <task>[<id>] <outcome>" ("received", "succeeded", ...)."""
    return any(f"Task {task}[" in line and f"] {outcome}" in line for line in worker.output().splitlines())


def _left_behind(till: Till, receipt: str) -> int:
    """A stored C2B confirmation that was never enqueued: as after a web process died between its
    commit and its publish. Only the sweeper can send it."""
    inbox_id = inbox_store(
        till_id=till.pk,
        kind=InboxKind.C2B_CONFIRMATION,
        daraja_id=receipt,
        body=c2b_confirmation(trans_id=receipt, shortcode=till.shortcode, amount="75.00"),
        headers={},
        remote_addr=None,
    )
    assert inbox_id is not None
    InboxMessage.objects.filter(pk=inbox_id).update(
        received_at=timezone.now() - dt.timedelta(minutes=10), last_enqueued_at=None
    )
    return inbox_id


def test_beat_sends_the_migrations_sweeper_which_gets_a_lost_callback_posted(
    till: Till, clean_broker: redis.Redis
) -> None:
    apply_schedule_migration()
    tasks = {t.task: t for t in PeriodicTask.objects.filter(task__in=[SWEEP, RECOVER]).select_related("interval")}
    assert set(tasks) == {SWEEP, RECOVER}
    for task, every in ((SWEEP, 60), (RECOVER, 120)):
        row = tasks[task]
        assert row.enabled and row.queue == "payments"
        assert row.interval is not None and (row.interval.every, row.interval.period) == (every, "seconds")
    # Faster, for the test: the migration's own rows and schedules, on shorter intervals.
    for task, every in ((SWEEP, SWEEP_EVERY), (RECOVER, RECOVER_EVERY)):
        interval = tasks[task].interval
        assert interval is not None
        interval.every = every
        interval.save()

    receipt = "TKS0000001"
    inbox_id = _left_behind(till, receipt)

    worker = WorkerProcess(
        "beat-payments", queues="payments", env=worker_env(MPESA_SWEEP_AGE_SECONDS="5"), include_test_tasks=False
    )
    beat = BeatProcess()
    try:
        worker.start()
        beat.start()
        try:
            wait_for(lambda: Payment.objects.filter(receipt=receipt).exists(), 20, "the swept row to be posted")
            wait_for(lambda: _state(inbox_id) == InboxState.PROCESSED, 10, "the inbox row to be processed")
            # Room for a wrong second posting: two more sweeps, and the recovery job's turn.
            first_sweeps = len(sends(beat, SWEEP))
            wait_for(lambda: len(sends(beat, SWEEP)) >= first_sweeps + 2, 3 * SWEEP_EVERY + 5, "two more sweeps")
            wait_for(lambda: "payments.recover_requests[" in worker.output(), 2 * RECOVER_EVERY + 5, "the recovery job")
            wait_for(lambda: _ran(worker, "payments.recover_requests", "succeeded"), 10, "the recovery job to succeed")
        except AssertionError as exc:
            rows = list(InboxMessage.objects.values_list("state", "attempts", "last_enqueued_at", "error"))
            raise AssertionError(
                f"{exc}; inbox {rows}\nbeat log:\n{beat.log.read_text(errors='replace')[-3000:]}"
                f"\nworker log:\n{worker.output()[-3000:]}"
            ) from exc
    finally:
        beat.stop()
        worker.stop()

    inbox = InboxMessage.objects.get(pk=inbox_id)
    assert inbox.attempts == 1 and inbox.last_enqueued_at is not None  # sent by the sweeper, processed once
    assert Payment.objects.count() == 1 and entries(receipt) == 1
    payment = Payment.objects.get()
    assert payment.till_id == till.pk and payment.amount == Decimal("75.00")
    log = worker.output()
    swept = log.find("sweeper re-enqueued 1 of 1 unprocessed inbox rows")
    assert _ran(worker, SWEEP, "succeeded") and swept >= 0
    assert log.find("payments.process_inbox[") > swept  # the row went out with the sweep, not before
    assert _ran(worker, "payments.process_inbox", "succeeded")

    # On schedule: beat sent the sweeper every SWEEP_EVERY seconds - never faster; slower only by
    # what a loaded CI machine may delay a process (the median stays close).
    sweeps = sends(beat, SWEEP)
    gaps = sorted((b - a).total_seconds() for a, b in pairwise(sweeps))
    assert len(gaps) >= 2, sweeps
    assert gaps[0] >= SWEEP_EVERY - 0.5 and gaps[len(gaps) // 2] <= SWEEP_EVERY + 1.5, gaps

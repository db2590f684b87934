"""Delivery with a real worker, PostgreSQL and Redis: every payment posted exactly once, whatever
happens to the callbacks, the worker or Redis."""

from __future__ import annotations

import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import psycopg
import pytest
import redis
import requests
from celery import current_app
from django.db import connection

from accounts.models import JournalEntry
from integrations.mpesa.inbox import inbox_store
from integrations.mpesa.models import InboxKind, InboxMessage, InboxState, Payment, Till
from integrations.mpesa.publisher import inbox_enqueue, publisher
from integrations.mpesa.tasks import sweep_inbox
from tests import celery_support
from tests.celery_support import WorkerProcess, wait_for, worker_env
from tests.factories.mpesa import c2b_confirmation, stk_success
from tests.integrations.mpesa.redis_support import queued_inbox_ids, redis_server

pytestmark = [pytest.mark.worker, pytest.mark.slow, pytest.mark.django_db(transaction=True)]

# A worker whose messages come back quickly after it dies (the rule of celeryconf still holds).
FAST = {
    "CELERY_TASK_TIME_LIMIT": "6",
    "CELERY_TASK_SOFT_TIME_LIMIT": "5",
    "CELERY_MAX_COUNTDOWN": "1",
    "CELERY_VISIBILITY_MARGIN": "2",
    "CELERY_VISIBILITY_TIMEOUT": "9",
    "CELERY_RESTORE_INTERVAL": "1",
    "CELERY_RESTORE_THROTTLE": "1",
}


def send(base: str, till: Till, suffix: str, body: bytes) -> requests.Response:
    return requests.post(
        f"{base}/daraja/{till.callback_token}/{suffix}",
        data=body,
        headers={"Content-Type": "application/json"},
        timeout=10,
    )


def entries(receipt: str) -> int:
    return JournalEntry.objects.filter(idempotency_key=f"mpesa:{receipt}").count()


def posted(receipt: str) -> bool:
    return Payment.objects.filter(receipt=receipt).exists()


@pytest.fixture
def live(live_server: Any, till: Till) -> str:
    return str(live_server.url)


def test_the_same_callback_ten_times_at_once_posts_once(worker: WorkerProcess, live: str, till: Till) -> None:
    body = stk_success(checkout_id="ws_CO_DUP10", receipt="TKD0000001", amount=120)
    barrier = threading.Barrier(10)

    def fire(_: int) -> requests.Response:
        barrier.wait()
        return send(live, till, "stk/", body)

    with ThreadPoolExecutor(10) as pool:
        answers = list(pool.map(fire, range(10)))

    assert [a.status_code for a in answers] == [200] * 10
    assert all(a.json() == {"ResultCode": 0, "ResultDesc": "Success"} for a in answers)
    assert InboxMessage.objects.filter(daraja_id="ws_CO_DUP10").count() == 1
    try:
        wait_for(lambda: posted("TKD0000001"), 30, "the payment to be posted")
    except AssertionError as exc:
        rows = list(InboxMessage.objects.values_list("state", "attempts", "error"))
        raise AssertionError(f"{exc}; inbox {rows}; worker log:\n{worker.output()[-3000:]}") from exc
    wait_for(lambda: InboxMessage.objects.get(daraja_id="ws_CO_DUP10").state == InboxState.PROCESSED, 10, "done")
    time.sleep(1)  # room for a (wrong) second posting to show
    assert Payment.objects.count() == 1 and entries("TKD0000001") == 1


def test_stk_callback_and_c2b_confirmation_of_one_receipt_post_once(
    worker: WorkerProcess, live: str, till: Till
) -> None:
    stk = stk_success(checkout_id="ws_CO_PAIR", receipt="TKD0000002", amount=5)
    c2b = c2b_confirmation(trans_id="TKD0000002", shortcode=till.shortcode, amount="5.00")
    barrier = threading.Barrier(20)

    def fire(n: int) -> requests.Response:
        barrier.wait()
        return send(live, till, "stk/", stk) if n % 2 else send(live, till, "c2b/confirm/", c2b)

    with ThreadPoolExecutor(20) as pool:
        assert {a.status_code for a in pool.map(fire, range(20))} == {200}

    assert InboxMessage.objects.count() == 2
    wait_for(lambda: InboxMessage.objects.filter(state=InboxState.PROCESSED).count() == 2, 30, "both processed")
    assert Payment.objects.count() == 1 and entries("TKD0000002") == 1
    payment = Payment.objects.get()
    assert payment.payer_name == "NICHOLAS" and payment.msisdn_kind == "plain"


def _waiting_on_a_lock(dbname: str) -> bool:
    with connection.cursor() as cursor:
        cursor.execute(
            "SELECT count(*) FROM pg_stat_activity WHERE datname = %s AND wait_event_type = 'Lock'", [dbname]
        )
        row = cursor.fetchone()
    return bool(row and row[0])


def test_a_worker_killed_while_processing_posts_once_after_restart(
    transactional_db: None, clean_broker: redis.Redis, live: str, till: Till
) -> None:
    """The test holds the inbox row's lock, so the worker's task is stuck inside its transaction when
    the whole worker is SIGKILLed; a new worker gets the unacknowledged message back and posts once."""
    assert send(live, till, "c2b/confirm/", c2b_confirmation(trans_id="TKD0000003", shortcode=till.shortcode)).ok
    assert publisher.flush()
    inbox = InboxMessage.objects.get()
    holder = psycopg.connect(celery_support.test_database_url())
    doomed = WorkerProcess("doomed-payments", queues="payments", env=worker_env(**FAST))
    rescuer: WorkerProcess | None = None
    try:
        holder.execute("SELECT id FROM integrations_inboxmessage WHERE id = %s FOR UPDATE", [inbox.pk])
        doomed.start()
        wait_for(lambda: _waiting_on_a_lock(connection.settings_dict["NAME"]), 20, "the task to wait on the row")
        doomed.kill()
        holder.rollback()
        assert not posted("TKD0000003")

        rescuer = WorkerProcess("rescuer-payments", queues="payments", env=worker_env(**FAST)).start()
        wait_for(lambda: posted("TKD0000003"), 45, "the payment to be posted after redelivery")
        time.sleep(1)
        inbox.refresh_from_db()
        assert inbox.state == InboxState.PROCESSED
        assert inbox.attempts == 1  # the killed attempt left nothing behind, not even its count
        assert Payment.objects.count() == 1 and entries("TKD0000003") == 1
    finally:
        holder.close()
        doomed.kill()
        if rescuer:
            rescuer.stop()


@pytest.fixture
def private_dir(tmp_path: Path) -> Path:
    path = tmp_path / "redis"
    path.mkdir()
    return path


def test_redis_down_when_the_callback_arrives_is_caught_up_by_the_sweeper(
    transactional_db: None, live: str, till: Till, settings: Any, private_dir: Path
) -> None:
    with redis_server(private_dir) as server:
        settings.MPESA_BROKER_URL = server.url
        server.kill()

        started = time.monotonic()
        answer = send(live, till, "c2b/confirm/", c2b_confirmation(trans_id="TKD0000004", shortcode=till.shortcode))
        elapsed = time.monotonic() - started
        assert answer.status_code == 200 and answer.json() == {"ResultCode": 0, "ResultDesc": "Success"}
        assert elapsed < 1.0
        assert publisher.flush(timeout=30)
        inbox = InboxMessage.objects.get()
        assert inbox.state == InboxState.RECEIVED

        server.start()
        worker = WorkerProcess("after-outage", queues="payments", env=worker_env(REDIS_URL=server.url)).start()
        try:
            time.sleep(1)
            assert not posted("TKD0000004")  # Redis never got the message: only the sweeper can send it
            with current_app.connection_for_write(server.url) as conn:
                sweep_inbox.apply_async(kwargs={"min_age_seconds": 0}, connection=conn)  # type: ignore[call-arg]
            wait_for(lambda: posted("TKD0000004"), 30, "the sweeper to get the payment posted")
            time.sleep(1)
            assert Payment.objects.count() == 1 and entries("TKD0000004") == 1
        finally:
            worker.stop()


def test_an_aof_redis_killed_with_payments_queued_loses_none(
    transactional_db: None, live: str, till: Till, settings: Any, private_dir: Path
) -> None:
    receipts = [f"TKD1{n:06d}" for n in range(25)]
    with redis_server(private_dir, aof=True) as server:
        settings.MPESA_BROKER_URL = server.url
        for receipt in receipts:
            body = c2b_confirmation(trans_id=receipt, shortcode=till.shortcode, amount="10.00")
            assert send(live, till, "c2b/confirm/", body).status_code == 200
        assert publisher.flush()
        client = server.client()
        queued = queued_inbox_ids(client)
        assert len(queued) == len(receipts)
        client.close()

        server.kill()
        server.start()
        client = server.client()
        assert queued_inbox_ids(client) == queued  # every message survived the crash
        client.close()

        worker = WorkerProcess("after-crash", queues="payments", env=worker_env(REDIS_URL=server.url)).start()
        try:
            wait_for(lambda: Payment.objects.count() == len(receipts), 60, "every queued payment to be posted")
            time.sleep(1)
            assert JournalEntry.objects.filter(idempotency_key__startswith="mpesa:").count() == len(receipts)
            assert set(Payment.objects.values_list("receipt", flat=True)) == set(receipts)
        finally:
            worker.stop()


def _stored_confirmations(till: Till, receipts: list[str]) -> list[int]:
    ids = []
    for receipt in receipts:
        inbox_id = inbox_store(
            till_id=till.pk,
            kind=InboxKind.C2B_CONFIRMATION,
            daraja_id=receipt,
            body=c2b_confirmation(trans_id=receipt, shortcode=till.shortcode, amount="30.00"),
            headers={},
            remote_addr=None,
        )
        assert inbox_id is not None
        ids.append(inbox_id)
    return ids


def _state(inbox_id: int) -> str:
    return str(InboxMessage.objects.get(pk=inbox_id).state)


def test_a_batch_retries_from_the_row_that_met_a_held_lock(
    transactional_db: None, clean_broker: redis.Redis, till: Till
) -> None:
    """One message carries three rows; the second one's receipt is locked by someone else. The
    first is posted, the second waits MPESA_LOCK_TIMEOUT_SECONDS, is marked failed and retried
    together with the third (never posted before it); once the lock is gone all three post once."""
    receipts = ["TKB0000001", "TKB0000002", "TKB0000003"]
    ids = _stored_confirmations(till, receipts)
    holder = psycopg.connect(celery_support.test_database_url(), autocommit=True)
    holder.execute("SELECT pg_advisory_lock(hashtextextended(%s, 0))", ["mpesa:TKB0000002"])
    worker = WorkerProcess("batch-lock", queues="payments", env=worker_env(MPESA_LOCK_TIMEOUT_SECONDS="1", **FAST))
    try:
        worker.start()
        assert inbox_enqueue(ids)
        assert clean_broker.llen("payments") <= 1  # one message for the three
        wait_for(lambda: _state(ids[1]) == InboxState.FAILED, 30, "the locked row to fail")
        assert _state(ids[0]) == InboxState.PROCESSED and posted("TKB0000001")
        time.sleep(2.5)  # at least one retry of [second, third] while the lock is still held
        assert _state(ids[2]) == InboxState.RECEIVED and not posted("TKB0000003")
        assert "lock timeout" in InboxMessage.objects.get(pk=ids[1]).error
        holder.execute("SELECT pg_advisory_unlock(hashtextextended(%s, 0))", ["mpesa:TKB0000002"])
        wait_for(
            lambda: InboxMessage.objects.filter(pk__in=ids, state=InboxState.PROCESSED).count() == 3,
            30,
            "all three processed",
        )
        assert Payment.objects.count() == 3
        assert [entries(r) for r in receipts] == [1, 1, 1]
        assert InboxMessage.objects.get(pk=ids[0]).attempts == 1
    finally:
        holder.close()
        worker.stop()


def test_a_batch_out_of_time_sends_the_rest_on(transactional_db: None, clean_broker: redis.Redis, till: Till) -> None:
    """With no time left after a group (MPESA_BATCH_SECONDS=0; groups of one row here), each row
    goes on in a message of its own, and every row is still posted exactly once."""
    receipts = ["TKB0000011", "TKB0000012", "TKB0000013"]
    ids = _stored_confirmations(till, receipts)
    worker = WorkerProcess(
        "batch-time", queues="payments", env=worker_env(MPESA_BATCH_SECONDS="0", MPESA_GROUP_SIZE="1")
    )
    try:
        worker.start()
        assert inbox_enqueue(ids)
        wait_for(
            lambda: InboxMessage.objects.filter(pk__in=ids, state=InboxState.PROCESSED).count() == 3,
            30,
            "all three processed",
        )
        assert [entries(r) for r in receipts] == [1, 1, 1]
        wait_for(lambda: worker.output().count("payments.process_inbox[") >= 3 * 2, 10, "the worker log")
        received = worker.output().count("] received")
        assert received == 3, worker.output()[-3000:]  # the batch, then [second, third], then [third]
    finally:
        worker.stop()

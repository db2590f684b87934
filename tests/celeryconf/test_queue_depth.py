"""Queue depth and the oldest message's age, read from kombu's Redis lists with real messages."""

from __future__ import annotations

import json
import time
import uuid

import pytest
import redis

from celeryconf.app import app
from celeryconf.queues import PUBLISHED_HEADER, queue_depths, queue_keys, waiting_since
from tests.celery_support import WorkerProcess, wait_for
from tests.worker_tasks import record_and_sleep, runs_key

pytestmark = pytest.mark.django_db(transaction=True)


def test_messages_waiting_with_no_worker_are_counted_and_aged(clean_broker: redis.Redis) -> None:
    before = time.time()
    record_and_sleep.apply_async(args=("first", 0), queue="default")
    between = time.time()
    for n in range(4):
        record_and_sleep.apply_async(args=(f"more-{n}", 0), queue="default")
    record_and_sleep.apply_async(args=("report", 0), queue="reports")

    depths = queue_depths(clean_broker)

    assert depths["default"].waiting == 5 and depths["default"].unacked == 0 and depths["default"].depth == 5
    assert depths["reports"].depth == 1
    assert depths["payments"].depth == 0 and depths["payments"].oldest_since is None
    # The oldest is the first one sent: stamped between the two clock readings around it.
    oldest = depths["default"].oldest_since
    assert oldest is not None and before <= oldest <= between
    assert depths["default"].oldest_seconds(oldest + 42) == 42


def test_a_prioritised_message_sits_in_its_own_list_and_is_counted(clean_broker: redis.Redis) -> None:
    before = time.time()
    record_and_sleep.apply_async(args=("urgent", 0), queue="payments", priority=9)
    record_and_sleep.apply_async(args=("plain", 0), queue="payments")

    assert clean_broker.llen(queue_keys("payments")[-1]) == 1  # kombu's "payments\x06\x169"
    depth = queue_depths(clean_broker)["payments"]
    assert depth.waiting == 2
    assert depth.oldest_since is not None and depth.oldest_since >= before


def test_a_countdown_waits_from_its_due_time(clean_broker: redis.Redis) -> None:
    sent = time.time()
    record_and_sleep.apply_async(args=("later", 0), queue="default", countdown=300)
    depth = queue_depths(clean_broker)["default"]
    assert depth.waiting == 1
    assert depth.oldest_since is not None and depth.oldest_since >= sent + 299
    assert depth.oldest_seconds(sent) == 0  # not late before it is due


def test_every_published_message_carries_its_publish_time(clean_broker: redis.Redis) -> None:
    before = time.time()
    app.send_task("tests.record_and_sleep", args=("by-name", 0), queue="reports")
    raw = clean_broker.lindex("reports", -1)
    assert raw is not None
    assert before <= json.loads(raw)["headers"][PUBLISHED_HEADER] <= time.time()


@pytest.mark.parametrize(
    "raw",
    [
        b"not json",
        json.dumps({"headers": {}}).encode(),  # sent by a process without the stamp
        json.dumps({"headers": {PUBLISHED_HEADER: "soon"}}).encode(),
        json.dumps(["a", "list"]).encode(),
    ],
)
def test_a_message_without_a_readable_stamp_has_no_age(raw: bytes) -> None:
    assert waiting_since(raw) is None


def test_an_unreadable_message_at_the_tail_does_not_break_the_reading(clean_broker: redis.Redis) -> None:
    clean_broker.rpush("default", b"garbage")
    record_and_sleep.apply_async(args=("after", 0), queue="default")
    depth = queue_depths(clean_broker)["default"]
    assert depth.waiting == 2 and depth.oldest_since is None


@pytest.mark.worker
def test_a_message_taken_by_a_worker_counts_as_unacked_until_it_is_done(clean_broker: redis.Redis) -> None:
    worker = WorkerProcess("depth", queues="default").start()
    try:
        token = uuid.uuid4().hex
        record_and_sleep.apply_async(args=(token, 3), queue="default")
        wait_for(lambda: clean_broker.lrange(runs_key(token), 0, -1), 30, "the task to start")
        running = queue_depths(clean_broker)["default"]
        assert (running.waiting, running.unacked, running.depth) == (0, 1, 1)
        wait_for(lambda: clean_broker.llen(runs_key(token)) == 2, 30, "the task to end")
        wait_for(lambda: queue_depths(clean_broker)["default"].depth == 0, 30, "the acknowledgement")
    finally:
        worker.stop()

"""Heartbeats of real workers and beat carry what the System page shows: pid, queues, the memory of
the main process and of each pool process, tasks done, start time, restarts, pool replacements."""

from __future__ import annotations

import json
import time
import uuid
from typing import Any

import psutil
import pytest
import redis

from celeryconf.heartbeat import (
    BEAT_KEY,
    beat_read,
    restarts_count,
    start_record,
    starts_key,
    worker_key,
    worker_reading_key,
    workers_read,
)
from tests.celery_support import BeatProcess, WorkerProcess, wait_for, worker_env
from tests.worker_tasks import record_and_sleep, runs_key

pytestmark = pytest.mark.django_db(transaction=True)


def reading(client: redis.Redis, hostname: str) -> dict[str, Any] | None:
    raw = client.get(worker_reading_key(hostname))
    return None if raw is None else dict(json.loads(raw))


def fresh_reading(client: redis.Redis, hostname: str, after: float) -> dict[str, Any]:
    """The first reading written after `after` (epoch seconds)."""
    return wait_for(
        lambda: (r := reading(client, hostname)) is not None and r["at"] > after and r,
        30,
        f"a heartbeat of {hostname} after {after}",
    )


@pytest.mark.worker
def test_a_worker_reports_its_processes_memory_and_tasks(clean_broker: redis.Redis) -> None:
    before = time.time()
    worker = WorkerProcess("hb", queues="default,reports", concurrency=2).start()
    try:
        assert worker.proc is not None
        children = wait_for(lambda: len(worker.child_pids()) == 2 and worker.child_pids(), 30, "two pool processes")
        first = fresh_reading(clean_broker, worker.hostname, time.time())
        assert first["hostname"] == worker.hostname
        assert first["pid"] == worker.proc.pid
        assert first["queues"] == ["default", "reports"]
        assert first["rss"] > 10 * 1024 * 1024
        # Every pool process is listed with its own memory, read from the same process the OS reports.
        assert sorted(p["pid"] for p in first["pool"]) == sorted(children)
        assert all(p["rss"] > 10 * 1024 * 1024 for p in first["pool"])
        assert psutil.Process(first["pool"][0]["pid"]).ppid() == worker.proc.pid
        assert before <= first["started_at"] <= first["at"]
        assert first["tasks_done"] == 0
        # The same reading on each queue's key (the compose healthchecks look at those).
        assert json.loads(clean_broker.get(worker_key("reports", worker.hostname)) or b"{}")["pid"] == worker.proc.pid

        token = uuid.uuid4().hex
        for _ in range(3):
            record_and_sleep.apply_async(args=(token, 0), queue="default")
        wait_for(lambda: clean_broker.llen(runs_key(token)) == 6, 30, "three tasks done")
        later = wait_for(
            lambda: (r := reading(clean_broker, worker.hostname)) and r["tasks_done"] == 3 and r,
            30,
            "tasks_done to reach 3",
        )
        assert later["started_at"] == first["started_at"]
        assert [r["hostname"] for r in workers_read(clean_broker)] == [worker.hostname]
    finally:
        worker.stop()
    assert workers_read(clean_broker) == []


@pytest.mark.worker
def test_a_replaced_pool_process_is_counted(clean_broker: redis.Redis) -> None:
    """With one task per child, each task ends its pool process and the worker forks a new one."""
    worker = WorkerProcess("recycle", queues="default", env=worker_env(CELERY_MAX_TASKS_PER_CHILD="1")).start()
    try:
        first = fresh_reading(clean_broker, worker.hostname, time.time())
        assert first["pool_started"] == 1 and len(first["pool"]) == 1
        old_child = first["pool"][0]["pid"]
        token = uuid.uuid4().hex
        record_and_sleep.apply_async(args=(token, 0), queue="default")
        wait_for(lambda: clean_broker.llen(runs_key(token)) == 2, 30, "the task")
        replaced = wait_for(
            lambda: (
                (r := reading(clean_broker, worker.hostname)) and r["pool"] and r["pool"][0]["pid"] != old_child and r
            ),
            30,
            "a new pool process in the heartbeat",
        )
        assert replaced["pool_started"] == 2
        assert replaced["tasks_done"] == 1
    finally:
        worker.stop()


@pytest.mark.worker
def test_a_worker_started_again_counts_one_restart(clean_broker: redis.Redis) -> None:
    worker = WorkerProcess("again", queues="default").start()
    worker.stop()
    assert restarts_count(clean_broker, worker.hostname) == 0  # one start is no restart
    worker = WorkerProcess("again", queues="default").start()
    try:
        assert restarts_count(clean_broker, worker.hostname) == 1
        # Killed like the OOM killer would: its next start is a restart too.
        # (Its heartbeat keys outlive it by their TTL, so start() may return before the new start is recorded.)
        worker.kill()
        worker = WorkerProcess("again", queues="default").start()
        wait_for(lambda: restarts_count(clean_broker, worker.hostname) == 2, 30, "the second restart")
        assert restarts_count(clean_broker, worker.hostname) == 2
    finally:
        worker.stop()


def test_restarts_count_only_starts_that_follow_another_in_the_last_hour(clean_broker: redis.Redis) -> None:
    now = time.time()
    host = "loop@box"
    for minutes_ago in (300, 50, 40, 30, 20, 10):
        start_record(clean_broker, host, now=now - minutes_ago * 60)
    # Five starts in the last hour, each after an earlier one; the one of 5 h ago is outside it.
    assert restarts_count(clean_broker, host, now=now) == 5
    # A worker that started 10 minutes ago for the first time has not restarted.
    start_record(clean_broker, "fresh@box", now=now - 600)
    assert restarts_count(clean_broker, "fresh@box", now=now) == 0
    # Starts older than a day are forgotten: the first start after a long stop is no restart.
    start_record(clean_broker, "old@box", now=now - 2 * 86400)
    start_record(clean_broker, "old@box", now=now - 60)
    assert restarts_count(clean_broker, "old@box", now=now) == 0
    assert clean_broker.ttl(starts_key(host)) > 0


@pytest.mark.worker
def test_beat_reports_its_last_tick(clean_broker: redis.Redis) -> None:
    beat = BeatProcess().start()
    try:
        seen = wait_for(
            lambda: (b := beat_read(clean_broker)) and b.get("last_tick") and b,
            30,
            "beat's heartbeat with a tick",
        )
        assert beat.proc is not None and seen["pid"] == beat.proc.pid
        assert seen["rss"] > 10 * 1024 * 1024
        assert seen["started_at"] <= seen["last_tick"] <= seen["at"]
    finally:
        beat.stop()
    assert clean_broker.ttl(BEAT_KEY) <= 20  # it expires: a stopped beat is seen as gone

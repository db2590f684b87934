"""celeryconf/taskpeak.py: each task's own peak RSS, read by the process that ran it, in the worker's log."""

from __future__ import annotations

import re
import uuid
from typing import Any

import psutil
import pytest
import redis

from bench.stack import task_peaks
from celeryconf.taskpeak import MIB, log_threshold_mib, peak_bytes, peak_reset
from jobs.models import Job
from jobs.services import job_launch
from tests.celery_support import WorkerProcess, wait_for, worker_env
from tests.worker_tasks import hold_memory, record_and_sleep, runs, runs_key

PEAK_LINE = re.compile(
    r"task peak: (?P<task>[\w.]+)\[(?P<id>[^\]]+)\] SUCCESS took process (?P<pid>\d+) to (?P<mib>[\d.]+) MiB"
)


def test_the_threshold_defaults_to_90_mib_and_empty_turns_the_reading_off() -> None:
    assert log_threshold_mib({}) == 90.0
    assert log_threshold_mib({"CELERY_TASK_PEAK_LOG_MB": "0"}) == 0.0
    assert log_threshold_mib({"CELERY_TASK_PEAK_LOG_MB": "75.5"}) == 75.5
    assert log_threshold_mib({"CELERY_TASK_PEAK_LOG_MB": " "}) is None
    with pytest.raises(ValueError, match="0 or more"):
        log_threshold_mib({"CELERY_TASK_PEAK_LOG_MB": "-1"})
    with pytest.raises(ValueError):
        log_threshold_mib({"CELERY_TASK_PEAK_LOG_MB": "a lot"})


def test_the_peak_is_reset_to_the_current_rss_and_catches_what_came_and_went() -> None:
    assert peak_reset()
    rss = psutil.Process().memory_info().rss
    before = peak_bytes()
    assert before is not None and before < rss + 8 * MIB
    block = bytearray(64 * MIB)
    block[::4096] = b"x" * len(range(0, len(block), 4096))
    del block  # gone again: a sample taken now would not see it
    after = peak_bytes()
    assert after is not None and after >= rss + 60 * MIB
    assert peak_reset()
    again = peak_bytes()
    assert again is not None and again < after - 50 * MIB


@pytest.mark.worker
def test_a_worker_logs_each_tasks_own_peak(clean_broker: redis.Redis) -> None:
    """In one pool process: the task that held 60 MiB is logged with a peak 60 MiB over the small task
    run after it (the peak was reset in between), and bench.stack reads the same lines back. (The memory
    limit is raised so that the pool process is not replaced after the big task.)"""
    env = worker_env(CELERY_TASK_PEAK_LOG_MB="0", CELERY_MAX_MEMORY_PER_CHILD_KB="400000")
    worker = WorkerProcess("peak", queues="default", env=env).start()
    try:
        token = uuid.uuid4().hex
        big = hold_memory.apply_async(args=(token, 60), queue="default")
        wait_for(lambda: clean_broker.llen(runs_key(token)) == 1, 30, "the big task")
        small = record_and_sleep.apply_async(args=(token, 0), queue="default")
        wait_for(lambda: clean_broker.llen(runs_key(token)) == 3, 30, "the small task")
        lines = wait_for(lambda: len(found := PEAK_LINE.findall(worker.output())) == 2 and found, 30, "two peak lines")
    finally:
        worker.stop()
    by_id = {line[1]: line for line in lines}
    big_line, small_line = by_id[big.id], by_id[small.id]
    assert big_line[0] == "tests.hold_memory" and small_line[0] == "tests.record_and_sleep"
    assert big_line[2] == small_line[2]  # the same pool process
    assert float(big_line[3]) >= float(small_line[3]) + 55
    assert task_peaks(worker.output()) == {
        "tests.hold_memory": (float(big_line[3]), 1),
        "tests.record_and_sleep": (float(small_line[3]), 1),
    }


@pytest.mark.worker
def test_below_the_threshold_nothing_is_logged(clean_broker: redis.Redis) -> None:
    worker = WorkerProcess("quiet", queues="default", env=worker_env(CELERY_TASK_PEAK_LOG_MB="500")).start()
    try:
        token = uuid.uuid4().hex
        hold_memory.apply_async(args=(token, 20), queue="default")
        wait_for(lambda: clean_broker.llen(runs_key(token)) == 1, 30, "the task")
        record_and_sleep.apply_async(args=(token, 0), queue="default")
        wait_for(lambda: clean_broker.llen(runs_key(token)) == 3, 30, "the second task")
    finally:
        worker.stop()
    assert "task peak:" not in worker.output()


@pytest.mark.worker
def test_a_pool_process_is_still_replaced_after_a_task_that_went_past_the_memory_limit(
    clean_broker: redis.Redis,
) -> None:
    """Celery compares the peak RSS (getrusage's ru_maxrss, which the reset lowers too) with its limit
    after each task: a light task keeps the process, a heavy one still has it replaced."""
    worker = WorkerProcess("limit", queues="default", env=worker_env(CELERY_MAX_MEMORY_PER_CHILD_KB="110000")).start()
    try:
        token = uuid.uuid4().hex
        record_and_sleep.apply_async(args=(token, 0), queue="default")
        record_and_sleep.apply_async(args=(token, 0), queue="default")
        wait_for(lambda: clean_broker.llen(runs_key(token)) == 4, 30, "two light tasks")
        light = {run.split(":")[-1] for run in runs(clean_broker, token)}
        assert len(light) == 1  # the same pool process ran both
        hold_memory.apply_async(args=(token, 80), queue="default")
        wait_for(lambda: clean_broker.llen(runs_key(token)) == 5, 30, "the heavy task")
        heavy = runs(clean_broker, token)[4].split(":")[-1]
        assert {heavy} == light
        replaced = wait_for(lambda: set(map(str, worker.child_pids())) - light, 30, "a new pool process")
        assert replaced and int(heavy) not in worker.child_pids()
    finally:
        worker.stop()


@pytest.mark.worker
@pytest.mark.django_db(transaction=True)
def test_a_jobs_peak_line_names_its_kind(clean_broker: redis.Redis, owner: Any) -> None:
    """jobs.run runs every kind of job: its line names the kind, and bench.stack counts it apart."""
    worker = WorkerProcess("jobpeak", queues="reports", env=worker_env(CELERY_TASK_PEAK_LOG_MB="0")).start()
    try:
        job = job_launch(kind="tests.slow", acting_user=owner, params={"token": uuid.uuid4().hex, "steps": 1})
        wait_for(lambda: "task peak: jobs.run" in worker.output(), 30, "the job's peak line")
    finally:
        worker.stop()
    assert f"task peak: jobs.run[{Job.objects.get(pk=job.pk).celery_task_id}] (tests.slow) SUCCESS" in worker.output()
    assert list(task_peaks(worker.output())) == ["jobs.run:tests.slow"]

"""Real worker processes prove the reliability settings: a task runs; a task whose worker is
killed with SIGKILL mid-task runs again on a new worker (late acks), instead of being lost."""

from __future__ import annotations

import os
import signal
import uuid

import pytest
import redis

from tests.celery_support import WorkerProcess, wait_for, worker_env
from tests.worker_tasks import record_and_sleep, runs

pytestmark = [pytest.mark.worker, pytest.mark.django_db(transaction=True)]


def test_a_real_worker_runs_a_task(worker: WorkerProcess, redis_client: redis.Redis) -> None:
    token = uuid.uuid4().hex
    record_and_sleep.apply_async(args=(token, 0), queue="default")
    recorded = wait_for(lambda: len(runs(redis_client, token)) == 2 and runs(redis_client, token), 20, "the task")
    assert recorded[0].startswith("start:") and recorded[1].startswith("done:")


def test_a_task_whose_pool_process_is_killed_runs_again(worker: WorkerProcess, redis_client: redis.Redis) -> None:
    """SIGKILL of the process running the task: reject-on-worker-lost puts the message back at once."""
    token = uuid.uuid4().hex
    record_and_sleep.apply_async(args=(token, 3), queue="default")
    first = wait_for(lambda: runs(redis_client, token), 20, "the task to start")[0]
    victim = int(first.split(":")[1])
    os.kill(victim, signal.SIGKILL)
    recorded = wait_for(
        lambda: "done" in " ".join(runs(redis_client, token)) and runs(redis_client, token),
        30,
        "the task to run again",
    )
    starts = [r for r in recorded if r.startswith("start:")]
    assert len(starts) == 2, recorded
    assert int(starts[1].split(":")[1]) != victim
    assert recorded[-1].startswith("done:")


def test_a_task_whose_whole_worker_is_killed_runs_on_a_new_worker(
    transactional_db: None, clean_broker: redis.Redis
) -> None:
    """SIGKILL of the whole worker (main process and pool): nothing acknowledges, nothing requeues.
    The message stays unacknowledged in Redis and a new worker gets it after the visibility timeout
    (short here, but within the same rule the production configuration obeys)."""
    fast = worker_env(
        CELERY_TASK_TIME_LIMIT="6",
        CELERY_TASK_SOFT_TIME_LIMIT="5",
        CELERY_MAX_COUNTDOWN="1",
        CELERY_VISIBILITY_MARGIN="2",
        CELERY_VISIBILITY_TIMEOUT="9",
        CELERY_RESTORE_INTERVAL="1",
        CELERY_RESTORE_THROTTLE="1",
    )
    first_worker = WorkerProcess("doomed", env=fast).start()
    second_worker: WorkerProcess | None = None
    try:
        token = uuid.uuid4().hex
        record_and_sleep.apply_async(args=(token, 2), queue="default")
        wait_for(lambda: runs(clean_broker, token), 20, "the task to start")
        first_worker.kill()
        assert runs(clean_broker, token) == [runs(clean_broker, token)[0]]  # started, never finished

        second_worker = WorkerProcess("rescuer", env=fast).start()
        recorded = wait_for(
            lambda: any(r.startswith("done") for r in runs(clean_broker, token)) and runs(clean_broker, token),
            40,
            "the task to be redelivered",
        )
        starts = [r for r in recorded if r.startswith("start:")]
        assert len(starts) == 2, recorded
        assert recorded[-1].startswith("done:")
    finally:
        first_worker.kill()
        if second_worker:
            second_worker.stop()

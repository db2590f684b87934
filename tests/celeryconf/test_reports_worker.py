"""The reports queue has its own worker (Procfile, docker-compose.prod.yml): a long report keeps the
reports worker busy while default-queue work goes on at once on its own worker."""

from __future__ import annotations

import shlex
import time
import uuid
from pathlib import Path

import pytest
import redis

from jobs.models import Job, JobState
from jobs.services import job_launch
from tests.celery_support import ROOT, WorkerProcess, wait_for
from tests.factories.jobs import job_finished
from tests.worker_tasks import runs_key

pytestmark = [pytest.mark.worker, pytest.mark.django_db(transaction=True)]


def procfile_workers(path: Path = ROOT / "Procfile") -> dict[str, tuple[str, int]]:
    """{process name: (queues, concurrency)} of the Procfile's `celery worker` lines."""
    workers = {}
    for line in path.read_text().splitlines():
        name, _, command = line.partition(":")
        argv = shlex.split(command)
        if "worker" not in argv:
            continue
        queues = argv[argv.index("-Q") + 1]
        concurrency = int(argv[argv.index("--concurrency") + 1])
        workers[name.strip()] = (queues, concurrency)
    return workers


def test_the_procfile_gives_each_queue_its_own_worker() -> None:
    workers = procfile_workers()
    assert workers == {
        "worker-payments": ("payments", 1),
        "worker-default": ("default", 2),
        "worker-reports": ("reports", 1),
    }


@pytest.fixture
def procfile_default_and_reports(clean_broker: redis.Redis, transactional_db: None):  # type: ignore[no-untyped-def]
    """The default and reports workers as the Procfile starts them (queues and concurrency)."""
    started = []
    try:
        for name in ("worker-default", "worker-reports"):
            queues, concurrency = procfile_workers()[name]
            started.append(WorkerProcess(queues.split(",")[0], queues=queues, concurrency=concurrency).start())
        yield started
    finally:
        for worker in started:
            worker.stop()


def test_a_long_report_does_not_delay_default_queue_work(
    procfile_default_and_reports: list[WorkerProcess], owner: object, redis_client: redis.Redis
) -> None:
    import tests.worker_tasks  # noqa: F401 - the test job kinds

    # Two long reports: the first runs, the second waits for the reports worker's one process.
    slow = [uuid.uuid4().hex, uuid.uuid4().hex]
    reports = [
        job_launch(kind="tests.slow", acting_user=owner, params={"token": t, "steps": 10, "step_seconds": 0.6})
        for t in slow
    ]
    wait_for(lambda: Job.objects.filter(pk=reports[0].pk, state=JobState.RUNNING).exists(), 20, "the first report")

    token = uuid.uuid4().hex
    sent = time.monotonic()
    quick = job_launch(kind="tests.quick_default", acting_user=owner, params={"token": token})
    quick = job_finished(quick, timeout=20)
    waited = time.monotonic() - sent
    assert quick.state == JobState.SUCCEEDED
    assert waited < 3, f"a default-queue job waited {waited:.1f}s behind the reports"

    for job in reports:
        job.refresh_from_db()
    assert reports[0].state == JobState.RUNNING  # still at it: the quick job did not wait for it
    assert reports[1].state == JobState.QUEUED  # concurrency 1: the second report waits its turn
    assert redis_client.llen(runs_key(slow[1])) == 0
    for job in reports:
        assert job_finished(job, timeout=30).state == JobState.SUCCEEDED

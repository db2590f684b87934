"""Workers and beat start through `python -m celeryconf worker|beat` (celeryconf/__main__.py), not the `celery`
program, whose plugins and shell every process would carry (docs/worker-memory.md). Real workers, started
with the Procfile's own command lines, run a task from each queue without those modules."""

from __future__ import annotations

import functools
import json
import os
import shlex
import signal
import socket
import subprocess
import sys
import tempfile
import uuid
from pathlib import Path
from typing import Any

import pytest
import redis
import yaml

from celeryconf.config import QUEUES
from celeryconf.heartbeat import worker_key
from tests.celery_support import ROOT, wait_for, worker_env
from tests.worker_tasks import main_modules_key, modules_key, process_modules

ENTRY = ["python", "-m", "celeryconf"]
CELERY_PROCESSES = ("worker-payments", "worker-default", "worker-reports", "beat")


def procfile_commands() -> dict[str, list[str]]:
    commands = {}
    for line in (ROOT / "Procfile").read_text().splitlines():
        name, _, command = line.partition(":")
        if command.strip():
            commands[name.strip()] = shlex.split(command)
    return commands


def compose_commands() -> dict[str, list[str]]:
    services = yaml.safe_load((ROOT / "docker-compose.prod.yml").read_text())["services"]
    commands = {}
    for name in (*CELERY_PROCESSES, "flower"):
        command = services[name]["command"]
        argv = shlex.split(command) if isinstance(command, str) else [str(a) for a in command]
        if argv[:3] == ["chrt", "--idle", "0"]:  # the reports worker's CPU priority (docs/deploy.md)
            argv = argv[3:]
        commands[name] = argv
    return commands


@pytest.mark.parametrize("commands", [procfile_commands, compose_commands], ids=["Procfile", "compose"])
def test_workers_and_beat_start_without_the_celery_program(commands: Any) -> None:
    found = commands()
    for name in CELERY_PROCESSES:
        kind = "beat" if name == "beat" else "worker"
        assert found[name][:4] == [*ENTRY, kind], f"{name}: {shlex.join(found[name])}"
    # Flower is the `celery` program's own plugin, and runs without Django (test_flower.py).
    flower = found["flower"]
    if flower[:2] == ["sh", "-c"]:
        flower = shlex.split(flower[2].split("exec ", 1)[1])
    assert flower[:4] == ["celery", "-A", "celeryconf", "flower"]


def test_the_entry_point_takes_the_celery_commands_options_and_nothing_else() -> None:
    env = {**os.environ, "DJANGO_SETTINGS_MODULE": "backoffice.settings"}

    def run(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [sys.executable, "-m", "celeryconf", *args], cwd=ROOT, env=env, capture_output=True, text=True, timeout=60
        )

    worker_help = run("worker", "--help")
    assert worker_help.returncode == 0, worker_help.stderr
    for option in ("--queues", "--concurrency", "--hostname", "--max-memory-per-child", "--loglevel", "--include"):
        assert option in worker_help.stdout
    beat_help = run("beat", "--help")
    assert beat_help.returncode == 0 and "--scheduler" in beat_help.stdout
    other = run("inspect", "ping")
    assert other.returncode == 2 and "celery -A celeryconf" in other.stderr
    detached = run("worker", "--detach")
    assert detached.returncode == 1 and "--detach" in detached.stderr


class ProcfileWorker:
    """One of the Procfile's worker lines as it is, with the test tasks (-I) and a hostname of its own."""

    def __init__(self, name: str, env: dict[str, str]) -> None:
        argv = procfile_commands()[name]
        assert argv[:2] == ["python", "-m"]
        self.queues = argv[argv.index("-Q") + 1]
        self.hostname = f"{name}-{uuid.uuid4().hex[:8]}@{socket.gethostname()}"
        argv = [sys.executable, *argv[1:]]
        argv[argv.index("-n") + 1] = self.hostname
        argv += ["-I", "tests.worker_tasks", "--without-gossip", "--without-mingle"]
        self.log = Path(tempfile.mkstemp(prefix=f"{name}-", suffix=".log")[1])
        with self.log.open("ab") as out:
            self.proc = subprocess.Popen(
                argv, cwd=ROOT, env=env, stdout=out, stderr=subprocess.STDOUT, start_new_session=True
            )

    def stop(self) -> None:
        if self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGTERM)
            try:
                self.proc.wait(30)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait(10)


@pytest.mark.worker
@pytest.mark.django_db(transaction=True)
def test_procfile_workers_run_a_task_from_each_queue_without_the_left_out_modules(
    clean_broker: redis.Redis,
) -> None:
    env = worker_env()
    workers: dict[str, ProcfileWorker] = {}

    def ready(queue: str, worker: ProcfileWorker) -> bool:
        return bool(clean_broker.exists(worker_key(queue, worker.hostname))) or worker.proc.poll() is not None

    try:
        for name in ("worker-payments", "worker-default", "worker-reports"):
            worker = ProcfileWorker(name, env)
            workers[worker.queues] = worker
        assert sorted(workers) == sorted(QUEUES)
        for queue, worker in workers.items():
            wait_for(functools.partial(ready, queue, worker), 60, f"the {queue} worker")
            assert worker.proc.poll() is None, worker.log.read_text(errors="replace")

        token = uuid.uuid4().hex
        for queue in workers:
            process_modules.apply_async(args=(token,), queue=queue, routing_key=queue)
        wait_for(lambda: clean_broker.llen(modules_key(token)) == len(workers), 60, "a task on each queue")
        readings = {r["queue"]: r for r in (json.loads(raw) for raw in clean_broker.lrange(modules_key(token), 0, -1))}

        for queue, worker in workers.items():
            reading = readings[queue]
            assert reading["ppid"] == worker.proc.pid, f"{queue}: not run by a pool process of its worker"
            assert reading["loaded"] == [], f"{queue} pool process loaded {reading['loaded']}"
            assert reading["pdeathsig"] == signal.SIGKILL  # set through ctypes (celeryconf/footprint.py)
            assert 1 <= reading["time_zone_choices"] <= 2  # the project's zones, not ~600 ZoneInfo objects
            main = clean_broker.get(main_modules_key(worker.hostname))
            assert main is not None and json.loads(main) == [], f"{queue} main process loaded {main!r}"
    finally:
        for worker in workers.values():
            worker.stop()


@pytest.mark.django_db(transaction=True)
def test_a_celery_process_keeps_few_time_zone_choices_and_reads_crontabs_in_any_zone() -> None:
    """Celery processes build the crontab model's time-zone choices for the project's zones only
    (celeryconf/footprint.py); a crontab in another zone still loads and schedules. Web processes
    (this one) keep every zone for the admin's form."""
    from django_celery_beat.models import CrontabSchedule

    assert len(CrontabSchedule._meta.get_field("timezone").choices or []) > 400
    code = (
        "import sys; sys.argv = ['/usr/bin/celery', '-A', 'celeryconf', 'beat']\n"
        "import django; django.setup()\n"
        "from zoneinfo import ZoneInfo\n"
        "from django_celery_beat.models import CrontabSchedule\n"
        "crontab = CrontabSchedule.objects.create(minute='0', hour='4', timezone='Asia/Tokyo')\n"
        "crontab = CrontabSchedule.objects.get(pk=crontab.pk)\n"
        "assert crontab.timezone == ZoneInfo('Asia/Tokyo') and crontab.schedule.tz == ZoneInfo('Asia/Tokyo')\n"
        "assert crontab.schedule.remaining_estimate(crontab.schedule.now()).total_seconds() <= 86400\n"
        "print(sorted(str(tz) for tz, _ in CrontabSchedule._meta.get_field('timezone').choices))\n"
    )
    done = subprocess.run(
        [sys.executable, "-c", code], cwd=ROOT, env=worker_env(), capture_output=True, text=True, timeout=120
    )
    assert done.returncode == 0, done.stderr[-2000:]
    assert done.stdout.strip().splitlines()[-1] == "['Africa/Nairobi', 'UTC']"


@pytest.mark.worker
@pytest.mark.django_db(transaction=True)
def test_the_procfile_reports_worker_runs_each_task_in_a_fresh_pool_process(clean_broker: redis.Redis) -> None:
    """--max-tasks-per-child 1: what one report imports (ReportLab, openpyxl, the admin) never adds to the
    next report's peak; each runs in a new fork of the main process (docs/worker-memory.md)."""
    worker = ProcfileWorker("worker-reports", worker_env())
    try:
        wait_for(
            lambda: bool(clean_broker.exists(worker_key("reports", worker.hostname))) or worker.proc.poll() is not None,
            60,
            "the reports worker",
        )
        assert worker.proc.poll() is None, worker.log.read_text(errors="replace")
        token = uuid.uuid4().hex
        for _ in range(3):
            process_modules.apply_async(args=(token,), queue="reports", routing_key="reports")
        wait_for(lambda: clean_broker.llen(modules_key(token)) == 3, 90, "three tasks on the reports queue")
        readings = [json.loads(raw) for raw in clean_broker.lrange(modules_key(token), 0, -1)]
        assert all(r["ppid"] == worker.proc.pid for r in readings)
        assert len({r["pid"] for r in readings}) == 3, readings
    finally:
        worker.stop()

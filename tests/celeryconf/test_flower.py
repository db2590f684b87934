"""Flower, as `make run` and production start it: behind a password, with a bounded history."""

from __future__ import annotations

import json
import os
import re
import shlex
import signal
import socket
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest
import redis
import requests

from tests.celery_support import ROOT, wait_for, worker_env

pytestmark = [pytest.mark.worker, pytest.mark.django_db(transaction=True)]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _procfile_flower_args() -> list[str]:
    line = next(li for li in (ROOT / "Procfile").read_text().splitlines() if li.startswith("flower:"))
    return line.split(":", 1)[1].split()


def test_flower_asks_for_the_password_and_keeps_a_bounded_history(clean_broker: redis.Redis) -> None:
    args = _procfile_flower_args()
    assert "--conf=celeryconf/flower.py" in args and "--basic-auth=${FLOWER_BASIC_AUTH}" in args
    port = _free_port()
    env = worker_env(FLOWER_PORT=str(port), FLOWER_BASIC_AUTH="owner:s3cret-flower")
    expanded = [os.path.expandvars(a) if "$" in a else a for a in args]
    for key in ("FLOWER_PORT", "FLOWER_BASIC_AUTH"):
        expanded = [a.replace("${" + key + "}", env[key]) for a in expanded]
    assert expanded[:3] == ["celery", "-A", "celeryconf"]
    log = Path(tempfile.mkstemp(prefix="flower-", suffix=".log")[1])
    with log.open("ab") as out:
        proc = subprocess.Popen(
            [sys.executable, "-m", *expanded],
            cwd=ROOT,
            env=env,
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    url = f"http://127.0.0.1:{port}/"
    try:

        def answering() -> bool:
            try:
                requests.get(url, timeout=1)
                return True
            except requests.ConnectionError:
                return proc.poll() is not None

        wait_for(answering, 30, "Flower to listen")
        assert proc.poll() is None, log.read_text()
        assert requests.get(url, timeout=5).status_code == 401
        assert requests.get(url, auth=("owner", "wrong"), timeout=5).status_code == 401
        assert requests.get(url, auth=("owner", "s3cret-flower"), timeout=5).status_code == 200
    finally:
        os.killpg(proc.pid, signal.SIGTERM)
        proc.wait(15)


def test_flower_loads_the_celery_app_without_django() -> None:
    """`celery -A celeryconf flower` gets the app (broker, queues) but no Django fix-up: no settings,
    no apps, no ORM in the process; a worker loading the same app gets Django set up."""
    code = (
        "import sys; sys.argv = ['/usr/bin/celery', '-A', 'celeryconf', '{cmd}']\n"
        "import os\n"
        "from celeryconf.app import app\n"
        "app.loader.import_default_modules()\n"
        "from django.apps import apps\n"
        "print(os.environ.get('DJANGO_SETTINGS_MODULE', '-'), apps.ready, app.conf.broker_url.startswith('redis://'))\n"
    )
    env = {k: v for k, v in worker_env().items() if k != "DJANGO_SETTINGS_MODULE"}
    for cmd, expected in (("flower", "- False True"), ("worker", "backoffice.settings True True")):
        done = subprocess.run(
            [sys.executable, "-c", code.format(cmd=cmd)], cwd=ROOT, env=env, capture_output=True, text=True, timeout=120
        )
        assert done.returncode == 0, done.stderr[-2000:]
        assert done.stdout.strip().splitlines()[-1] == expected, cmd


def _compose_flower_args() -> list[str]:
    """The arguments docker-compose.prod.yml's flower service gives `celery` (its `sh -c` line)."""
    import yaml

    command = yaml.safe_load((ROOT / "docker-compose.prod.yml").read_text())["services"]["flower"]["command"]
    line = re.search(r"exec (celery .*)", " ".join(command), re.S)
    assert line is not None, command
    return shlex.split(line.group(1).replace("$${FLOWER_BASIC_AUTH}", "owner:pw"))


# Run in a fresh process (Flower's options are tornado globals): parse the arguments as `celery ... flower`
# does (FLOWER_* variables, then --conf's file, then the command line), build the Flower application as the
# command does (not started: no port, no event thread), then feed its event state three times as many tasks
# as it may keep, each received, started and succeeded, as a worker's events arrive.
FLOWER_STATE = r"""
import json, sys, time, uuid
argv = json.loads(sys.argv[1])
sys.argv = argv
from celeryconf.app import app
from flower.app import Flower
from flower.command import apply_env_options, apply_options
from tornado.options import options

apply_env_options()
apply_options(argv[0], argv[argv.index("flower") + 1:])
flower = Flower(capp=app, options=options)
state = flower.events.state
clock = 0
for n in range(3 * options.max_tasks):
    task_id = str(uuid.uuid4())
    for kind, fields in (
        ("task-received", {"name": "backoffice.send_email", "args": "()", "kwargs": "{'period': 'p%d'}" % n}),
        ("task-started", {}),
        ("task-succeeded", {"result": "None", "runtime": 0.01}),
    ):
        clock += 1
        now = time.time()
        state.event({"type": kind, "uuid": task_id, "hostname": "default@box", "timestamp": now,
                     "local_received": now, "clock": clock, "utcoffset": 0, "pid": 1, **fields})
print(json.dumps({
    "max_tasks": options.max_tasks, "max_workers": options.max_workers, "persistent": options.persistent,
    "state_save_interval": options.state_save_interval, "purge_offline_workers": options.purge_offline_workers,
    "tasks_limit": state.tasks.limit, "workers_limit": state.workers.limit, "tasks": len(state.tasks),
    "indexed": len(state.search_engine.documents), "heap": len(state._taskheap),
    "persistent_events": flower.events.persistent,
}))
"""


@pytest.mark.parametrize("source", ["Procfile", "docker-compose.prod.yml"])
def test_flower_gets_the_bounded_history_of_celeryconf_flower(source: str) -> None:
    """The flower command of `make run` and of production loads celeryconf/flower.py, and Flower's event state
    keeps no more tasks and workers than it says, however many tasks go by."""
    from celeryconf import flower as conf

    if source == "Procfile":
        values = {"${FLOWER_PORT}": "5555", "${FLOWER_BASIC_AUTH}": "owner:pw"}
        args = []
        for arg in _procfile_flower_args():
            for name, value in values.items():
                arg = arg.replace(name, value)
            args.append(arg)
    else:
        args = _compose_flower_args()
    assert args[:4] == ["celery", "-A", "celeryconf", "flower"], args
    env = {k: v for k, v in worker_env().items() if k != "DJANGO_SETTINGS_MODULE" and not k.startswith("FLOWER_")}
    done = subprocess.run(
        [sys.executable, "-c", FLOWER_STATE, json.dumps(args)],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    got = json.loads(done.stdout.strip().splitlines()[-1])
    # Flower's own defaults are 100,000 tasks, 5,000 workers and no purge: these come from the file.
    assert conf.max_tasks < 100_000 and conf.max_workers < 5000 and conf.purge_offline_workers is not None
    assert got["max_tasks"] == got["tasks_limit"] == conf.max_tasks
    assert got["max_workers"] == got["workers_limit"] == conf.max_workers
    assert got["purge_offline_workers"] == conf.purge_offline_workers
    assert got["persistent"] is got["persistent_events"] is False and got["state_save_interval"] == 0
    assert got["tasks"] == got["indexed"] == conf.max_tasks
    assert got["heap"] <= 4 * conf.max_tasks

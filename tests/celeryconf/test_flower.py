"""Flower, as `make run` and production start it: behind a password, with a bounded history."""

from __future__ import annotations

import os
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
    assert "--max-tasks=1000" in args and "--basic-auth=${FLOWER_BASIC_AUTH}" in args
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

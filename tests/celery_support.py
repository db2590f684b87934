"""Real Celery worker processes for the tests that prove delivery (no eager mode)."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import redis
from django.conf import settings
from django.db import connection

from celeryconf.heartbeat import worker_key, worker_reading_key

ROOT = Path(__file__).resolve().parent.parent


def test_database_url() -> str:
    """DATABASE_URL of the test database pytest-django created, for processes we start."""
    s = connection.settings_dict
    auth = s["USER"] or ""
    if s.get("PASSWORD"):
        auth += f":{s['PASSWORD']}"
    host = s["HOST"] or "127.0.0.1"
    port = s["PORT"] or 5432
    return f"postgresql://{auth}@{host}:{port}/{s['NAME']}"


def worker_env(**overrides: str) -> dict[str, str]:
    env = dict(os.environ)
    env.update(
        {
            "DATABASE_URL": test_database_url(),
            "REDIS_URL": settings.REDIS_URL,
            "DJANGO_DEBUG": "1",
            "PYTHONUNBUFFERED": "1",
        }
    )
    env.update(overrides)
    return env


def wait_for(predicate: Callable[[], Any], timeout: float, what: str, interval: float = 0.1) -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(interval)
    raise AssertionError(f"timed out after {timeout}s waiting for {what}")


class WorkerProcess:
    """A worker started as Procfile and compose start one (`python -m celeryconf worker`), in its own process
    group; killable with SIGKILL like a crashed box."""

    def __init__(
        self,
        name: str,
        queues: str = "default,reports,payments",
        concurrency: int = 1,
        env: dict[str, str] | None = None,
        include_test_tasks: bool = True,
    ) -> None:
        self.name = name
        self.queues = queues
        self.concurrency = concurrency
        self.env = env or worker_env()
        self.hostname = f"{name}@{socket.gethostname()}"
        self.log = Path(tempfile.mkstemp(prefix=f"worker-{name}-", suffix=".log")[1])
        self.proc: subprocess.Popen[bytes] | None = None
        self.extra = ["-I", "tests.worker_tasks"] if include_test_tasks else []

    def start(self, timeout: float = 30) -> WorkerProcess:
        with self.log.open("ab") as out:
            self.proc = subprocess.Popen(
                [
                    sys.executable,
                    "-m",
                    "celeryconf",
                    "worker",
                    "-Q",
                    self.queues,
                    "-n",
                    self.hostname,
                    "--concurrency",
                    str(self.concurrency),
                    "-P",
                    "prefork",
                    "--without-gossip",
                    "--without-mingle",
                    "-l",
                    "INFO",
                    *self.extra,
                ],
                cwd=ROOT,
                env=self.env,
                stdout=out,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        client = redis.Redis.from_url(self.env["REDIS_URL"])
        first_queue = self.queues.split(",")[0]
        try:
            wait_for(
                lambda: client.exists(worker_key(first_queue, self.hostname)) or self._died(),
                timeout,
                f"worker {self.hostname} to be ready",
            )
        finally:
            client.close()
        if self._died():
            raise AssertionError(f"worker {self.name} exited:\n{self.output()}")
        return self

    def _died(self) -> bool:
        return self.proc is not None and self.proc.poll() is not None

    def output(self) -> str:
        return self.log.read_text(errors="replace")

    def child_pids(self) -> list[int]:
        assert self.proc is not None
        out = subprocess.run(["pgrep", "-P", str(self.proc.pid)], capture_output=True, text=True, check=False)
        return [int(pid) for pid in out.stdout.split()]

    def kill(self) -> None:
        """SIGKILL the whole worker (main process and pool children): nothing gets to clean up."""
        if self.proc and self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait(10)

    def stop(self, timeout: float = 30) -> None:
        if not self.proc or self.proc.poll() is not None:
            return
        os.killpg(self.proc.pid, signal.SIGTERM)
        try:
            self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self.kill()
        client = redis.Redis.from_url(self.env["REDIS_URL"])
        for queue in self.queues.split(","):
            client.delete(worker_key(queue, self.hostname))
        client.delete(worker_reading_key(self.hostname))
        client.close()


class BeatProcess:
    """Beat with the DatabaseScheduler, as `make run` and production start it (`python -m celeryconf beat`)."""

    def __init__(self, env: dict[str, str] | None = None) -> None:
        self.env = env or worker_env()
        self.log = Path(tempfile.mkstemp(prefix="beat-", suffix=".log")[1])
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self, timeout: float = 30) -> BeatProcess:
        from celeryconf.heartbeat import BEAT_KEY

        with self.log.open("ab") as out:
            self.proc = subprocess.Popen(
                [
                    sys.executable,
                    "-m",
                    "celeryconf",
                    "beat",
                    "-l",
                    "INFO",
                    "--pidfile",
                    str(self.log.with_suffix(".pid")),
                ],
                cwd=ROOT,
                env=self.env,
                stdout=out,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        client = redis.Redis.from_url(self.env["REDIS_URL"])
        try:
            wait_for(lambda: client.exists(BEAT_KEY) or self.proc.poll() is not None, timeout, "beat")  # type: ignore[union-attr]
        finally:
            client.close()
        if self.proc.poll() is not None:
            raise AssertionError(f"beat exited:\n{self.log.read_text(errors='replace')}")
        return self

    def stop(self) -> None:
        if self.proc and self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGTERM)
            try:
                self.proc.wait(15)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)

"""Tasks and job kinds that exist only for the tests; workers load them with `-I tests.worker_tasks`.

Each records its runs in a Redis list, so a test can see a task run, and run again after a crash.
"""

from __future__ import annotations

import ctypes
import json
import os
import sys
import time
from typing import Any

import redis
from celery import shared_task
from celery.signals import worker_ready
from django.conf import settings

from jobs.registry import JobContext, job_kind


def runs_key(token: str) -> str:
    return f"test:runs:{token}"


def runs(client: redis.Redis, token: str) -> list[str]:
    """The runs recorded under `token`, oldest first: "<what>:<pid>" each (`_record`)."""
    entries = client.lrange(runs_key(token), 0, -1)
    return [entry.decode() if isinstance(entry, bytes) else str(entry) for entry in entries]


def _record(token: str, what: str) -> None:
    client = redis.Redis.from_url(settings.REDIS_URL)
    client.rpush(runs_key(token), f"{what}:{os.getpid()}")
    client.close()


@shared_task(name="tests.record_and_sleep")
def record_and_sleep(token: str, seconds: float) -> None:
    _record(token, "start")
    time.sleep(seconds)
    _record(token, "done")


@shared_task(name="tests.hold_memory")
def hold_memory(token: str, mib: int) -> None:
    """Touch `mib` MiB for a moment and give them back: a task whose peak is well above its process's RSS."""
    block = bytearray(mib * 1024 * 1024)
    block[::4096] = b"x" * len(range(0, len(block), 4096))
    _record(token, f"held:{len(block)}")
    del block


@job_kind("tests.fail", label="Test: always fails")
def always_fails(ctx: JobContext) -> None:
    ctx.progress(30, "about to fail")
    raise ValueError("the test job failed on purpose")


@job_kind("tests.flaky", label="Test: fails once, then succeeds", retry_on=(ConnectionError,), max_attempts=3)
def flaky(ctx: JobContext) -> None:
    _record(ctx.params["token"], "attempt")
    if ctx.job.attempts == 1:
        raise ConnectionError("transient trouble")
    ctx.progress(100, "fine the second time")


@job_kind("tests.slow", label="Test: slow with progress")
def slow(ctx: JobContext) -> None:
    token = ctx.params["token"]
    _record(token, "start")
    steps = int(ctx.params.get("steps", 10))
    for step in range(1, steps + 1):
        time.sleep(float(ctx.params.get("step_seconds", 0.3)))
        ctx.progress(step * 100 // steps, f"step {step} of {steps}")
    _record(token, "done")


@job_kind("tests.rows", label="Test: counts rows, keeps a partial file")
def counts_rows(ctx: JobContext) -> None:
    """Saves a partial result at once, then reports rows until done (or cancelled)."""
    token = ctx.params["token"]
    _record(token, "start")
    total = int(ctx.params.get("total", 1000))
    chunk = int(ctx.params.get("chunk", 10))
    ctx.save_result("partial.csv", b"id\n" + b"".join(b"%d\n" % i for i in range(chunk)))
    for done in range(chunk, total + 1, chunk):
        time.sleep(float(ctx.params.get("step_seconds", 0.2)))
        ctx.rows(done, total)
    _record(token, "done")


@job_kind("tests.quick_default", label="Test: quick, on the default queue", queue="default")
def quick_default(ctx: JobContext) -> None:
    _record(ctx.params["token"], "ran")
    ctx.progress(100, "quick")


@shared_task(name="tests.succeed")
def succeed(token: str) -> str:
    _record(token, "done")
    return "ok"


@shared_task(name="tests.fail")
def fail(token: str) -> None:
    _record(token, "ran")
    raise ValueError(f"the test task failed on purpose ({token})")


@shared_task(name="tests.retry_once", bind=True, max_retries=3)
def retry_once(self, token: str) -> None:  # type: ignore[no-untyped-def]
    """Fails with a transient error the first time, asks to be retried, succeeds the second time."""
    _record(token, f"attempt{self.request.retries}")
    if self.request.retries == 0:
        raise self.retry(countdown=1, exc=ConnectionError("transient trouble, try again"))


@shared_task(name="tests.fail_in_open_transaction")
def fail_in_open_transaction(token: str, how: str) -> None:
    """Leaves the worker's connection inside a transaction aborted by an error, then fails:
    "raw" by a BEGIN sent behind Django's back, "autocommit" with Django's autocommit switched off."""
    import contextlib

    from django.db import DatabaseError, connection, transaction

    _record(token, "ran")
    if how == "autocommit":
        transaction.set_autocommit(False)
    with connection.cursor() as cursor:
        if how == "raw":
            cursor.execute("BEGIN")
        with contextlib.suppress(DatabaseError):
            cursor.execute("SELECT 1 / 0")
    raise RuntimeError(f"failed inside an aborted transaction ({how})")


# What a worker started as Procfile and compose start it must not carry (docs/worker-memory.md): the `celery`
# program and its plugins (Flower's, the `celery amqp` shell), the admin's modules, cffi's C parser.
LEFT_OUT_MODULES = (
    "celery.bin.celery",
    "click_repl",
    "prompt_toolkit",
    "flower",
    "tornado",
    "prometheus_client",
    "operations.admin",
    "import_export.admin",
    "openpyxl",
    "pycparser",
)


def modules_key(token: str) -> str:
    return f"test:modules:{token}"


def main_modules_key(hostname: str) -> str:
    return f"test:modules:main:{hostname}"


def _left_out_loaded() -> list[str]:
    return [name for name in LEFT_OUT_MODULES if name in sys.modules]


@worker_ready.connect
def _record_main_modules(sender: Any, **_: Any) -> None:
    """The worker's main process, once ready: which of LEFT_OUT_MODULES it has loaded."""
    client = redis.Redis.from_url(settings.REDIS_URL)
    client.set(main_modules_key(sender.hostname), json.dumps(_left_out_loaded()), ex=600)
    client.close()


@shared_task(name="tests.process_modules", bind=True)
def process_modules(self, token: str) -> None:  # type: ignore[no-untyped-def]
    """Records, from the pool process running it: its queue, pid and parent, which of LEFT_OUT_MODULES it
    has loaded, its parent-death signal (prctl PR_GET_PDEATHSIG) and the crontab time-zone choices."""
    from django_celery_beat.models import CrontabSchedule

    signal = ctypes.c_int()
    ctypes.CDLL(None).prctl(2, ctypes.byref(signal))  # PR_GET_PDEATHSIG
    reading = {
        "queue": self.request.delivery_info.get("routing_key"),
        "pid": os.getpid(),
        "ppid": os.getppid(),
        "loaded": _left_out_loaded(),
        "pdeathsig": signal.value,
        "time_zone_choices": len(CrontabSchedule._meta.get_field("timezone").choices or []),
    }
    client = redis.Redis.from_url(settings.REDIS_URL)
    client.rpush(modules_key(token), json.dumps(reading))
    client.close()

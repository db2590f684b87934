#!/usr/bin/env python3
"""Measure a Celery worker's memory: RSS and PSS of its main and pool processes, idle and after work.

Starts `python -m celeryconf worker -Q QUEUES -c N` (as Procfile and compose do; `--via celery`: the
`celery -A celeryconf worker` command line instead, to compare) with the caller's environment
(DATABASE_URL, REDIS_URL, DJANGO_DEBUG...), waits for its heartbeat key, lets it settle, reads
/proc/PID/status (VmRSS) and /proc/PID/smaps_rollup (Pss, Private_*) of each process, then sends it
work through `manage.py shell` - sampling the processes' RSS every half second meanwhile, for the
peak - reads them again, and stops it. `--beat` measures beat instead. See docs/worker-memory.md.

    python scripts/worker_memory.py --queues payments --concurrency 2 --callbacks 400
    python scripts/worker_memory.py --queues default --concurrency 2 --jobs 20
    python scripts/worker_memory.py --queues reports --concurrency 1 --jobs 20
    python scripts/worker_memory.py --queues reports --concurrency 1 --jobs 30 --reports-mix \
        --worker-args "--max-tasks-per-child 1"
    python scripts/worker_memory.py --beat

Use a scratch database (the workload creates a business, a till, callbacks and jobs in it).
Figures are KiB; a process's RSS counts pages it shares with the others after fork, PSS splits them.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent

# Run by `manage.py shell -c` against the worker's database and broker.
SETUP = """
from accounts.services import chart_ensure_default
from integrations.mpesa.models import Till
from tenancy.models import Business
b, created = Business.objects.get_or_create(name="Memory Water", defaults={"kind": "water"})
if created:
    chart_ensure_default(business=b)
t = Till.objects.filter(business=b).first() or Till.objects.create(
    business=b, name="Memory paybill", shortcode="600977", kind="paybill", callback_base_url="http://127.0.0.1:8000")
print("TILL", t.callback_token, t.shortcode, b.pk)
"""

PAYMENTS = """
import random, time
from django.test import Client
from integrations.mpesa.models import InboxMessage, InboxState
from integrations.mpesa.publisher import inbox_enqueue, publisher
from integrations.mpesa.simulate import scenario
token, shortcode, n = {token!r}, {shortcode!r}, {n}
rng = random.Random(time.time_ns())
client = Client(HTTP_HOST="localhost")
sent = 0
while sent < n:
    for call in scenario(rng, shortcode):
        client.post(f"/daraja/{{token}}/{{call.path}}", data=call.body, content_type="application/json")
        sent += 1
publisher.flush()
deadline = time.monotonic() + 120
while time.monotonic() < deadline:
    left = list(InboxMessage.objects.filter(state=InboxState.RECEIVED).values_list("pk", flat=True))
    if not left:
        break
    time.sleep(1)
print("LEFT", len(left))
"""

JOBS = """
import datetime as dt, time
from django.utils import timezone
from jobs.services import job_launch
from jobs.models import Job, JobState
from jobs.registry import REGISTRY
from operations.jobs import CLOSING, EXPORT_BUSINESSES
from tenancy.models import Business
b = Business.objects.get(pk={business})
# Only the kinds this worker's queues take (closings: default; exports: reports).
kinds = [k for k in (CLOSING, EXPORT_BUSINESSES) if REGISTRY[k].queue in {queues!r}.split(",")]
ids = []
for i in range({n}):
    if kinds[i % len(kinds)] == CLOSING:
        day = (timezone.localdate() - dt.timedelta(days=1)).isoformat()  # again: idempotent
        ids.append(job_launch(kind=CLOSING, acting_user=None, business=b, params={{"day": day}}).pk)
    else:
        ids.append(job_launch(kind=EXPORT_BUSINESSES, acting_user=None).pk)
deadline = time.monotonic() + 180
active = ["queued", "running", "retrying"]
while time.monotonic() < deadline and Job.objects.filter(pk__in=ids, state__in=active).exists():
    time.sleep(1)
print("STATES", sorted(Job.objects.filter(pk__in=ids).values_list("state", flat=True)))
"""

# --reports-mix: the report kinds bench/stack.py sends, in turn, as the owner (a month's consolidated
# statement needs a person who may read every business's books).
REPORTS_MIX = """
import time
from django.contrib.auth import get_user_model
from bench.stack import report_kinds
from jobs.services import job_launch
from jobs.models import Job
owner = get_user_model().objects.filter(username="memory-owner").first()
if owner is None:
    owner = get_user_model().objects.create_superuser("memory-owner", "owner@example.com", None)
kinds = report_kinds()
ids = []
for i in range({n}):
    kind, params = kinds[i % len(kinds)]
    ids.append(job_launch(kind=kind, acting_user=owner, params=params).pk)
deadline = time.monotonic() + 300
active = ["queued", "running", "retrying"]
while time.monotonic() < deadline and Job.objects.filter(pk__in=ids, state__in=active).exists():
    time.sleep(1)
print("STATES", sorted(Job.objects.filter(pk__in=ids).values_list("state", flat=True)))
"""

# How the process is started: as Procfile and docker-compose.prod.yml do, or through the `celery` program.
VIA = {
    "celeryconf": [sys.executable, "-m", "celeryconf"],
    "celery": [sys.executable, "-m", "celery", "-A", "celeryconf"],
}


def read_memory(pid: int) -> dict[str, int]:
    """VmRSS, Pss and private KiB of one process."""
    figures: dict[str, int] = {}
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            figures["rss"] = int(line.split()[1])
        elif line.startswith("VmHWM:"):  # the process's own peak RSS: none missed between two samples
            figures["hwm"] = int(line.split()[1])
    rollup: dict[str, int] = {}
    for line in Path(f"/proc/{pid}/smaps_rollup").read_text().splitlines()[1:]:
        name, value, *_ = line.split()
        rollup[name.rstrip(":")] = int(value)
    figures["pss"] = rollup["Pss"]
    figures["private"] = rollup["Private_Clean"] + rollup["Private_Dirty"]
    return figures


def children(pid: int) -> list[int]:
    found: list[int] = []
    for task in Path(f"/proc/{pid}/task").iterdir():
        text = (task / "children").read_text().split()
        found.extend(int(p) for p in text)
    return sorted(found)


def sample(main_pid: int) -> dict[str, object]:
    return {
        "main": read_memory(main_pid),
        "pool": [read_memory(pid) for pid in children(main_pid)],
    }


class PeakSampler(threading.Thread):
    """The highest RSS (KiB) of the main process and of any pool process while the workload runs: each
    process's VmHWM read every half second (a pool process replaced after its task is read up to
    half a second before it ends), and the pool processes seen (more than the concurrency: replaced)."""

    def __init__(self, main_pid: int) -> None:
        super().__init__(daemon=True)
        self.main_pid = main_pid
        self.peak = {"main": 0, "pool": 0}
        self.pool_pids: set[int] = set()
        self.stopped = threading.Event()

    def run(self) -> None:
        while not self.stopped.is_set():
            try:
                self.peak["main"] = max(self.peak["main"], read_memory(self.main_pid)["hwm"])
                for pid in children(self.main_pid):
                    self.pool_pids.add(pid)
                    self.peak["pool"] = max(self.peak["pool"], read_memory(pid)["hwm"])
            except (OSError, KeyError):  # a pool process replaced between the listing and the read
                pass
            self.stopped.wait(0.5)


def shell(code: str, env: dict[str, str]) -> str:
    return subprocess.run(
        [sys.executable, "manage.py", "shell", "-c", code],
        cwd=ROOT,
        env=env,
        check=True,
        capture_output=True,
        text=True,
    ).stdout


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--queues", default="payments")
    parser.add_argument("--concurrency", type=int, default=2)
    parser.add_argument("--callbacks", type=int, default=0, help="M-Pesa callbacks to post (payments queue)")
    parser.add_argument("--jobs", type=int, default=0, help="jobs to launch (exports and closings)")
    parser.add_argument(
        "--reports-mix", action="store_true", help="--jobs are the report kinds bench/stack.py sends, in turn"
    )
    parser.add_argument(
        "--worker-args", default="", help='more worker options, e.g. "--max-tasks-per-child 1" (the reports worker\'s)'
    )
    parser.add_argument("--settle", type=float, default=5.0, help="seconds to wait before each reading")
    parser.add_argument("--via", choices=sorted(VIA), default="celeryconf", help="how the worker is started")
    parser.add_argument("--beat", action="store_true", help="measure beat instead of a worker")
    args = parser.parse_args()

    import redis

    env = dict(os.environ)
    # The peak is read from VmHWM every half second: the workers must not reset it at each task
    # (celeryconf/taskpeak.py), or a short task's peak is gone before the next reading.
    env["CELERY_TASK_PEAK_LOG_MB"] = ""
    redis_url = env.get("REDIS_URL", "redis://127.0.0.1:6379/0")
    hostname = f"memtest-{os.getpid()}@{socket.gethostname()}"
    setup_out = shell(SETUP, env)
    _, token, shortcode, business = next(line for line in setup_out.splitlines() if line.startswith("TILL")).split()

    if args.beat:
        command = [*VIA[args.via], "beat", "-l", "WARNING"]
    else:
        command = [*VIA[args.via], "worker", "-Q", args.queues, "-c", str(args.concurrency), "-n", hostname]
        command += ["-l", "WARNING", *args.worker_args.split()]
    broker = redis.Redis.from_url(redis_url)
    result: dict[str, object] = {"via": args.via}
    if args.beat:
        result["beat"] = True
        key = "backoffice:heartbeat:beat"
        broker.delete(key)  # an earlier beat's
    else:
        result.update(queues=args.queues, concurrency=args.concurrency)
        key = f"backoffice:heartbeat:queue:{args.queues.split(',')[0]}:{hostname}"
    worker = subprocess.Popen(
        command,
        cwd=ROOT,
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
    )
    try:
        deadline = time.monotonic() + 60
        while not broker.exists(key):
            if time.monotonic() > deadline or worker.poll() is not None:
                raise RuntimeError("the worker did not start")
            time.sleep(0.2)
        time.sleep(args.settle)
        result["idle"] = sample(worker.pid)
        if args.callbacks or args.jobs:
            peaks = PeakSampler(worker.pid)
            peaks.start()
            if args.callbacks:
                out = shell(PAYMENTS.format(token=token, shortcode=shortcode, n=args.callbacks), env)
                result["workload"] = out.strip().splitlines()[-1]
            if args.jobs:
                if args.reports_mix:
                    out = shell(REPORTS_MIX.format(n=args.jobs), env)
                else:
                    out = shell(JOBS.format(business=business, n=args.jobs, queues=args.queues), env)
                result["workload"] = out.strip().splitlines()[-1]
            peaks.stopped.set()
            peaks.join()
            result["peak_rss"] = peaks.peak
            result["pool_processes_seen"] = len(peaks.pool_pids)
            time.sleep(args.settle)
            result["after_tasks"] = sample(worker.pid)
    finally:
        os.killpg(worker.pid, signal.SIGTERM)
        try:
            worker.wait(30)
        except subprocess.TimeoutExpired:
            os.killpg(worker.pid, signal.SIGKILL)
            worker.wait()
    print(json.dumps(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())

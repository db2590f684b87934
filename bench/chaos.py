"""`make chaos`: faults injected into the whole stack while M-Pesa callbacks flow; nothing lost or doubled.

Starts the stack as `make run` does (scripts/run.sh: embedded PostgreSQL and Redis with AOF in a temporary
folder, web, the three workers, beat, Flower under scripts/supervise.py, which restarts what dies as
docker compose does in production) - or attaches to a running `make run` with --attach var/local - and
sends RATE callbacks/s (integrations.mpesa.simulate's scenarios: C2B payments, STK payments, STK + C2B
twins of one receipt, failed STK results; plus byte-identical duplicates and malformed bodies). Each
callback is sent again until it is answered 200, as Daraja would. While that load flows it injects,
one after the other:

  payments_kill      kill -9 of the payments worker's main process, KILLS times at random moments
  workers_kill       kill -9 of every worker and beat at once
  redis_kill         kill -9 of Redis (AOF, fsync every second), started again 2 s later
  redis_empty        Redis stopped and started without its files: every queue emptied
  pg_restart         PostgreSQL fast restart
  pg_down            PostgreSQL stopped for PG_DOWN_SECONDS (the web spools callbacks meanwhile)
  web_workers_kill   kill -9 of gunicorn's worker processes (the master starts new ones)
  web_master_kill    kill -9 of gunicorn's master (the supervisor starts it again)
  poison             undecodable and unknown-task messages pushed onto the payments queue
  time_limit         payments.process_inbox for waiting rows sent with a 0.05 s hard time limit

After each fault it measures the recovery time: from the end of the fault until every callback
answered so far is stored and processed. At the end it waits for the stack to settle and checks that
every distinct callback sent has exactly one inbox row (a malformed one included, stored for a person),
every valid payment is posted exactly once (one Payment row, one ledger entry `mpesa:<receipt>`),
nothing is waiting (inbox, spool, queues) and `verify_ledger` passes. It prints a table per fault
(sent, stored, posted, doubled, lost, recovery time), writes the figures to bench/results.json
(chaos.<fault>.*, chaos.total.*) and exits 1 on any loss, double, unanswered callback or failed check.

Usage: make chaos    (python -m bench.chaos [--faults a,b] [--rate 100] [--kills 20] [--attach DIR])
"""

from __future__ import annotations

import argparse
import contextlib
import functools
import hashlib
import http.client
import importlib.util
import json
import os
import random
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / "bench" / "results.json"
FAULTS = [
    "payments_kill",
    "workers_kill",
    "redis_kill",
    "redis_empty",
    "pg_restart",
    "pg_down",
    "web_workers_kill",
    "web_master_kill",
    "poison",
    "time_limit",
]
WORKERS = ("worker-payments", "worker-default", "worker-reports", "beat")
PG_DOWN_SECONDS = 30.0
MIN_UP = 5.0  # seconds a restarted payments worker consumes before the next kill
RECOVERY_TIMEOUT = float(os.environ.get("CHAOS_RECOVERY_TIMEOUT", "420"))
ANSWER_DEADLINE = 600.0  # a callback not answered 200 within this is counted unanswered
DUPLICATE_SHARE = 0.08
MALFORMED_SHARE = 0.02
MALFORMED = [
    b"",
    b"{",
    b"not json at all",
    b'{"Body": {}}',
    b"[1, 2, 3]",
    b'{"Body": {"stkCallback": {"CheckoutRequestID": 12, "ResultCode": "x"}}}',
]


def _localservices() -> Any:
    spec = importlib.util.spec_from_file_location("localservices", ROOT / "scripts" / "localservices.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules["localservices"] = module
    spec.loader.exec_module(module)
    return module


def _supervise_healthy_after() -> float:
    """scripts/supervise.py's HEALTHY_AFTER: a process dying sooner after its start is backed off."""
    spec = importlib.util.spec_from_file_location("supervise", ROOT / "scripts" / "supervise.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules["supervise"] = module  # its dataclasses look their module up
    spec.loader.exec_module(module)
    return float(module.HEALTHY_AFTER)


def stored_sha256(raw: bytes) -> str:
    """The inbox's body_sha256 of a raw body (integrations.mpesa.inbox.body_text + body_sha256)."""
    text = raw.decode("utf-8", errors="replace").replace("\x00", "\ufffd")
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


@dataclass
class Sent:
    path: str
    body: bytes
    receipt: str | None
    malformed: bool
    phase: str
    first_sent: float
    answered_at: float | None = None
    attempts: int = 0
    last_status: int | None = None


@dataclass
class Phase:
    name: str
    started: float = 0.0
    fault_over: float = 0.0
    recovered: float | None = None
    notes: list[str] = field(default_factory=list)


class Load:
    """RATE callbacks/s from a thread; every distinct body is kept with the phase it was first sent in."""

    def __init__(self, web_port: int, token: str, shortcode: str, rate: float, seed: int) -> None:
        from integrations.mpesa.simulate import scenario

        self.scenario = scenario
        self.web_port, self.token, self.shortcode, self.rate = web_port, token, shortcode, rate
        self.rng = random.Random(seed)
        self.sent: dict[str, Sent] = {}  # body sha -> first send
        self.lock = threading.Lock()
        self.phase = "warm-up"
        self.stopping = threading.Event()
        self.pool = ThreadPoolExecutor(48)
        self.pending: list[Any] = []
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.requests = 0
        self.started = self.stopped = 0.0

    def start(self) -> None:
        self.started = time.monotonic()
        self.thread.start()

    def stop(self) -> None:
        self.stopping.set()
        self.thread.join()
        self.pool.shutdown(wait=True)  # the sends still queued (the web slower than RATE) go first
        self.stopped = time.monotonic()

    def requests_per_second(self) -> float:
        """Requests answered (any status) per second while the load ran: below RATE when the web (or the
        machine) cannot keep up and sends queue in the client."""
        return self.requests / max(1e-9, self.stopped - self.started)

    def _next(self, queue: list[Any]) -> tuple[str, bytes, str | None, bool]:
        draw = self.rng.random()
        with self.lock:
            earlier = list(self.sent.values()) if draw < DUPLICATE_SHARE and self.sent else None
        if earlier:
            again = self.rng.choice(earlier)
            return again.path, again.body, again.receipt, again.malformed
        if draw < DUPLICATE_SHARE + MALFORMED_SHARE:
            body = self.rng.choice(MALFORMED) + str(self.rng.randrange(10**9)).encode() * self.rng.randrange(2)
            return self.rng.choice(["stk/", "c2b/confirm/"]), body, None, True
        if not queue:
            queue.extend(self.scenario(self.rng, self.shortcode))
        call = queue.pop(0)
        return call.path, call.body, call.receipt, False

    def _run(self) -> None:
        queue: list[Any] = []
        start = time.monotonic()
        n = 0
        while not self.stopping.is_set():
            delay = start + n / self.rate - time.monotonic()
            if delay > 0:
                time.sleep(delay)
            path, body, receipt, malformed = self._next(queue)
            sha = stored_sha256(body)
            with self.lock:
                if sha not in self.sent:
                    self.sent[sha] = Sent(path, body, receipt, malformed, self.phase, time.monotonic())
                record = self.sent[sha]
            self.pool.submit(self._send, record)
            n += 1

    def _send(self, record: Sent) -> None:
        """POST until answered 200 (Daraja resends a callback that got no answer), for ANSWER_DEADLINE."""
        deadline = time.monotonic() + ANSWER_DEADLINE
        while True:
            status = None
            conn = http.client.HTTPConnection("127.0.0.1", self.web_port, timeout=20)
            try:
                conn.request(
                    "POST",
                    f"/daraja/{self.token}/{record.path}",
                    body=record.body,
                    headers={"Content-Type": "application/json"},
                )
                response = conn.getresponse()
                response.read()
                status = response.status
            except (OSError, http.client.HTTPException):
                status = None
            finally:
                conn.close()
            with self.lock:
                self.requests += 1
                record.attempts += 1
                record.last_status = status
                if status == 200 and record.answered_at is None:
                    record.answered_at = time.monotonic()
            if status == 200 or time.monotonic() > deadline:
                return
            time.sleep(1.0)

    def answered_before(self, moment: float) -> dict[str, Sent]:
        with self.lock:
            return {sha: r for sha, r in self.sent.items() if r.answered_at is not None and r.answered_at <= moment}


class Chaos:
    def __init__(self, args: argparse.Namespace) -> None:
        self.args = args
        self.ls = _localservices()
        self.rng = random.Random(args.seed)
        self.healthy_after = _supervise_healthy_after()
        self.stack: Any = None
        if args.attach:
            self.local_dir = Path(args.attach).resolve()
            self.web_port = int(os.environ.get("PORT", "8000"))
        else:
            from bench.stack import StackRun

            self.stack = StackRun()
            self.local_dir = self.stack.dir / "local"
            self.web_port = self.stack.web_port
        self.phases: list[Phase] = []
        self.waiting_for = ""
        self.receipts_before: set[str] = set()

    # --- the stack ------------------------------------------------------------------------------

    def layout(self) -> Any:
        return self.ls.resolve_layout(argparse.Namespace(dir=str(self.local_dir), pg_port=None, redis_port=None))

    @property
    def superuser_url(self) -> str:
        return str(self.layout().database_url)

    def pids(self) -> dict[str, int | None]:
        state = json.loads((self.local_dir / "processes.json").read_text())
        return {name: item["pid"] for name, item in state.items()}

    def wait_for(self, predicate: Callable[[], bool], timeout: float, what: str, interval: float = 0.5) -> float:
        started = time.monotonic()
        while True:
            try:
                if predicate():
                    return time.monotonic() - started
            except Exception:  # a server on its way back up answers with errors for a while
                pass
            if time.monotonic() - started > timeout:
                raise RuntimeError(f"timed out after {timeout:.0f} s waiting for {what} ({self.waiting_for})")
            time.sleep(interval)

    def db(self) -> Any:
        import psycopg

        return psycopg.connect(self.superuser_url, autocommit=True, connect_timeout=5)

    def redis(self) -> Any:
        import redis

        return redis.Redis(port=self.layout().redis_port, socket_timeout=5)

    def healthy(self) -> bool:
        conn = http.client.HTTPConnection("127.0.0.1", self.web_port, timeout=5)
        try:
            conn.request("GET", "/healthz", headers={"Host": "localhost"})
            return conn.getresponse().status == 200
        except (OSError, http.client.HTTPException):
            return False
        finally:
            conn.close()

    def restarted(self, name: str, old: int | None) -> bool:
        new = self.pids().get(name)
        return new is not None and new != old

    # --- the faults ----------------------------------------------------------------------------

    def kill(self, pid: int | None) -> None:
        if pid:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)

    def payments_ready(self, pid: int) -> bool:
        """The payments worker `pid` is consuming: its heartbeat (written once Celery says the worker is
        ready, celeryconf.heartbeat) names it."""
        r = self.redis()
        for key in r.scan_iter(match="backoffice:heartbeat:worker:payments@*"):
            raw = r.get(key)
            if raw and json.loads(raw).get("pid") == pid:
                return True
        return False

    def fault_payments_kill(self, phase: Phase) -> None:
        """KILLS kills at random moments over the kill window. Each waits until the worker started again
        is ready (consuming) and has then run MIN_UP seconds, and until it has lived longer than
        scripts/supervise.py's HEALTHY_AFTER: a worker killed sooner is a crash loop to the supervisor,
        which backs off (up to 30 s) - a fault of another kind, where the queue waits with no worker."""
        moments = sorted(self.rng.uniform(0, self.args.kill_window) for _ in range(self.args.kills))
        healthy_after = self.healthy_after
        started = time.monotonic()
        up_since = ready_since = time.monotonic()
        for moment in moments:
            time.sleep(
                max(
                    0.0,
                    started + moment - time.monotonic(),
                    ready_since + MIN_UP - time.monotonic(),
                    up_since + healthy_after + 1.0 - time.monotonic(),
                )
            )
            old = self.pids().get("worker-payments")
            self.kill(old)
            self.wait_for(functools.partial(self.restarted, "worker-payments", old), 60, "the payments worker")
            up_since = time.monotonic()
            new = self.pids().get("worker-payments")
            assert new is not None
            self.wait_for(functools.partial(self.payments_ready, new), 120, "the payments worker to be ready")
            ready_since = time.monotonic()
        phase.notes.append(f"{len(moments)} kills over {time.monotonic() - started:.0f} s")

    def fault_workers_kill(self, phase: Phase) -> None:
        old = self.pids()
        for name in WORKERS:
            self.kill(old.get(name))
        for name in WORKERS:
            self.wait_for(functools.partial(self.restarted, name, old.get(name)), 60, name)

    def fault_redis_kill(self, phase: Phase) -> None:
        layout = self.layout()
        self.kill(self.ls.redis_running_pid(layout))
        time.sleep(2)
        self.ls.redis_start(layout)

    def fault_redis_empty(self, phase: Phase) -> None:
        layout = self.layout()
        self.kill(self.ls.redis_running_pid(layout))
        time.sleep(0.5)
        for item in layout.redis_dir.iterdir():
            if item.is_dir():
                for inner in item.iterdir():
                    inner.unlink()
                item.rmdir()
            elif item.name != "redis.pid":
                item.unlink()
        time.sleep(1.5)
        self.ls.redis_start(layout)

    def fault_pg_restart(self, phase: Phase) -> None:
        layout = self.layout()
        self.ls.pg_stop(layout)
        self.ls.pg_start(layout)

    def fault_pg_down(self, phase: Phase) -> None:
        layout = self.layout()
        self.ls.pg_stop(layout)
        time.sleep(self.args.pg_down_seconds)
        self.ls.pg_start(layout)

    def fault_web_workers_kill(self, phase: Phase) -> None:
        import psutil

        master = self.pids().get("web")
        children = psutil.Process(master).children() if master else []
        for child in children:
            self.kill(child.pid)
        phase.notes.append(f"{len(children)} gunicorn workers")

    def fault_web_master_kill(self, phase: Phase) -> None:
        old = self.pids().get("web")
        self.kill(old)
        self.wait_for(lambda: self.restarted("web", old), 60, "gunicorn")

    def fault_poison(self, phase: Phase) -> None:
        r = self.redis()
        poison = [
            b"\x00\xff not a message",
            json.dumps({"body": "!!not base64!!", "headers": {}, "properties": {}}).encode(),
            json.dumps(
                {
                    "body": "W1tdLCB7fSwge31d",  # base64 of [[], {}, {}]
                    "content-encoding": "utf-8",
                    "content-type": "application/json",
                    "headers": {"lang": "py", "task": "payments.no_such_task", "id": "chaos-poison-1"},
                    "properties": {
                        "delivery_tag": "chaos-poison-1",
                        "body_encoding": "base64",
                        "delivery_info": {"exchange": "", "routing_key": "payments"},
                    },
                }
            ).encode(),
        ]
        for message in poison:
            r.lpush("payments", message)
        phase.notes.append(f"{len(poison)} poison messages")

    def fault_time_limit(self, phase: Phase) -> None:
        """Real process_inbox tasks on the newest rows (waiting ones among them), with a hard time limit so
        short that it ends the pool process mid-row: whatever the task was doing must roll back and the
        rows be processed later (the sweeper), once."""
        from celery import Celery

        with self.db() as db:
            # Rows still waiting first, spread over the 5 tasks: a task whose rows are all processed
            # already returns in milliseconds (inbox._settled_already), before any time limit.
            ids = [
                i
                for (i,) in db.execute(
                    "SELECT id FROM integrations_inboxmessage ORDER BY state = 'received' DESC, id DESC LIMIT 200"
                )
            ]
            waiting = db.execute(
                "SELECT count(*) FROM integrations_inboxmessage WHERE state = 'received' AND id = ANY(%s)", [ids]
            ).fetchone()[0]
            (before,) = db.execute(
                "SELECT count(*) FROM jobs_taskevent WHERE task_name = 'payments.process_inbox' AND kind = 'failed'"
            ).fetchone()
        app = Celery(broker=f"redis://127.0.0.1:{self.layout().redis_port}/0")
        for n in range(5):
            # Celery takes seconds as floats here (its stubs say int).
            app.send_task(
                "payments.process_inbox",
                args=[ids[n::5]],
                queue="payments",
                time_limit=0.05,  # type: ignore[arg-type]
                soft_time_limit=0.02,  # type: ignore[arg-type]
            )

        def failed() -> int:
            with self.db() as db:
                (after,) = db.execute(
                    "SELECT count(*) FROM jobs_taskevent WHERE task_name = 'payments.process_inbox' AND kind = 'failed'"
                ).fetchone()
            return int(after - before)

        with contextlib.suppress(RuntimeError):
            self.wait_for(lambda: failed() >= 5, 60, "the time limits to fire")
        phase.notes.append(f"5 tasks with a 0.05 s hard limit over {waiting} rows waiting, {failed()} ended by it")

    # --- measuring -----------------------------------------------------------------------------

    def settled_shas(self) -> set[str]:
        with self.db() as db:
            rows = db.execute(
                "SELECT body_sha256 FROM integrations_inboxmessage WHERE state IN ('processed', 'attention')"
            ).fetchall()
        return {sha for (sha,) in rows}

    def recovered(self, load: Load, moment: float) -> bool:
        wanted = load.answered_before(moment)
        if not self.healthy():
            self.waiting_for = "/healthz to answer 200"
            return False
        missing = set(wanted) - self.settled_shas()
        if missing:
            sample = wanted[sorted(missing)[0]]
            self.waiting_for = (
                f"{len(missing)} answered callbacks not processed yet, e.g. {sample.path} {sample.body[:80]!r}"
            )
            return False
        return True

    def run_phase(self, load: Load, name: str) -> Phase:
        phase = Phase(name)
        self.phases.append(phase)
        time.sleep(self.args.before)
        load.phase = name
        phase.started = time.monotonic()
        print(f"[chaos] {name} ...", file=sys.stderr, flush=True)
        getattr(self, f"fault_{name}")(phase)
        phase.fault_over = time.monotonic()
        took = self.wait_for(
            lambda: self.recovered(load, phase.fault_over), RECOVERY_TIMEOUT, f"recovery from {name}", 1.0
        )
        phase.recovered = took
        print(f"[chaos] {name}: recovered in {took:.1f} s {' '.join(phase.notes)}", file=sys.stderr, flush=True)
        return phase

    def settle(self, load: Load) -> None:
        """Wait until nothing is waiting: every answered callback processed, inbox, spool and queues empty."""

        def quiet() -> bool:
            with self.db() as db:
                (waiting,) = db.execute(
                    "SELECT count(*) FROM integrations_inboxmessage WHERE state IN ('received', 'failed')"
                ).fetchone()
            spool = self.local_dir.parent / "spool"
            spooled = list(spool.glob("*.json")) if spool.exists() else []
            queued = sum(int(self.redis().llen(q)) for q in ("payments",))
            return waiting == 0 and not spooled and queued == 0 and self.recovered(load, time.monotonic())

        self.wait_for(quiet, RECOVERY_TIMEOUT, "the stack to settle", 2.0)

    def check(self, load: Load) -> tuple[dict[str, float], list[str]]:
        with self.db() as db:
            rows = db.execute("SELECT body_sha256, count(*) FROM integrations_inboxmessage GROUP BY 1").fetchall()
            per_body = dict(rows)
            payments = dict(db.execute("SELECT receipt, count(*) FROM integrations_payment GROUP BY 1").fetchall())
            entries = dict(
                db.execute(
                    "SELECT substr(idempotency_key, 7), count(*) FROM accounts_journalentry "
                    "WHERE idempotency_key LIKE 'mpesa:%' GROUP BY 1"
                ).fetchall()
            )
            (waiting,) = db.execute(
                "SELECT count(*) FROM integrations_inboxmessage WHERE state IN ('received', 'failed')"
            ).fetchone()
            held = db.execute(
                "SELECT kind, daraja_id, error FROM integrations_inboxmessage "
                "WHERE state = 'attention' AND daraja_id NOT LIKE 'malformed:%' LIMIT 20"
            ).fetchall()
        figures: dict[str, float] = {}
        problems: list[str] = []
        with load.lock:
            sent = list(load.sent.items())
        names = [p.name for p in self.phases]
        # "after": the plain load after the last fault (checked like the others).
        for phase_name in ["warm-up", *names, "after"]:
            mine = [(sha, r) for sha, r in sent if r.phase == phase_name]
            receipts = {r.receipt for _, r in mine if r.receipt}
            # An STK + C2B twin of a receipt first sent in another phase counts where its receipt was first seen.
            stored = sum(1 for sha, _ in mine if per_body.get(sha, 0) == 1)
            extra = sum(1 for sha, _ in mine if per_body.get(sha, 0) > 1)
            unanswered = sum(1 for _, r in mine if r.answered_at is None)
            posted = sum(1 for rc in receipts if payments.get(rc, 0) == 1 and entries.get(rc, 0) == 1)
            doubled = sum(1 for rc in receipts if payments.get(rc, 0) > 1 or entries.get(rc, 0) > 1) + extra
            lost = sum(1 for rc in receipts if payments.get(rc, 0) == 0 or entries.get(rc, 0) == 0)
            lost += sum(1 for sha, r in mine if r.answered_at is not None and per_body.get(sha, 0) == 0)
            key = phase_name.replace("-", "_")
            figures.update(
                {
                    f"chaos.{key}.sent": float(len(mine)),
                    f"chaos.{key}.stored": float(stored),
                    f"chaos.{key}.payments": float(len(receipts)),
                    f"chaos.{key}.posted": float(posted),
                    f"chaos.{key}.doubled": float(doubled),
                    f"chaos.{key}.lost": float(lost),
                    f"chaos.{key}.unanswered": float(unanswered),
                }
            )
            if doubled or lost or unanswered:
                problems.append(f"{phase_name}: {doubled} doubled, {lost} lost, {unanswered} unanswered")
        for phase in self.phases:
            figures[f"chaos.{phase.name}.recovery_s"] = round(phase.recovered or -1.0, 1)
        totals = ("sent", "stored", "payments", "posted", "doubled", "lost", "unanswered")
        for what in totals:
            figures[f"chaos.total.{what}"] = sum(v for k, v in figures.items() if k.endswith(f".{what}"))
        figures["chaos.total.requests"] = float(load.requests)
        figures["chaos.total.requests_per_s"] = round(load.requests_per_second(), 1)
        figures["chaos.total.malformed"] = float(sum(1 for _, r in sent if r.malformed))
        figures["chaos.total.duplicates_sent"] = float(load.requests - len(sent))
        if waiting:
            problems.append(f"{waiting} inbox rows still waiting")
        if held:
            problems.append(f"{len(held)} valid callbacks held for a person, e.g. {held[0]}")
        orphans = set(payments) - {r.receipt for _, r in sent if r.receipt} - self.receipts_before
        if orphans:
            problems.append(f"{len(orphans)} payments posted for receipts never sent")
        return figures, problems

    def verify_ledger(self) -> str:
        env = {k: v for k, v in os.environ.items() if k not in {"DATABASE_URL", "REDIS_URL"}}
        if self.stack is not None:
            env.update(self.stack.env)
        env.pop("DATABASE_URL", None)
        done = subprocess.run(
            [sys.executable, "manage.py", "verify_ledger"], cwd=ROOT, env=env, capture_output=True, text=True
        )
        if done.returncode:
            raise RuntimeError(f"verify_ledger failed:\n{done.stdout[-2000:]}\n{done.stderr[-2000:]}")
        return done.stdout.strip().splitlines()[-1] if done.stdout.strip() else "ok"

    def till(self) -> tuple[str, str]:
        with self.db() as db:
            token, shortcode = db.execute(
                "SELECT callback_token, shortcode FROM integrations_till WHERE is_active ORDER BY id LIMIT 1"
            ).fetchone()
        return str(token), str(shortcode)

    def run(self) -> int:
        if self.stack is not None:
            print(f"[chaos] starting the stack in {self.stack.dir} (scripts/run.sh) ...", file=sys.stderr, flush=True)
            self.stack.start()
        try:
            token, shortcode = self.till()
            with self.db() as db:
                self.receipts_before = {r for (r,) in db.execute("SELECT receipt FROM integrations_payment")}
            load = Load(self.web_port, token, shortcode, self.args.rate, self.args.seed)
            load.start()
            try:
                for name in self.args.faults:
                    self.run_phase(load, name)
                load.phase = "after"
                time.sleep(self.args.before)
            finally:
                load.stop()
            print("[chaos] load stopped; waiting for the stack to settle ...", file=sys.stderr, flush=True)
            self.settle(load)
            figures, problems = self.check(load)
            try:
                verified = self.verify_ledger()
                figures["chaos.verify_ledger_ok"] = 1.0
            except RuntimeError as exc:
                verified = str(exc)
                figures["chaos.verify_ledger_ok"] = 0.0
                problems.append("verify_ledger failed")
        finally:
            if self.stack is not None:
                self.stack.stop()
        self.report(figures, problems, verified)
        _merge(figures)
        return 1 if problems else 0

    def report(self, figures: dict[str, float], problems: list[str], verified: str) -> None:
        header = f"{'fault':<18}{'sent':>7}{'stored':>8}{'payments':>10}{'posted':>8}{'doubled':>9}{'lost':>6}"
        header += f"{'unanswered':>12}{'recovery s':>12}"
        print(header)
        for name in ["warm-up", *[p.name for p in self.phases], "after", "total"]:
            key = name.replace("-", "_")

            def get(what: str, key: str = key) -> str:
                value = figures.get(f"chaos.{key}.{what}")
                return "-" if value is None else f"{value:g}"

            print(
                f"{name:<18}{get('sent'):>7}{get('stored'):>8}{get('payments'):>10}{get('posted'):>8}"
                f"{get('doubled'):>9}{get('lost'):>6}{get('unanswered'):>12}{get('recovery_s'):>12}"
            )
        print(f"requests answered: {figures.get('chaos.total.requests_per_s', 0):g}/s (asked: {self.args.rate:g}/s)")
        print(f"verify_ledger: {verified}")
        print("PASSED: nothing lost, nothing doubled" if not problems else "FAILED:\n  " + "\n  ".join(problems))


def _merge(figures: dict[str, float]) -> None:
    results: dict[str, Any] = json.loads(RESULTS.read_text()) if RESULTS.exists() else {}
    results = {k: v for k, v in results.items() if not k.startswith("chaos.")}
    results.update(figures)
    RESULTS.write_text(json.dumps(results, indent=2, sort_keys=True) + "\n")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Faults under load: nothing lost, nothing doubled.")
    parser.add_argument("--faults", default=",".join(FAULTS), help=f"comma-separated, in order (default: {FAULTS})")
    parser.add_argument("--rate", type=float, default=100.0, help="callbacks per second (default 100)")
    parser.add_argument("--kills", type=int, default=20, help="payments worker kills (default 20)")
    parser.add_argument("--kill-window", type=float, default=120.0, help="seconds the kills are spread over")
    parser.add_argument("--pg-down-seconds", type=float, default=PG_DOWN_SECONDS)
    parser.add_argument("--before", type=float, default=10.0, help="seconds of plain load before each fault")
    parser.add_argument("--seed", type=int, default=20261130)
    parser.add_argument("--attach", default="", help="a running `make run`'s folder (var/local) instead of a new stack")
    args = parser.parse_args(argv)
    args.faults = [f.strip() for f in args.faults.split(",") if f.strip()]
    unknown = set(args.faults) - set(FAULTS)
    if unknown:
        parser.error(f"unknown faults {sorted(unknown)}; known: {FAULTS}")
    sys.path.insert(0, str(ROOT))
    return Chaos(args).run()


if __name__ == "__main__":
    sys.exit(main())

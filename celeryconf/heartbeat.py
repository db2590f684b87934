"""Heartbeats: each worker and beat says it is alive, and what it is made of, every few seconds.

A daemon thread in the worker's (or beat's) main process writes Redis keys with a short TTL every
INTERVAL_SECONDS. A process that dies (even by SIGKILL) stops refreshing them; they expire and
/healthz, the System page and the alert rules see that queue, worker or beat as gone.

Keys (KEY_PREFIX = "backoffice:heartbeat"):
- `...:queue:<queue>:<hostname>`: one per queue the worker consumes (the compose healthchecks and
  /healthz ask "does this queue have a worker?").
- `...:worker:<hostname>`: the worker's reading, JSON: hostname, pid, queues, started_at, at, rss
  (bytes, main process), pool ([{pid, rss}], the pool processes now), pool_started (pool processes
  seen since the worker started: a number above its concurrency means children were replaced -
  sampled every INTERVAL_SECONDS, so a child that lived less than that may be missed), tasks_done.
  The queue keys carry the same JSON.
- `...:starts:<hostname>`: a sorted set of the worker's start times, kept STARTS_KEPT_SECONDS; a
  start counts as a restart when an earlier start of the same hostname is in the set
  (`restarts_count`). Docker keeps a container's hostname across restarts, so a crash loop shows.
- `...:beat`: beat's reading: hostname, pid, started_at, at, rss, last_tick (when the scheduler
  last ran a pass, wall time; a beat stuck inside a pass keeps its heartbeat but not its tick).

The thread reads only /proc (psutil) and Celery's in-memory counters: no database, one Redis
pipeline per beat. celeryconf knows no business: what the numbers mean is backoffice's matter.
"""

from __future__ import annotations

import json
import logging
import os
import socket
import threading
import time
from collections.abc import Callable
from typing import Any

import psutil
import redis
from celery.signals import beat_init, celeryd_after_setup, worker_ready, worker_shutdown
from django.conf import settings

logger = logging.getLogger(__name__)

INTERVAL_SECONDS = 5
TTL_SECONDS = 20
KEY_PREFIX = "backoffice:heartbeat"
BEAT_KEY = f"{KEY_PREFIX}:beat"
# A start within this long of an earlier one is a restart; older starts are forgotten.
STARTS_KEPT_SECONDS = 24 * 3600
STARTS_KEPT_MAX = 1000

_stop = threading.Event()
_queues: list[str] = []
_started_at = time.time()


def worker_key(queue: str, hostname: str) -> str:
    return f"{KEY_PREFIX}:queue:{queue}:{hostname}"


def worker_reading_key(hostname: str) -> str:
    return f"{KEY_PREFIX}:worker:{hostname}"


def starts_key(hostname: str) -> str:
    return f"{KEY_PREFIX}:starts:{hostname}"


def redis_client() -> redis.Redis:
    return redis.Redis.from_url(settings.REDIS_URL, socket_timeout=2, socket_connect_timeout=2)


def _rss(process: psutil.Process) -> int:
    try:
        return int(process.memory_info().rss)
    except psutil.Error:  # gone between listing and reading: it no longer counts
        return 0


def pool_pids_of(consumer: Any) -> Callable[[], list[int]] | None:
    """The prefork pool's process ids, read from the pool itself; None for another pool kind."""
    processes = getattr(getattr(getattr(consumer, "pool", None), "_pool", None), "_pool", None)
    if not isinstance(processes, list):
        return None
    return lambda: [int(p.pid) for p in list(processes) if p.pid]


class WorkerSampler:
    """What a worker's main process reports each beat: its memory, its pool's, its task count.

    The pool's pids come from the pool (`pool_pids`) when it can say: psutil's children() scans
    every process of the machine (~15 ms with 200 processes), reading one /proc file per pool
    process costs ~0.05 ms."""

    def __init__(
        self,
        *,
        hostname: str,
        queues: list[str],
        started_at: float,
        pool_pids: Callable[[], list[int]] | None = None,
    ) -> None:
        self.hostname = hostname
        self.queues = list(queues)
        self.started_at = started_at
        self.process = psutil.Process(os.getpid())
        self.pool_pids = pool_pids
        self.children: dict[int, psutil.Process] = {}
        self.seen_children: set[int] = set()

    def _pool(self) -> list[psutil.Process]:
        if self.pool_pids is None:
            try:
                return self.process.children(recursive=False)
            except psutil.Error:
                return []
        current: dict[int, psutil.Process] = {}
        for pid in self.pool_pids():
            try:
                current[pid] = self.children.get(pid) or psutil.Process(pid)
            except psutil.Error:  # already gone
                continue
        self.children = current
        return list(current.values())

    def __call__(self) -> dict[str, Any]:
        from celery.worker import state

        pool = [{"pid": child.pid, "rss": _rss(child)} for child in self._pool()]
        self.seen_children.update(p["pid"] for p in pool)
        return {
            "hostname": self.hostname,
            "pid": self.process.pid,
            "queues": self.queues,
            "started_at": self.started_at,
            "at": time.time(),
            "rss": _rss(self.process),
            "pool": pool,
            "pool_started": len(self.seen_children),
            # Accepted tasks minus those still running: finished ones (any outcome).
            "tasks_done": max(0, state.all_total_count[0] - len(state.active_requests)),
        }


class BeatSampler:
    """Beat's report: alive (the thread runs), and when its scheduler last ticked."""

    def __init__(self, service: Any, *, started_at: float) -> None:
        self.service = service
        self.started_at = started_at
        self.process = psutil.Process(os.getpid())

    def __call__(self) -> dict[str, Any]:
        # Celery's beat Service stamps `_last_tick` (time.monotonic()) after every scheduler pass.
        last = getattr(self.service, "_last_tick", None)
        now = time.time()
        return {
            "hostname": socket.gethostname(),
            "pid": self.process.pid,
            "started_at": self.started_at,
            "at": now,
            "rss": _rss(self.process),
            "last_tick": None if last is None else now - (time.monotonic() - float(last)),
        }


def _beat_loop(keys: list[str], sample: Callable[[], dict[str, Any]]) -> None:
    client = redis_client()
    while not _stop.is_set():
        try:
            body = json.dumps(sample(), separators=(",", ":"))
            pipe = client.pipeline(transaction=False)
            for key in keys:
                pipe.set(key, body, ex=TTL_SECONDS)
            pipe.execute()
        except redis.RedisError as exc:  # Redis down: /healthz will say so; keep trying.
            logger.warning("heartbeat not written: %s", exc)
        except Exception:  # a reading that fails must not end the heartbeat (the worker would look dead)
            logger.exception("heartbeat reading failed")
        _stop.wait(INTERVAL_SECONDS)


def _start(keys: list[str], sample: Callable[[], dict[str, Any]]) -> None:
    _stop.clear()
    threading.Thread(target=_beat_loop, args=(keys, sample), name="heartbeat", daemon=True).start()


def start_record(client: redis.Redis, hostname: str, *, now: float | None = None) -> None:
    """Remember that a worker called `hostname` started now (for `restarts_count`)."""
    now = time.time() if now is None else now
    key = starts_key(hostname)
    pipe = client.pipeline(transaction=False)
    pipe.zadd(key, {f"{now:.6f}:{os.getpid()}": now})
    pipe.zremrangebyscore(key, "-inf", now - STARTS_KEPT_SECONDS)
    pipe.zremrangebyrank(key, 0, -STARTS_KEPT_MAX - 1)
    pipe.expire(key, STARTS_KEPT_SECONDS)
    pipe.execute()


def restarts_count(
    client: redis.Redis, hostname: str, *, within_seconds: float = 3600, now: float | None = None
) -> int:
    """Starts of `hostname` in the last `within_seconds` that followed an earlier start (kept a day)."""
    now = time.time() if now is None else now
    entries: list[tuple[bytes, float]] = client.zrangebyscore(  # type: ignore[assignment]
        starts_key(hostname), "-inf", "+inf", withscores=True
    )
    scores = [score for _, score in entries]
    return sum(1 for score in scores[1:] if score >= now - within_seconds)


def _reading(raw: bytes | str | None, *required: str) -> dict[str, Any] | None:
    """A heartbeat's JSON; None when absent or not one we can read (an older or foreign writer)."""
    if raw is None:
        return None
    try:
        value = json.loads(raw)
    except ValueError:
        return None
    if not isinstance(value, dict) or any(key not in value for key in required):
        return None
    return value


def workers_read(client: redis.Redis) -> list[dict[str, Any]]:
    """Every live worker's last reading (their keys have not expired), by hostname. A key expired
    between SCAN and MGET, or holding something else than a reading, is left out."""
    keys = sorted(client.scan_iter(f"{KEY_PREFIX}:worker:*", count=100))
    readings = [r for raw in (client.mget(keys) if keys else []) if (r := _reading(raw, "hostname", "pid", "at"))]
    return sorted(readings, key=lambda r: str(r["hostname"]))


def beat_read(client: redis.Redis) -> dict[str, Any] | None:
    return _reading(client.get(BEAT_KEY), "at")


@celeryd_after_setup.connect
def _remember_queues(sender: str, instance: Any, **_: Any) -> None:
    global _started_at
    _started_at = time.time()
    _queues[:] = sorted(instance.app.amqp.queues.consume_from or instance.app.amqp.queues)
    # Recorded before the consumer starts, so a worker that dies while starting still counts.
    try:
        client = redis_client()
        try:
            start_record(client, sender)
        finally:
            client.close()
    except redis.RedisError as exc:
        logger.warning("worker start not recorded: %s", exc)


@worker_ready.connect
def _worker_heartbeat(sender: Any, **_: Any) -> None:
    hostname = sender.hostname
    sample = WorkerSampler(hostname=hostname, queues=_queues, started_at=_started_at, pool_pids=pool_pids_of(sender))
    _start([worker_reading_key(hostname), *(worker_key(q, hostname) for q in _queues)], sample)


@worker_shutdown.connect
def _worker_stopped(sender: Any = None, **_: Any) -> None:
    _stop.set()


@beat_init.connect
def _beat_heartbeat(sender: Any, **_: Any) -> None:
    _start([BEAT_KEY], BeatSampler(sender, started_at=time.time()))

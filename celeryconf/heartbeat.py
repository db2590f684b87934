"""Heartbeats for /healthz: each worker says which queues it consumes, beat says it is alive.

A daemon thread in the worker's (or beat's) main process writes a Redis key with a short TTL
every few seconds. A process that dies (even by SIGKILL) stops refreshing its key, which then
expires, and /healthz reports that queue or beat as down.
"""

from __future__ import annotations

import json
import logging
import socket
import threading
import time
from typing import Any

import redis
from celery.signals import beat_init, celeryd_after_setup, worker_ready, worker_shutdown
from django.conf import settings

logger = logging.getLogger(__name__)

INTERVAL_SECONDS = 5
TTL_SECONDS = 20
KEY_PREFIX = "backoffice:heartbeat"

_stop = threading.Event()
_queues: list[str] = []


def worker_key(queue: str, hostname: str) -> str:
    return f"{KEY_PREFIX}:queue:{queue}:{hostname}"


BEAT_KEY = f"{KEY_PREFIX}:beat"


def redis_client() -> redis.Redis:
    return redis.Redis.from_url(settings.REDIS_URL, socket_timeout=2, socket_connect_timeout=2)


def _beat_loop(keys: list[str], payload: dict[str, Any]) -> None:
    client = redis_client()
    while not _stop.is_set():
        try:
            body = json.dumps({**payload, "at": time.time()})
            pipe = client.pipeline()
            for key in keys:
                pipe.set(key, body, ex=TTL_SECONDS)
            pipe.execute()
        except redis.RedisError as exc:  # Redis down: /healthz will say so; keep trying.
            logger.warning("heartbeat not written: %s", exc)
        _stop.wait(INTERVAL_SECONDS)


def _start(keys: list[str], payload: dict[str, Any]) -> None:
    _stop.clear()
    threading.Thread(target=_beat_loop, args=(keys, payload), name="heartbeat", daemon=True).start()


@celeryd_after_setup.connect
def _remember_queues(sender: str, instance: Any, **_: Any) -> None:
    _queues[:] = sorted(instance.app.amqp.queues.consume_from or instance.app.amqp.queues)


@worker_ready.connect
def _worker_heartbeat(sender: Any, **_: Any) -> None:
    hostname = sender.hostname
    _start([worker_key(q, hostname) for q in _queues], {"hostname": hostname, "queues": _queues})


@worker_shutdown.connect
def _worker_stopped(sender: Any = None, **_: Any) -> None:
    _stop.set()


@beat_init.connect
def _beat_heartbeat(sender: Any, **_: Any) -> None:
    _start([BEAT_KEY], {"hostname": socket.gethostname()})

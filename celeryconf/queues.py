"""What waits in each queue: how many messages, and since when the oldest one waits.

kombu's Redis transport keeps a queue as Redis lists (docs: kombu/transport/redis.py):
- the queue's name for priority 0 and `<name>\\x06\\x16<step>` for the other priority steps
  (3, 6, 9); producers LPUSH, consumers BRPOP, so the tail (LINDEX -1) is the next message out -
  the oldest one (a message a dead worker held is put back at the tail too, RPUSH);
- a hash `unacked` (delivery tag -> JSON [message, exchange, routing key]) of the messages a worker
  has taken and not acknowledged yet: running, reserved, or waiting for their countdown (late acks).

Depth = the lists' lengths + the unacked messages of that queue (routing key = queue name here,
celeryconf/config.py). A message carries no publish time, so every process stamps one into its
headers when it publishes (`published_at`, epoch seconds, by the before_task_publish signal
below; a retry is a new message with a new stamp). A message's "waiting since" is that stamp, or
its ETA when it was sent with a countdown that has not yet run out. A message from a process
without this module has no stamp and no age.

No key prefix: the transport's `global_keyprefix` is not used by this project (build_config).
"""

from __future__ import annotations

import datetime as dt
import json
import time
from dataclasses import dataclass
from typing import Any

import redis
from celery.signals import before_task_publish
from kombu.transport.redis import PRIORITY_STEPS, Channel

from celeryconf.config import QUEUES

PUBLISHED_HEADER = "published_at"
UNACKED_KEY = Channel.unacked_key


@before_task_publish.connect
def _stamp_publish_time(headers: dict[str, Any] | None = None, **_: Any) -> None:
    """Stamp every message with when it was published (for the oldest message's age)."""
    if headers is not None:
        headers[PUBLISHED_HEADER] = time.time()


def queue_keys(queue: str) -> list[str]:
    """The Redis lists of one kombu queue, one per priority step."""
    return [queue if step == 0 else f"{queue}{Channel.sep}{step}" for step in PRIORITY_STEPS]


@dataclass(frozen=True)
class QueueDepth:
    queue: str
    waiting: int  # in the lists, not taken by any worker
    unacked: int  # taken by a worker, not acknowledged: running, reserved or in a countdown
    oldest_since: float | None  # epoch seconds the oldest waiting message waits since; None: none or unknown

    @property
    def depth(self) -> int:
        return self.waiting + self.unacked

    def oldest_seconds(self, now: float) -> float | None:
        return None if self.oldest_since is None else max(0.0, now - self.oldest_since)


def waiting_since(raw: bytes | str) -> float | None:
    """When a message (kombu's JSON envelope) started waiting: its ETA if later than its publish time."""
    try:
        headers = json.loads(raw).get("headers") or {}
        published = headers.get(PUBLISHED_HEADER)
        since = float(published) if published is not None else None
        eta = headers.get("eta")
        if eta:
            due = dt.datetime.fromisoformat(eta)
            if due.tzinfo is None:  # Celery sends aware ETAs; a naive one is taken as UTC
                due = due.replace(tzinfo=dt.UTC)
            since = max(since or 0.0, due.timestamp())
        return since
    except (ValueError, TypeError, AttributeError):  # not a Celery message we can read: no age
        return None


def queue_depths(client: redis.Redis, queues: tuple[str, ...] = QUEUES) -> dict[str, QueueDepth]:
    """Every queue's depth and oldest waiting message, in two Redis round trips plus a scan of
    the unacked hash (a few entries: prefetch 1 per pool process, plus countdowns)."""
    pipe = client.pipeline(transaction=False)
    for queue in queues:
        for key in queue_keys(queue):
            pipe.llen(key)
            pipe.lindex(key, -1)
    replies = pipe.execute()
    unacked = dict.fromkeys(queues, 0)
    for _, value in client.hscan_iter(UNACKED_KEY, count=500):
        try:
            routing_key = json.loads(value)[2]
        except (ValueError, IndexError, TypeError):
            continue
        if routing_key in unacked:
            unacked[routing_key] += 1
    depths: dict[str, QueueDepth] = {}
    steps = len(PRIORITY_STEPS)
    for i, queue in enumerate(queues):
        mine = replies[i * steps * 2 : (i + 1) * steps * 2]
        lengths, tails = mine[0::2], mine[1::2]
        times = [t for t in (waiting_since(tail) for tail in tails if tail is not None) if t is not None]
        depths[queue] = QueueDepth(
            queue=queue,
            waiting=sum(int(n) for n in lengths),
            unacked=unacked[queue],
            oldest_since=min(times) if times else None,
        )
    return depths


def broker_client() -> redis.Redis:
    """A client of the broker's Redis (CELERY_BROKER_URL or REDIS_URL, as the Celery app reads it)."""
    from celeryconf.app import app

    return redis.Redis.from_url(str(app.conf.broker_url), socket_timeout=2, socket_connect_timeout=2)

"""Handing stored inbox rows to the payments queue: the one module that enqueues M-Pesa tasks.

The callback views answer Daraja at once and leave the enqueue to a background publisher thread;
what the broker loses, the sweep (inbox.inbox_sweep) sends again.
"""

from __future__ import annotations

import atexit
import logging
import os
import queue
import socket
import threading
import time
from collections.abc import Sequence
from contextlib import ExitStack
from typing import Any
from urllib.parse import urlsplit

from celery import current_app

from integrations.mpesa import conf

logger = logging.getLogger(__name__)


# Inbox ids per message at most: a message is processed by one task, row after row, each in its own
# transaction (tasks.process_inbox), so a batch only saves the per-message cost of Celery.
BATCH_MAX = 50


def inbox_enqueue(inbox_ids: int | Sequence[int]) -> int:
    """Send "process these inbox rows" to the payments queue without retrying; how many ids went
    (fewer than given when the broker is down: the rest were not sent).

    One message per BATCH_MAX ids. Never raises: Redis is only a delivery mechanism here, the
    sweeper re-sends what did not go.
    """
    from integrations.mpesa.tasks import process_inbox

    ids = [inbox_ids] if isinstance(inbox_ids, int) else list(inbox_ids)
    sent = 0
    if not ids:
        return sent
    try:
        with ExitStack() as stack:
            broker = conf.broker_url_override()
            options: dict[str, Any]
            if broker:
                options = {"connection": stack.enter_context(current_app.connection_for_write(broker))}
            else:  # the app's pooled producer (its connection is kept between calls)
                options = {"producer": stack.enter_context(current_app.producer_or_acquire())}
            for start in range(0, len(ids), BATCH_MAX):
                chunk = ids[start : start + BATCH_MAX]
                payload = chunk[0] if len(chunk) == 1 else chunk
                process_inbox.apply_async(args=(payload,), retry=False, **options)
                sent += len(chunk)
    except Exception as exc:  # a broker outage must not fail the caller
        logger.warning("inbox %s stored but not enqueued (broker down?): %r; the sweeper will send it", ids[sent:], exc)
    return sent


class _Publisher:
    """Hands new inbox ids to one background thread per process that publishes them to Redis.

    Why not publish in the request: even with retry=False, redis-py retries a refused connection
    with backoff (about 6 s), and a hung Redis can stall a publish for its socket timeout. Daraja
    must get its answer within milliseconds whatever Redis does, so the view only puts the id in
    this bounded in-memory queue. What is lost here (queue full, broker down, the process killed
    before publishing) is still in the inbox as "received" and the sweeper sends it.
    The thread waits up to LINGER seconds after an id for more to arrive and publishes them as
    one message (up to BATCH_MAX): under load this divides the cost of Celery's messages (in
    the web process and in the worker) by the batch size, for at most LINGER of extra delay.
    After a failed publish, for PAUSE seconds a batch is published only if a quick TCP connect to
    the broker succeeds (else it is left to the sweeper), instead of each waiting for Redis.
    """

    MAX_PENDING = 10_000
    PAUSE = 5.0
    LINGER = 0.05
    EXIT_FLUSH_SECONDS = 2.0

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._pid: int | None = None
        self._queue: queue.Queue[int] = queue.Queue(self.MAX_PENDING)
        self._paused_until = 0.0

    def submit(self, inbox_id: int) -> bool:
        self._ensure_thread()
        try:
            self._queue.put_nowait(inbox_id)
        except queue.Full:
            logger.warning("enqueue backlog full: inbox %s left to the sweeper", inbox_id)
            return False
        return True

    def flush(self, timeout: float = 10.0) -> bool:
        """Wait until every submitted id was published or dropped (tests, shutdown)."""
        deadline = time.monotonic() + timeout
        while self._queue.unfinished_tasks and time.monotonic() < deadline:
            time.sleep(0.005)
        return not self._queue.unfinished_tasks

    def _ensure_thread(self) -> None:
        if self._pid == os.getpid():
            return
        with self._lock:
            if self._pid == os.getpid():
                return
            # A new process (gunicorn forks after import): start afresh, the parent's thread is not here.
            self._queue = queue.Queue(self.MAX_PENDING)
            threading.Thread(target=self._run, args=(self._queue,), name="mpesa-enqueue", daemon=True).start()
            # A process ending normally (gunicorn recycling a worker after max-requests, a stop)
            # publishes what it holds first, rather than leaving it to the sweeper.
            atexit.register(self.flush, self.EXIT_FLUSH_SECONDS)
            self._pid = os.getpid()

    def _take_batch(self, pending: queue.Queue[int]) -> list[int]:
        """The next id (waiting for it), then whatever else arrives within LINGER, up to BATCH_MAX."""
        batch = [pending.get()]
        deadline = time.monotonic() + self.LINGER
        while len(batch) < BATCH_MAX:
            left = deadline - time.monotonic()
            try:
                batch.append(pending.get(timeout=left) if left > 0 else pending.get_nowait())
            except queue.Empty:
                break
        return batch

    def _run(self, pending: queue.Queue[int]) -> None:
        while True:
            batch = self._take_batch(pending)
            try:
                if time.monotonic() < self._paused_until and not _broker_reachable():
                    logger.warning("broker recently down: inbox %s left to the sweeper", batch)
                elif inbox_enqueue(batch) < len(batch):
                    self._paused_until = time.monotonic() + self.PAUSE
            except Exception:  # never let the thread die
                logger.exception("enqueue of inbox %s failed", batch)
            finally:
                for _ in batch:
                    pending.task_done()


def _broker_reachable(timeout: float = 0.25) -> bool:
    """Whether the broker accepts a TCP connection right now (a cheap probe while it was down)."""
    url = conf.broker_url_override() or str(current_app.conf.broker_url or "")
    parts = urlsplit(url)
    try:
        with socket.create_connection((parts.hostname or "127.0.0.1", parts.port or 6379), timeout=timeout):
            return True
    except OSError:
        return False


publisher = _Publisher()


def inbox_enqueue_soon(inbox_id: int) -> bool:
    """Enqueue without waiting for Redis (see _Publisher); False if the backlog is full."""
    return publisher.submit(inbox_id)

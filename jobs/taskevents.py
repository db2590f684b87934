"""Task events: every Celery task that fails or is retried, and every periodic task that succeeds,
as a jobs.TaskEvent row, from Celery's signals in the worker (docs/celery.md, "Task events").

Connected when a worker starts (jobs/apps.py connects `worker_init`), so web processes and beat
never carry the handlers. What the handlers promise:

- they never break the task: any error while recording is logged, never raised;
- a task that succeeds writes nothing unless beat sent it (django-celery-beat puts the
  `periodic_task_name` header on what it sends, schedulers.py ModelEntry, and its admin's "Run
  selected tasks" does too): no write is added to the payment path's happy path. A periodic
  task's success updates its one "succeeded" row (the last success is what is read; inserting one
  per run would write ~2,500 rows a day for the sweepers alone);
- the task's own transaction is left alone: if the task left its connection inside a transaction
  (an atomic block still open, autocommit off, a transaction aborted by an error) the event is
  written on a connection of its own, so it is neither rolled back with the task's work nor
  refused because of it. Celery's main worker process (a hard time limit, a lost pool process)
  writes on a connection of its own too, closed at once, so nothing is left open to be inherited
  by the pool processes it forks.
"""

from __future__ import annotations

import datetime as dt
import logging
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from celery import signals
from django.db import DEFAULT_DB_ALIAS, connections
from django.db.models import QuerySet
from django.utils import timezone
from django_celery_beat.models import PeriodicTask
from psycopg.pq import TransactionStatus

from jobs.models import TaskEvent, TaskEventKind

logger = logging.getLogger(__name__)

PERIODIC_HEADER = "periodic_task_name"
KEEP_DAYS = 30
# Bounds on what one event keeps: a recursion error's traceback can run to megabytes.
EXCEPTION_MAX_CHARS = 2_000
TRACEBACK_MAX_CHARS = 20_000

_in_pool_process = False


def periodic_task_name(request: Any) -> str:
    """The django-celery-beat PeriodicTask name a task's request carries ("" when beat did not send it).

    Celery copies a message's custom headers onto the request; read both places to be safe."""
    if request is None:
        return ""
    name = getattr(request, PERIODIC_HEADER, None)
    if not name:
        headers = getattr(request, "headers", None) or {}
        name = headers.get(PERIODIC_HEADER) if isinstance(headers, dict) else None
    return str(name or "")[:200]


def _exception_text(exc: BaseException | None) -> str:
    if exc is None:
        return ""
    return f"{type(exc).__name__}: {exc}"[:EXCEPTION_MAX_CHARS]


def _traceback_text(einfo: Any) -> str:
    text = str(getattr(einfo, "traceback", "") or "")
    if len(text) > TRACEBACK_MAX_CHARS:
        # The end of a traceback says where it failed: keep that.
        text = "...\n" + text[-TRACEBACK_MAX_CHARS:]
    return text


def _connection_is_clean(conn: Any) -> bool:
    """The worker's connection may take the write: not inside a transaction the task left open,
    as Django sees it (atomic block, autocommit off) or as the server does (a raw BEGIN)."""
    if conn.connection is None:
        return True  # not connected: Django connects in autocommit
    if conn.in_atomic_block or not conn.get_autocommit() or conn.needs_rollback:
        return False
    return bool(conn.connection.info.transaction_status == TransactionStatus.IDLE)


@contextmanager
def _cursor() -> Iterator[Any]:
    """A cursor in autocommit, on the worker's connection when that is safe, else on a new one."""
    conn = connections[DEFAULT_DB_ALIAS]
    if _in_pool_process and _connection_is_clean(conn):
        # A connection an earlier error left unusable (the database restarted under the task) is
        # dropped, so the event still gets written on a new one.
        if conn.connection is not None and conn.errors_occurred and not conn.is_usable():
            conn.close()
        with conn.cursor() as cursor:
            yield cursor
        return
    own = connections.create_connection(DEFAULT_DB_ALIAS)
    try:
        with own.cursor() as cursor:
            yield cursor
    finally:
        own.close()


_INSERT = (
    "INSERT INTO {table} (kind, task_name, task_id, periodic_task, worker, exception, traceback, at) "
    "VALUES (%s, %s, %s, %s, %s, %s, %s, %s)"
)
_TOUCH_SUCCESS = (
    "UPDATE {table} SET task_name = %s, task_id = %s, worker = %s, at = %s WHERE kind = %s AND periodic_task = %s"
)


def task_event_record(
    *,
    kind: str,
    task_name: str,
    task_id: str = "",
    periodic_task: str = "",
    worker: str = "",
    exception: str = "",
    traceback: str = "",
    at: dt.datetime | None = None,
) -> bool:
    """Write one event; True when written. Never raises: a failure is logged (the task goes on).

    A success of a periodic task updates its "succeeded" row, or inserts it the first time. Two
    workers inserting that first row at once leave two rows, which later updates move together:
    harmless for "the last success". Safe to call twice (a second failure row, or the same update)."""
    table = connections[DEFAULT_DB_ALIAS].ops.quote_name(TaskEvent._meta.db_table)
    when = at or timezone.now()
    try:
        with _cursor() as cursor:
            if kind == TaskEventKind.SUCCEEDED and periodic_task:
                cursor.execute(
                    _TOUCH_SUCCESS.format(table=table),
                    [task_name[:200], task_id[:64], worker[:200], when, kind, periodic_task],
                )
                if cursor.rowcount:
                    return True
            cursor.execute(
                _INSERT.format(table=table),
                [kind, task_name[:200], task_id[:64], periodic_task[:200], worker[:200], exception, traceback, when],
            )
        return True
    except Exception:  # recording must never break the task
        logger.exception("task event not recorded: %s %s %s", kind, task_name, task_id)
        return False


def _worker_name(request: Any) -> str:
    return str(getattr(request, "hostname", "") or "")


def on_task_failure(
    sender: Any = None, task_id: str | None = None, exception: BaseException | None = None, einfo: Any = None, **_: Any
) -> None:
    request = getattr(sender, "request", None)
    task_event_record(
        kind=TaskEventKind.FAILED,
        task_name=str(getattr(sender, "name", "") or ""),
        task_id=str(task_id or getattr(request, "id", "") or ""),
        periodic_task=periodic_task_name(request),
        worker=_worker_name(request),
        exception=_exception_text(exception),
        traceback=_traceback_text(einfo),
    )


def on_task_retry(sender: Any = None, request: Any = None, reason: Any = None, einfo: Any = None, **_: Any) -> None:
    # `reason` is Celery's Retry; the error that caused it is its `exc` (None for a plain self.retry()).
    cause = getattr(reason, "exc", None)
    exception = _exception_text(cause) if isinstance(cause, BaseException) else str(reason or "")[:EXCEPTION_MAX_CHARS]
    task_event_record(
        kind=TaskEventKind.RETRIED,
        task_name=str(getattr(sender, "name", "") or ""),
        task_id=str(getattr(request, "id", "") or ""),
        periodic_task=periodic_task_name(request),
        worker=_worker_name(request),
        exception=exception,
        traceback=_traceback_text(einfo),
    )


def on_task_success(sender: Any = None, **_: Any) -> None:
    request = getattr(sender, "request", None)
    name = periodic_task_name(request)
    if not name:
        return  # not sent by beat: nothing to write (every payment ends here)
    task_event_record(
        kind=TaskEventKind.SUCCEEDED,
        task_name=str(getattr(sender, "name", "") or ""),
        task_id=str(getattr(request, "id", "") or ""),
        periodic_task=name,
        worker=_worker_name(request),
    )


def _pool_process_started(**_: Any) -> None:
    global _in_pool_process
    _in_pool_process = True


def connect(**_: Any) -> None:
    """Connect the handlers (once): called by `worker_init`, in the worker's main process, before it
    forks its pool processes, which inherit them."""
    signals.task_failure.connect(on_task_failure, dispatch_uid="jobs.taskevents.failure", weak=False)
    signals.task_retry.connect(on_task_retry, dispatch_uid="jobs.taskevents.retry", weak=False)
    signals.task_success.connect(on_task_success, dispatch_uid="jobs.taskevents.success", weak=False)
    signals.worker_process_init.connect(_pool_process_started, dispatch_uid="jobs.taskevents.pool", weak=False)


def task_events_prune(*, now: dt.datetime | None = None, keep_days: int = KEEP_DAYS) -> int:
    """Delete events older than `keep_days`; returns how many. The "succeeded" row of a periodic task
    that still exists is kept, however old: "last success 45 days ago" is worth showing. Idempotent."""
    cutoff = (now or timezone.now()) - dt.timedelta(days=keep_days)
    old: QuerySet[TaskEvent] = TaskEvent.objects.filter(at__lt=cutoff).exclude(
        kind=TaskEventKind.SUCCEEDED, periodic_task__in=PeriodicTask.objects.values("name")
    )
    deleted, _ = old.delete()
    return deleted

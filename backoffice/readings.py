"""The numbers the System page shows and the alert rules judge, read in one place for both.

`readings_collect()` reads everything once: queues and heartbeats from Redis, the host from /proc
and the disk (psutil, os), the rest from PostgreSQL. A source that fails is recorded as an error
(`broker_error`, `database_error`) and its part is None, so the page still shows what it could read
and a rule whose numbers are missing leaves its alert as it was (alerts.rule_evaluate). Read-only:
safe to call as often as the page is loaded.

Sizes are bytes; "MB" on the page and in the rules means MiB (1,048,576 bytes), as in
docs/worker-memory.md, so the 4 GB VPS is 4096 MB and its 3.5 GB limit 3584 MB.
"""

from __future__ import annotations

import datetime as dt
import os
import shutil
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import psutil
import redis
from django.conf import settings
from django.db import DatabaseError, connection
from django.utils import timezone

from celeryconf.heartbeat import beat_read, redis_client, restarts_count, workers_read
from celeryconf.queues import broker_client, queue_depths
from integrations.mpesa.selectors import (
    UnreconciledDay,
    inbox_backlog,
    inbox_waiting_for_person,
    status_queries_waiting_for_person,
    unreconciled_days,
)
from jobs.selectors import PeriodicTaskStatus, periodic_task_status

MB = 1024 * 1024
# The System page lists days with M-Pesa payments and no finished reconciliation this far back.
UNRECONCILED_LOOKBACK_DAYS = 30


def _at(epoch: float) -> dt.datetime:
    return dt.datetime.fromtimestamp(epoch, tz=dt.UTC)


# A periodic task counts as failing (System page, "a periodic task failed" rule) when its last failure
# came after its last success and within this window: one that failed weeks ago and has not run
# since (disabled, say) is history, not an alarm.
FAILURE_WINDOW = dt.timedelta(hours=24)


def failing_recently(status: PeriodicTaskStatus, now: dt.datetime) -> bool:
    failed_at = status["last_failure_at"]
    return bool(status["failing"] and failed_at is not None and failed_at >= now - FAILURE_WINDOW)


def first_line(text: str) -> str:
    """The first line of an exception text, cut to 300 characters (a whole traceback stays on its page)."""
    return (text.splitlines() or [""])[0][:300]


@dataclass(frozen=True)
class ProcessMemory:
    pid: int
    rss: int
    role: str  # "main" or "pool"


@dataclass(frozen=True)
class WorkerStatus:
    """One live worker, from its heartbeat (celeryconf/heartbeat.py) and its start records."""

    hostname: str
    pid: int
    queues: list[str]
    rss: int
    pool: list[ProcessMemory]
    tasks_done: int
    started_at: dt.datetime
    seen_at: dt.datetime
    restarts_last_hour: int = 0
    pool_started: int = 0

    @property
    def processes(self) -> list[ProcessMemory]:
        return [ProcessMemory(pid=self.pid, rss=self.rss, role="main"), *self.pool]

    @property
    def pool_replaced(self) -> int:
        """Pool processes started since the worker started, beyond the ones it has now."""
        return max(0, self.pool_started - len(self.pool))

    def uptime(self, now: dt.datetime) -> dt.timedelta:
        return max(dt.timedelta(0), now - self.started_at)


@dataclass(frozen=True)
class QueueStatus:
    name: str
    waiting: int
    unacked: int
    oldest_seconds: float | None
    workers: list[str] = field(default_factory=list)

    @property
    def depth(self) -> int:
        return self.waiting + self.unacked


@dataclass(frozen=True)
class BeatStatus:
    hostname: str
    pid: int
    rss: int
    seen_at: dt.datetime
    last_tick_at: dt.datetime | None
    started_at: dt.datetime | None = None


@dataclass(frozen=True)
class DiskStatus:
    label: str
    path: str
    total: int
    free: int

    @property
    def free_percent(self) -> float:
        return 100.0 * self.free / self.total if self.total else 0.0


@dataclass(frozen=True)
class HostStatus:
    memory_total: int
    memory_used: int  # total - available: what the kernel could not hand out without swapping
    disks: list[DiskStatus]


@dataclass(frozen=True)
class BackupStatus:
    last_good_at: dt.datetime | None  # when the latest successful backup finished
    last_id: int | None = None  # the latest finished backup (succeeded or failed)
    last_started_at: dt.datetime | None = None
    last_finished_at: dt.datetime | None = None
    last_state: str = ""
    last_verify_state: str = ""
    last_verify_message: str = ""
    last_error: str = ""


@dataclass(frozen=True)
class MpesaStatus:
    inbox_backlog: int
    inbox_oldest_at: dt.datetime | None
    callbacks_waiting: int  # inbox rows that need a person
    status_queries_waiting: int  # lost confirmations left to a person
    unreconciled: list[UnreconciledDay] = field(default_factory=list)

    @property
    def payments_waiting(self) -> int:
        return self.callbacks_waiting + self.status_queries_waiting


@dataclass(frozen=True)
class Readings:
    """Everything read at `at`. A part is None when its source could not be read (see the errors)."""

    at: dt.datetime
    broker_error: str = ""
    database_error: str = ""
    queues: dict[str, QueueStatus] | None = None
    workers: list[WorkerStatus] | None = None
    beat: BeatStatus | None = None  # None with no broker_error: no heartbeat from beat
    host: HostStatus | None = None
    database_bytes: int | None = None
    backup: BackupStatus | None = None
    mpesa: MpesaStatus | None = None
    periodic: list[PeriodicTaskStatus] | None = None

    @property
    def broker_ok(self) -> bool:
        return not self.broker_error and self.queues is not None and self.workers is not None


def _broker(now: dt.datetime) -> tuple[dict[str, QueueStatus], list[WorkerStatus], BeatStatus | None]:
    stamp = now.timestamp()
    client = redis_client()
    broker = broker_client()
    try:
        depths = queue_depths(broker)
        raw_workers = workers_read(client)
        raw_beat = beat_read(client)
        workers = []
        for w in raw_workers:
            try:
                workers.append(
                    WorkerStatus(
                        hostname=str(w["hostname"]),
                        pid=int(w["pid"]),
                        queues=[str(q) for q in w.get("queues", [])],
                        rss=int(w.get("rss", 0)),
                        pool=[
                            ProcessMemory(pid=int(p["pid"]), rss=int(p["rss"]), role="pool") for p in w.get("pool", [])
                        ],
                        tasks_done=int(w.get("tasks_done", 0)),
                        started_at=_at(float(w.get("started_at", w["at"]))),
                        seen_at=_at(float(w["at"])),
                        restarts_last_hour=restarts_count(client, str(w["hostname"]), now=stamp),
                        pool_started=int(w.get("pool_started", 0)),
                    )
                )
            except (KeyError, TypeError, ValueError):  # a malformed reading: not a worker we can show
                continue
    finally:
        client.close()
        broker.close()
    queues = {
        name: QueueStatus(
            name=name,
            waiting=d.waiting,
            unacked=d.unacked,
            oldest_seconds=d.oldest_seconds(stamp),
            workers=[w.hostname for w in workers if name in w.queues],
        )
        for name, d in depths.items()
    }
    return queues, workers, _beat(raw_beat)


def _beat(raw: dict[str, Any] | None) -> BeatStatus | None:
    if raw is None:
        return None
    try:
        tick = raw.get("last_tick")
        return BeatStatus(
            hostname=str(raw.get("hostname", "")),
            pid=int(raw.get("pid", 0)),
            rss=int(raw.get("rss", 0)),
            seen_at=_at(float(raw["at"])),
            last_tick_at=None if tick is None else _at(float(tick)),
            started_at=_at(float(raw["started_at"])) if raw.get("started_at") else None,
        )
    except (TypeError, ValueError):  # not a reading we can trust: as if beat had said nothing
        return None


def _existing(path: Path) -> Path:
    """The path, or its nearest existing parent (a directory not created yet is on its parent's disk)."""
    for candidate in (path, *path.parents):
        if candidate.exists():
            return candidate
    return Path("/")


def _host() -> HostStatus:
    memory = psutil.virtual_memory()
    places = [("Uploaded files (MEDIA_ROOT)", Path(settings.MEDIA_ROOT))]
    backup_dir = getattr(settings, "BACKUP_DIR", None)
    if backup_dir:
        places.append(("Backups (BACKUP_DIR)", Path(backup_dir)))
    disks: list[DiskStatus] = []
    devices: set[int] = set()
    for label, path in places:
        where = _existing(path)
        device = os.stat(where).st_dev
        if device in devices:  # the same filesystem: once is enough
            continue
        devices.add(device)
        usage = shutil.disk_usage(where)
        disks.append(DiskStatus(label=label, path=str(path), total=usage.total, free=usage.free))
    return HostStatus(memory_total=memory.total, memory_used=memory.total - memory.available, disks=disks)


def _database_bytes() -> int:
    with connection.cursor() as cursor:
        cursor.execute("SELECT pg_database_size(current_database())")
        return int(cursor.fetchone()[0])


def _backup() -> BackupStatus:
    from backoffice.backups import backup_status
    from backoffice.models import Backup, BackupState

    status = backup_status()
    good = status.last_good
    # The last one that ended: a backup still running has no fate yet.
    last = status.last
    if last is not None and last.state == BackupState.RUNNING:
        last = Backup.objects.exclude(state=BackupState.RUNNING).order_by("-started_at", "-id").first()
    if last is None:
        return BackupStatus(last_good_at=None)
    return BackupStatus(
        last_good_at=good.finished_at if good else None,
        last_id=last.pk,
        last_started_at=last.started_at,
        last_finished_at=last.finished_at,
        last_state=last.state,
        last_verify_state=last.verify_state,
        last_verify_message=last.verify_message,
        last_error=last.error,
    )


def _mpesa(now: dt.datetime) -> MpesaStatus:
    backlog = inbox_backlog()
    today = timezone.localdate(now)
    return MpesaStatus(
        inbox_backlog=backlog.count,
        inbox_oldest_at=backlog.oldest_received_at,
        callbacks_waiting=inbox_waiting_for_person().count(),
        status_queries_waiting=status_queries_waiting_for_person().count(),
        unreconciled=unreconciled_days(
            first=today - dt.timedelta(days=UNRECONCILED_LOOKBACK_DAYS), last=today - dt.timedelta(days=1)
        ),
    )


def readings_collect(*, now: dt.datetime | None = None) -> Readings:
    """Read every number once. Never raises for a source that is down: see Readings' errors."""
    now = now or timezone.now()
    broker_error = database_error = ""
    queues = workers = beat = None
    try:
        queues, workers, beat = _broker(now)
    except (redis.RedisError, OSError) as exc:
        broker_error = str(exc)[:200] or type(exc).__name__
    try:
        host = _host()
    except (OSError, psutil.Error):
        host = None
    database_bytes = backup = mpesa = periodic = None
    try:
        database_bytes = _database_bytes()
        backup = _backup()
        mpesa = _mpesa(now)
        periodic = periodic_task_status()
    except DatabaseError as exc:
        database_error = str(exc)[:200] or type(exc).__name__
    return Readings(
        at=now,
        broker_error=broker_error,
        database_error=database_error,
        queues=queues,
        workers=workers,
        beat=beat,
        host=host,
        database_bytes=database_bytes,
        backup=backup,
        mpesa=mpesa,
        periodic=periodic,
    )

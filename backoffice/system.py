"""The System page: how the back office itself is doing, for the owner.

Queues (depth, oldest message), workers (memory of each process, tasks, uptime, restarts), beat
and each periodic task, the tasks that failed or were retried in the last 24 hours with their
tracebacks, the M-Pesa work waiting, the host (memory, disk, database size), the last backup and
the open alerts. Every number comes from backoffice.readings, the same read the alert rules judge.

Only the owner (superuser or tenancy.view_all_businesses) may open it: it spans every business and
shows tracebacks. Read-only; `?refresh=30` reloads the page every 30 seconds.
"""

from __future__ import annotations

import datetime as dt
from typing import Any

from django.contrib import admin
from django.core.exceptions import PermissionDenied
from django.http import HttpRequest
from django.template.response import TemplateResponse
from django.utils import timezone
from django.views.decorators.http import require_GET

from backoffice.alerts import alerts_checked_at, open_alerts
from backoffice.readings import MB, Readings, failing_recently, first_line, readings_collect
from jobs.selectors import task_failures
from tenancy.scoping import sees_all_businesses

FAILURES_SHOWN = 100
UNRECONCILED_SHOWN = 8  # the oldest first; the reconciliation list has them all
REFRESH_CHOICES = (15, 30, 60)


def ago(when: dt.datetime | None, now: dt.datetime) -> str:
    """ "42 s ago", "7 min ago", "3.5 h ago", "2 days ago"; "never" for None."""
    if when is None:
        return "never"
    return duration((now - when).total_seconds()) + " ago"


def duration(seconds: float | None) -> str:
    if seconds is None:
        return "-"
    seconds = max(0, int(seconds))
    if seconds < 120:
        return f"{seconds} s"
    if seconds < 2 * 3600:
        return f"{seconds // 60} min"
    if seconds < 2 * 86400:
        return f"{seconds / 3600:.1f} h"
    return f"{seconds // 86400} days"


def megabytes(n: int | None) -> str:
    return "-" if n is None else f"{n / MB:,.1f} MB"


def _local(when: dt.datetime | None) -> str:
    return "" if when is None else f"{timezone.localtime(when):%Y-%m-%d %H:%M}"


def system_context(readings: Readings) -> dict[str, Any]:
    """The page's rows, formatted (the template only lays them out)."""
    now = readings.at
    queues = [
        {
            "name": q.name,
            "waiting": q.waiting,
            "unacked": q.unacked,
            "depth": q.depth,
            "oldest": duration(q.oldest_seconds) if q.oldest_seconds is not None else "-",
            "workers": q.workers,
        }
        for q in (readings.queues or {}).values()
    ]
    workers = [
        {
            "hostname": w.hostname,
            "pid": w.pid,
            "queues": ", ".join(w.queues),
            "main": megabytes(w.rss),
            "pool": [(p.pid, megabytes(p.rss)) for p in w.pool],
            "tasks_done": w.tasks_done,
            "uptime": duration(w.uptime(now).total_seconds()),
            "restarts": w.restarts_last_hour,
            "pool_replaced": w.pool_replaced,
            "seen": ago(w.seen_at, now),
        }
        for w in readings.workers or []
    ]
    beat = readings.beat
    periodic = [
        {
            "name": p["name"],
            "task": p["task"],
            "enabled": p["enabled"],
            "last_run": _local(p["last_run_at"]) or "never",
            "last_success": _local(p["last_success_at"]) or "none recorded",
            "last_failure": _local(p["last_failure_at"]),
            "exception": first_line(p["last_error"]),
            "failing": failing_recently(p, now),
        }
        for p in readings.periodic or []
    ]
    mpesa = readings.mpesa
    host = readings.host
    backup = readings.backup
    return {
        "read_at": _local(now) + f":{timezone.localtime(now):%S}",
        "broker_error": readings.broker_error,
        "database_error": readings.database_error,
        "queues": queues,
        "workers": workers,
        "workers_known": readings.workers is not None,
        "beat": (
            {
                "hostname": beat.hostname,
                "pid": beat.pid,
                "rss": megabytes(beat.rss),
                "seen": ago(beat.seen_at, now),
                "tick": ago(beat.last_tick_at, now) if beat.last_tick_at else "not reported",
                "uptime": duration((now - beat.started_at).total_seconds()) if beat.started_at else "-",
            }
            if beat
            else None
        ),
        "periodic": periodic,
        "mpesa": (
            {
                "backlog": mpesa.inbox_backlog,
                "backlog_oldest": ago(mpesa.inbox_oldest_at, now) if mpesa.inbox_oldest_at else "-",
                "callbacks_waiting": mpesa.callbacks_waiting,
                "status_queries_waiting": mpesa.status_queries_waiting,
                "unreconciled_count": len(mpesa.unreconciled),
                "unreconciled": mpesa.unreconciled[:UNRECONCILED_SHOWN],
                "unreconciled_more": max(0, len(mpesa.unreconciled) - UNRECONCILED_SHOWN),
            }
            if mpesa
            else None
        ),
        "host": (
            {
                "memory_used": megabytes(host.memory_used),
                "memory_total": megabytes(host.memory_total),
                "memory_percent": f"{100 * host.memory_used / host.memory_total:.0f}" if host.memory_total else "-",
                "disks": [
                    {
                        "label": d.label,
                        "path": d.path,
                        "free": megabytes(d.free),
                        "total": megabytes(d.total),
                        "free_percent": f"{d.free_percent:.1f}",
                    }
                    for d in host.disks
                ],
            }
            if host
            else None
        ),
        "database_size": megabytes(readings.database_bytes),
        "backup": (
            {
                "last_good": _local(backup.last_good_at) or "never",
                "last_good_ago": ago(backup.last_good_at, now) if backup.last_good_at else "",
                "last_id": backup.last_id,
                "last_started": _local(backup.last_started_at),
                "last_state": backup.last_state,
                "last_verify_state": backup.last_verify_state,
                "last_verify_message": backup.last_verify_message,
                "last_error": backup.last_error,
            }
            if backup
            else None
        ),
    }


@require_GET
def system_view(request: HttpRequest) -> TemplateResponse:
    """The page (GET only: nothing on it changes data)."""
    if not sees_all_businesses(request.user):
        raise PermissionDenied
    readings = readings_collect()
    now = readings.at
    try:
        refresh = int(request.GET.get("refresh", "0"))
    except ValueError:
        refresh = 0
    checked = alerts_checked_at()
    context = {
        **admin.site.each_context(request),
        "title": "System",
        **system_context(readings),
        "alerts": [
            {
                "rule": a.rule.name,
                "message": a.message,
                "value": a.value,
                "since": _local(a.first_seen_at),
                "emailed": _local(a.last_emailed_at) or "not yet",
            }
            for a in open_alerts(request.user)
        ],
        "alerts_checked": ago(checked, now) if checked else "unknown",
        "failures": list(task_failures(now - dt.timedelta(hours=24), limit=FAILURES_SHOWN)),
        "refresh": refresh if refresh in REFRESH_CHOICES else 0,
        "refresh_choices": REFRESH_CHOICES,
    }
    return TemplateResponse(request, "admin/system.html", context)

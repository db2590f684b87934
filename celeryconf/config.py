"""Celery settings, from the environment, with the reliability rules checked at start-up.

Why these defaults (see docs/celery.md):
- late acks + reject on worker lost + prefetch 1: a task is acknowledged only after it ran, so a
  worker that dies mid-task (OOM, SIGKILL, deploy) leaves the message to be delivered again; tasks
  are therefore written to be idempotent.
- Redis has no real acknowledgements: an unacknowledged message comes back after the transport's
  visibility timeout. If a task may run (or wait in a countdown / ETA / retry backoff) longer than
  that, Redis hands it to a second worker while the first is still on it. So the visibility
  timeout must exceed the longest time limit plus the longest countdown or backoff; a
  configuration that breaks the rule is refused (`check_reliability`).
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Any

from kombu import Exchange, Queue

QUEUE_PAYMENTS = "payments"
QUEUE_DEFAULT = "default"
QUEUE_REPORTS = "reports"
QUEUES = (QUEUE_PAYMENTS, QUEUE_DEFAULT, QUEUE_REPORTS)


class ReliabilityError(ValueError):
    """A Celery configuration that could deliver a task twice while it is still running."""


def _env_int(name: str, default: int) -> int:
    value = os.environ.get(name)
    return int(value) if value else default


@dataclass(frozen=True)
class Limits:
    """The time budget every task lives within."""

    task_time_limit: int
    task_soft_time_limit: int
    max_countdown: int  # the longest countdown, ETA delay or retry backoff any task may ask for
    visibility_timeout: int
    # Slack between "the longest a task can hold its message" and the visibility timeout.
    visibility_margin: int = 60
    # How often each worker looks for messages whose worker died (kombu's restore sweep):
    # every restore_interval * restore_throttle seconds.
    restore_interval: int = 10
    restore_throttle: int = 3

    @classmethod
    def from_env(cls) -> Limits:
        time_limit = _env_int("CELERY_TASK_TIME_LIMIT", 15 * 60)
        return cls(
            task_time_limit=time_limit,
            task_soft_time_limit=_env_int("CELERY_TASK_SOFT_TIME_LIMIT", max(1, time_limit - 30)),
            max_countdown=_env_int("CELERY_MAX_COUNTDOWN", 10 * 60),
            visibility_timeout=_env_int("CELERY_VISIBILITY_TIMEOUT", 60 * 60),
            visibility_margin=_env_int("CELERY_VISIBILITY_MARGIN", 60),
            restore_interval=_env_int("CELERY_RESTORE_INTERVAL", 10),
            restore_throttle=_env_int("CELERY_RESTORE_THROTTLE", 3),
        )


def check_reliability(limits: Limits, task_time_limits: dict[str, int] | None = None) -> None:
    """Refuse limits under which Redis would redeliver a task that is still running or waiting."""
    if limits.task_soft_time_limit >= limits.task_time_limit:
        raise ReliabilityError(
            f"soft time limit ({limits.task_soft_time_limit}s) must be below the hard limit "
            f"({limits.task_time_limit}s) so tasks get a chance to clean up"
        )
    if limits.visibility_margin < 1:
        raise ReliabilityError("the visibility margin must be at least one second")
    longest = max([limits.task_time_limit, *(task_time_limits or {}).values()])
    needed = longest + limits.max_countdown + limits.visibility_margin
    if limits.visibility_timeout < needed:
        slowest = max((task_time_limits or {}).items(), key=lambda kv: kv[1], default=("default", longest))
        raise ReliabilityError(
            f"Redis visibility timeout {limits.visibility_timeout}s is too short: a task may hold its "
            f"message for {longest}s (time limit of {slowest[0]}) + {limits.max_countdown}s countdown/backoff "
            f"+ {limits.visibility_margin}s margin = {needed}s; raise CELERY_VISIBILITY_TIMEOUT or lower the limits"
        )


# Tasks between the fix-up's own closes of every connection (see build_config): never, in practice.
DB_REUSE_MAX = 10**9


def build_config(broker_url: str, limits: Limits) -> dict[str, Any]:
    check_reliability(limits)
    exchange = Exchange("backoffice", type="direct")
    return {
        "broker_url": broker_url,
        "broker_connection_retry_on_startup": True,
        "broker_transport_options": {
            "visibility_timeout": limits.visibility_timeout,
            "unacked_restore_interval": limits.restore_interval,
            "unacked_restore_throttle": limits.restore_throttle,
            # Ask Redis to wake idle connections up, so a restarted Redis is noticed quickly.
            "socket_keepalive": True,
            "health_check_interval": 25,
        },
        # Results live in our own tables (Job rows, inbox rows); Celery's result backend is off.
        "result_backend": None,
        "task_ignore_result": True,
        "task_serializer": "json",
        "accept_content": ["json"],
        "timezone": "Africa/Nairobi",
        "enable_utc": True,
        "task_queues": [Queue(name, exchange, routing_key=name) for name in QUEUES],
        "task_default_queue": QUEUE_DEFAULT,
        "task_default_exchange": "backoffice",
        "task_default_routing_key": QUEUE_DEFAULT,
        "task_routes": {
            "payments.*": {"queue": QUEUE_PAYMENTS, "routing_key": QUEUE_PAYMENTS},
            "reports.*": {"queue": QUEUE_REPORTS, "routing_key": QUEUE_REPORTS},
            # The anchor writer: worker-default mounts the anchors volume (docker-compose.prod.yml).
            "ledger.*": {"queue": QUEUE_DEFAULT, "routing_key": QUEUE_DEFAULT},
        },
        # Reliability: acknowledge after the task ran; requeue if the worker process died.
        "task_acks_late": True,
        "task_reject_on_worker_lost": True,
        "task_acks_on_failure_or_timeout": True,
        "worker_prefetch_multiplier": 1,
        "task_time_limit": limits.task_time_limit,
        "task_soft_time_limit": limits.task_soft_time_limit,
        "worker_cancel_long_running_tasks_on_connection_loss": True,
        # Database connections: Celery's Django fix-up closes them before and after EVERY task unless
        # this old-style setting is set, so each task paid for a new PostgreSQL backend (fork,
        # authentication, cold catalog caches: most of an M-Pesa posting's cost). With it set this
        # high the fix-up leaves them alone and celeryconf.app treats a task like Django treats a
        # request: close_old_connections() before and after (CONN_MAX_AGE, CONN_HEALTH_CHECKS,
        # and a connection that had an error is dropped).
        "CELERY_DB_REUSE_MAX": DB_REUSE_MAX,
        # Keep each worker small: recycle a pool process after N tasks or once it grows past the limit.
        "worker_max_tasks_per_child": _env_int("CELERY_MAX_TASKS_PER_CHILD", 5000),
        "worker_max_memory_per_child": _env_int("CELERY_MAX_MEMORY_PER_CHILD_KB", 120_000),
        # Soft shutdown: on a warm stop, give running tasks this long to finish before requeueing.
        "worker_soft_shutdown_timeout": float(_env_int("CELERY_SOFT_SHUTDOWN_SECONDS", 30)),
        "worker_enable_soft_shutdown_on_idle": True,
        # Events for Flower: workers report received/started/succeeded/failed. No "sent" event from
        # publishers: it doubled the Redis work of every publish in the web processes (one per M-Pesa
        # callback); the queue lengths show what waits, and Job rows what was launched.
        "worker_send_task_events": True,
        "task_send_sent_event": False,
        "worker_hijack_root_logger": False,
        # Beat: schedules live in the database (django-celery-beat), editable from the admin.
        "beat_scheduler": "django_celery_beat.schedulers:DatabaseScheduler",
    }

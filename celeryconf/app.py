"""The Celery app. Workers, beat and Flower all start from here: workers and beat with `python -m celeryconf
worker|beat` (celeryconf/__main__.py), Flower and the rest of the command line with `celery -A celeryconf ...`."""

from __future__ import annotations

import os
import sys
from pathlib import Path
from typing import Any

from celery import Celery, Task, signals
from django.db import close_old_connections

import celeryconf.taskpeak  # noqa: F401 - connects the per-task peak RSS reading (its signal receivers)
from celeryconf.config import Limits, ReliabilityError, build_config, check_reliability
from celeryconf.footprint import pdeathsig_through_ctypes

# Flower only watches the broker's events and queues: it needs none of Django. Without
# DJANGO_SETTINGS_MODULE Celery installs no Django fix-up, so `celery -A celeryconf flower` does not
# set Django up (every app, model and the ORM: ~45 MB, docs/worker-memory.md). Every other process
# that loads this app (web, workers, beat, manage.py) gets the settings.
_ARGV0 = Path(sys.argv[0]) if sys.argv else Path()
FLOWER_PROCESS = (_ARGV0.name == "celery" or _ARGV0.parts[-2:] == ("celery", "__main__.py")) and "flower" in sys.argv[
    1:
]
if FLOWER_PROCESS:
    os.environ.pop("DJANGO_SETTINGS_MODULE", None)
else:
    os.environ.setdefault("DJANGO_SETTINGS_MODULE", "backoffice.settings")
# Celery's Django fix-up runs Django's system checks at every worker and beat start and throws the
# result away; running them loads the whole URLconf (every view, the admin's URLs) into each worker
# for nothing (~1.6 MiB per process, docs/worker-memory.md). `manage.py migrate` and `check` run
# them at deploy. Set CELERY_SKIP_CHECKS= (empty) to run them in a worker anyway.
os.environ.setdefault("CELERY_SKIP_CHECKS", "1")

LIMITS = Limits.from_env()
# Pool processes set their parent-death signal through ctypes, not cffi and pycparser (~2 MB each).
pdeathsig_through_ctypes()


class ReliableTask(Task):  # type: ignore[misc]
    """Base task: refuses a countdown or ETA the visibility timeout does not cover.

    A message waiting in a countdown sits unacknowledged in Redis; if it waits longer than the
    visibility timeout, Redis gives it to a second worker. So no task may ask for more than
    `LIMITS.max_countdown` seconds; retries use exponential backoff capped at that.
    """

    retry_backoff_max = LIMITS.max_countdown

    def apply_async(self, args: Any = None, kwargs: Any = None, **options: Any) -> Any:  # type: ignore[override]
        countdown = options.get("countdown")
        if countdown is not None and countdown > LIMITS.max_countdown:
            raise ReliabilityError(
                f"{self.name}: countdown {countdown}s exceeds CELERY_MAX_COUNTDOWN ({LIMITS.max_countdown}s)"
            )
        if options.get("eta") is not None:
            raise ReliabilityError(f"{self.name}: use a countdown, not an ETA (bounded by the visibility timeout)")
        return super().apply_async(args, kwargs, **options)


def broker_url_from_env() -> str:
    """The broker URL, from the same variables as backoffice/settings.py (CELERY_BROKER_URL, REDIS_URL)."""
    return os.environ.get("CELERY_BROKER_URL") or os.environ.get("REDIS_URL") or "redis://127.0.0.1:6379/0"


app = Celery("backoffice", task_cls=ReliableTask)
app.conf.update(build_config(broker_url_from_env(), LIMITS))
# Celery's Django fix-up runs django.setup() in workers and beat; tasks are found in each app's tasks.py.
app.autodiscover_tasks()


def task_time_limits(celery_app: Celery[Any]) -> dict[str, int]:
    """The tasks that set their own hard time limit, by name."""
    return {name: int(t.time_limit or 0) for name, t in celery_app.tasks.items() if getattr(t, "time_limit", None)}


@app.on_after_finalize.connect
def _check_task_limits(sender: Celery, **_: Any) -> None:
    """Every task's own time limit must fit the visibility timeout too."""
    check_reliability(LIMITS, task_time_limits(sender))


@signals.task_prerun.connect
@signals.task_postrun.connect
def _close_old_connections(**_: Any) -> None:
    """Around each task, what Django does around each request: close database connections older
    than CONN_MAX_AGE or left unusable by an error; the rest are reused (see build_config)."""
    close_old_connections()


# Heartbeats (/healthz, the System page) and the publish-time stamp on every message (queue age):
# imported for their signal handlers, in every process that loads the app (web, workers, beat).
from celeryconf import heartbeat, queues  # noqa: E402,F401

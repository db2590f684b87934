"""What a worker imports at start: kept small, because every pool process carries it (docs/worker-memory.md)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

PROJECT_ROOT = Path(__file__).resolve().parents[2]

# What a worker does at start, without the command line: the Django fix-up runs django.setup()
# (and the system checks, unless skipped), then every app's tasks module is imported.
START = """
import os, sys
from celeryconf import app
app.loader.import_default_modules()
assert "jobs.run" in app.tasks and "payments.process_inbox" in app.tasks
print(os.environ.get("CELERY_SKIP_CHECKS", ""))
print(" ".join(sorted(m for m in ("requests", "cryptography.fernet", "backoffice.urls") if m in sys.modules)))
"""


def test_worker_start_leaves_out_what_only_some_tasks_need() -> None:
    env = {k: v for k, v in os.environ.items() if k not in ("CELERY_SKIP_CHECKS", "DJANGO_SETTINGS_MODULE")}
    out = subprocess.run(
        [sys.executable, "-c", START],
        cwd=PROJECT_ROOT,
        env=env,
        check=True,
        capture_output=True,
        text=True,
        timeout=120,
    ).stdout.splitlines()
    skip_checks, loaded = out[-2], out[-1]
    assert skip_checks == "1"  # the system checks' result was thrown away; they loaded the URLconf
    assert loaded == ""  # the Daraja client's HTTP and crypto libraries load on first use


# A worker built as `celery worker -Q <queue>` builds it (worker_init is sent before the pool forks);
# prints which of the default worker's preloads were loaded before and after.
PRELOAD = """
import sys
from celeryconf import app
app.loader.import_default_modules()
from backoffice.tasks import DEFAULT_WORKER_PRELOAD
print(" ".join(m for m in DEFAULT_WORKER_PRELOAD if m in sys.modules))
app.WorkController(queues=[sys.argv[1]], pool_cls="solo", hostname=f"{sys.argv[1]}@test")
print(" ".join(m for m in DEFAULT_WORKER_PRELOAD if m in sys.modules))
"""


def _preloaded(queue: str) -> tuple[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in ("CELERY_SKIP_CHECKS", "DJANGO_SETTINGS_MODULE")}
    out = subprocess.run(
        [sys.executable, "-c", PRELOAD, queue],
        cwd=PROJECT_ROOT,
        env=env,
        check=True,
        capture_output=True,
        text=True,
        timeout=120,
    ).stdout.splitlines()
    return out[-2], out[-1]


def test_default_worker_imports_what_its_tasks_load_lazily_before_the_fork() -> None:
    from backoffice.tasks import DEFAULT_WORKER_PRELOAD

    before, after = _preloaded("default")
    assert before == ""  # not loaded by the start itself: the preload is what brings them in
    assert after == " ".join(DEFAULT_WORKER_PRELOAD)
    assert _preloaded("payments") == ("", "")  # other workers do not carry them

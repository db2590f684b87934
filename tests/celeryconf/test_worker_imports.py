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

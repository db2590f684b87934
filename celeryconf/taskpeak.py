"""Each task's peak memory, as the process that ran it saw it (Linux).

As a task starts, the process's peak RSS (VmHWM in /proc/self/status) is reset to its RSS of the
moment (5 written to /proc/self/clear_refs; the kernel walks no pages for that); as the task ends the
peak is read. That peak is what the task took its process to: the pages it shares with the worker's
main process count, as they do in the process's RSS. A 5-second sample misses a peak between two
readings; this cannot.

A peak at or above CELERY_TASK_PEAK_LOG_MB (MiB; default 90, under the 100 MB each worker process
must stay below: docs/worker-memory.md) is logged as a warning that names the task, so the log says
which task made a worker big. 0 logs every task's peak (a benchmark's soak reads them); empty turns
the reading off. The two /proc accesses cost ~40 us a task. Elsewhere than on Linux nothing is read.

The reset lowers getrusage's ru_maxrss too, which is what Celery compares with
`worker_max_memory_per_child` after each task: it now sees the peak since the task started rather
than since the process did. The decision is the same - a process is replaced after the task that
took it past the limit - except that a peak reached between two tasks is not counted.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import Any

from celery import signals

logger = logging.getLogger("celeryconf.taskpeak")

MIB = 1024 * 1024
DEFAULT_LOG_MIB = 90.0
CLEAR_REFS = Path("/proc/self/clear_refs")
STATUS = Path("/proc/self/status")


def log_threshold_mib(environ: Any = os.environ) -> float | None:
    """CELERY_TASK_PEAK_LOG_MB: None (off) when set empty, else the MiB from which a peak is logged."""
    raw = environ.get("CELERY_TASK_PEAK_LOG_MB")
    if raw is None:
        return DEFAULT_LOG_MIB
    if not raw.strip():
        return None
    value = float(raw)
    if value < 0:
        raise ValueError(f"CELERY_TASK_PEAK_LOG_MB must be 0 or more (MiB), not {raw!r}")
    return value


def peak_reset() -> bool:
    """Reset this process's peak RSS to its current RSS. False where the kernel offers no such thing."""
    try:
        with CLEAR_REFS.open("w") as out:
            out.write("5")
    except OSError:
        return False
    return True


def peak_bytes() -> int | None:
    """This process's peak RSS (VmHWM) in bytes, None where /proc does not say."""
    try:
        with STATUS.open("rb") as status:
            for line in status:
                if line.startswith(b"VmHWM:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        return None
    return None


_THRESHOLD_MIB = log_threshold_mib()
_armed = False
_label: str | None = None


def task_label(label: str) -> None:
    """What the running task is doing, for its peak's log line: a task that runs many kinds of work
    (jobs.run runs every job kind) names the kind, so the line says which one took the memory."""
    global _label
    _label = label


@signals.task_prerun.connect
def _task_started(**_: Any) -> None:
    global _armed, _label
    _label = None
    _armed = _THRESHOLD_MIB is not None and peak_reset()


@signals.task_postrun.connect
def _task_ended(task_id: str | None = None, task: Any = None, state: str | None = None, **_: Any) -> None:
    global _armed
    if not _armed or _THRESHOLD_MIB is None:
        return
    _armed = False
    peak = peak_bytes()
    if peak is None:
        return
    mib = peak / MIB
    if mib >= _THRESHOLD_MIB:
        logger.warning(
            "task peak: %s[%s]%s %s took process %d to %.1f MiB peak RSS (CELERY_TASK_PEAK_LOG_MB %g)",
            getattr(task, "name", "?"),
            task_id,
            f" ({_label})" if _label else "",
            state,
            os.getpid(),
            mib,
            _THRESHOLD_MIB,
        )

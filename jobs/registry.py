"""The job kinds: a function registered with `@job_kind(...)` receives a `JobContext`, reads its
parameters, reports progress and saves a result file. Handlers must be idempotent: with late
acknowledgements, a job whose worker died is delivered again and runs from the start (its attempts
count goes up; after `max_attempts` it fails).
"""

from __future__ import annotations

import datetime as dt
import importlib
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from django.conf import settings
from django.core.files import File
from django.core.files.base import ContentFile
from django.utils import timezone

from celeryconf.config import QUEUE_REPORTS, QUEUES
from jobs.models import Job


class JobError(Exception):
    """A job cannot be launched or retried as asked."""


class JobCancelled(Exception):  # noqa: N818 - the name reads as the outcome it reports
    """Raised inside a handler (by JobContext.progress/rows) when someone cancelled its job."""


class JobFailed(Exception):  # noqa: N818 - the name reads as the outcome it reports
    """Raised by a handler to fail its job with a message meant for the person who launched it."""


@dataclass(frozen=True)
class JobKind:
    key: str
    label: str
    handler: Callable[[JobContext], None]
    queue: str = QUEUE_REPORTS
    # Exceptions worth another try (network, lock timeouts); anything else fails at once.
    retry_on: tuple[type[BaseException], ...] = field(default=())
    max_attempts: int = 3
    # The right needed to read what the job made ("app.codename"), or a function of the job giving it
    # (an export needs the exported model's view right). Checked again when its page or file is opened,
    # so a person who lost the right loses the files with it. None: the job's page shows no data.
    permission: str | Callable[[Job], str | None] | None = None


class KindRegistry(dict[str, JobKind]):
    """The job kinds by key. A kind whose module is heavy (ReportLab for the PDFs) is declared with
    `job_kinds_lazy` and its module imported the first time the kind is looked up, so a Celery
    process that never draws a PDF never loads ReportLab (docs/worker-memory.md)."""

    def __init__(self) -> None:
        super().__init__()
        self.lazy: dict[str, str] = {}

    def _load(self, key: object) -> None:
        module = self.lazy.get(key) if isinstance(key, str) else None
        if module is not None and not dict.__contains__(self, key):
            importlib.import_module(module)

    def load_all(self) -> None:
        for module in sorted(set(self.lazy.values())):
            importlib.import_module(module)

    def __missing__(self, key: str) -> JobKind:
        self._load(key)
        if dict.__contains__(self, key):
            return dict.__getitem__(self, key)
        raise KeyError(key)

    def __contains__(self, key: object) -> bool:
        self._load(key)
        return dict.__contains__(self, key)

    def get(self, key: str, default: Any = None) -> Any:  # type: ignore[override]
        self._load(key)
        return dict.get(self, key, default)

    def items(self) -> Any:
        self.load_all()
        return dict.items(self)


REGISTRY = KindRegistry()


def job_kinds_lazy(module: str, *keys: str) -> None:
    """Declare that importing `module` registers the kinds `keys` (imported on first lookup).
    tests/jobs/test_registry.py checks that each module registers exactly what it declares."""
    for key in keys:
        REGISTRY.lazy[key] = module


def job_kind(
    key: str,
    *,
    label: str,
    queue: str = QUEUE_REPORTS,
    retry_on: tuple[type[BaseException], ...] = (),
    max_attempts: int = 3,
    permission: str | Callable[[Job], str | None] | None = None,
) -> Callable[[Callable[[JobContext], None]], Callable[[JobContext], None]]:
    """Register a job handler under `key` (stable: it is stored in Job rows)."""
    if queue not in QUEUES:
        raise ValueError(f"unknown queue {queue!r}")

    def register(handler: Callable[[JobContext], None]) -> Callable[[JobContext], None]:
        if dict.__contains__(REGISTRY, key) and dict.__getitem__(REGISTRY, key).handler is not handler:
            raise ValueError(f"job kind {key!r} registered twice")
        REGISTRY[key] = JobKind(key, label, handler, queue, retry_on, max_attempts, permission)
        return handler

    return register


def kind_permission(job: Job) -> str | None:
    """The right needed to read `job`'s result (see JobKind.permission); None when the kind asks none."""
    kind = REGISTRY.get(job.kind)
    if kind is None or kind.permission is None:
        return None
    return kind.permission(job) if callable(kind.permission) else kind.permission


def kind_label(key: str) -> str:
    kind = REGISTRY.get(key)
    return kind.label if kind else key


class JobContext:
    """What a handler sees: its job's parameters, progress reporting and the result file.

    Every progress report is one UPDATE that also reads whether the job was cancelled: a handler
    that reports progress regularly (every chunk of rows, every page) stops soon after "cancel",
    with JobCancelled, and the runner marks the job cancelled. Nothing else needs checking.
    """

    def __init__(self, job: Job) -> None:
        self.job = job
        self.last_message = ""

    @property
    def params(self) -> dict[str, Any]:
        return dict(self.job.params)

    def launcher(self) -> Any:
        """The user who launched the job, read afresh (his rights may have changed since); None if
        nobody did (a schedule) or he was deleted."""
        from django.contrib.auth import get_user_model

        if not self.job.requested_by_id:
            return None
        return get_user_model().objects.filter(pk=self.job.requested_by_id).first()

    def progress(self, percent: int, message: str = "") -> None:
        """Record progress (0-100) where the admin shows it; committed at once. Raises JobCancelled."""
        self._report(progress=max(0, min(100, int(percent))), message=message)

    def rows(self, done: int, total: int, message: str = "") -> None:
        """Record `done` of `total` rows (customers, pages...); the percentage follows. Raises JobCancelled."""
        done, total = max(0, int(done)), max(0, int(total))
        percent = 100 if total == 0 else min(100, done * 100 // total)
        self._report(
            progress=percent, message=message or f"{done:,} of {total:,} rows", rows_done=done, rows_total=total
        )

    def _report(self, *, message: str, **fields: Any) -> None:
        self.last_message = message
        # One statement: the row is only updated while nobody asked to cancel it.
        updated = Job.objects.filter(pk=self.job.pk, cancel_requested_at__isnull=True).update(
            message=message[:255], updated_at=timezone.now(), **fields
        )
        if not updated:
            raise JobCancelled("Cancelled while running.")

    def _expires_at(self) -> dt.datetime:
        return timezone.now() + dt.timedelta(days=settings.JOB_FILES_KEEP_DAYS)

    def save_result(self, filename: str, content: bytes) -> None:
        """Keep `content` as the job's result file (replacing an earlier attempt's)."""
        self._store(filename, ContentFile(content), len(content))

    def save_result_path(self, filename: str, path: Path | str) -> None:
        """Keep the file at `path` (written by the handler, e.g. a streamed spreadsheet) without reading it whole."""
        with open(path, "rb") as handle:
            self._store(filename, File(handle), Path(path).stat().st_size)

    def _store(self, filename: str, content: File, size: int) -> None:  # type: ignore[type-arg]
        if self.job.result_file:
            self.job.result_file.delete(save=False)
        self.job.result_file.save(filename, content, save=False)
        Job.objects.filter(pk=self.job.pk).update(
            result_file=self.job.result_file.name, result_size=size, expires_at=self._expires_at()
        )

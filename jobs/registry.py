"""The job kinds: a function registered with `@job_kind(...)` receives a `JobContext`, reads its
parameters, reports progress and saves a result file. Handlers must be idempotent: with late
acknowledgements, a job whose worker died is delivered again and runs from the start (its attempts
count goes up; after `max_attempts` it fails).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from django.core.files.base import ContentFile
from django.utils import timezone

from celeryconf.config import QUEUE_REPORTS, QUEUES
from jobs.models import Job


class JobError(Exception):
    """A job cannot be launched or retried as asked."""


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


REGISTRY: dict[str, JobKind] = {}


def job_kind(
    key: str,
    *,
    label: str,
    queue: str = QUEUE_REPORTS,
    retry_on: tuple[type[BaseException], ...] = (),
    max_attempts: int = 3,
) -> Callable[[Callable[[JobContext], None]], Callable[[JobContext], None]]:
    """Register a job handler under `key` (stable: it is stored in Job rows)."""
    if queue not in QUEUES:
        raise ValueError(f"unknown queue {queue!r}")

    def register(handler: Callable[[JobContext], None]) -> Callable[[JobContext], None]:
        if key in REGISTRY and REGISTRY[key].handler is not handler:
            raise ValueError(f"job kind {key!r} registered twice")
        REGISTRY[key] = JobKind(key, label, handler, queue, retry_on, max_attempts)
        return handler

    return register


def kind_label(key: str) -> str:
    kind = REGISTRY.get(key)
    return kind.label if kind else key


class JobContext:
    """What a handler sees: its job's parameters, progress reporting and the result file."""

    def __init__(self, job: Job) -> None:
        self.job = job
        self.last_message = ""

    @property
    def params(self) -> dict[str, Any]:
        return dict(self.job.params)

    def progress(self, percent: int, message: str = "") -> None:
        """Record progress (0-100) where the admin shows it; committed at once."""
        percent = max(0, min(100, int(percent)))
        self.last_message = message
        Job.objects.filter(pk=self.job.pk).update(progress=percent, message=message[:255], updated_at=timezone.now())

    def save_result(self, filename: str, content: bytes) -> None:
        if self.job.result_file:
            self.job.result_file.delete(save=False)
        self.job.result_file.save(filename, ContentFile(content), save=False)
        Job.objects.filter(pk=self.job.pk).update(result_file=self.job.result_file.name)

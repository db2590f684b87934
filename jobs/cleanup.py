"""Retention of job result files: a file is kept JOB_FILES_KEEP_DAYS days (Job.expires_at), then
deleted by the daily `jobs.cleanup_files` task; the row stays, with a message saying so.

Files under MEDIA_ROOT/jobs that no row points to (a worker killed between writing a file and
recording it, a row deleted by hand) are deleted once they are a day old. Running it twice, or
alongside a job saving its result, is harmless.
"""

from __future__ import annotations

import datetime as dt
import logging
import posixpath
from collections.abc import Callable, Iterator
from dataclasses import dataclass

from django.core.files.storage import Storage
from django.db.models import Q
from django.utils import timezone

from jobs.models import Job

logger = logging.getLogger(__name__)

# Where result files live in the storage (Job.result_file's upload_to starts with it).
JOBS_DIR = "jobs"
ORPHAN_MIN_AGE = dt.timedelta(days=1)
BATCH = 500


@dataclass(frozen=True)
class CleanupResult:
    expired: int
    orphans: int


def _storage() -> Storage:
    return Job._meta.get_field("result_file").storage  # type: ignore[attr-defined,no-any-return]


def _kept_days(job: Job) -> int:
    if job.expires_at and job.finished_at:
        return max(1, round((job.expires_at - job.finished_at).total_seconds() / 86400))
    from django.conf import settings

    return int(settings.JOB_FILES_KEEP_DAYS)


def job_files_expire(*, now: dt.datetime | None = None) -> int:
    """Delete the result files whose `expires_at` has passed; clear the row's file fields. Returns how many."""
    now = now or timezone.now()
    storage = _storage()
    done = 0
    expired = Job.objects.filter(expires_at__lte=now).exclude(result_file="").order_by("pk")
    for job in expired.only("pk", "result_file", "expires_at", "finished_at").iterator(chunk_size=BATCH):
        name = job.result_file.name
        days = _kept_days(job)
        # Only if the row still points to that file (a job run again meanwhile has a new one).
        cleared = Job.objects.filter(pk=job.pk, result_file=name, expires_at__lte=now).update(
            result_file="",
            result_size=None,
            expires_at=None,
            message=f"Result file deleted after {days} day{'s' if days != 1 else ''}",
            updated_at=now,
        )
        if cleared:
            storage.delete(name)  # no error for a file already gone
            done += 1
    return done


def _walk(storage: Storage, directory: str) -> Iterator[str]:
    try:
        dirs, files = storage.listdir(directory)
    except FileNotFoundError:
        return
    for name in files:
        yield posixpath.join(directory, name)
    for sub in dirs:
        yield from _walk(storage, posixpath.join(directory, sub))


def orphan_files_delete(
    *, storage: Storage, directory: str, referenced: Callable[[list[str]], set[str]], now: dt.datetime
) -> int:
    """Delete the files under `directory` older than ORPHAN_MIN_AGE that no row points to
    (`referenced(names)` gives those of `names` a row points to), in batches. Returns how many. The age
    spares a file whose row is still being written (its transaction not committed yet)."""
    deleted = 0
    candidates = [name for name in _walk(storage, directory) if storage.get_modified_time(name) <= now - ORPHAN_MIN_AGE]
    for start in range(0, len(candidates), BATCH):
        batch = candidates[start : start + BATCH]
        kept = referenced(batch)
        for name in batch:
            if name not in kept:
                storage.delete(name)
                deleted += 1
    return deleted


def job_files_delete_orphans(*, now: dt.datetime | None = None) -> int:
    """Delete files under jobs/ older than a day that no Job row points to. Returns how many."""
    return orphan_files_delete(
        storage=_storage(),
        directory=JOBS_DIR,
        referenced=lambda names: set(
            Job.objects.filter(Q(result_file__in=names)).values_list("result_file", flat=True)
        ),
        now=now or timezone.now(),
    )


def job_files_cleanup(*, now: dt.datetime | None = None) -> CleanupResult:
    """The daily clean-up: expired result files, then orphans."""
    result = CleanupResult(expired=job_files_expire(now=now), orphans=job_files_delete_orphans(now=now))
    logger.info("job files: %s expired, %s orphans deleted", result.expired, result.orphans)
    return result

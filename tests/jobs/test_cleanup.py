"""Retention: result files past expires_at are deleted (row kept, with a message), orphan files
older than a day too; idempotent; scheduled daily on beat and run by the default worker."""

from __future__ import annotations

import datetime as dt
import os
import time
from pathlib import Path
from typing import Any

import pytest
import redis
from django.core.files.base import ContentFile
from django.utils import timezone
from django_celery_beat.models import PeriodicTask

from celeryconf.app import app
from jobs.cleanup import job_files_cleanup
from jobs.models import Job, JobState
from operations.jobs import EXPORT_BUSINESSES
from tests.celery_support import WorkerProcess, wait_for, worker_env
from tests.migration_support import data_migration_apply

pytestmark = pytest.mark.django_db(transaction=True)

SCHEDULE_MIGRATION = ("jobs", "0004_cleanup_schedule")


@pytest.fixture
def media_root(settings: Any, tmp_path: Path) -> Path:
    settings.MEDIA_ROOT = tmp_path / "media"
    return Path(settings.MEDIA_ROOT)


def with_file(name: str, *, finished_days_ago: float, keep_days: int = 7) -> Job:
    finished = timezone.now() - dt.timedelta(days=finished_days_ago)
    job = Job.objects.create(
        kind=EXPORT_BUSINESSES, state=JobState.SUCCEEDED, message="Done: 3 rows", finished_at=finished
    )
    job.result_file.save(name, ContentFile(b"data"), save=False)
    job.result_size = 4
    job.expires_at = finished + dt.timedelta(days=keep_days)
    job.save()
    return job


def orphan(media_root: Path, relative: str, age_hours: float) -> Path:
    path = media_root / relative
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(b"left behind")
    when = time.time() - age_hours * 3600
    os.utime(path, (when, when))
    return path


def test_expired_files_and_old_orphans_are_deleted_and_rows_kept(media_root: Path) -> None:
    expired = with_file("old.xlsx", finished_days_ago=8)
    fresh = with_file("new.xlsx", finished_days_ago=2)
    expired_path, fresh_path = media_root / expired.result_file.name, media_root / fresh.result_file.name
    old_orphan = orphan(media_root, "jobs/2026/01/killed-worker.xlsx", age_hours=30)
    young_orphan = orphan(media_root, "jobs/2026/11/being-written.xlsx", age_hours=2)
    not_ours = orphan(media_root, "products/photo.jpg", age_hours=100)
    os.utime(fresh_path, (time.time() - 5 * 86400, time.time() - 5 * 86400))  # old, but a row points to it

    result = job_files_cleanup()
    assert (result.expired, result.orphans) == (1, 1)
    assert not expired_path.exists() and not old_orphan.exists()
    assert fresh_path.exists() and young_orphan.exists() and not_ours.exists()
    expired.refresh_from_db()
    assert expired.result_file.name == "" and expired.result_size is None and expired.expires_at is None
    assert expired.message == "Result file deleted after 7 days" and expired.state == JobState.SUCCEEDED
    fresh.refresh_from_db()
    assert fresh.result_file.name and fresh.expires_at is not None

    again = job_files_cleanup()  # idempotent
    assert (again.expired, again.orphans) == (0, 0)
    assert fresh_path.exists() and young_orphan.exists()


def test_a_file_already_gone_still_clears_the_row(media_root: Path) -> None:
    job = with_file("vanished.xlsx", finished_days_ago=10, keep_days=3)
    (media_root / job.result_file.name).unlink()
    assert job_files_cleanup().expired == 1
    job.refresh_from_db()
    assert job.result_file.name == "" and job.message == "Result file deleted after 3 days"


def test_nothing_to_do_without_a_jobs_directory(media_root: Path) -> None:
    assert not (media_root / "jobs").exists()
    result = job_files_cleanup()
    assert (result.expired, result.orphans) == (0, 0)


def apply_schedule_migration() -> None:
    data_migration_apply(SCHEDULE_MIGRATION)


def test_the_clean_up_is_scheduled_daily_on_the_default_queue() -> None:
    apply_schedule_migration()
    apply_schedule_migration()  # safe to run twice
    task = PeriodicTask.objects.get(task="jobs.cleanup_files")
    assert task.enabled and task.queue == "default" and task.interval is None
    crontab = task.crontab
    assert (crontab.minute, crontab.hour, crontab.day_of_month, crontab.month_of_year, crontab.day_of_week) == (
        "30",
        "3",
        "*",
        "*",
        "*",
    )
    assert str(crontab.timezone) == "Africa/Nairobi"
    app.loader.import_default_modules()
    assert "jobs.cleanup_files" in app.tasks


@pytest.mark.worker
def test_a_default_worker_runs_the_clean_up(clean_broker: redis.Redis, media_root: Path) -> None:
    expired = with_file("old.xlsx", finished_days_ago=9)
    path = media_root / expired.result_file.name
    worker = WorkerProcess("default", queues="default", env=worker_env(MEDIA_ROOT=str(media_root))).start()
    try:
        app.send_task("jobs.cleanup_files", queue="default", routing_key="default")
        wait_for(lambda: not path.exists(), 20, "the worker to delete the expired file")
        wait_for(lambda: Job.objects.filter(pk=expired.pk, result_file="").exists(), 10, "the row to be cleared")
    finally:
        worker.stop()

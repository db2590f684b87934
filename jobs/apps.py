from typing import Any

from django.apps import AppConfig


class JobsConfig(AppConfig):
    name = "jobs"
    verbose_name = "Jobs"

    def ready(self) -> None:
        # Task events (jobs/taskevents.py): handlers connected when a worker starts, i.e. only in
        # worker processes. Celery sets Django up before it sends worker_init (celery/worker/worker.py).
        from celery import signals

        signals.worker_init.connect(_connect_task_events, dispatch_uid="jobs.taskevents.connect", weak=False)

        # "Export to Excel" of a changelist: imported by the admin in the web process, on first use in a
        # Celery process (which installs the admin without autodiscovery).
        from jobs.registry import job_kinds_lazy

        job_kinds_lazy("jobs.exports", "jobs.changelist_xlsx")


def _connect_task_events(**kwargs: Any) -> None:
    from jobs import taskevents

    taskevents.connect(**kwargs)

from django.apps import AppConfig


class JobsConfig(AppConfig):
    name = "jobs"
    verbose_name = "Jobs"

    def ready(self) -> None:
        # "Export to Excel" of a changelist: imported by the admin in the web process, on first use in a
        # Celery process (which installs the admin without autodiscovery).
        from jobs.registry import job_kinds_lazy

        job_kinds_lazy("jobs.exports", "jobs.changelist_xlsx")

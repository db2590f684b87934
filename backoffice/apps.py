from django.apps import AppConfig


class BackofficeConfig(AppConfig):
    """The project package is also an app, for its templates, static files and admin registrations
    of third-party models (users, groups, schedules) re-themed through Unfold."""

    name = "backoffice"
    verbose_name = "Back office"

    def ready(self) -> None:
        # Each new PostgreSQL connection counts only the statements psycopg can prepare (backoffice/db.py).
        from django.db.backends.signals import connection_created

        from backoffice.db import prepared_cache_server_bound_only

        connection_created.connect(prepared_cache_server_bound_only, dispatch_uid="backoffice.db.prepared_cache")

        # The daily summary's job kind: its module (ReportLab) is imported when a job of it first runs
        # (or a page lists the kinds); the web processes, which import the page, do not load it.
        from jobs.registry import job_kinds_lazy

        job_kinds_lazy("backoffice.daily_summary_pdf", "backoffice.daily_summary")

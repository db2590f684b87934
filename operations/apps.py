from django.apps import AppConfig


class OperationsConfig(AppConfig):
    name = "operations"
    verbose_name = "Operations"

    def ready(self) -> None:
        # Job kinds register themselves on import, in the web process and in workers alike.
        from jobs.registry import job_kinds_lazy
        from operations import jobs  # noqa: F401

        # The customer statements draw PDFs (ReportLab): imported when such a job first runs.
        job_kinds_lazy("operations.reports", "operations.customer_statements")

from django.apps import AppConfig


class AccountsConfig(AppConfig):
    name = "accounts"
    verbose_name = "Ledger"

    def ready(self) -> None:
        # The statement PDF job kind: its module (ReportLab) is imported when a job of it first runs.
        from jobs.registry import job_kinds_lazy

        job_kinds_lazy("accounts.reports", "accounts.statement_pdf")

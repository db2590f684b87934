from django.apps import AppConfig


class IntegrationsConfig(AppConfig):
    name = "integrations"
    verbose_name = "Integrations"

    def ready(self) -> None:
        # Celery's autodiscovery looks for integrations.tasks; the tasks live with their integration.
        # The reconciliation job kind registers itself with jobs.registry on import.
        from integrations.mpesa import reconciliation, tasks  # noqa: F401

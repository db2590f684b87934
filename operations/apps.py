from django.apps import AppConfig


class OperationsConfig(AppConfig):
    name = "operations"
    verbose_name = "Operations"

    def ready(self) -> None:
        # Job kinds register themselves on import, in the web process and in workers alike.
        from operations import jobs, reports  # noqa: F401

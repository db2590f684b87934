from django.apps import AppConfig


class OperationsConfig(AppConfig):
    name = "operations"
    verbose_name = "Businesses and operations"

    def ready(self) -> None:
        # Job kinds register themselves on import, in the web process and in workers alike.
        from operations import jobs  # noqa: F401
        from operations.payments import register

        # Sale numbers and laundry tags as M-Pesa account references; matched payments recorded.
        register()

from django.apps import AppConfig


class BackofficeConfig(AppConfig):
    """The project package is also an app, for its templates, static files and admin registrations
    of third-party models (users, groups, schedules) re-themed through Unfold."""

    name = "backoffice"
    verbose_name = "Back office"

    def ready(self) -> None:
        # The daily summary's job kind registers itself on import, in the web process and in workers.
        from backoffice import daily_summary  # noqa: F401

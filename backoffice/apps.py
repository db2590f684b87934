from django.apps import AppConfig


class BackofficeConfig(AppConfig):
    """The project package is also an app, for its templates, static files and admin registrations
    of third-party models (users, groups, schedules) re-themed through Unfold."""

    name = "backoffice"
    verbose_name = "Back office"

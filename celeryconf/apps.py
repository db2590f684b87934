from django.apps import AppConfig


class CeleryConfConfig(AppConfig):
    """The Celery app and its configuration. No models any more: its migrations stay for the history
    of the Job table, which the jobs app owns since jobs/migrations/0001_initial.py."""

    name = "celeryconf"
    verbose_name = "Celery"

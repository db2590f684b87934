from types import ModuleType

from django.apps import AppConfig
from django.conf import settings


class CeleryConfConfig(AppConfig):
    """The Celery app and its configuration. No models any more: its migrations stay for the history
    of the Job table, which the jobs app owns since jobs/migrations/0001_initial.py."""

    name = "celeryconf"
    verbose_name = "Celery"

    def __init__(self, app_name: str, app_module: ModuleType | None) -> None:
        super().__init__(app_name, app_module)
        # Before any model class is defined (Django creates every app config first): django-celery-beat's
        # crontab model then builds its time-zone choices for the project's zones only (celeryconf/footprint.py).
        if settings.CELERY_PROCESS:
            from celeryconf.footprint import crontab_time_zones_trim

            crontab_time_zones_trim()

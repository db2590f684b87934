from django.apps import AppConfig


class CeleryConfConfig(AppConfig):
    name = "celeryconf"
    verbose_name = "Jobs and scheduling"

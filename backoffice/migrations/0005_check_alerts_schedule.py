"""The alert check (backoffice.check_alerts) every minute in django-celery-beat, editable in the admin.

It expires after 50 s: a check not started by then (the default worker was down) is dropped, so a
worker coming back runs one check, not one per minute it missed.
"""

from django.db import migrations

NAME = "Alerts: check the alert rules"
TASK = "backoffice.check_alerts"


def create(apps, schema_editor):
    IntervalSchedule = apps.get_model("django_celery_beat", "IntervalSchedule")
    PeriodicTask = apps.get_model("django_celery_beat", "PeriodicTask")
    interval, _ = IntervalSchedule.objects.get_or_create(every=60, period="seconds")
    PeriodicTask.objects.update_or_create(
        name=NAME,
        defaults={
            "task": TASK,
            "interval": interval,
            "crontab": None,
            "enabled": True,
            "queue": "default",
            "expire_seconds": 50,
        },
    )


def remove(apps, schema_editor):
    PeriodicTask = apps.get_model("django_celery_beat", "PeriodicTask")
    PeriodicTask.objects.filter(name=NAME).delete()


class Migration(migrations.Migration):
    dependencies = [
        ("backoffice", "0004_alert_rules"),
        ("django_celery_beat", "0019_alter_periodictasks_options"),
    ]

    operations = [migrations.RunPython(create, remove)]

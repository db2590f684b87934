"""The end-of-day schedule in django-celery-beat (operations/tasks.py), editable in the admin.

Every five minutes, Nairobi time: a business's day is closed within five minutes of its closing
time (Business.closing_time, on the Business page), whatever time each business chose; a run
finding nothing due costs a few small queries per business.
"""

from django.db import migrations

NAME = "Operations: end-of-day closing of the days that ended"
TASK = "operations.close_due_days"


def create(apps, schema_editor):
    CrontabSchedule = apps.get_model("django_celery_beat", "CrontabSchedule")
    PeriodicTask = apps.get_model("django_celery_beat", "PeriodicTask")
    crontab, _ = CrontabSchedule.objects.get_or_create(
        minute="*/5", hour="*", day_of_week="*", day_of_month="*", month_of_year="*", timezone="Africa/Nairobi"
    )
    PeriodicTask.objects.update_or_create(
        name=NAME,
        defaults={
            "task": TASK,
            "crontab": crontab,
            "interval": None,
            "enabled": True,
            "queue": "default",
            "description": "Closes each business's day at its closing time, and any day missed before it, "
            "oldest first, without a cash count (docs/operations.md).",
        },
    )


def remove(apps, schema_editor):
    PeriodicTask = apps.get_model("django_celery_beat", "PeriodicTask")
    PeriodicTask.objects.filter(name=NAME).delete()


class Migration(migrations.Migration):
    dependencies = [
        ("operations", "0007_dayclosing_automatic"),
        ("django_celery_beat", "0019_alter_periodictasks_options"),
    ]

    operations = [migrations.RunPython(create, remove)]

"""The owner's emails and their schedules (docs/emails.md), editable in the admin.

- One OwnerEmail row per kind, with no recipients (the owner adds them): daily at 06:30, weekly on
  Monday at 07:00, Nairobi time. The rows themselves are the schedule.
- Beat runs `reports.owner_emails_due` every 5 minutes, which sends each kind's most recent
  scheduled email if the email log does not have it yet (so a missed one goes out late, never twice).
  Its messages expire after 5 minutes: those piled up while the reports worker was down are dropped,
  the next run does their work.
- Beat runs `backoffice.email_files_cleanup` daily at 03:40, after the job files' clean-up.

Safe to run twice: rows are created or brought back to these values by name.
"""

import datetime

from django.db import migrations

DUE_NAME = "Owner emails: send the daily and weekly emails that are due"
DUE_TASK = "reports.owner_emails_due"
CLEANUP_NAME = "Emails: delete old attachments"
CLEANUP_TASK = "backoffice.email_files_cleanup"


def create(apps, schema_editor):
    OwnerEmail = apps.get_model("backoffice", "OwnerEmail")
    IntervalSchedule = apps.get_model("django_celery_beat", "IntervalSchedule")
    CrontabSchedule = apps.get_model("django_celery_beat", "CrontabSchedule")
    PeriodicTask = apps.get_model("django_celery_beat", "PeriodicTask")

    OwnerEmail.objects.get_or_create(kind="daily", defaults={"send_time": datetime.time(6, 30), "weekday": 0})
    OwnerEmail.objects.get_or_create(kind="weekly", defaults={"send_time": datetime.time(7, 0), "weekday": 0})

    every_five, _ = IntervalSchedule.objects.get_or_create(every=5, period="minutes")
    PeriodicTask.objects.update_or_create(
        name=DUE_NAME,
        defaults={
            "task": DUE_TASK,
            "interval": every_five,
            "crontab": None,
            "enabled": True,
            "queue": "reports",
            "expire_seconds": 300,
        },
    )
    crontab, _ = CrontabSchedule.objects.get_or_create(
        minute="40", hour="3", day_of_week="*", day_of_month="*", month_of_year="*", timezone="Africa/Nairobi"
    )
    PeriodicTask.objects.update_or_create(
        name=CLEANUP_NAME,
        defaults={"task": CLEANUP_TASK, "crontab": crontab, "interval": None, "enabled": True, "queue": "default"},
    )


def remove(apps, schema_editor):
    PeriodicTask = apps.get_model("django_celery_beat", "PeriodicTask")
    PeriodicTask.objects.filter(name__in=[DUE_NAME, CLEANUP_NAME]).delete()


class Migration(migrations.Migration):
    dependencies = [
        ("backoffice", "0002_emaillog_html_resend"),
        ("django_celery_beat", "0019_alter_periodictasks_options"),
    ]

    operations = [migrations.RunPython(create, remove)]

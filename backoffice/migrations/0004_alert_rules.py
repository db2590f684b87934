"""The default alert rules (docs/monitoring.md), editable in the admin afterwards.

Each: (name, check, threshold, email every N minutes). An existing rule of the same name is left
as it is (the owner may have changed it); reversing deletes only rules still named as here.
"""

from decimal import Decimal

from django.db import migrations

RULES = [
    ("Queue backed up (more than 500 messages)", "queue_depth", Decimal("500"), 60),
    ("Queue slow (oldest message waits more than 5 minutes)", "queue_age", Decimal("300"), 60),
    ("Worker missing (a queue without a worker)", "worker_missing", Decimal("0"), 60),
    ("Worker process above 100 MB", "worker_memory", Decimal("100"), 360),
    ("Worker restarting in a loop (more than 5 restarts an hour)", "worker_restarts", Decimal("5"), 60),
    ("Host memory above 3.5 GB", "host_memory", Decimal("3584"), 360),
    ("Disk almost full (less than 10% free)", "disk_free", Decimal("10"), 360),
    ("Backup stale (none good in 26 hours)", "backup_stale", Decimal("26"), 720),
    ("Last backup not verified", "backup_unverified", Decimal("2"), 720),
    ("M-Pesa payments waiting for a person", "payments_waiting", Decimal("0"), 240),
    ("A periodic task failed in the last 24 hours", "periodic_task_failed", Decimal("0"), 720),
    ("Beat missing or not ticking (2 minutes)", "beat_missing", Decimal("120"), 60),
]


def create(apps, schema_editor):
    AlertRule = apps.get_model("backoffice", "AlertRule")
    for name, check, threshold, every in RULES:
        AlertRule.objects.get_or_create(
            name=name,
            defaults={"check_kind": check, "threshold": threshold, "email_every_minutes": every, "enabled": True},
        )


def remove(apps, schema_editor):
    AlertRule = apps.get_model("backoffice", "AlertRule")
    AlertRule.objects.filter(name__in=[name for name, _, _, _ in RULES]).delete()


class Migration(migrations.Migration):
    dependencies = [("backoffice", "0003_owner_email_schedules")]

    operations = [migrations.RunPython(create, remove)]

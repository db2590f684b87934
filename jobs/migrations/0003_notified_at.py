"""Job.notified_at: when the launcher was told his job finished. Jobs finished before this field
existed count as told, so nobody gets a burst of old notices on the first page after the upgrade."""

from django.conf import settings
from django.db import migrations, models


def mark_finished_jobs_told(apps, schema_editor):
    Job = apps.get_model("jobs", "Job")
    Job.objects.filter(state__in=("succeeded", "failed", "cancelled"), notified_at__isnull=True).update(
        notified_at=models.F("finished_at")
    )
    Job.objects.filter(state__in=("succeeded", "failed", "cancelled"), notified_at__isnull=True).update(
        notified_at=models.F("updated_at")
    )


class Migration(migrations.Migration):

    dependencies = [
        ('jobs', '0002_job_rows_cancel_result_size'),
        ('tenancy', '0001_initial'),
        migrations.swappable_dependency(settings.AUTH_USER_MODEL),
    ]

    operations = [
        migrations.AddField(
            model_name='job',
            name='notified_at',
            field=models.DateTimeField(blank=True, null=True),
        ),
        migrations.AddIndex(
            model_name='job',
            index=models.Index(condition=models.Q(('notified_at__isnull', True), ('state__in', ('succeeded', 'failed', 'cancelled'))), fields=['requested_by'], name='job_to_notify'),
        ),
        migrations.RunPython(mark_finished_jobs_told, migrations.RunPython.noop),
    ]

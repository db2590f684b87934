"""Job, moved here from celeryconf without touching the database.

The table keeps its name (celeryconf_job); celeryconf/migrations/0003 forgets the model there. The
content type is renamed from celeryconf to jobs, so the permissions on it (the staff group's
`view_job`, the owner's `change_job` for retries) and the admin's log entries keep working under
the new label. A new database gets it from post_migrate as usual.
"""

import django.db.models.deletion
from django.conf import settings
from django.db import migrations, models


def _relabel(apps, old, new):
    ContentType = apps.get_model("contenttypes", "ContentType")
    if not ContentType.objects.filter(app_label=new, model="job").exists():
        ContentType.objects.filter(app_label=old, model="job").update(app_label=new)


def content_type_to_jobs(apps, schema_editor):
    _relabel(apps, "celeryconf", "jobs")


def content_type_to_celeryconf(apps, schema_editor):
    _relabel(apps, "jobs", "celeryconf")


class Migration(migrations.Migration):

    initial = True

    dependencies = [
        ('celeryconf', '0002_business_in_tenancy'),
        ('contenttypes', '0002_remove_content_type_name'),
        ('tenancy', '0001_initial'),
        migrations.swappable_dependency(settings.AUTH_USER_MODEL),
    ]

    operations = [
        migrations.SeparateDatabaseAndState(
            state_operations=[
                migrations.CreateModel(
                    name='Job',
                    fields=[
                        ('id', models.BigAutoField(auto_created=True, primary_key=True, serialize=False, verbose_name='ID')),
                        ('kind', models.CharField(db_index=True, max_length=80)),
                        ('params', models.JSONField(blank=True, default=dict)),
                        ('state', models.CharField(choices=[('queued', 'Queued'), ('running', 'Running'), ('retrying', 'Retrying'), ('succeeded', 'Succeeded'), ('failed', 'Failed')], db_index=True, default='queued', max_length=12)),
                        ('progress', models.PositiveSmallIntegerField(default=0)),
                        ('message', models.CharField(blank=True, max_length=255)),
                        ('attempts', models.PositiveSmallIntegerField(default=0)),
                        ('celery_task_id', models.CharField(blank=True, max_length=64)),
                        ('error', models.TextField(blank=True)),
                        ('traceback', models.TextField(blank=True)),
                        ('result_file', models.FileField(blank=True, max_length=255, upload_to='jobs/%Y/%m/')),
                        ('created_at', models.DateTimeField(auto_now_add=True, db_index=True)),
                        ('started_at', models.DateTimeField(blank=True, null=True)),
                        ('finished_at', models.DateTimeField(blank=True, null=True)),
                        ('updated_at', models.DateTimeField(auto_now=True)),
                        ('business', models.ForeignKey(blank=True, help_text='Empty for work over every business (owner only).', null=True, on_delete=django.db.models.deletion.PROTECT, related_name='jobs', to='tenancy.business')),
                        ('requested_by', models.ForeignKey(blank=True, null=True, on_delete=django.db.models.deletion.SET_NULL, related_name='+', to=settings.AUTH_USER_MODEL)),
                    ],
                    options={
                        'db_table': 'celeryconf_job',
                        'ordering': ['-created_at', '-id'],
                        'indexes': [models.Index(fields=['business', 'state'], name='job_business_state')],
                        'constraints': [models.CheckConstraint(condition=models.Q(('progress__lte', 100)), name='job_progress_at_most_100')],
                    },
                ),
            ],
        ),
        migrations.RunPython(content_type_to_jobs, content_type_to_celeryconf),
    ]

"""Job moved to the jobs app (jobs/migrations/0001_initial.py): forgotten here in Django's state only;
the table celeryconf_job stays, now owned by jobs.Job."""

from django.db import migrations


class Migration(migrations.Migration):

    dependencies = [
        ('celeryconf', '0002_business_in_tenancy'),
        ('jobs', '0001_initial'),
    ]

    operations = [
        migrations.SeparateDatabaseAndState(
            state_operations=[
                migrations.DeleteModel(
                    name='Job',
                ),
            ],
        ),
    ]

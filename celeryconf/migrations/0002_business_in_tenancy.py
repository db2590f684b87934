"""Job.business now names tenancy.Business (same table, state only)."""

import django.db.models.deletion
from django.db import migrations, models


class Migration(migrations.Migration):

    dependencies = [
        ('celeryconf', '0001_initial'),
        ('tenancy', '0001_initial'),
    ]

    operations = [
        # The tables and their foreign keys stay as they are: only Django's state moves.
        migrations.SeparateDatabaseAndState(
            state_operations=[
                migrations.AlterField(
                    model_name='job',
                    name='business',
                    field=models.ForeignKey(blank=True, help_text='Empty for work over every business (owner only).', null=True, on_delete=django.db.models.deletion.PROTECT, related_name='jobs', to='tenancy.business'),
                ),
            ],
        ),
    ]

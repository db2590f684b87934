"""The ledger's foreign keys to Business now name tenancy.Business (same table, state only)."""

import django.db.models.deletion
from django.db import migrations, models


class Migration(migrations.Migration):

    dependencies = [
        ('accounts', '0005_anchors'),
        ('tenancy', '0001_initial'),
    ]

    operations = [
        # The tables and their foreign keys stay as they are: only Django's state moves.
        migrations.SeparateDatabaseAndState(
            state_operations=[
                migrations.AlterField(
                    model_name='account',
                    name='business',
                    field=models.ForeignKey(on_delete=django.db.models.deletion.CASCADE, related_name='ledger_accounts', to='tenancy.business'),
                ),
                migrations.AlterField(
                    model_name='accountdaytotal',
                    name='business',
                    field=models.ForeignKey(db_index=False, on_delete=django.db.models.deletion.PROTECT, related_name='+', to='tenancy.business'),
                ),
                migrations.AlterField(
                    model_name='books',
                    name='business',
                    field=models.OneToOneField(on_delete=django.db.models.deletion.CASCADE, primary_key=True, related_name='books', serialize=False, to='tenancy.business'),
                ),
                migrations.AlterField(
                    model_name='journalentry',
                    name='business',
                    field=models.ForeignKey(db_index=False, on_delete=django.db.models.deletion.PROTECT, related_name='journal_entries', to='tenancy.business'),
                ),
            ],
        ),
    ]

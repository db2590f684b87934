"""M-Pesa's foreign keys to Business now name tenancy.Business (same table, state only)."""

import django.db.models.deletion
from django.db import migrations, models


class Migration(migrations.Migration):

    dependencies = [
        ('integrations', '0007_permissions'),
        ('tenancy', '0001_initial'),
    ]

    operations = [
        # The tables and their foreign keys stay as they are: only Django's state moves.
        migrations.SeparateDatabaseAndState(
            state_operations=[
                migrations.AlterField(
                    model_name='payment',
                    name='business',
                    field=models.ForeignKey(on_delete=django.db.models.deletion.PROTECT, related_name='mpesa_payments', to='tenancy.business'),
                ),
                migrations.AlterField(
                    model_name='paymentrequest',
                    name='business',
                    field=models.ForeignKey(on_delete=django.db.models.deletion.PROTECT, related_name='payment_requests', to='tenancy.business'),
                ),
                migrations.AlterField(
                    model_name='reconciliationline',
                    name='business',
                    field=models.ForeignKey(on_delete=django.db.models.deletion.PROTECT, related_name='+', to='tenancy.business'),
                ),
                migrations.AlterField(
                    model_name='reconciliationrun',
                    name='business',
                    field=models.ForeignKey(on_delete=django.db.models.deletion.PROTECT, related_name='mpesa_reconciliations', to='tenancy.business'),
                ),
                migrations.AlterField(
                    model_name='reversal',
                    name='business',
                    field=models.ForeignKey(on_delete=django.db.models.deletion.PROTECT, related_name='mpesa_reversals', to='tenancy.business'),
                ),
                migrations.AlterField(
                    model_name='statusquery',
                    name='business',
                    field=models.ForeignKey(on_delete=django.db.models.deletion.PROTECT, related_name='mpesa_status_queries', to='tenancy.business'),
                ),
                migrations.AlterField(
                    model_name='till',
                    name='business',
                    field=models.ForeignKey(on_delete=django.db.models.deletion.PROTECT, related_name='tills', to='tenancy.business'),
                ),
            ],
        ),
    ]

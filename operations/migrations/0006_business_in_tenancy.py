"""Business and Membership moved to tenancy (same tables, state only); the foreign keys follow.

Runs after every other app's foreign keys were moved, so no state points to operations.Business
when it is deleted."""

import django.db.models.deletion
from django.db import migrations, models


class Migration(migrations.Migration):

    dependencies = [
        ('integrations', '0008_business_in_tenancy'),
        ('celeryconf', '0002_business_in_tenancy'),
        ('accounts', '0006_business_in_tenancy'),
        ('operations', '0005_money'),
        ('tenancy', '0001_initial'),
    ]

    operations = [
        # The tables and their foreign keys stay as they are: only Django's state moves.
        migrations.SeparateDatabaseAndState(
            state_operations=[
                migrations.AlterField(
                    model_name='productionbatch',
                    name='business',
                    field=models.ForeignKey(on_delete=django.db.models.deletion.PROTECT, related_name='+', to='tenancy.business'),
                ),
                migrations.AlterField(
                    model_name='purchase',
                    name='business',
                    field=models.ForeignKey(on_delete=django.db.models.deletion.PROTECT, related_name='+', to='tenancy.business'),
                ),
                migrations.AlterField(
                    model_name='supplierpayment',
                    name='business',
                    field=models.ForeignKey(on_delete=django.db.models.deletion.PROTECT, related_name='+', to='tenancy.business'),
                ),
                migrations.AlterField(
                    model_name='stockmovement',
                    name='business',
                    field=models.ForeignKey(db_index=False, on_delete=django.db.models.deletion.PROTECT, related_name='+', to='tenancy.business'),
                ),
                migrations.AlterField(
                    model_name='sale',
                    name='business',
                    field=models.ForeignKey(db_index=False, on_delete=django.db.models.deletion.PROTECT, related_name='sales', to='tenancy.business'),
                ),
                migrations.AlterField(
                    model_name='customertransaction',
                    name='business',
                    field=models.ForeignKey(db_index=False, on_delete=django.db.models.deletion.PROTECT, related_name='+', to='tenancy.business'),
                ),
                migrations.RemoveField(
                    model_name='membership',
                    name='business',
                ),
                migrations.AlterField(
                    model_name='customer',
                    name='business',
                    field=models.ForeignKey(on_delete=django.db.models.deletion.PROTECT, related_name='customers', to='tenancy.business'),
                ),
                migrations.AlterField(
                    model_name='stockcount',
                    name='business',
                    field=models.ForeignKey(on_delete=django.db.models.deletion.PROTECT, related_name='+', to='tenancy.business'),
                ),
                migrations.AlterField(
                    model_name='laundryorder',
                    name='business',
                    field=models.ForeignKey(on_delete=django.db.models.deletion.PROTECT, related_name='+', to='tenancy.business'),
                ),
                migrations.AlterField(
                    model_name='supplier',
                    name='business',
                    field=models.ForeignKey(on_delete=django.db.models.deletion.PROTECT, related_name='suppliers', to='tenancy.business'),
                ),
                migrations.AlterField(
                    model_name='stocklevel',
                    name='business',
                    field=models.ForeignKey(on_delete=django.db.models.deletion.PROTECT, related_name='+', to='tenancy.business'),
                ),
                migrations.AlterField(
                    model_name='item',
                    name='business',
                    field=models.ForeignKey(on_delete=django.db.models.deletion.PROTECT, related_name='items', to='tenancy.business'),
                ),
                migrations.AlterField(
                    model_name='openingstock',
                    name='business',
                    field=models.ForeignKey(on_delete=django.db.models.deletion.PROTECT, related_name='+', to='tenancy.business'),
                ),
                migrations.AlterField(
                    model_name='dayclosing',
                    name='business',
                    field=models.ForeignKey(on_delete=django.db.models.deletion.PROTECT, related_name='+', to='tenancy.business'),
                ),
                migrations.AlterField(
                    model_name='expense',
                    name='business',
                    field=models.ForeignKey(on_delete=django.db.models.deletion.PROTECT, related_name='+', to='tenancy.business'),
                ),
                migrations.RemoveField(
                    model_name='membership',
                    name='user',
                ),
                migrations.DeleteModel(
                    name='Business',
                ),
                migrations.DeleteModel(
                    name='Membership',
                ),
            ],
        ),
    ]

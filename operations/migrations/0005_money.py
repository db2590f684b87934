"""Customer transactions for overpayments (credit) and reversed payments; a sale's amount paid never
above its total.

The check is added NOT VALID: it holds for every row written from now on, and existing sales that
were overpaid before (if any) do not stop the migration. Find them with
`SELECT id FROM operations_sale WHERE amount_paid > total`, put the excess right (the customer's
credit), then `ALTER TABLE operations_sale VALIDATE CONSTRAINT sale_paid_within_total`.
"""

from django.conf import settings
from django.db import migrations, models


class Migration(migrations.Migration):

    dependencies = [
        ('accounts', '0003_line_entry_index'),
        ('operations', '0004_supplier_payments'),
        migrations.swappable_dependency(settings.AUTH_USER_MODEL),
    ]

    operations = [
        migrations.AlterField(
            model_name='customertransaction',
            name='kind',
            field=models.CharField(choices=[('sale', 'Sale on account'), ('payment', 'Payment'), ('refund', 'Refund / void'), ('laundry', 'Laundry order collected on account'), ('credit', 'Paid over what was owed (credit)'), ('reversal', 'Payment reversed')], max_length=10),
        ),
        migrations.SeparateDatabaseAndState(
            state_operations=[
                migrations.AddConstraint(
                    model_name='sale',
                    constraint=models.CheckConstraint(condition=models.Q(('amount_paid__lte', models.F('total')), models.Q(('amount_paid__gte', 0), ('amount_paid', models.F('total')), _connector='OR')), name='sale_paid_within_total'),
                ),
            ],
            database_operations=[
                migrations.RunSQL(
                    "ALTER TABLE operations_sale ADD CONSTRAINT sale_paid_within_total "
                    "CHECK (amount_paid <= total AND (amount_paid >= 0 OR amount_paid = total)) NOT VALID",
                    "ALTER TABLE operations_sale DROP CONSTRAINT sale_paid_within_total",
                ),
            ],
        ),
    ]

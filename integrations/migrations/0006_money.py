"""Payments split by what their reference owes: the amount still in suspense on the payment, and
one application row per posting that placed (part of) a payment (docs/mpesa.md, "Overpayments").

Existing payments get their rows from what they are: the receipt's posting (matched then, or left
in suspense) and, when allocated by hand, the allocation; reversed postings keep their reversal.
"""

import accounts.fields
import django.db.models.deletion
from django.conf import settings
from django.db import migrations, models


# At receipt: matched then (no allocation and a reference or customer) or in suspense.
_MATCHED_AT_RECEIPT = "p.allocation_entry_id IS NULL AND (p.reference_kind <> '' OR p.customer_id IS NOT NULL)"

BACKFILL_APPLICATIONS = f"""
INSERT INTO integrations_paymentapplication
    (payment_id, entry_id, credit_role, customer_id, reference_kind, reference_id, applied, credit, unallocated,
     reversal_entry_id, created_at)
SELECT p.id, p.entry_id, 'receivables',
       CASE WHEN {_MATCHED_AT_RECEIPT} THEN p.customer_id END,
       CASE WHEN {_MATCHED_AT_RECEIPT} THEN p.reference_kind ELSE '' END,
       CASE WHEN {_MATCHED_AT_RECEIPT} THEN p.reference_id END,
       CASE WHEN {_MATCHED_AT_RECEIPT} THEN p.amount ELSE 0 END,
       0,
       CASE WHEN {_MATCHED_AT_RECEIPT} THEN 0 ELSE p.amount END,
       (SELECT r.id FROM accounts_journalentry r WHERE r.reverses_id = p.entry_id),
       p.created_at
  FROM integrations_payment p;
INSERT INTO integrations_paymentapplication
    (payment_id, entry_id, credit_role, customer_id, reference_kind, reference_id, applied, credit, unallocated,
     reversal_entry_id, created_at)
SELECT p.id, p.allocation_entry_id,
       COALESCE((SELECT a.role FROM accounts_journalline l JOIN accounts_account a ON a.id = l.account_id
                  WHERE l.entry_id = p.allocation_entry_id AND l.credit > 0 ORDER BY l.id LIMIT 1), 'receivables'),
       p.customer_id, p.reference_kind, p.reference_id, p.amount, 0, 0,
       (SELECT r.id FROM accounts_journalentry r WHERE r.reverses_id = p.allocation_entry_id),
       COALESCE(p.allocated_at, p.created_at)
  FROM integrations_payment p
 WHERE p.allocation_entry_id IS NOT NULL;
"""


class Migration(migrations.Migration):

    dependencies = [
        ('accounts', '0003_line_entry_index'),
        ('integrations', '0005_inbox_hardening'),
        ('operations', '0004_supplier_payments'),
        migrations.swappable_dependency(settings.AUTH_USER_MODEL),
    ]

    operations = [
        migrations.CreateModel(
            name='PaymentApplication',
            fields=[
                ('id', models.BigAutoField(auto_created=True, primary_key=True, serialize=False, verbose_name='ID')),
                ('credit_role', models.CharField(default='receivables', max_length=40)),
                ('reference_kind', models.CharField(blank=True, default='', max_length=30)),
                ('reference_id', models.BigIntegerField(blank=True, null=True)),
                ('applied', accounts.fields.MoneyField(default=0)),
                ('credit', accounts.fields.MoneyField(default=0)),
                ('unallocated', accounts.fields.MoneyField(default=0)),
                ('created_at', models.DateTimeField(auto_now_add=True)),
            ],
            options={
                'ordering': ['id'],
            },
        ),
        migrations.AddField(
            model_name='payment',
            name='unallocated_amount',
            field=accounts.fields.MoneyField(default=0, editable=False),
        ),
        migrations.RunSQL(
            "UPDATE integrations_payment SET unallocated_amount = amount WHERE status = 'unallocated'",
            migrations.RunSQL.noop,
        ),
        migrations.AddConstraint(
            model_name='payment',
            constraint=models.CheckConstraint(condition=models.Q(('unallocated_amount__gte', 0), ('unallocated_amount__lte', models.F('amount'))), name='payment_unallocated_within_amount'),
        ),
        migrations.AddConstraint(
            model_name='payment',
            constraint=models.CheckConstraint(condition=models.Q(models.Q(('status', 'unallocated'), ('unallocated_amount__gt', 0)), models.Q(models.Q(('status', 'unallocated'), _negated=True), ('unallocated_amount', 0)), _connector='OR'), name='payment_unallocated_status'),
        ),
        migrations.AddField(
            model_name='paymentapplication',
            name='customer',
            field=models.ForeignKey(blank=True, null=True, on_delete=django.db.models.deletion.SET_NULL, related_name='+', to='operations.customer'),
        ),
        migrations.AddField(
            model_name='paymentapplication',
            name='entry',
            field=models.OneToOneField(on_delete=django.db.models.deletion.PROTECT, related_name='+', to='accounts.journalentry'),
        ),
        migrations.AddField(
            model_name='paymentapplication',
            name='payment',
            field=models.ForeignKey(on_delete=django.db.models.deletion.PROTECT, related_name='applications', to='integrations.payment'),
        ),
        migrations.AddField(
            model_name='paymentapplication',
            name='reversal_entry',
            field=models.OneToOneField(blank=True, null=True, on_delete=django.db.models.deletion.PROTECT, related_name='+', to='accounts.journalentry'),
        ),
        migrations.AddConstraint(
            model_name='paymentapplication',
            constraint=models.CheckConstraint(condition=models.Q(('applied__gte', 0), ('credit__gte', 0), ('unallocated__gte', 0)), name='paymentapplication_not_negative'),
        ),
            migrations.RunSQL(
            BACKFILL_APPLICATIONS,
            migrations.RunSQL.noop,
        ),
    ]

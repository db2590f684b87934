"""The payments task takes the payment callbacks waiting in the inbox, oldest first, through this
partial index (inbox.inbox_process_group). Built CONCURRENTLY: callbacks keep being stored meanwhile."""

from django.contrib.postgres.operations import AddIndexConcurrently
from django.db import migrations, models


class Migration(migrations.Migration):

    atomic = False

    dependencies = [
        ('integrations', '0008_business_in_tenancy'),
    ]

    operations = [
        AddIndexConcurrently(
            model_name='inboxmessage',
            index=models.Index(
                condition=models.Q(('kind__in', ['stk', 'c2b_confirmation']), ('state', 'received')),
                fields=['id'],
                name='inbox_payments_waiting_idx',
            ),
        ),
    ]

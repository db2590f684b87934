# The inbox keeps the traceback of a failed attempt and a SHA-256 of each body; the unique
# constraint moves from (kind, daraja_id) to (kind, daraja_id, body_sha256), so that another body
# for a known Daraja id is stored (and flagged) instead of dropped. Existing rows get their hash
# from PostgreSQL, computed exactly as services.body_sha256 does in Python.

from django.db import migrations, models


class Migration(migrations.Migration):

    dependencies = [
        ('integrations', '0004_recovery_recon'),
    ]

    operations = [
        migrations.AddField(
            model_name='inboxmessage',
            name='body_sha256',
            field=models.CharField(blank=True, default='', max_length=64),
        ),
        migrations.AddField(
            model_name='inboxmessage',
            name='traceback',
            field=models.TextField(blank=True, default=''),
        ),
        migrations.RunSQL(
            "UPDATE integrations_inboxmessage SET body_sha256 = encode(sha256(convert_to(body, 'UTF8')), 'hex') "
            "WHERE body_sha256 = ''",
            migrations.RunSQL.noop,
        ),
        migrations.AddConstraint(
            model_name='inboxmessage',
            constraint=models.UniqueConstraint(
                fields=('kind', 'daraja_id', 'body_sha256'), name='inbox_kind_daraja_id_body_uniq'
            ),
        ),
        migrations.RemoveConstraint(
            model_name='inboxmessage',
            name='inbox_kind_daraja_id_uniq',
        ),
    ]

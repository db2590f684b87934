"""The foreign keys the ledger's triggers already check at insert are dropped (db_constraint=False).

Lines -> entry, lines -> account, seal -> entry, entry -> business and entry -> reversed entry. Each
was a deferred check at commit (an event queued per row, then a lookup locking the referenced row
FOR KEY SHARE): 8 per posting of 3 lines. What they guaranteed still holds, checked at insert by the
triggers, with nothing referenced ever going away (docs/ledger.md, "References without foreign keys"):

- a line's entry exists and is visible (the line trigger refuses a line whose entry it cannot see);
  entries are never deleted nor truncated;
- a line's account exists, belongs to the entry's business, is active and a leaf (the line trigger);
  an account with lines has daily totals, whose foreign key to the account (kept) refuses its
  deletion, and daily totals are never deleted nor truncated;
- a seal's entry is the entry just posted (only the seal trigger writes seals);
- an entry's business has a books row (the entry trigger refuses one without), books holding an
  entry are never deleted nor truncated, and their foreign key to the business (kept) refuses the
  business's deletion;
- a reversed entry exists and belongs to the same business (the entry trigger).
"""

import django.db.models.deletion
from django.db import migrations, models


class Migration(migrations.Migration):
    dependencies = [("accounts", "0008_ledger_fast_path"), ("tenancy", "0002_business_closing_time")]

    operations = [
        migrations.AlterField(
            model_name="entryseal",
            name="entry",
            field=models.OneToOneField(
                db_constraint=False,
                on_delete=django.db.models.deletion.PROTECT,
                primary_key=True,
                related_name="seal",
                serialize=False,
                to="accounts.journalentry",
            ),
        ),
        migrations.AlterField(
            model_name="journalentry",
            name="business",
            field=models.ForeignKey(
                db_constraint=False,
                db_index=False,
                on_delete=django.db.models.deletion.PROTECT,
                related_name="journal_entries",
                to="tenancy.business",
            ),
        ),
        migrations.AlterField(
            model_name="journalentry",
            name="reverses",
            field=models.OneToOneField(
                blank=True,
                db_constraint=False,
                null=True,
                on_delete=django.db.models.deletion.PROTECT,
                related_name="reversed_by",
                to="accounts.journalentry",
            ),
        ),
        migrations.AlterField(
            model_name="journalline",
            name="account",
            field=models.ForeignKey(
                db_constraint=False,
                on_delete=django.db.models.deletion.PROTECT,
                related_name="lines",
                to="accounts.account",
            ),
        ),
        migrations.AlterField(
            model_name="journalline",
            name="entry",
            field=models.ForeignKey(
                db_constraint=False,
                db_index=False,
                on_delete=django.db.models.deletion.PROTECT,
                related_name="lines",
                to="accounts.journalentry",
            ),
        ),
    ]

"""Business and Membership, moved here from operations without touching the database.

The tables keep their names (operations_business, operations_membership): the models claim them
in Django's state only; operations/migrations/0006 forgets them there. The content types are
renamed from operations to tenancy, so the permissions hanging on them (`view_all_businesses`,
the staff group's `view_business`...) and the admin's log entries keep working under the new
label. A database that never had them (a new one) gets them from post_migrate as usual.
"""

import django.db.models.deletion
from django.conf import settings
from django.db import migrations, models


MOVED = ("business", "membership")


def _relabel(apps, old, new):
    ContentType = apps.get_model("contenttypes", "ContentType")
    for model in MOVED:
        if ContentType.objects.filter(app_label=new, model=model).exists():
            continue  # already there (created by post_migrate): nothing to carry over
        ContentType.objects.filter(app_label=old, model=model).update(app_label=new)


def content_types_to_tenancy(apps, schema_editor):
    _relabel(apps, "operations", "tenancy")


def content_types_to_operations(apps, schema_editor):
    _relabel(apps, "tenancy", "operations")


class Migration(migrations.Migration):

    initial = True

    dependencies = [
        migrations.swappable_dependency(settings.AUTH_USER_MODEL),
        ('contenttypes', '0002_remove_content_type_name'),
        ('operations', '0005_money'),
    ]

    operations = [
        migrations.SeparateDatabaseAndState(
            state_operations=[
                migrations.CreateModel(
                    name='Business',
                    fields=[
                        ('id', models.BigAutoField(auto_created=True, primary_key=True, serialize=False, verbose_name='ID')),
                        ('name', models.CharField(max_length=120, unique=True)),
                        ('kind', models.CharField(choices=[('water', 'Water packaging'), ('laundry', 'Laundry'), ('retail_lpg', 'Retail and LPG')], max_length=20)),
                        ('currency', models.CharField(default='KES', editable=False, max_length=3)),
                        ('timezone', models.CharField(default='Africa/Nairobi', editable=False, max_length=64)),
                        ('is_active', models.BooleanField(default=True)),
                        ('created_at', models.DateTimeField(auto_now_add=True)),
                    ],
                    options={
                        'verbose_name_plural': 'businesses',
                        'db_table': 'operations_business',
                        'ordering': ['name'],
                        'permissions': [('view_all_businesses', 'Can see and manage every business (owner)')],
                        'constraints': [models.CheckConstraint(condition=models.Q(('currency', 'KES')), name='business_currency_kes')],
                    },
                ),
                migrations.CreateModel(
                    name='Membership',
                    fields=[
                        ('id', models.BigAutoField(auto_created=True, primary_key=True, serialize=False, verbose_name='ID')),
                        ('role', models.CharField(choices=[('manager', 'Manager'), ('staff', 'Staff')], default='staff', max_length=20)),
                        ('created_at', models.DateTimeField(auto_now_add=True)),
                        ('business', models.ForeignKey(on_delete=django.db.models.deletion.CASCADE, related_name='memberships', to='tenancy.business')),
                        ('user', models.ForeignKey(on_delete=django.db.models.deletion.CASCADE, related_name='memberships', to=settings.AUTH_USER_MODEL)),
                    ],
                    options={
                        'db_table': 'operations_membership',
                        'ordering': ['business__name', 'user__username'],
                        'constraints': [models.UniqueConstraint(fields=('user', 'business'), name='membership_user_business_unique')],
                    },
                ),
            ],
        ),
        migrations.RunPython(content_types_to_tenancy, content_types_to_operations),
    ]

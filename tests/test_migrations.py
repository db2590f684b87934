"""Business and Membership moved from operations to tenancy, Job from celeryconf to jobs, on a
database that already has data.

The database is taken back to the migrations of the last release before the move (the old leaf
of each app), filled through the historical models as that release would have, then migrated
forward: the rows, their foreign keys, the permissions given on the old label and the admin's
log entries must all still be there under tenancy.
"""

from __future__ import annotations

import datetime as dt
from io import StringIO
from typing import Any

import pytest
from django.contrib.admin.models import ADDITION, LogEntry
from django.contrib.auth.models import User
from django.contrib.contenttypes.models import ContentType
from django.core.management import call_command
from django.db import connection
from django.db.migrations.executor import MigrationExecutor

from jobs.models import Job
from operations.models import Customer, Sale
from tenancy.models import Business, Membership
from tests.conftest import TEST_APP_ROLE

# The leaves before the move (main before tenancy existed).
OLD_LEAVES: list[tuple[str, str | None]] = [
    ("jobs", None),
    ("tenancy", None),
    ("operations", "0005_money"),
    ("accounts", "0005_anchors"),
    ("integrations", "0007_permissions"),
    ("celeryconf", "0001_initial"),
]


def _migrate(targets: list[tuple[str, str | None]]) -> Any:
    executor = MigrationExecutor(connection)
    executor.migrate(targets)
    executor.loader.build_graph()
    return executor


@pytest.mark.slow
@pytest.mark.usefixtures("table_owner")
def test_a_database_of_the_old_layout_keeps_its_businesses_rights_and_history() -> None:
    new_leaves = MigrationExecutor(connection).loader.graph.leaf_nodes()
    executor = _migrate(OLD_LEAVES)
    moved_apps = {app for app, _ in OLD_LEAVES}
    old_nodes = [n for n in OLD_LEAVES if n[1]] + [n for n in new_leaves if n[0] not in moved_apps]
    old = executor.loader.project_state(old_nodes).apps
    try:
        old_ct = old.get_model("contenttypes", "ContentType")
        ct = old_ct.objects.get(app_label="operations", model="business")
        assert not old_ct.objects.filter(app_label="tenancy").exists()
        business = old.get_model("operations", "Business").objects.create(name="Maji", kind="water")
        user = old.get_model("auth", "User").objects.create(username="partner", is_staff=True)
        old.get_model("operations", "Membership").objects.create(user=user, business=business, role="staff")
        user.user_permissions.add(
            old.get_model("auth", "Permission").objects.get(content_type=ct, codename="view_all_businesses")
        )
        customer = old.get_model("operations", "Customer").objects.create(business=business, name="Achieng")
        sale = old.get_model("operations", "Sale").objects.create(
            business=business, customer=customer, sale_date=dt.date(2026, 11, 1)
        )
        job_ct = old_ct.objects.get(app_label="celeryconf", model="job")
        permission = old.get_model("auth", "Permission")
        user.user_permissions.add(permission.objects.get(content_type=job_ct, codename="view_job"))
        job = old.get_model("celeryconf", "Job").objects.create(kind="operations.closing", business=business)
        old.get_model("admin", "LogEntry").objects.create(
            user=user, content_type=ct, object_id=str(business.pk), object_repr="Maji", action_flag=ADDITION
        )
    finally:
        _migrate(new_leaves)
        # The tables taken back and made again (jobs, tenancy) are new tables: as on a deploy
        # (migrate, then `db_roles grant`), the application role gets its rights on them again -
        # without it, later tests in this process that write them as that role are refused.
        call_command("db_roles", "grant", app_role=TEST_APP_ROLE, stdout=StringIO())
    ContentType.objects.clear_cache()

    moved = Business.objects.get(pk=business.pk)
    assert moved.name == "Maji"
    assert Membership.objects.get(business=moved).user.username == "partner"
    assert Customer.objects.get(pk=customer.pk).business == moved
    assert Sale.objects.get(pk=sale.pk).business == moved
    # The permission given on the old label answers to the new one; no stale operations rows remain.
    partner = User.objects.get(username="partner")
    assert partner.has_perm("tenancy.view_all_businesses") and partner.has_perm("jobs.view_job")
    assert Job.objects.get(pk=job.pk).business == moved
    assert not ContentType.objects.filter(app_label="operations", model__in=["business", "membership"]).exists()
    assert not ContentType.objects.filter(app_label="celeryconf").exists()
    entry = LogEntry.objects.get(object_id=str(business.pk))
    assert LogEntry.objects.filter(pk=entry.pk, content_type__app_label="tenancy").exists()
    assert entry.get_edited_object() == moved

"""Every admin page renders for the owner, themed by Unfold; login is throttled; the dashboard
shows live figures per business."""

from __future__ import annotations

from decimal import Decimal

import pytest
from django.contrib import admin
from django.core.management import call_command
from django.test import Client, RequestFactory
from django.urls import reverse

from jobs.models import Job, JobState
from operations.jobs import EXPORT_BUSINESSES
from tenancy.models import Business
from tests.factories.tenancy import PASSWORD, UserFactory, login, staff_with_perms

pytestmark = pytest.mark.django_db


@pytest.fixture
def demo(db: None) -> None:
    call_command("setup_demo", verbosity=0)


def test_every_changelist_and_add_page_renders_for_the_owner(demo: None, owner_client: Client) -> None:
    """One pass over every registered admin (one demo set-up, not one per page)."""
    failures = []
    for model in sorted(admin.site._registry, key=lambda m: m._meta.label):
        app_label, model_name = model._meta.app_label, model._meta.model_name
        changelist = owner_client.get(reverse(f"admin:{app_label}_{model_name}_changelist"))
        if changelist.status_code != 200 or b"/static/unfold/" not in changelist.content:
            # the Unfold theme, not Django's default admin
            failures.append(f"{model._meta.label} changelist: {changelist.status_code}")
        add = owner_client.get(reverse(f"admin:{app_label}_{model_name}_add"))
        if add.status_code not in (200, 403):  # 403 where rows are never typed in (jobs, login attempts)
            failures.append(f"{model._meta.label} add: {add.status_code}")
    assert failures == []
    assert len(admin.site._registry) >= 10


def test_login_page_is_unfold(db: None) -> None:
    page = Client().get(reverse("admin:login"))
    assert page.status_code == 200 and b"/static/unfold/" in page.content


def test_the_root_url_leads_to_the_admin(db: None) -> None:
    assert Client().get("/").headers["Location"] == reverse("admin:index")


def test_login_is_throttled_after_repeated_wrong_passwords(db: None, settings: object) -> None:
    settings.AXES_ENABLED = True  # type: ignore[attr-defined]
    UserFactory.create(username="mary")
    client = Client()
    for _ in range(5):
        client.post(reverse("admin:login"), {"username": "mary", "password": "guess"})
    locked = client.post(reverse("admin:login"), {"username": "mary", "password": PASSWORD})
    assert locked.status_code == 429
    assert "_auth_user_id" not in client.session


def test_dashboard_shows_each_business_with_takings_and_jobs(demo: None, owner_client: Client) -> None:
    water = Business.objects.get(name="Maji Safi Water")
    Job.objects.create(kind=EXPORT_BUSINESSES, business=water, state=JobState.FAILED)
    Job.objects.create(kind=EXPORT_BUSINESSES, business=water, state=JobState.RUNNING)
    page = owner_client.get(reverse("admin:index"))
    assert page.status_code == 200
    rows = {row["business"].name: row for row in page.context["business_rows"]}
    assert set(rows) == {"Maji Safi Water", "Fresh Fold Laundry", "Duka &amp; Gas".replace("&amp;", "&")}
    assert rows["Maji Safi Water"]["failed_jobs"] == 1 and rows["Maji Safi Water"]["pending_jobs"] == 1
    assert rows["Fresh Fold Laundry"]["failed_jobs"] == 0
    assert rows["Maji Safi Water"]["takings"].total == Decimal("0.00")
    assert page.context["all_businesses"]["failed_jobs"] == 1
    assert b"today&#x27;s takings" in page.content or b"today's takings" in page.content


def test_dashboard_for_staff_shows_only_his_business(demo: None) -> None:
    water = Business.objects.get(name="Maji Safi Water")
    staff = staff_with_perms(water, ["tenancy.view_business"], username="wairimu")
    page = login(staff).get(reverse("admin:index"))
    assert [row["business"] for row in page.context["business_rows"]] == [water]
    assert "all_businesses" not in page.context
    assert b"Fresh Fold Laundry" not in page.content


def test_sidebar_groups_links_by_area(owner_client: Client) -> None:
    page = owner_client.get(reverse("admin:index"))
    body = page.content.decode()
    for group in ("Overview", "Businesses and people", "Scheduling", "Security"):
        assert group in body
    assert reverse("admin:jobs_job_changelist") in body


@pytest.mark.parametrize(
    ("path", "highlighted"),
    [
        ("/admin/", ["Dashboard"]),
        ("/admin/operations/sale/12/change/", ["Sales"]),
        ("/admin/accounts/books/", ["Books and period close"]),
        ("/admin/accounts/books/reports/profit-and-loss/", ["Profit and loss"]),
        ("/admin/password_change/", []),
    ],
)
def test_the_sidebar_highlights_the_one_item_of_the_page(owner, path: str, highlighted: list[str]) -> None:  # type: ignore[no-untyped-def]
    """Not Flower's external link on every page, nor "Books and period close" on the statements mounted under it."""
    request = RequestFactory().get(path)
    request.user = owner
    sidebar = admin.site.get_sidebar_list(request)  # type: ignore[attr-defined]
    assert [item["title"] for group in sidebar for item in group["items"] if item["active"]] == highlighted


def test_dashboard_takings_come_from_the_ledger(demo: None, owner_client: Client) -> None:
    from django.utils import timezone

    from accounts.models import SourceType
    from accounts.selectors import account_for_role
    from accounts.services import LineSpec, entry_post

    water = Business.objects.get(name="Maji Safi Water")
    today = timezone.localdate()

    def role(name: str) -> object:
        return account_for_role(business=water, role=name)

    entry_post(
        business=water,
        entry_date=today,
        memo="refills",
        source_type=SourceType.SALE,
        idempotency_key="dash-sale-1",
        lines=[
            LineSpec(role("cash"), debit=Decimal("1160.00")),  # type: ignore[arg-type]
            LineSpec(role("sales_refill"), credit=Decimal("1000.00")),  # type: ignore[arg-type]
            LineSpec(role("vat_output"), credit=Decimal("160.00")),  # type: ignore[arg-type]
        ],
    )
    entry_post(
        business=water,
        entry_date=today,
        memo="M-Pesa QWE123",
        source_type=SourceType.MPESA,
        idempotency_key="dash-mpesa-1",
        lines=[
            LineSpec(role("mpesa_clearing"), debit=Decimal("500.00")),  # type: ignore[arg-type]
            LineSpec(role("receivables"), credit=Decimal("500.00")),  # type: ignore[arg-type]
        ],
    )
    page = owner_client.get(reverse("admin:index"))
    rows = {row["business"].name: row for row in page.context["business_rows"]}
    takings = rows["Maji Safi Water"]["takings"]
    assert (takings.cash, takings.mpesa, takings.total) == (Decimal("1160.00"), Decimal("500.00"), Decimal("1660.00"))
    assert rows["Fresh Fold Laundry"]["takings"].total == Decimal("0.00")
    assert page.context["all_businesses"]["takings"] == Decimal("1660.00")
    assert b"1,660.00" in page.content

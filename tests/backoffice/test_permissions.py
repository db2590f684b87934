"""Who may move money, change data or import in the admin (docs/permissions.md): every action that
changes data or calls Daraja names its permission, the money-moving ones their own custom right
that the staff group does not hold, imports need add and change (businesses: the owner only), and
related-field list filters offer only the user's businesses' rows."""

from __future__ import annotations

from typing import Any

import pytest
import tablib
from axes.models import AccessAttempt
from django.contrib import admin
from django.contrib.auth.models import Permission, User
from django.core.management import call_command
from django.db.models import Model
from django.test import Client, RequestFactory
from django.urls import reverse
from django_celery_beat.models import PeriodicTask

from backoffice.models import EmailLog, OwnerEmail
from integrations.mpesa.admin import ReconciliationLineAdmin
from integrations.mpesa.models import (
    InboxMessage,
    Payment,
    PaymentRequest,
    ReconciliationLine,
    ReconciliationRun,
    Reversal,
    StatusQuery,
    Till,
    UnallocatedPayment,
)
from integrations.mpesa.permissions import (
    ALLOCATE_PAYMENT,
    MONEY_PERMISSIONS,
    POST_MISSING_RECEIPT,
    REPROCESS_CALLBACK,
    REQUEST_STK_PAYMENT,
    REVERSE_PAYMENT,
)
from jobs.models import Job
from operations.admin.customers import CustomerResource
from operations.models import Customer, Sale
from tenancy.admin import BusinessResource
from tenancy.models import Business
from tenancy.services import staff_group_ensure
from tests.backoffice.test_admin_walk import filter_labels
from tests.factories.mpesa import TillFactory
from tests.factories.tenancy import login, staff_with_perms
from tests.integrations.scoping import _line, _payment, _till

pytestmark = pytest.mark.django_db


def _model_perms(model: type[Model], *actions: str) -> list[str]:
    return [f"{model._meta.app_label}.{a}_{model._meta.model_name}" for a in actions]


def _offered(user: User, model: type[Model]) -> set[str]:
    request = RequestFactory().get("/")
    request.user = User.objects.get(pk=user.pk)  # no cached permissions
    return set(admin.site.get_model_admin(model).get_actions(request))


# (model, action, what the person already holds, the permission the action needs on top)
ACTIONS = [
    (Payment, "request_reversal", _model_perms(Payment, "view", "add", "change", "delete"), REVERSE_PAYMENT),
    (
        UnallocatedPayment,
        "allocate",
        _model_perms(UnallocatedPayment, "view", "add", "change", "delete"),
        ALLOCATE_PAYMENT,
    ),
    (InboxMessage, "reprocess", _model_perms(InboxMessage, "view", "add", "change", "delete"), REPROCESS_CALLBACK),
    (
        ReconciliationLine,
        "post_missing",
        _model_perms(ReconciliationLine, "view", "add", "change", "delete"),
        POST_MISSING_RECEIPT,
    ),
    (PaymentRequest, "query_status", _model_perms(PaymentRequest, "view", "add", "change"), REQUEST_STK_PAYMENT),
    # The sale's change right is not enough to ask a customer for money or take one out of suspense.
    (Sale, "request_mpesa", _model_perms(Sale, "view", "add", "change"), REQUEST_STK_PAYMENT),
    (Sale, "settle_with_mpesa", _model_perms(Sale, "view", "add", "change"), ALLOCATE_PAYMENT),
    # Daraja calls and background work: the model's change (or delete) right.
    (Till, "register_urls", _model_perms(Till, "view"), "integrations.change_till"),
    (
        ReconciliationRun,
        "reconcile",
        _model_perms(ReconciliationRun, "view", "add"),
        "integrations.change_reconciliationrun",
    ),
    (Job, "retry_failed", _model_perms(Job, "view"), "jobs.change_job"),
    (PeriodicTask, "run_tasks", _model_perms(PeriodicTask, "view"), "django_celery_beat.change_periodictask"),
    (PeriodicTask, "toggle_tasks", _model_perms(PeriodicTask, "view"), "django_celery_beat.change_periodictask"),
    (AccessAttempt, "cleanup_expired_attempts", _model_perms(AccessAttempt, "view"), "axes.delete_accessattempt"),
    # The owner's emails: owner-level users (every business) only, each action with its right.
    (
        EmailLog,
        "send_again",
        [*_model_perms(EmailLog, "view"), "tenancy.view_all_businesses"],
        "backoffice.resend_email",
    ),
    (
        OwnerEmail,
        "send_test",
        [*_model_perms(OwnerEmail, "view"), "tenancy.view_all_businesses"],
        "backoffice.change_owneremail",
    ),
]


@pytest.mark.parametrize(("model", "name", "held", "needed"), ACTIONS, ids=lambda v: v if isinstance(v, str) else "")
def test_each_action_is_offered_only_with_its_permission(
    water: Business, owner: User, model: type[Model], name: str, held: list[str], needed: str
) -> None:
    staff = staff_with_perms(water, held)
    assert name not in _offered(staff, model)
    staff.user_permissions.add(Permission.objects.get(codename=needed.split(".")[1]))
    assert name in _offered(staff, model)
    assert name in _offered(owner, model)  # the owner (superuser) holds every permission


def test_a_sale_needs_its_change_right_too_for_mpesa(water: Business) -> None:
    staff = staff_with_perms(water, [*_model_perms(Sale, "view"), REQUEST_STK_PAYMENT, ALLOCATE_PAYMENT])
    assert not {"request_mpesa", "settle_with_mpesa"} & _offered(staff, Sale)


def test_a_reversal_posted_without_the_right_is_refused(water: Business) -> None:
    payment = _payment(water)
    staff = staff_with_perms(water, _model_perms(Payment, "view", "add", "change", "delete"))
    assert "request_reversal" not in _offered(staff, Payment)  # (so the POST below never reaches Daraja)
    response = login(staff).post(
        reverse("admin:integrations_payment_changelist"),
        {"action": "request_reversal", "_selected_action": [payment.pk], "index": "0"},
        follow=True,
    )
    assert "Reversals requested" not in response.content.decode()
    assert not Reversal.objects.exists()


def test_a_payment_request_is_sent_only_with_the_stk_right(water: Business) -> None:
    add = reverse("admin:integrations_paymentrequest_add")
    staff = staff_with_perms(water, _model_perms(PaymentRequest, "view", "add", "change"))
    assert login(staff).get(add).status_code == 403
    assert login(staff).post(add, {"till": _till(water).pk, "phone": "0712345678", "amount": "10"}).status_code == 403
    assert not PaymentRequest.objects.exists()
    staff.user_permissions.add(Permission.objects.get(codename="request_stk_payment"))
    assert login(User.objects.get(pk=staff.pk)).get(add).status_code == 200


def test_a_status_query_is_sent_only_with_the_add_right(water: Business) -> None:
    add = reverse("admin:integrations_statusquery_add")
    assert login(staff_with_perms(water, _model_perms(StatusQuery, "view"))).get(add).status_code == 403
    assert login(staff_with_perms(water, _model_perms(StatusQuery, "add"), username="b")).get(add).status_code == 200


def test_the_staff_group_holds_no_money_moving_permission(water: Business) -> None:
    for perm in MONEY_PERMISSIONS:  # they exist (the migration made them) ...
        app_label, codename = perm.split(".")
        assert Permission.objects.filter(content_type__app_label=app_label, codename=codename).exists(), perm
    group = staff_group_ensure()  # ... and the staff group has none of them, nor a job retry
    held = {f"{p.content_type.app_label}.{p.codename}" for p in group.permissions.select_related("content_type")}
    assert not held & {*MONEY_PERMISSIONS, "jobs.change_job"}

    call_command("setup_demo", verbosity=0)
    maji = User.objects.get(username="maji")
    assert not any(maji.has_perm(perm) for perm in MONEY_PERMISSIONS)
    offered = _offered(maji, Sale)
    assert "post_sales" in offered and not {"request_mpesa", "settle_with_mpesa"} & offered


# ------------------------------------------------------------------------------------ imports


def test_businesses_are_imported_by_the_owner_only(water: Business, laundry: Business, owner_client: Client) -> None:
    url = reverse("admin:tenancy_business_import")
    staff = staff_with_perms(water, _model_perms(Business, "view", "add", "change"))
    assert login(staff).get(url).status_code == 403
    assert owner_client.get(url).status_code == 200

    # Also through the resource itself: a staff member's file cannot rename the laundry.
    dataset = tablib.Dataset(headers=["id", "name", "kind", "currency", "timezone", "is_active"])
    dataset.append([laundry.pk, "Hacked", laundry.kind, "KES", "Africa/Nairobi", "0"])
    result = BusinessResource().import_data(dataset, dry_run=False, user=staff, raise_errors=False)
    assert [row.import_type for row in result.rows] == ["invalid"]
    laundry.refresh_from_db()
    assert laundry.name == "Fresh Fold Laundry" and laundry.is_active


def test_imports_need_both_add_and_change(water: Business) -> None:
    url = reverse("admin:operations_customer_import")
    assert login(staff_with_perms(water, _model_perms(Customer, "view"), username="v")).get(url).status_code == 403
    assert login(staff_with_perms(water, _model_perms(Customer, "change"), username="c")).get(url).status_code == 403
    assert login(staff_with_perms(water, _model_perms(Customer, "add"), username="a")).get(url).status_code == 403
    both = staff_with_perms(water, _model_perms(Customer, "view", "add", "change"), username="ac")
    assert login(both).get(url).status_code == 200


def test_an_allowed_import_still_goes_through_the_business_scope(water: Business, laundry: Business) -> None:
    staff = staff_with_perms(water, _model_perms(Customer, "view", "add", "change"))
    dataset = tablib.Dataset(headers=["id", "business", "name", "phone", "account_code", "credit_limit", "is_active"])
    dataset.append(["", water.pk, "Mama Njeri", "", "", "0", "1"])
    dataset.append(["", laundry.pk, "Planted", "", "", "0", "1"])
    result = CustomerResource().import_data(dataset, dry_run=False, user=staff, raise_errors=False)
    assert [row.import_type for row in result.rows] == ["new", "invalid"]
    assert not Customer.objects.filter(business=laundry).exists()


# ------------------------------------------------------------------------------------ list filters


def _filter_choices(model_admin: Any, user: User, model: type[Model]) -> dict[str, list[str]]:
    request = RequestFactory().get(reverse(f"admin:{model._meta.app_label}_{model._meta.model_name}_changelist"))
    request.user = user
    changelist = model_admin.get_changelist_instance(request)
    return {
        getattr(spec, "field_path", spec.title): filter_labels(spec, changelist) for spec in changelist.filter_specs
    }


def _lines(business: Business) -> list[ReconciliationLine]:
    """Two lines of two runs on two tills, one with a payment: enough for every filter to show."""
    lines = [_line(business), _line(business)]
    second_run = lines[1].run
    second_run.till = TillFactory.create(business=business, name=f"Second till of {business.name}")
    second_run.save()
    lines[0].payment = _payment(business)
    lines[0].save()
    return lines


def test_the_reconciliation_run_filter_offers_only_his_businesses_runs(
    water: Business, laundry: Business, owner: User
) -> None:
    ours, theirs = _lines(water), _lines(laundry)
    staff = staff_with_perms(water, _model_perms(ReconciliationLine, "view"))
    line_admin = admin.site.get_model_admin(ReconciliationLine)
    runs = _filter_choices(line_admin, staff, ReconciliationLine)["run"]
    assert {str(line.run) for line in ours} <= set(runs)
    assert not {str(line.run) for line in theirs} & set(runs)
    everything = _filter_choices(line_admin, owner, ReconciliationLine)["run"]
    assert {str(line.run) for line in ours + theirs} <= set(everything)


def test_a_new_admins_related_filters_are_scoped_too(water: Business, laundry: Business) -> None:
    """Any related-field filter (plain name or with a filter class) and values across a relation."""
    from unfold.contrib.filters.admin import RelatedDropdownFilter

    class LinesAdmin(ReconciliationLineAdmin):
        list_filter = ["run__till__name", ("payment", RelatedDropdownFilter), "run__till"]  # type: ignore[list-item]

    ours, theirs = _lines(water), _lines(laundry)
    staff = staff_with_perms(water, _model_perms(ReconciliationLine, "view"))
    choices = _filter_choices(LinesAdmin(ReconciliationLine, admin.site), staff, ReconciliationLine)
    assert set(choices) == {"run__till__name", "payment", "run__till"}  # one business: no switcher
    offered = [c for values in choices.values() for c in values]
    for line in ours:
        assert line.run.till.name in offered and str(line.run.till) in offered
    assert str(ours[0].payment) in offered
    for line in theirs:
        assert line.run.till.name not in offered and str(line.run.till) not in offered
    assert str(theirs[0].payment) not in offered
    assert not any(laundry.name in c for c in offered)


def test_users_and_the_user_autocomplete_show_only_people_of_his_businesses(water: Business, laundry: Business) -> None:
    from tests.factories.tenancy import MembershipFactory, UserFactory

    colleague = MembershipFactory.create(business=water, user=UserFactory.create(username="colleague_wanjiku")).user
    stranger = MembershipFactory.create(business=laundry, user=UserFactory.create(username="stranger_otieno")).user
    staff = staff_with_perms(water, ["auth.view_user", "tenancy.view_membership", "tenancy.add_membership"])
    client = login(staff)
    body = client.get(reverse("admin:auth_user_changelist")).content.decode()
    assert colleague.username in body and stranger.username not in body
    found = client.get(
        reverse("admin:autocomplete"),
        {"app_label": "tenancy", "model_name": "membership", "field_name": "user", "term": "o"},
    ).json()
    names = {row["text"] for row in found["results"]}
    assert colleague.username in names and stranger.username not in names

"""Writes about businesses and who works in them."""

from __future__ import annotations

from typing import Any

from django.contrib.auth.models import Group, Permission, User
from django.db import transaction

from accounts.services import chart_ensure_default
from operations.models import Business, Membership, MembershipRole
from operations.services.postings import chart_operations_ensure

STAFF_GROUP = "Business staff"
# What a staff member may do in the businesses he is assigned to (the admin scopes every row).
_DAY_TO_DAY_MODELS = [
    "customer",
    "supplier",
    "item",
    "sale",
    "saleline",
    "customertransaction",
    "purchase",
    "purchaseline",
    "supplierpayment",
    "expense",
    "stocklevel",
    "stockmovement",
    "stockcount",
    "stockcountline",
    "openingstock",
    "productionbatch",
    "productioninput",
    "laundryorder",
    "laundryorderline",
    "dayclosing",
]
# Rows staff only read: stock levels, movements and the customer sub-ledger are written by services.
_READ_ONLY_MODELS = {"stocklevel", "stockmovement", "customertransaction"}
STAFF_PERMISSIONS = [
    "operations.view_business",
    "operations.view_membership",
    "celeryconf.view_job",
    *(
        f"operations.{action}_{model}"
        for model in _DAY_TO_DAY_MODELS
        for action in (("view",) if model in _READ_ONLY_MODELS else ("view", "add", "change"))
    ),
]


def business_create(*, name: str, kind: str, acting_user: Any = None) -> Business:
    """Create a business with its books (default chart of accounts). Not idempotent: names are unique."""
    with transaction.atomic():
        business = Business.objects.create(name=name, kind=kind)
        chart_ensure_default(business=business)
        chart_operations_ensure(business=business)
    return business


def business_ensure(*, name: str, kind: str) -> Business:
    """The business called `name`, created with its books if missing. Safe to run again."""
    with transaction.atomic():
        business, _ = Business.objects.get_or_create(name=name, defaults={"kind": kind})
        chart_ensure_default(business=business)
        chart_operations_ensure(business=business)
    return business


def staff_group_ensure() -> Group:
    """The group holding the standard staff permissions. Safe to run again."""
    group, _ = Group.objects.get_or_create(name=STAFF_GROUP)
    for perm in STAFF_PERMISSIONS:
        app_label, codename = perm.split(".")
        group.permissions.add(Permission.objects.get(content_type__app_label=app_label, codename=codename))
    return group


def membership_assign(*, user: User, business: Business, role: str = MembershipRole.STAFF) -> Membership:
    """Give `user` access to `business` (idempotent; updates the role)."""
    membership, _ = Membership.objects.update_or_create(user=user, business=business, defaults={"role": role})
    return membership

"""Writes about who works in which business.

Creating a business lives one layer up (operations.services.businesses.business_ensure): a new
business gets its books, which tenancy, below the ledger, does not know of.
"""

from __future__ import annotations

from django.contrib.auth.models import Group, Permission, User
from django.db import transaction

from tenancy.models import Business, Membership, MembershipRole

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
    "tenancy.view_business",
    "tenancy.view_membership",
    "jobs.view_job",
    *(
        f"operations.{action}_{model}"
        for model in _DAY_TO_DAY_MODELS
        for action in (("view",) if model in _READ_ONLY_MODELS else ("view", "add", "change"))
    ),
]


def staff_group_ensure() -> Group:
    """The group holding the standard staff permissions. Safe to run again."""
    with transaction.atomic():
        group, _ = Group.objects.get_or_create(name=STAFF_GROUP)
        for perm in STAFF_PERMISSIONS:
            app_label, codename = perm.split(".")
            group.permissions.add(Permission.objects.get(content_type__app_label=app_label, codename=codename))
    return group


def membership_assign(*, user: User, business: Business, role: str = MembershipRole.STAFF) -> Membership:
    """Give `user` access to `business` (idempotent; updates the role)."""
    membership, _ = Membership.objects.update_or_create(user=user, business=business, defaults={"role": role})
    return membership

"""The businesses the owner runs and who works in which.

Every row that belongs to a business (ledger entries, sales, payments, jobs) carries a foreign key
to Business; per-business access in the admin (tenancy/scoping.py) filters on it. The tables keep
their first names (`operations_business`, `operations_membership`): the models moved here from
operations without a copy (tenancy/migrations/0001_initial.py).
"""

from __future__ import annotations

import datetime as dt

from django.conf import settings
from django.core.exceptions import ValidationError
from django.db import models

# The earliest closing time a business may set (see Business.clean).
EARLIEST_CLOSING_TIME = dt.time(12, 0)


class BusinessKind(models.TextChoices):
    WATER = "water", "Water packaging"
    LAUNDRY = "laundry", "Laundry"
    RETAIL_LPG = "retail_lpg", "Retail and LPG"


class Business(models.Model):
    name = models.CharField(max_length=120, unique=True)
    kind = models.CharField(max_length=20, choices=BusinessKind.choices)
    currency = models.CharField(max_length=3, default="KES", editable=False)
    timezone = models.CharField(max_length=64, default="Africa/Nairobi", editable=False)
    is_active = models.BooleanField(default=True)
    # End of the business day, Africa/Nairobi: the automatic end-of-day closing runs then.
    closing_time = models.TimeField(
        default=dt.time(21, 0),
        help_text="End of the business day (Nairobi time): the day is closed automatically then.",
    )
    created_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        db_table = "operations_business"
        ordering = ["name"]
        verbose_name_plural = "businesses"
        permissions = [("view_all_businesses", "Can see and manage every business (owner)")]
        constraints = [
            models.CheckConstraint(condition=models.Q(currency="KES"), name="business_currency_kes"),
        ]

    def __str__(self) -> str:
        return self.name

    def clean(self) -> None:
        # The automatic closing closes today once this time has passed: a time in the early morning
        # would close each day as it starts, and everything recorded that day would go to the next.
        if self.closing_time is not None and self.closing_time < EARLIEST_CLOSING_TIME:
            raise ValidationError(
                {
                    "closing_time": f"The end of the business day must be {EARLIEST_CLOSING_TIME:%H:%M} or later "
                    "(the day is closed automatically then)."
                }
            )


class MembershipRole(models.TextChoices):
    MANAGER = "manager", "Manager"
    STAFF = "staff", "Staff"


class Membership(models.Model):
    """A staff member assigned to a business: he sees and changes only the businesses he is in."""

    user = models.ForeignKey(settings.AUTH_USER_MODEL, on_delete=models.CASCADE, related_name="memberships")
    business = models.ForeignKey(Business, on_delete=models.CASCADE, related_name="memberships")
    role = models.CharField(max_length=20, choices=MembershipRole.choices, default=MembershipRole.STAFF)
    created_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        db_table = "operations_membership"
        ordering = ["business__name", "user__username"]
        constraints = [models.UniqueConstraint(fields=["user", "business"], name="membership_user_business_unique")]

    def __str__(self) -> str:
        return f"{self.user} @ {self.business}"

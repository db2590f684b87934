"""The businesses the owner runs and who works in which.

Every row that belongs to a business (ledger entries, sales, payments, jobs) carries a foreign key
to Business; per-business access in the admin (backoffice/tenancy.py) filters on it.
"""

from __future__ import annotations

from django.conf import settings
from django.db import models


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
    created_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        ordering = ["name"]
        verbose_name_plural = "businesses"
        permissions = [("view_all_businesses", "Can see and manage every business (owner)")]
        constraints = [
            models.CheckConstraint(condition=models.Q(currency="KES"), name="business_currency_kes"),
        ]

    def __str__(self) -> str:
        return self.name


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
        ordering = ["business__name", "user__username"]
        constraints = [models.UniqueConstraint(fields=["user", "business"], name="membership_user_business_unique")]

    def __str__(self) -> str:
        return f"{self.user} @ {self.business}"


class Customer(models.Model):
    """A customer of one business. The phone is stored normalised (2547XXXXXXXX) with its SHA-256,
    because Daraja's C2B callbacks now send only a hash or a masked number."""

    business = models.ForeignKey(Business, on_delete=models.PROTECT, related_name="customers")
    name = models.CharField(max_length=120)
    phone = models.CharField(max_length=12, blank=True, default="", help_text="2547XXXXXXXX")
    phone_sha256 = models.CharField(max_length=64, blank=True, default="", editable=False, db_index=True)
    # What the customer types as "account number" when paying by M-Pesa (paybill) to be matched.
    account_code = models.CharField(max_length=12, blank=True, default="")
    credit_limit = models.DecimalField(max_digits=14, decimal_places=2, default=0)
    is_active = models.BooleanField(default=True)
    created_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        ordering = ["business__name", "name"]
        constraints = [
            models.UniqueConstraint(
                fields=["business", "account_code"],
                condition=~models.Q(account_code=""),
                name="customer_business_account_code_uniq",
            ),
            models.CheckConstraint(condition=models.Q(credit_limit__gte=0), name="customer_credit_limit_not_negative"),
        ]
        indexes = [models.Index(fields=["business", "phone"], name="customer_business_phone")]

    def __str__(self) -> str:
        return self.name

    def clean(self) -> None:
        """Store the phone normalised (2547XXXXXXXX) with its SHA-256, for M-Pesa matching."""
        from django.core.exceptions import ValidationError

        from integrations.mpesa.phones import msisdn_sha256, normalise_msisdn

        if not self.phone:
            self.phone_sha256 = ""
            return
        try:
            self.phone = normalise_msisdn(self.phone)
        except ValueError as exc:
            raise ValidationError({"phone": str(exc)}) from exc
        self.phone_sha256 = msisdn_sha256(self.phone)

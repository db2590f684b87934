"""The customers of a business (the business itself and its staff live in tenancy)."""

from __future__ import annotations

from django.core.exceptions import ValidationError
from django.db import models

from operations.phones import msisdn_sha256, normalise_msisdn
from tenancy.models import Business


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
        if not self.phone:
            self.phone_sha256 = ""
            return
        try:
            self.phone = normalise_msisdn(self.phone)
        except ValueError as exc:
            raise ValidationError({"phone": str(exc)}) from exc
        self.phone_sha256 = msisdn_sha256(self.phone)

"""End-of-day closing per business."""

from __future__ import annotations

from django.conf import settings
from django.db import models

from accounts.fields import MoneyField
from tenancy.models import Business


class ClosingStatus(models.TextChoices):
    PENDING = "pending", "Waiting to run"
    CLOSED = "closed", "Closed"


class DayClosing(models.Model):
    """One business day closed: takings, cash expected and counted, the variance, the lock."""

    business = models.ForeignKey(Business, on_delete=models.PROTECT, related_name="+")
    day = models.DateField()
    status = models.CharField(max_length=10, choices=ClosingStatus.choices, default=ClosingStatus.PENDING)
    counted_cash = MoneyField(null=True, blank=True, help_text="Cash counted in the drawer (empty: not counted)")
    cash_takings = MoneyField(default=0, editable=False)
    mpesa_takings = MoneyField(default=0, editable=False)
    expected_cash = MoneyField(default=0, editable=False)
    variance = MoneyField(default=0, editable=False)
    entry = models.ForeignKey(
        "accounts.JournalEntry", on_delete=models.PROTECT, null=True, blank=True, related_name="+"
    )
    closed_by = models.ForeignKey(
        settings.AUTH_USER_MODEL, on_delete=models.SET_NULL, null=True, blank=True, related_name="+"
    )
    closed_at = models.DateTimeField(null=True, blank=True, editable=False)
    # Closed by the end-of-day schedule (operations.close_due_days) rather than by a person: closed_by
    # alone cannot tell (a launcher deleted later, seed_demo), and the owner wants to see which days
    # nobody counted.
    automatic = models.BooleanField(
        default=False,
        editable=False,
        verbose_name="closed automatically",
        help_text="Closed by the end-of-day schedule at the business's closing time (no cash count unless "
        "one was entered beforehand).",
    )

    class Meta:
        ordering = ["-day", "business__name"]
        constraints = [models.UniqueConstraint(fields=["business", "day"], name="closing_business_day_uniq")]

    def __str__(self) -> str:
        return f"{self.business} {self.day}"

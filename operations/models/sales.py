"""Sales and the customer sub-ledger (what each customer owes, entry by entry)."""

from __future__ import annotations

from decimal import Decimal

from django.conf import settings
from django.db import models
from django.db.models import Q

from accounts.fields import MoneyField
from operations.models.catalogue import Item, QuantityField
from operations.models.core import Customer
from tenancy.models import Business


class PaymentMethod(models.TextChoices):
    CASH = "cash", "Cash"
    MPESA = "mpesa", "M-Pesa"
    ACCOUNT = "account", "On account (credit)"


class SaleStatus(models.TextChoices):
    DRAFT = "draft", "Draft"
    POSTED = "posted", "Posted"
    VOIDED = "voided", "Voided"
    REFUNDED = "refunded", "Refunded"


class Sale(models.Model):
    """A sale: drafted (in the admin), then posted once by operations.services.sales.sale_post.

    Posted sales are never edited: a void (same day) or refund is a reversal entry.
    An M-Pesa sale is posted to receivables and is outstanding until a received payment settles it.
    """

    business = models.ForeignKey(Business, on_delete=models.PROTECT, related_name="sales", db_index=False)
    sale_date = models.DateField()
    customer = models.ForeignKey(Customer, on_delete=models.PROTECT, null=True, blank=True, related_name="sales")
    payment_method = models.CharField(max_length=10, choices=PaymentMethod.choices, default=PaymentMethod.CASH)
    status = models.CharField(max_length=10, choices=SaleStatus.choices, default=SaleStatus.DRAFT)
    route = models.CharField(max_length=60, blank=True, default="", help_text="Delivery route (water deliveries)")
    mpesa_phone = models.CharField(max_length=12, blank=True, default="", help_text="For an STK Push request")
    mpesa_receipt = models.CharField(max_length=20, blank=True, default="", editable=False)
    total = MoneyField(default=0, editable=False)
    vat_total = MoneyField(default=0, editable=False)
    cost_total = MoneyField(default=0, editable=False)
    amount_paid = MoneyField(default=0, editable=False)
    entry = models.ForeignKey(
        "accounts.JournalEntry", on_delete=models.PROTECT, null=True, blank=True, related_name="+"
    )
    reversal_entry = models.ForeignKey(
        "accounts.JournalEntry", on_delete=models.PROTECT, null=True, blank=True, related_name="+"
    )
    note = models.CharField(max_length=255, blank=True, default="")
    created_by = models.ForeignKey(
        settings.AUTH_USER_MODEL, on_delete=models.SET_NULL, null=True, blank=True, related_name="+"
    )
    created_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        ordering = ["-sale_date", "-id"]
        indexes = [models.Index(fields=["business", "sale_date"], name="sale_business_date")]
        # Money over a sale's total is the customer's credit or waits in suspense, never the sale's.
        constraints = [
            models.CheckConstraint(
                condition=Q(amount_paid__lte=models.F("total"))
                & (Q(amount_paid__gte=0) | Q(amount_paid=models.F("total"))),
                name="sale_paid_within_total",
            )
        ]

    def __str__(self) -> str:
        return self.number

    @property
    def number(self) -> str:
        """The sale number on the receipt and the M-Pesa account reference (at most 12 characters)."""
        return f"S{self.pk:07d}" if self.pk else "S(new)"

    @property
    def balance_due(self) -> Decimal:
        return self.total - self.amount_paid


class SaleLine(models.Model):
    sale = models.ForeignKey(Sale, on_delete=models.CASCADE, related_name="lines")
    item = models.ForeignKey(Item, on_delete=models.PROTECT, related_name="+")
    quantity = QuantityField(default=1)
    unit_price = MoneyField(null=True, blank=True, help_text="Leave empty for the catalogue price (VAT incl.)")
    amount = MoneyField(default=0, editable=False)
    vat = MoneyField(default=0, editable=False)
    cost = MoneyField(default=0, editable=False)

    class Meta:
        constraints = [models.CheckConstraint(condition=Q(quantity__gt=0), name="saleline_quantity_positive")]

    def __str__(self) -> str:
        return f"{self.quantity} x {self.item}"


class CustomerTxKind(models.TextChoices):
    SALE = "sale", "Sale on account"
    PAYMENT = "payment", "Payment"
    REFUND = "refund", "Refund / void"
    LAUNDRY = "laundry", "Laundry order collected on account"
    CREDIT = "credit", "Paid over what was owed (credit)"
    REVERSAL = "reversal", "Payment reversed"


class CustomerTransaction(models.Model):
    """One movement of what a customer owes: positive increases the debt, negative settles it."""

    business = models.ForeignKey(Business, on_delete=models.PROTECT, related_name="+", db_index=False)
    customer = models.ForeignKey(Customer, on_delete=models.PROTECT, related_name="transactions", db_index=False)
    tx_date = models.DateField()
    kind = models.CharField(max_length=10, choices=CustomerTxKind.choices)
    amount = MoneyField()
    sale = models.ForeignKey(Sale, on_delete=models.PROTECT, null=True, blank=True, related_name="+")
    reference = models.CharField(max_length=40, blank=True, default="")
    entry = models.ForeignKey(
        "accounts.JournalEntry", on_delete=models.PROTECT, null=True, blank=True, related_name="+"
    )
    created_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        ordering = ["-tx_date", "-id"]
        indexes = [models.Index(fields=["customer", "tx_date"], name="custtx_customer_date")]
        constraints = [models.CheckConstraint(condition=~Q(amount=0), name="custtx_amount_not_zero")]

    def __str__(self) -> str:
        return f"{self.tx_date} {self.customer_id} {self.amount:+}"

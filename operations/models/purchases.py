"""Buying: purchases of stock from suppliers, expenses by category."""

from __future__ import annotations

from django.conf import settings
from django.db import models
from django.db.models import Q

from accounts.fields import MoneyField
from operations.models.catalogue import Item, QuantityField, Supplier
from operations.models.stock import DocumentStatus
from tenancy.models import Business


class PaidFrom(models.TextChoices):
    CASH = "cash", "Cash"
    MPESA = "mpesa_clearing", "M-Pesa"
    BANK = "bank", "Bank"
    CREDIT = "payables", "On credit (pay later)"


class Purchase(models.Model):
    """Stock bought from a supplier: drafted, then posted (stock in, payable or paid)."""

    business = models.ForeignKey(Business, on_delete=models.PROTECT, related_name="+")
    supplier = models.ForeignKey(Supplier, on_delete=models.PROTECT, related_name="purchases")
    purchase_date = models.DateField()
    paid_from = models.CharField(max_length=20, choices=PaidFrom.choices, default=PaidFrom.CREDIT)
    invoice_number = models.CharField(max_length=40, blank=True, default="")
    vat_claimable = models.BooleanField(default=False, help_text="The supplier's invoice is a VAT invoice")
    status = models.CharField(max_length=10, choices=DocumentStatus.choices, default=DocumentStatus.DRAFT)
    total = MoneyField(default=0, editable=False)
    entry = models.ForeignKey(
        "accounts.JournalEntry", on_delete=models.PROTECT, null=True, blank=True, related_name="+"
    )
    created_by = models.ForeignKey(
        settings.AUTH_USER_MODEL, on_delete=models.SET_NULL, null=True, blank=True, related_name="+"
    )
    created_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        ordering = ["-purchase_date", "-id"]

    def __str__(self) -> str:
        return f"P{self.pk:07d}" if self.pk else "P(new)"


class PurchaseLine(models.Model):
    purchase = models.ForeignKey(Purchase, on_delete=models.CASCADE, related_name="lines")
    item = models.ForeignKey(Item, on_delete=models.PROTECT, related_name="+")
    quantity = QuantityField()
    amount = MoneyField(help_text="Line total paid, VAT included")

    class Meta:
        constraints = [
            models.CheckConstraint(condition=Q(quantity__gt=0), name="purchaseline_quantity_positive"),
            models.CheckConstraint(condition=Q(amount__gte=0), name="purchaseline_amount_not_negative"),
        ]

    def __str__(self) -> str:
        return f"{self.quantity} x {self.item}"


class ExpenseCategory(models.TextChoices):
    RENT = "expense_rent", "Rent"
    WAGES = "expense_wages", "Salaries and wages"
    ELECTRICITY = "expense_electricity", "Electricity"
    WATER = "expense_water", "Water and sewerage"
    TRANSPORT = "expense_transport", "Transport and fuel"
    REPAIRS = "expense_repairs", "Repairs and maintenance"
    LICENCES = "expense_licences", "Licences and permits"
    MPESA_CHARGES = "mpesa_charges", "M-Pesa charges"
    PACKAGING = "expense_packaging", "Treatment and packaging materials (water)"
    DETERGENTS = "expense_detergents", "Detergents and supplies (laundry)"
    OTHER = "expense_other", "Other"


class Expense(models.Model):
    """Money spent on running the business, with the receipt attached: drafted, then posted."""

    business = models.ForeignKey(Business, on_delete=models.PROTECT, related_name="+")
    expense_date = models.DateField()
    category = models.CharField(max_length=30, choices=ExpenseCategory.choices)
    amount = MoneyField()
    paid_from = models.CharField(
        max_length=20, choices=[c for c in PaidFrom.choices if c[0] != "payables"], default=PaidFrom.CASH
    )
    supplier = models.ForeignKey(Supplier, on_delete=models.PROTECT, null=True, blank=True, related_name="+")
    description = models.CharField(max_length=255, blank=True, default="")
    receipt = models.FileField(upload_to="expense-receipts/%Y/%m/", blank=True, default="")
    status = models.CharField(max_length=10, choices=DocumentStatus.choices, default=DocumentStatus.DRAFT)
    entry = models.ForeignKey(
        "accounts.JournalEntry", on_delete=models.PROTECT, null=True, blank=True, related_name="+"
    )
    created_by = models.ForeignKey(
        settings.AUTH_USER_MODEL, on_delete=models.SET_NULL, null=True, blank=True, related_name="+"
    )
    created_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        ordering = ["-expense_date", "-id"]
        constraints = [models.CheckConstraint(condition=Q(amount__gt=0), name="expense_amount_positive")]

    def __str__(self) -> str:
        return f"{self.get_category_display()} {self.amount} ({self.expense_date})"


class SupplierPayment(models.Model):
    """Paying a supplier what the business owes for purchases on credit: drafted, then posted."""

    business = models.ForeignKey(Business, on_delete=models.PROTECT, related_name="+")
    supplier = models.ForeignKey(Supplier, on_delete=models.PROTECT, related_name="payments")
    payment_date = models.DateField()
    amount = MoneyField()
    paid_from = models.CharField(
        max_length=20, choices=[c for c in PaidFrom.choices if c[0] != "payables"], default=PaidFrom.BANK
    )
    reference = models.CharField(max_length=40, blank=True, default="")
    status = models.CharField(max_length=10, choices=DocumentStatus.choices, default=DocumentStatus.DRAFT)
    entry = models.ForeignKey(
        "accounts.JournalEntry", on_delete=models.PROTECT, null=True, blank=True, related_name="+"
    )
    created_by = models.ForeignKey(
        settings.AUTH_USER_MODEL, on_delete=models.SET_NULL, null=True, blank=True, related_name="+"
    )
    created_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        ordering = ["-payment_date", "-id"]
        constraints = [models.CheckConstraint(condition=Q(amount__gt=0), name="supplierpayment_amount_positive")]

    def __str__(self) -> str:
        return f"{self.supplier} {self.amount} ({self.payment_date})"

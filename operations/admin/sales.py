"""Sales: drafted with lines, posted, voided or refunded by actions; printable receipts."""

from __future__ import annotations

from decimal import Decimal
from typing import Any

from django import forms
from django.contrib import admin, messages
from django.contrib.admin import helpers
from django.db.models import Prefetch, QuerySet
from django.http import Http404, HttpRequest, HttpResponse
from django.shortcuts import render
from django.urls import URLPattern, path, reverse
from django.utils.html import format_html
from unfold.decorators import action

from integrations.mpesa.models import Payment, PaymentStatus
from integrations.mpesa.payments import sale_settle_mpesa
from integrations.mpesa.permissions import ALLOCATE_PAYMENT, REQUEST_STK_PAYMENT
from integrations.mpesa.stk import sale_request_mpesa
from jobs.admin_exports import ExcelExportMixin
from jobs.exports import ChildRows, Column
from operations.admin.base import REFUSALS, DocumentAdmin, DraftInline
from operations.exceptions import InvalidInput
from operations.models import Sale, SaleLine
from operations.services.sales import sale_post, sale_refund, sale_void


class PaymentChoiceField(forms.ModelChoiceField):  # type: ignore[type-arg]
    def label_from_instance(self, obj: Payment) -> str:
        return f"{obj.receipt} - KES {obj.amount} - {obj.paid_at:%d %b %H:%M} - {obj.payer_name or obj.msisdn or '?'}"


class SettleMpesaForm(forms.Form):
    payment = PaymentChoiceField(
        queryset=Payment.objects.none(),
        label="Received M-Pesa payment",
        help_text="Payments of this business still in suspense (not matched to anyone).",
    )

    def __init__(self, *args: Any, sale: Sale, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        field = self.fields["payment"]
        assert isinstance(field, PaymentChoiceField)
        in_suspense = Payment.objects.filter(business_id=sale.business_id, status=PaymentStatus.UNALLOCATED)
        field.queryset = in_suspense.order_by("-paid_at")


class SaleLineInline(DraftInline):
    model = SaleLine
    fields = ["item", "quantity", "unit_price", "amount", "vat", "cost"]
    readonly_fields = ["amount", "vat", "cost"]


def _line_unit_price(line: SaleLine) -> Decimal | None:
    """The price charged: the one typed on the line, else the amount over the quantity (the catalogue
    price of the day of the sale; the catalogue may have changed since)."""
    if line.unit_price is not None:
        return line.unit_price
    return (line.amount / line.quantity).quantize(Decimal("0.01")) if line.quantity else None


@admin.register(Sale)
class SaleAdmin(ExcelExportMixin, DocumentAdmin):
    excel_columns = [
        Column("Sale", "number", width=11, reads=["pk"]),
        Column("Date", "sale_date", "date"),
        Column("Business", "business__name"),
        Column("Customer", "customer__name"),
        Column("Payment", "get_payment_method_display", width=12),
        Column("Status", "get_status_display", width=10),
        Column("Total", "total", "money", total=True),
        Column("VAT", "vat_total", "money", total=True),
        Column("Cost", "cost_total", "money", total=True),
        Column("Paid", "amount_paid", "money", total=True),
        Column("M-Pesa receipt", "mpesa_receipt", width=14),
        Column("Route", "route", width=14),
    ]
    excel_lines = ChildRows(
        sheet="Sale lines",
        related="lines",
        parent_columns=[Column("Sale", "number", width=11, reads=["pk"]), Column("Date", "sale_date", "date")],
        columns=[
            Column("Item", "item__name"),
            Column("Quantity", "quantity", "decimal", total=True),
            Column("Unit price", _line_unit_price, "money", reads=["unit_price", "amount", "quantity"]),
            Column("Amount", "amount", "money", total=True),
            Column("VAT", "vat", "money", total=True),
            Column("Cost", "cost", "money", total=True),
        ],
    )
    list_display = [
        "number",
        "sale_date",
        "business",
        "customer",
        "payment_method",
        "status",
        "total",
        "amount_paid",
        "receipt_link",
    ]
    list_filter = ["status", "payment_method", ("sale_date", admin.DateFieldListFilter)]
    list_select_related = ["business", "customer"]
    search_fields = ["customer__name", "mpesa_receipt", "route"]
    date_hierarchy = "sale_date"
    show_full_result_count = False
    inlines = [SaleLineInline]
    fields = [
        "business",
        "sale_date",
        "customer",
        "payment_method",
        "route",
        "mpesa_phone",
        "note",
        "status",
        "total",
        "vat_total",
        "cost_total",
        "amount_paid",
        "mpesa_receipt",
        "entry",
        "reversal_entry",
    ]
    readonly_fields = [
        "status",
        "total",
        "vat_total",
        "cost_total",
        "amount_paid",
        "mpesa_receipt",
        "entry",
        "reversal_entry",
    ]
    actions = ["post_sales", "void_sales", "refund_sales", "request_mpesa", "settle_with_mpesa"]

    def excel_export_queryset(self, request: HttpRequest, queryset: QuerySet[Any], options: dict[str, Any]) -> Any:
        lines = SaleLine.objects.select_related("item").order_by("id")
        return queryset.select_related("business", "customer").prefetch_related(Prefetch("lines", queryset=lines))

    def get_search_results(self, request: HttpRequest, queryset: QuerySet[Any], search_term: str) -> Any:
        # "S0000123" (the receipt number) or "123" finds sale 123.
        term = search_term.strip()
        number = term[1:] if term[:1] in ("S", "s") else term
        if number.isdigit():
            return queryset.filter(pk=int(number)), False
        return super().get_search_results(request, queryset, term)

    @admin.display(description="Receipt")
    def receipt_link(self, obj: Sale) -> str:
        if obj.status == "draft":
            return "-"
        return format_html(
            '<a href="{}" target="_blank">Print</a>', reverse("admin:operations_sale_receipt", args=[obj.pk])
        )

    def get_urls(self) -> list[URLPattern]:
        receipt = path(
            "<path:object_id>/receipt/", self.admin_site.admin_view(self.receipt_view), name="operations_sale_receipt"
        )
        return [receipt, *super().get_urls()]

    def receipt_view(self, request: HttpRequest, object_id: str) -> HttpResponse:
        sale = self.get_object(request, object_id)
        if sale is None or not self.has_view_permission(request, sale):
            raise Http404("No such sale")
        lines = sale.lines.select_related("item").order_by("id")
        return render(request, "operations/receipt.html", {"sale": sale, "lines": lines})

    def has_request_mpesa_permission(self, request: HttpRequest) -> bool:
        """An STK Push asks a customer for money: the sale's change right and the STK right."""
        return self.has_change_permission(request) and bool(request.user.has_perm(REQUEST_STK_PAYMENT))

    def has_settle_mpesa_permission(self, request: HttpRequest) -> bool:
        """Settling takes a payment out of suspense: the sale's change right and the allocation right."""
        return self.has_change_permission(request) and bool(request.user.has_perm(ALLOCATE_PAYMENT))

    @action(description="Post selected draft sales", permissions=["change"])
    def post_sales(self, request: HttpRequest, queryset: QuerySet[Sale]) -> None:
        self.run_service(request, queryset, lambda s: sale_post(sale=s, acting_user=request.user), "Sales posted")

    @action(description="Void selected sales (same day)", permissions=["change"])
    def void_sales(self, request: HttpRequest, queryset: QuerySet[Sale]) -> None:
        self.run_service(
            request,
            queryset,
            lambda s: sale_void(sale=s, reason="voided in the admin", acting_user=request.user),
            "Sales voided",
        )

    @action(description="Refund selected sales (today)", permissions=["change"])
    def refund_sales(self, request: HttpRequest, queryset: QuerySet[Sale]) -> None:
        self.run_service(
            request,
            queryset,
            lambda s: sale_refund(sale=s, reason="refunded in the admin", acting_user=request.user),
            "Sales refunded",
        )

    @action(description="Ask for M-Pesa payment (STK Push to the customer's phone)", permissions=["request_mpesa"])
    def request_mpesa(self, request: HttpRequest, queryset: QuerySet[Sale]) -> None:
        from integrations.mpesa.models import Till

        def push(sale: Sale) -> None:
            till = Till.objects.filter(business_id=sale.business_id, is_active=True).order_by("pk").first()
            if till is None:
                raise InvalidInput(f"{sale.business} has no active M-Pesa till.")
            sale_request_mpesa(sale=sale, till=till, acting_user=request.user)

        self.run_service(request, queryset, push, "Payment requests sent")

    @action(description="Settle with a received M-Pesa payment", permissions=["settle_mpesa"])
    def settle_with_mpesa(self, request: HttpRequest, queryset: QuerySet[Sale]) -> HttpResponse | None:
        """Pick one unallocated payment of the sale's business; sale_settle_mpesa does the rest."""
        if queryset.count() != 1:
            self.message_user(request, "Select exactly one sale to settle.", messages.WARNING)
            return None
        sale = queryset.get()
        form = SettleMpesaForm(request.POST if "confirm" in request.POST else None, sale=sale)
        if form.is_bound and form.is_valid():
            try:
                sale_settle_mpesa(sale=sale, payment=form.cleaned_data["payment"], acting_user=request.user)
            except REFUSALS as exc:
                self.message_user(request, f"{sale}: {exc}", messages.ERROR)
            else:
                self.message_user(request, f"Sale {sale.number} settled by M-Pesa.", messages.SUCCESS)
            return None
        context = {
            **self.admin_site.each_context(request),
            "title": f"Settle sale {sale.number} with M-Pesa",
            "form": form,
            "sale": sale,
            "action": "settle_with_mpesa",
            "opts": self.model._meta,
            "action_checkbox_name": helpers.ACTION_CHECKBOX_NAME,
        }
        return render(request, "operations/settle_mpesa.html", context)

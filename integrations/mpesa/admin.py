"""The M-Pesa admin: tills (write-only secrets), the callback inbox, STK payment requests, received
payments, the unallocated queue, reversals and statement reconciliation.

Every page is business-scoped. Actions call one service each; refusals are shown to the person.
"""

from __future__ import annotations

from decimal import Decimal
from typing import Any

from django import forms
from django.contrib import admin, messages
from django.contrib.admin import helpers
from django.core.exceptions import PermissionDenied
from django.db.models import QuerySet
from django.http import HttpRequest, HttpResponse, HttpResponseRedirect
from django.shortcuts import render
from django.urls import reverse
from django.utils.html import format_html, format_html_join
from unfold.decorators import action, display
from unfold.widgets import UnfoldAdminPasswordWidget, UnfoldAdminSelectWidget, UnfoldAdminTextInputWidget

from accounts.exceptions import LedgerError
from integrations.mpesa.exceptions import MpesaError
from integrations.mpesa.inbox import inbox_reprocess
from integrations.mpesa.models import (
    InboxMessage,
    InboxState,
    LineStatus,
    Payment,
    PaymentRequest,
    PaymentRequestState,
    PaymentStatus,
    ReconciliationLine,
    ReconciliationRun,
    Reversal,
    StatusQuery,
    StatusQueryState,
    Till,
    UnallocatedPayment,
)
from integrations.mpesa.payments import payment_allocate
from integrations.mpesa.permissions import (
    ALLOCATE_PAYMENT,
    POST_MISSING_RECEIPT,
    REPROCESS_CALLBACK,
    REQUEST_STK_PAYMENT,
    REVERSE_PAYMENT,
)
from integrations.mpesa.reconciliation import reconciliation_launch, reconciliation_post_missing
from integrations.mpesa.reversals import reversal_request
from integrations.mpesa.secrets import SecretUnreadable
from integrations.mpesa.status_queries import status_query_request
from integrations.mpesa.stk import payment_requests_recover_one, stk_push_request
from integrations.mpesa.tills import till_callback_urls, till_register_urls, till_set_credentials
from jobs.admin_exports import ExcelExportMixin
from jobs.exports import Column
from operations.models import Customer
from tenancy.scoping import BusinessScopedAdmin, sees_all_businesses, visible_business_ids

REFUSALS = (MpesaError, LedgerError, SecretUnreadable)
SECRET_FIELDS = ("consumer_key", "consumer_secret", "passkey", "security_credential")


class ScopedMpesaAdmin(BusinessScopedAdmin):
    list_per_page = 50

    def run_each(self, request: HttpRequest, queryset: QuerySet[Any], service: Any, done: str) -> None:
        """Call `service(row)` for each selected row; refusals are shown, the others go on."""
        succeeded = 0
        for obj in queryset.order_by("pk"):
            try:
                service(obj)
            except REFUSALS as exc:
                self.message_user(request, f"{obj}: {exc}", messages.ERROR)
            else:
                succeeded += 1
        if succeeded:
            self.message_user(request, f"{done}: {succeeded}.", messages.SUCCESS)


class SentOnAddAdmin(ScopedMpesaAdmin):
    """A page whose "add" form asks Daraja for something (`send` calls the service) and whose
    rows are then read-only records of the answer.

    ModelAdmin saves inside `transaction.atomic`: a service called from save_model would call
    Daraja before its row is committed (a callback arriving meanwhile would not find it, and a
    crash would lose the record of what was asked). So a valid add form is sent here, outside any
    transaction; the service commits its row, then calls Daraja.
    """

    add_form: type[forms.ModelForm]  # type: ignore[type-arg]

    def send(self, request: HttpRequest, form: Any) -> Any:
        """Call the service with the form's data; the row it created."""
        raise NotImplementedError

    def get_form(self, request: HttpRequest, obj: Any = None, change: bool = False, **kwargs: Any) -> Any:
        if obj is None:
            kwargs["form"] = self.add_form
        return super().get_form(request, obj, change=change, **kwargs)

    def get_readonly_fields(self, request: HttpRequest, obj: Any = None) -> Any:
        return self.readonly_fields if obj is not None else []

    def get_fields(self, request: HttpRequest, obj: Any = None) -> Any:
        return self.add_form._meta.fields if obj is None else self.readonly_fields

    def has_change_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return False if obj is not None else super().has_change_permission(request, obj)

    def add_view(self, request: HttpRequest, form_url: str = "", extra_context: Any = None) -> HttpResponse:
        try:
            if request.method == "POST" and self.has_add_permission(request):
                form = self.get_form(request)(request.POST, request.FILES)
                if form.is_valid():
                    obj = self.send(request, form)
                    self.log_addition(request, obj, [{"added": {}}])
                    return self.response_add(request, obj)
            # A GET, an invalid form (shown with its errors) or no permission (refused there).
            return super().add_view(request, form_url, extra_context)
        except REFUSALS as exc:
            self.message_user(request, str(exc), messages.ERROR)
            return HttpResponseRedirect(request.get_full_path())

    def save_model(self, request: HttpRequest, obj: Any, form: Any, change: bool) -> None:
        # Never inside the admin's transaction: add_view sends valid forms itself.
        raise PermissionDenied("these rows are created by asking Daraja, from the add form")


# ------------------------------------------------------------------------------------ tills


class TillForm(forms.ModelForm):  # type: ignore[type-arg]
    """Credentials are write-only: never rendered back; a blank field keeps what is stored."""

    callback_base_url = forms.URLField(
        required=False,
        assume_scheme="https",
        widget=UnfoldAdminTextInputWidget,
        help_text="Public HTTPS base of this back office, e.g. https://office.example.co.ke",
    )

    consumer_key = forms.CharField(required=False, widget=UnfoldAdminPasswordWidget(render_value=False))
    consumer_secret = forms.CharField(required=False, widget=UnfoldAdminPasswordWidget(render_value=False))
    passkey = forms.CharField(
        required=False, widget=UnfoldAdminPasswordWidget(render_value=False), help_text="Lipa Na M-Pesa Online passkey"
    )
    security_credential = forms.CharField(
        required=False,
        widget=UnfoldAdminPasswordWidget(render_value=False),
        help_text="The initiator's encrypted security credential (reversals, transaction status, balance)",
    )

    class Meta:
        model = Till
        fields = [
            "business",
            "name",
            "shortcode",
            "kind",
            "store_number",
            "environment",
            "credentials_env_prefix",
            "initiator_name",
            "callback_base_url",
            "allowed_ips",
            "validate_account_reference",
            "min_amount",
            "max_amount",
            "is_active",
        ]

    def clean(self) -> dict[str, Any]:
        """A store number may not be another till's shortcode, nor a shortcode another till's store
        number: C2B confirmations are accepted on a till by either, so those tills would take each
        other's money. (The same store number twice is refused by a database constraint.)"""
        data = super().clean() or {}
        store = (data.get("store_number") or "").strip()
        shortcode = (data.get("shortcode") or "").strip()
        others = Till.objects.filter(environment=data.get("environment")).exclude(pk=self.instance.pk)
        if store and others.filter(shortcode=store).exists():
            self.add_error("store_number", "Another till has this number as its shortcode.")
        if shortcode and others.filter(store_number=shortcode).exists():
            self.add_error("shortcode", "Another till has this number as its store number.")
        return data

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        till = self.instance
        for name in SECRET_FIELDS:
            stored = bool(getattr(till, f"{name}_encrypted", ""))
            note = "Stored (leave blank to keep)." if stored else "Not set."
            field = self.fields[name]
            field.help_text = f"{field.help_text + '. ' if field.help_text else ''}{note}"


@admin.register(Till)
class TillAdmin(ScopedMpesaAdmin):
    form = TillForm
    list_display = ["name", "shortcode", "kind", "environment", "business", "credentials", "is_active"]
    list_filter = ["kind", "environment", "is_active"]
    search_fields = ["name", "shortcode"]
    readonly_fields = ["callback_urls"]
    actions = ["register_urls"]
    fieldsets = [
        (None, {"fields": ["business", "name", "shortcode", "kind", "store_number", "environment", "is_active"]}),
        (
            "Credentials (write-only)",
            {
                "fields": [
                    "credentials_env_prefix",
                    "consumer_key",
                    "consumer_secret",
                    "passkey",
                    "initiator_name",
                    "security_credential",
                ]
            },
        ),
        (
            "Callbacks and rules",
            {
                "fields": [
                    "callback_base_url",
                    "callback_urls",
                    "allowed_ips",
                    "validate_account_reference",
                    "min_amount",
                    "max_amount",
                ]
            },
        ),
    ]

    @display(description="Credentials", boolean=True)
    def credentials(self, obj: Till) -> bool:
        return bool(obj.credentials_env_prefix or (obj.consumer_key_encrypted and obj.consumer_secret_encrypted))

    @display(description="Callback URLs (register these with Safaricom)")
    def callback_urls(self, obj: Till) -> str:
        if not obj.pk:
            return "-"
        try:
            urls = till_callback_urls(obj)
        except MpesaError as exc:
            return str(exc)
        return format_html(
            "<dl>{}</dl>", format_html_join("", "<dt>{}</dt><dd><code>{}</code></dd>", sorted(urls.items()))
        )

    def save_model(self, request: HttpRequest, obj: Till, form: Any, change: bool) -> None:
        till_set_credentials(till=obj, **{name: form.cleaned_data.get(name) or "" for name in SECRET_FIELDS})
        super().save_model(request, obj, form, change)

    @action(description="Register C2B URLs with Daraja", permissions=["change"])
    def register_urls(self, request: HttpRequest, queryset: QuerySet[Till]) -> None:
        self.run_each(
            request,
            queryset,
            lambda till: till_register_urls(till=till, acting_user=request.user),
            "URLs registered for tills",
        )


# ------------------------------------------------------------------------------------ the inbox

INBOX_LABELS = {
    InboxState.RECEIVED: "info",
    InboxState.PROCESSED: "success",
    InboxState.FAILED: "warning",
    InboxState.NEEDS_ATTENTION: "danger",
}


@admin.register(InboxMessage)
class InboxMessageAdmin(ScopedMpesaAdmin):
    business_lookup = "till__business"
    list_display = ["id", "kind", "daraja_id", "till", "state_display", "attempts", "outcome", "received_at"]
    list_filter = ["state", "kind"]
    search_fields = ["daraja_id", "outcome", "error"]
    list_select_related = ["till"]
    date_hierarchy = "received_at"
    readonly_fields = [
        "till",
        "kind",
        "daraja_id",
        "state",
        "attempts",
        "outcome",
        "error",
        "traceback_pretty",
        "received_at",
        "last_enqueued_at",
        "processed_at",
        "remote_addr",
        "body_sha256",
        "body_pretty",
        "headers",
    ]
    exclude = ["body", "traceback"]
    actions = ["reprocess"]

    def has_add_permission(self, request: HttpRequest) -> bool:
        return False  # only Daraja writes here

    def has_delete_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return False  # the inbox is the record of what Daraja sent

    @display(description="State", label=INBOX_LABELS)
    def state_display(self, obj: InboxMessage) -> str:
        return obj.state

    @display(description="Body")
    def body_pretty(self, obj: InboxMessage) -> str:
        import json

        try:
            text = json.dumps(json.loads(obj.body), indent=2, ensure_ascii=False)
        except ValueError:
            text = obj.body
        return format_html('<pre style="white-space:pre-wrap">{}</pre>', text)

    @display(description="Traceback of the last failure")
    def traceback_pretty(self, obj: InboxMessage) -> str:
        return format_html('<pre style="white-space:pre-wrap">{}</pre>', obj.traceback) if obj.traceback else "-"

    def has_reprocess_permission(self, request: HttpRequest) -> bool:
        return bool(request.user.has_perm(REPROCESS_CALLBACK))

    @action(description="Reprocess selected rows", permissions=["reprocess"])
    def reprocess(self, request: HttpRequest, queryset: QuerySet[InboxMessage]) -> None:
        sent = sum(1 for row in queryset.order_by("pk") if inbox_reprocess(inbox=row, acting_user=request.user))
        skipped = queryset.count() - sent
        if sent:
            self.message_user(request, f"Sent for processing again: {sent}.", messages.SUCCESS)
        if skipped:
            self.message_user(request, f"Already processed, left alone: {skipped}.", messages.WARNING)


# ------------------------------------------------------------------------------------ STK requests


class RequestPaymentForm(forms.ModelForm):  # type: ignore[type-arg]
    """The "request payment" form: sends an STK Push to the customer's phone."""

    phone = forms.CharField(max_length=20, help_text="e.g. 0712 345 678", widget=UnfoldAdminTextInputWidget)

    class Meta:
        model = PaymentRequest
        fields = ["till", "phone", "amount", "account_reference", "description"]
        help_texts = {"account_reference": "What the customer sees (up to 12 characters), e.g. a sale number"}


PR_LABELS = {
    PaymentRequestState.SENDING: "info",
    PaymentRequestState.SENT: "info",
    PaymentRequestState.PAID_AWAITING_CALLBACK: "warning",
    PaymentRequestState.PAID: "success",
    PaymentRequestState.CANCELLED: "warning",
    PaymentRequestState.TIMEOUT: "warning",
    PaymentRequestState.FAILED: "danger",
    PaymentRequestState.ERROR: "danger",
}


@admin.register(PaymentRequest)
class PaymentRequestAdmin(SentOnAddAdmin):
    add_form = RequestPaymentForm
    list_display = ["id", "created_at", "till", "phone", "amount", "account_reference", "state_display", "receipt"]
    list_filter = ["state"]
    search_fields = ["phone", "account_reference", "receipt", "checkout_request_id"]
    list_select_related = ["till"]
    actions = ["query_status"]
    readonly_fields = [
        "till",
        "business",
        "phone",
        "amount",
        "account_reference",
        "description",
        "state",
        "merchant_request_id",
        "checkout_request_id",
        "result_code",
        "result_desc",
        "receipt",
        "requested_by",
        "created_at",
        "last_queried_at",
        "query_attempts",
        "completed_at",
    ]

    def has_add_permission(self, request: HttpRequest) -> bool:
        return self.has_request_stk_permission(request)  # adding a request sends an STK Push

    def has_request_stk_permission(self, request: HttpRequest) -> bool:
        return bool(request.user.has_perm(REQUEST_STK_PAYMENT))

    def send(self, request: HttpRequest, form: Any) -> PaymentRequest:
        """Adding a request sends it: the service commits the row, then calls Daraja."""
        data = form.cleaned_data
        sent = stk_push_request(
            till=data["till"],
            phone=data["phone"],
            amount=Decimal(data["amount"]),
            account_reference=data["account_reference"],
            description=data["description"],
            acting_user=request.user,
        )
        if sent.state == PaymentRequestState.ERROR:
            self.message_user(request, f"Daraja did not take the request: {sent.result_desc}", messages.ERROR)
        return sent

    @display(description="State", label=PR_LABELS)
    def state_display(self, obj: PaymentRequest) -> str:
        return obj.state

    @action(description="Ask Daraja now (STK Query)", permissions=["request_stk"])
    def query_status(self, request: HttpRequest, queryset: QuerySet[PaymentRequest]) -> None:
        for row in queryset.filter(state=PaymentRequestState.SENT).exclude(checkout_request_id=""):
            outcome = payment_requests_recover_one(request=row)
            self.message_user(request, f"Request {row.pk}: {outcome}.", messages.INFO)


class StatusQueryForm(forms.ModelForm):  # type: ignore[type-arg]
    """The "ask about a receipt" form: sends a Transaction Status query for it."""

    class Meta:
        model = StatusQuery
        fields = ["till", "receipt", "account_reference"]
        help_texts = {
            "receipt": "The M-Pesa code from the customer's SMS, e.g. TJR4XK2Q1M",
            "account_reference": "Optional: what the payment was for (a sale number, customer code...)",
        }


SQ_LABELS = {
    StatusQueryState.SENT: "info",
    StatusQueryState.CONFIRMED: "success",
    StatusQueryState.NOT_COMPLETED: "warning",
    StatusQueryState.TIMEOUT: "warning",
    StatusQueryState.FAILED: "danger",
    StatusQueryState.ERROR: "danger",
    StatusQueryState.RETRY: "warning",
    StatusQueryState.NEEDS_ATTENTION: "danger",
}


@admin.register(StatusQuery)
class StatusQueryAdmin(SentOnAddAdmin):
    """Transaction Status queries: asked here about a receipt a customer shows, or by the recovery
    job; a "completed" answer for this till posts the payment (once per receipt)."""

    add_form = StatusQueryForm

    list_display = [
        "id",
        "created_at",
        "till",
        "receipt",
        "reason",
        "state_display",
        "attempts",
        "transaction_status",
        "amount",
        "payment",
    ]
    list_filter = ["state", "reason"]
    search_fields = ["receipt", "conversation_id", "account_reference"]
    list_select_related = ["till", "payment"]
    readonly_fields = [
        "till",
        "business",
        "receipt",
        "reason",
        "account_reference",
        "payment_request",
        "state",
        "conversation_id",
        "originator_conversation_id",
        "result_code",
        "result_desc",
        "transaction_status",
        "amount",
        "payment",
        "requested_by",
        "created_at",
        "completed_at",
        "attempts",
        "next_attempt_at",
    ]

    def has_delete_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return False

    def send(self, request: HttpRequest, form: Any) -> StatusQuery:
        """Adding a query sends it: the service commits the row, then calls Daraja."""
        data = form.cleaned_data
        sent = status_query_request(
            till=data["till"],
            receipt=data["receipt"],
            account_reference=data.get("account_reference") or "",
            acting_user=request.user,
        )
        if sent.state == StatusQueryState.ERROR:
            self.message_user(request, f"Daraja did not take the query: {sent.result_desc}", messages.ERROR)
        return sent

    @display(description="State", label=SQ_LABELS)
    def state_display(self, obj: StatusQuery) -> str:
        return obj.state


# ------------------------------------------------------------------------------------ payments


class PaymentReadOnly(ScopedMpesaAdmin):
    list_display = ["receipt", "paid_at", "amount", "till", "customer", "status", "match_description", "payer_name"]
    list_filter = ["status", "matched_by"]
    search_fields = ["receipt", "payer_name", "account_reference", "msisdn"]
    list_select_related = ["till", "customer"]
    date_hierarchy = "paid_at"

    def has_add_permission(self, request: HttpRequest) -> bool:
        return False  # payments come from Daraja (or reconciliation), never typed in

    def has_change_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return False

    def has_delete_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return False


@admin.register(Payment)
class PaymentAdmin(ExcelExportMixin, PaymentReadOnly):
    excel_sheet = "M-Pesa payments"
    excel_columns = [
        Column("Receipt", "receipt", width=14),
        Column("Paid at", "paid_at", "datetime"),
        Column("Amount", "amount", "money", total=True),
        Column("Business", "business__name"),
        Column("Till", "till__name"),
        Column("Payer", "payer_name", width=24),
        Column("Account reference", "account_reference", width=16),
        Column("Customer", "customer__name"),
        Column("Status", "get_status_display", width=14),
        Column("Matched by", "matched_by", width=14),
        Column("Match", "match_description", width=36),
    ]

    def excel_export_queryset(self, request: HttpRequest, queryset: QuerySet[Any], options: dict[str, Any]) -> Any:
        return queryset.select_related("business", "till", "customer")

    actions = ["request_reversal"]

    def has_reverse_permission(self, request: HttpRequest) -> bool:
        return bool(request.user.has_perm(REVERSE_PAYMENT))

    @action(description="Reverse selected payments (ask Daraja)", permissions=["reverse"])
    def request_reversal(self, request: HttpRequest, queryset: QuerySet[Payment]) -> None:
        self.run_each(
            request,
            queryset,
            lambda p: reversal_request(
                payment=p, reason="Reversal requested from the back office", acting_user=request.user
            ),
            "Reversals requested",
        )


ALLOCATION_ROLES = [
    ("receivables", "Customer account (receivables)"),
    ("owner_equity", "Owner's money (equity)"),
    ("expense_other", "Refund of an expense (other expenses)"),
]


class AllocateForm(forms.Form):
    customer = forms.ModelChoiceField(queryset=Customer.objects.none(), required=False, widget=UnfoldAdminSelectWidget)
    credit_role = forms.ChoiceField(choices=ALLOCATION_ROLES, initial="receivables", widget=UnfoldAdminSelectWidget)
    reference_kind = forms.CharField(
        max_length=30, initial="customer", widget=UnfoldAdminTextInputWidget, help_text="e.g. customer, sale, order"
    )
    reference_id = forms.IntegerField(required=False, help_text="The id of that sale / order, if any")


@admin.register(UnallocatedPayment)
class UnallocatedPaymentAdmin(PaymentReadOnly):
    """Money in suspense, waiting for a person to say whose it is."""

    actions = ["allocate"]

    def get_queryset(self, request: HttpRequest) -> QuerySet[Any]:
        return super().get_queryset(request).filter(status=PaymentStatus.UNALLOCATED)

    def has_allocate_permission(self, request: HttpRequest) -> bool:
        return bool(request.user.has_perm(ALLOCATE_PAYMENT))

    @action(description="Allocate selected payments", permissions=["allocate"])
    def allocate(self, request: HttpRequest, queryset: QuerySet[UnallocatedPayment]) -> HttpResponse | None:
        businesses = set(queryset.values_list("business_id", flat=True))
        customers = Customer.objects.filter(business_id__in=businesses, is_active=True).order_by("name")
        if not sees_all_businesses(request.user):
            customers = customers.filter(business_id__in=visible_business_ids(request.user))
        form = AllocateForm(request.POST if "confirm" in request.POST else None)
        form.fields["customer"].queryset = customers  # type: ignore[attr-defined]
        if form.is_bound and form.is_valid():
            data = form.cleaned_data
            self.run_each(
                request,
                queryset,
                lambda p: payment_allocate(
                    payment=p,
                    credit_role=data["credit_role"],
                    customer=data["customer"],
                    reference_kind=data["reference_kind"],
                    reference_id=data["reference_id"],
                    acting_user=request.user,
                ),
                "Payments allocated",
            )
            return None
        context = {
            **self.admin_site.each_context(request),
            "title": "Allocate payments",
            "form": form,
            "payments": queryset.order_by("pk"),
            "action": "allocate",
            "opts": self.model._meta,
            "action_checkbox_name": helpers.ACTION_CHECKBOX_NAME,
        }
        return render(request, "admin/mpesa/allocate.html", context)


@admin.register(Reversal)
class ReversalAdmin(ScopedMpesaAdmin):
    list_display = ["id", "created_at", "payment", "amount", "state", "result_desc", "requested_by"]
    list_filter = ["state"]
    search_fields = ["payment__receipt", "conversation_id"]
    list_select_related = ["payment", "requested_by"]

    def has_add_permission(self, request: HttpRequest) -> bool:
        return False  # asked from the payments list

    def has_change_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return False

    def has_delete_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return False


# ------------------------------------------------------------------------------------ reconciliation


class ReconciliationRunForm(forms.ModelForm):  # type: ignore[type-arg]
    class Meta:
        model = ReconciliationRun
        fields = ["till", "statement"]
        help_texts = {"statement": "The org-portal statement export (CSV or XLSX), as downloaded"}


@admin.register(ReconciliationRun)
class ReconciliationRunAdmin(ScopedMpesaAdmin):
    form = ReconciliationRunForm
    list_display = [
        "id",
        "till",
        "created_at",
        "state",
        "period_start",
        "period_end",
        "matched_count",
        "missing_in_books_count",
        "missing_in_statement_count",
        "mismatch_count",
        "charges_count",
        "balance_difference",
        "differences",
    ]
    list_filter = ["state"]
    list_select_related = ["till"]
    actions = ["reconcile"]
    readonly_fields = [
        "business",
        "state",
        "period_start",
        "period_end",
        "matched_count",
        "missing_in_books_count",
        "missing_in_statement_count",
        "mismatch_count",
        "charges_count",
        "statement_shortcode",
        "statement_organisation",
        "opening_balance",
        "closing_balance",
        "books_movement",
        "balance_difference",
        "notes",
        "error",
        "uploaded_by",
        "created_at",
        "finished_at",
        "differences",
    ]

    def get_fields(self, request: HttpRequest, obj: Any = None) -> Any:
        return ["till", "statement"] if obj is None else ["till", "statement", *self.readonly_fields]

    def has_change_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return False if obj is not None else super().has_change_permission(request, obj)

    def save_model(self, request: HttpRequest, obj: ReconciliationRun, form: Any, change: bool) -> None:
        obj.business_id = obj.till.business_id
        obj.uploaded_by = request.user  # type: ignore[assignment]
        super().save_model(request, obj, form, change)

    @display(description="Lines")
    def differences(self, obj: ReconciliationRun) -> str:
        if not obj.pk:
            return "-"
        link = reverse("admin:integrations_reconciliationline_changelist") + f"?run__id__exact={obj.pk}"
        return format_html('<a href="{}" class="text-primary-600">See the lines</a>', link)

    @action(description="Reconcile (run as a background job)", permissions=["change"])
    def reconcile(self, request: HttpRequest, queryset: QuerySet[ReconciliationRun]) -> None:
        for run in queryset.order_by("pk"):
            job = reconciliation_launch(run=run, acting_user=request.user)
            self.message_user(request, f"Reconciliation {run.pk} queued as job #{job.pk}.", messages.SUCCESS)


@admin.register(ReconciliationLine)
class ReconciliationLineAdmin(ScopedMpesaAdmin):
    list_display = ["receipt", "run", "completed_at", "status", "statement_amount", "books_amount", "details"]
    list_filter = ["status", "run"]
    search_fields = ["receipt", "details", "other_party"]
    list_select_related = ["run"]
    actions = ["post_missing"]

    def has_add_permission(self, request: HttpRequest) -> bool:
        return False

    def has_change_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return False

    def has_delete_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return False

    def has_post_missing_permission(self, request: HttpRequest) -> bool:
        return bool(request.user.has_perm(POST_MISSING_RECEIPT))

    @action(description="Post selected statement receipts missing from the books", permissions=["post_missing"])
    def post_missing(self, request: HttpRequest, queryset: QuerySet[ReconciliationLine]) -> None:
        self.run_each(
            request,
            queryset.filter(status=LineStatus.MISSING_IN_BOOKS),
            lambda line: reconciliation_post_missing(line=line, acting_user=request.user),
            "Receipts posted",
        )

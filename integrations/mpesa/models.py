"""M-Pesa rows: tills, the raw callback inbox, payments received, STK requests, reversals and
statement reconciliation.

The inbox is the store of record for everything Daraja sends: a callback is saved here (raw body
and headers) before it is answered, unique on the Daraja id, and processed from here by the
`payments` queue. Redis only carries "look at inbox row N"; losing Redis loses no payment.
"""

from __future__ import annotations

import secrets

from django.conf import settings
from django.contrib.postgres.fields import ArrayField
from django.db import models
from django.db.models import Q

from accounts.fields import MoneyField
from integrations.mpesa.payloads import RECEIPT_MAX_LENGTH
from tenancy.models import Business

# Daraja refuses callback URLs containing these words anywhere, so a token must not contain one.
FORBIDDEN_URL_WORDS = ("mpesa", "safaricom", "exe", "exec", "cmd", "sql", "query")


def new_callback_token() -> str:
    """A random URL-safe token (192 bits) that Daraja will accept inside a callback URL."""
    while True:
        token = secrets.token_urlsafe(24)
        if not any(word in token.lower() for word in FORBIDDEN_URL_WORDS):
            return token


class TillKind(models.TextChoices):
    TILL = "till", "Till (Buy Goods)"
    PAYBILL = "paybill", "Paybill"


class DarajaEnvironment(models.TextChoices):
    SANDBOX = "sandbox", "Sandbox"
    PRODUCTION = "production", "Production"


class Till(models.Model):
    """A till or paybill of one business, with its Daraja credentials (encrypted at rest)."""

    business = models.ForeignKey(Business, on_delete=models.PROTECT, related_name="tills")
    name = models.CharField(max_length=80)
    shortcode = models.CharField(max_length=12, help_text="Till number or paybill number")
    kind = models.CharField(max_length=10, choices=TillKind.choices, default=TillKind.TILL)
    # For Buy Goods, STK Push goes to the till number (PartyB) but is signed by the store
    # (head office) number; leave empty when both are the same (paybills).
    store_number = models.CharField(max_length=12, blank=True, default="")
    environment = models.CharField(max_length=12, choices=DarajaEnvironment.choices, default=DarajaEnvironment.SANDBOX)
    # Secrets: Fernet ciphertext (integrations/mpesa/secrets.py), or read from environment
    # variables <credentials_env_prefix>CONSUMER_KEY etc. when a prefix is set. Never displayed.
    credentials_env_prefix = models.CharField(
        max_length=40,
        blank=True,
        default="",
        help_text="If set, credentials come from environment variables with this prefix "
        "(e.g. MPESA_WATER_ -> MPESA_WATER_CONSUMER_KEY, _CONSUMER_SECRET, _PASSKEY, "
        "_INITIATOR_NAME, _SECURITY_CREDENTIAL) instead of the encrypted fields.",
    )
    consumer_key_encrypted = models.TextField(blank=True, default="", editable=False)
    consumer_secret_encrypted = models.TextField(blank=True, default="", editable=False)
    passkey_encrypted = models.TextField(blank=True, default="", editable=False)
    initiator_name = models.CharField(max_length=60, blank=True, default="")
    security_credential_encrypted = models.TextField(blank=True, default="", editable=False)
    callback_token = models.CharField(max_length=64, unique=True, default=new_callback_token, editable=False)
    callback_base_url = models.URLField(
        blank=True, default="", help_text="Public HTTPS base of this back office, e.g. https://office.example.co.ke"
    )
    allowed_ips = models.TextField(
        blank=True,
        default="",
        help_text="Optional: Daraja's source addresses or networks, comma or newline separated. "
        "Callbacks from elsewhere are stored but held for a person, never processed.",
    )
    validate_account_reference = models.BooleanField(
        default=False,
        help_text="C2B validation (paybills with external validation enabled): reject payments whose "
        "account number matches no customer, sale or order.",
    )
    min_amount = MoneyField(default=1)
    max_amount = MoneyField(default=250000)
    is_active = models.BooleanField(default=True)
    created_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        ordering = ["business__name", "name"]
        constraints = [
            models.UniqueConstraint(fields=["shortcode", "environment"], name="till_shortcode_env_uniq"),
            # C2B confirmations are accepted on a till's URL for its shortcode or its store number, and
            # URL registration for a Buy Goods till goes by the store number: two tills sharing one
            # would receive (and post) each other's money, across businesses too.
            models.UniqueConstraint(
                fields=["store_number", "environment"],
                condition=~Q(store_number=""),
                name="till_store_number_env_uniq",
                violation_error_message="Another till already uses this store number.",
            ),
            models.CheckConstraint(
                condition=Q(min_amount__gt=0) & Q(max_amount__gte=models.F("min_amount")),
                name="till_amount_limits_valid",
            ),
        ]

    def __str__(self) -> str:
        return f"{self.name} ({self.shortcode})"


class InboxKind(models.TextChoices):
    STK_CALLBACK = "stk", "STK callback"
    C2B_VALIDATION = "c2b_validation", "C2B validation"
    C2B_CONFIRMATION = "c2b_confirmation", "C2B confirmation"
    STATUS_RESULT = "result_status", "Transaction status result"
    STATUS_TIMEOUT = "timeout_status", "Transaction status timeout"
    REVERSAL_RESULT = "result_reversal", "Reversal result"
    REVERSAL_TIMEOUT = "timeout_reversal", "Reversal timeout"
    BALANCE_RESULT = "result_balance", "Account balance result"
    BALANCE_TIMEOUT = "timeout_balance", "Account balance timeout"


class InboxState(models.TextChoices):
    RECEIVED = "received", "Received"
    PROCESSED = "processed", "Processed"
    FAILED = "failed", "Failed (will be retried)"
    NEEDS_ATTENTION = "attention", "Needs a person"


class InboxMessage(models.Model):
    """One callback exactly as Daraja sent it. Unique on (kind, daraja_id, body_sha256): a
    byte-identical duplicate is a no-op; another body for a known (kind, daraja_id) is a new row,
    flagged for a person (inbox.inbox_store)."""

    till = models.ForeignKey(Till, on_delete=models.PROTECT, related_name="inbox")
    kind = models.CharField(max_length=20, choices=InboxKind.choices)
    # The Daraja id (CheckoutRequestID, TransID, ConversationID...), or "malformed:<sha256>".
    daraja_id = models.CharField(max_length=120)
    body = models.TextField()
    # Hex SHA-256 of `body` as stored (UTF-8), i.e. encode(sha256(convert_to(body, 'UTF8')), 'hex').
    body_sha256 = models.CharField(max_length=64, blank=True, default="")
    headers = models.JSONField(default=dict)
    remote_addr = models.GenericIPAddressField(null=True, blank=True)
    received_at = models.DateTimeField(auto_now_add=True, db_index=True)
    state = models.CharField(max_length=12, choices=InboxState.choices, default=InboxState.RECEIVED)
    attempts = models.PositiveIntegerField(default=0)
    last_enqueued_at = models.DateTimeField(null=True, blank=True)
    processed_at = models.DateTimeField(null=True, blank=True)
    # One line: what went wrong last (the traceback field has the whole story).
    error = models.TextField(blank=True, default="")
    # The Python traceback of the last failed attempt, for whoever must fix the cause.
    traceback = models.TextField(blank=True, default="")
    # What the processing decided, for people reading the inbox (e.g. "posted entry 42").
    outcome = models.CharField(max_length=255, blank=True, default="")

    class Meta:
        ordering = ["-received_at", "-id"]
        permissions = [("reprocess_inboxmessage", "Can send a held M-Pesa callback for processing again")]
        constraints = [
            models.UniqueConstraint(fields=["kind", "daraja_id", "body_sha256"], name="inbox_kind_daraja_id_body_uniq"),
        ]
        indexes = [
            # The sweeper's query: rows not yet processed, oldest first.
            models.Index(
                fields=["received_at"], condition=Q(state__in=["received", "failed"]), name="inbox_pending_idx"
            ),
            # The payments task's: payment callbacks waiting, oldest first, taken with SKIP LOCKED
            # (inbox.inbox_process_group). Its predicate is the query's, so the plan is this index
            # scanned in order, which marks the entries of rows processed since and skips them after.
            models.Index(
                fields=["id"],
                condition=Q(state="received", kind__in=["stk", "c2b_confirmation"]),
                name="inbox_payments_waiting_idx",
            ),
        ]

    def __str__(self) -> str:
        return f"{self.get_kind_display()} {self.daraja_id}"


class PaymentRequestState(models.TextChoices):
    SENDING = "sending", "Being sent"
    SENT = "sent", "Sent to phone"
    PAID_AWAITING_CALLBACK = "paid_query", "Paid (per STK Query; awaiting callback)"
    PAID = "paid", "Paid"
    CANCELLED = "cancelled", "Cancelled by customer"
    FAILED = "failed", "Failed"
    TIMEOUT = "timeout", "No answer from customer"
    ERROR = "error", "Could not send"


class PaymentRequest(models.Model):
    """An STK Push sent to a customer's phone, and what became of it."""

    till = models.ForeignKey(Till, on_delete=models.PROTECT, related_name="payment_requests")
    business = models.ForeignKey(Business, on_delete=models.PROTECT, related_name="payment_requests")
    phone = models.CharField(max_length=12, help_text="2547XXXXXXXX")
    amount = MoneyField()
    account_reference = models.CharField(max_length=12)
    description = models.CharField(max_length=13)
    merchant_request_id = models.CharField(max_length=80, blank=True, default="")
    checkout_request_id = models.CharField(max_length=80, blank=True, default="", db_index=True)
    state = models.CharField(max_length=12, choices=PaymentRequestState.choices, default=PaymentRequestState.SENT)
    result_code = models.IntegerField(null=True, blank=True)
    result_desc = models.CharField(max_length=255, blank=True, default="")
    receipt = models.CharField(max_length=RECEIPT_MAX_LENGTH, blank=True, default="")
    requested_by = models.ForeignKey(
        settings.AUTH_USER_MODEL, on_delete=models.SET_NULL, null=True, blank=True, related_name="+"
    )
    created_at = models.DateTimeField(auto_now_add=True, db_index=True)
    last_queried_at = models.DateTimeField(null=True, blank=True)
    query_attempts = models.PositiveSmallIntegerField(default=0)
    completed_at = models.DateTimeField(null=True, blank=True)

    class Meta:
        ordering = ["-created_at", "-id"]
        permissions = [("request_stk_payment", "Can send an STK Push payment request to a customer's phone")]
        constraints = [
            models.UniqueConstraint(
                fields=["checkout_request_id"],
                condition=~Q(checkout_request_id=""),
                name="payment_request_checkout_uniq",
            ),
            models.CheckConstraint(condition=Q(amount__gt=0), name="payment_request_amount_positive"),
        ]

    def __str__(self) -> str:
        return f"STK {self.amount} to {self.phone} ({self.get_state_display()})"


class PaymentStatus(models.TextChoices):
    ALLOCATED = "allocated", "Allocated"
    UNALLOCATED = "unallocated", "Unallocated (in suspense)"
    REVERSED = "reversed", "Reversed"


class Payment(models.Model):
    """Money received through M-Pesa: one row per receipt, whatever callbacks announced it."""

    business = models.ForeignKey(Business, on_delete=models.PROTECT, related_name="mpesa_payments")
    till = models.ForeignKey(Till, on_delete=models.PROTECT, related_name="payments")
    receipt = models.CharField(max_length=RECEIPT_MAX_LENGTH, unique=True, help_text="M-Pesa receipt / TransID")
    amount = MoneyField()
    paid_at = models.DateTimeField()
    msisdn = models.CharField(max_length=80, blank=True, default="", help_text="As Daraja sent it")
    msisdn_kind = models.CharField(max_length=10, blank=True, default="")
    payer_name = models.CharField(max_length=120, blank=True, default="")
    account_reference = models.CharField(max_length=40, blank=True, default="")
    payment_request = models.ForeignKey(
        PaymentRequest, on_delete=models.SET_NULL, null=True, blank=True, related_name="payments"
    )
    customer = models.ForeignKey(
        "operations.Customer", on_delete=models.SET_NULL, null=True, blank=True, related_name="mpesa_payments"
    )
    status = models.CharField(max_length=12, choices=PaymentStatus.choices)
    matched_by = models.CharField(max_length=40, blank=True, default="")
    # What the payment was matched (or allocated) to: ("sale", 42), ("customer", 7), ...
    reference_kind = models.CharField(max_length=30, blank=True, default="")
    reference_id = models.BigIntegerField(null=True, blank=True)
    match_description = models.CharField(max_length=255, blank=True, default="")
    entry = models.ForeignKey("accounts.JournalEntry", on_delete=models.PROTECT, related_name="+")
    allocation_entry = models.ForeignKey(
        "accounts.JournalEntry", on_delete=models.PROTECT, null=True, blank=True, related_name="+"
    )
    allocated_by = models.ForeignKey(
        settings.AUTH_USER_MODEL, on_delete=models.SET_NULL, null=True, blank=True, related_name="+"
    )
    allocated_at = models.DateTimeField(null=True, blank=True)
    # What of the amount still sits in suspense, waiting for a person (all of it when unmatched;
    # the part over what the matched sale owed when it has no customer to credit).
    unallocated_amount = MoneyField(default=0, editable=False)
    created_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        ordering = ["-paid_at", "-id"]
        permissions = [
            ("reverse_payment", "Can ask Daraja to reverse an M-Pesa payment"),
            ("allocate_payment", "Can allocate an M-Pesa payment in suspense (or settle a sale with it)"),
        ]
        constraints = [
            models.CheckConstraint(condition=Q(amount__gt=0), name="payment_amount_positive"),
            models.CheckConstraint(
                condition=Q(unallocated_amount__gte=0, unallocated_amount__lte=models.F("amount")),
                name="payment_unallocated_within_amount",
            ),
            # In the suspense queue exactly while some of it is in suspense.
            models.CheckConstraint(
                condition=Q(status="unallocated", unallocated_amount__gt=0)
                | (~Q(status="unallocated") & Q(unallocated_amount=0)),
                name="payment_unallocated_status",
            ),
        ]
        indexes = [models.Index(fields=["business", "status"], name="payment_business_status")]

    def __str__(self) -> str:
        return f"{self.receipt} KES {self.amount}"


class PaymentApplication(models.Model):
    """Where one posting put (part of) a payment: the receipt's own entry, then each allocation
    from suspense. `applied` settled the reference, `credit` went to the customer's credit (both
    on receivables), `unallocated` stayed in suspense. Reversals undo each row
    (reversals.payment_reverse_entries)."""

    payment = models.ForeignKey(Payment, on_delete=models.PROTECT, related_name="applications")
    entry = models.OneToOneField("accounts.JournalEntry", on_delete=models.PROTECT, related_name="+")
    credit_role = models.CharField(max_length=40, default="receivables")
    customer = models.ForeignKey(
        "operations.Customer", on_delete=models.SET_NULL, null=True, blank=True, related_name="+"
    )
    reference_kind = models.CharField(max_length=30, blank=True, default="")
    reference_id = models.BigIntegerField(null=True, blank=True)
    applied = MoneyField(default=0)
    credit = MoneyField(default=0)
    unallocated = MoneyField(default=0)
    reversal_entry = models.OneToOneField(
        "accounts.JournalEntry", on_delete=models.PROTECT, null=True, blank=True, related_name="+"
    )
    created_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        ordering = ["id"]
        constraints = [
            models.CheckConstraint(
                condition=Q(applied__gte=0, credit__gte=0, unallocated__gte=0), name="paymentapplication_not_negative"
            ),
        ]

    def __str__(self) -> str:
        return f"{self.payment_id}: {self.applied} applied, {self.credit} credit, {self.unallocated} in suspense"


class UnallocatedPayment(Payment):
    """The queue of money in suspense that a person must allocate (a proxy: its own admin page)."""

    class Meta:
        proxy = True
        verbose_name = "unallocated payment"
        verbose_name_plural = "unallocated payments"


class ReversalState(models.TextChoices):
    REQUESTED = "requested", "Requested (awaiting result)"
    COMPLETED = "completed", "Completed"
    FAILED = "failed", "Failed"
    ERROR = "error", "Could not send"


class Reversal(models.Model):
    """A reversal of a received payment asked of Daraja; posted only when its result confirms it."""

    business = models.ForeignKey(Business, on_delete=models.PROTECT, related_name="mpesa_reversals")
    payment = models.ForeignKey(Payment, on_delete=models.PROTECT, related_name="reversals")
    amount = MoneyField()
    reason = models.CharField(max_length=100)
    state = models.CharField(max_length=12, choices=ReversalState.choices, default=ReversalState.REQUESTED)
    conversation_id = models.CharField(max_length=120, blank=True, default="")
    originator_conversation_id = models.CharField(max_length=120, blank=True, default="")
    result_code = models.CharField(max_length=20, blank=True, default="")
    result_desc = models.CharField(max_length=255, blank=True, default="")
    reversal_receipt = models.CharField(max_length=32, blank=True, default="")
    entry = models.ForeignKey(
        "accounts.JournalEntry", on_delete=models.PROTECT, null=True, blank=True, related_name="+"
    )
    requested_by = models.ForeignKey(
        settings.AUTH_USER_MODEL, on_delete=models.SET_NULL, null=True, blank=True, related_name="+"
    )
    created_at = models.DateTimeField(auto_now_add=True)
    completed_at = models.DateTimeField(null=True, blank=True)

    class Meta:
        ordering = ["-created_at", "-id"]
        constraints = [
            models.UniqueConstraint(
                fields=["conversation_id"], condition=~Q(conversation_id=""), name="reversal_conversation_uniq"
            ),
            # One live or completed reversal per payment; failed ones may be asked again.
            models.UniqueConstraint(
                fields=["payment"],
                condition=Q(state__in=["requested", "completed"]),
                name="reversal_one_active_per_payment",
            ),
            models.CheckConstraint(condition=Q(amount__gt=0), name="reversal_amount_positive"),
        ]

    def __str__(self) -> str:
        return f"Reversal of {self.payment_id} ({self.get_state_display()})"


class StatusQueryState(models.TextChoices):
    SENT = "sent", "Sent (awaiting result)"
    CONFIRMED = "confirmed", "Completed payment into this till"
    NOT_COMPLETED = "not_completed", "Not a completed payment into this till"
    FAILED = "failed", "Daraja could not tell"
    TIMEOUT = "timeout", "No result from Daraja"
    ERROR = "error", "Could not send"
    RETRY = "retry", "No definite answer yet (asked again later)"
    NEEDS_ATTENTION = "attention", "Needs a person (no definite answer)"


class StatusQueryReason(models.TextChoices):
    MANUAL = "manual", "Asked by a person"
    LOST_CONFIRMATION = "lost_confirmation", "Validated, confirmation never came"


class StatusQuery(models.Model):
    """A Transaction Status query about one M-Pesa receipt, and its answer.

    Asked by a person (the receipt from the customer's SMS) or by the recovery job (a C2B payment
    that was validated but whose confirmation never came). A result saying the receipt is a
    completed payment into this till records and posts it like a callback would (once per receipt).
    """

    business = models.ForeignKey(Business, on_delete=models.PROTECT, related_name="mpesa_status_queries")
    till = models.ForeignKey(Till, on_delete=models.PROTECT, related_name="status_queries")
    receipt = models.CharField(max_length=RECEIPT_MAX_LENGTH, db_index=True, help_text="M-Pesa receipt / TransID")
    reason = models.CharField(max_length=20, choices=StatusQueryReason.choices, default=StatusQueryReason.MANUAL)
    payment_request = models.ForeignKey(
        PaymentRequest, on_delete=models.SET_NULL, null=True, blank=True, related_name="status_queries"
    )
    account_reference = models.CharField(max_length=40, blank=True, default="")
    state = models.CharField(max_length=14, choices=StatusQueryState.choices, default=StatusQueryState.SENT)
    conversation_id = models.CharField(max_length=120, blank=True, default="")
    originator_conversation_id = models.CharField(max_length=120, blank=True, default="")
    result_code = models.CharField(max_length=20, blank=True, default="")
    result_desc = models.CharField(max_length=255, blank=True, default="")
    transaction_status = models.CharField(max_length=40, blank=True, default="")
    amount = MoneyField(null=True, blank=True)
    payment = models.ForeignKey(Payment, on_delete=models.PROTECT, null=True, blank=True, related_name="+")
    requested_by = models.ForeignKey(
        settings.AUTH_USER_MODEL, on_delete=models.SET_NULL, null=True, blank=True, related_name="+"
    )
    created_at = models.DateTimeField(auto_now_add=True, db_index=True)
    completed_at = models.DateTimeField(null=True, blank=True)
    # Lost confirmations are asked again until a definite answer (recovery job): how many times
    # Daraja was asked, when to ask next, and the ids of earlier tries, whose late results still apply.
    attempts = models.PositiveSmallIntegerField(default=1)
    next_attempt_at = models.DateTimeField(null=True, blank=True)
    earlier_conversation_ids = ArrayField(models.CharField(max_length=120), default=list, blank=True)

    class Meta:
        ordering = ["-created_at", "-id"]
        verbose_name = "transaction status query"
        verbose_name_plural = "transaction status queries"
        constraints = [
            models.UniqueConstraint(
                fields=["conversation_id"], condition=~Q(conversation_id=""), name="status_query_conversation_uniq"
            ),
            # The recovery job asks about a lost confirmation once, even if two runs overlap.
            models.UniqueConstraint(
                fields=["receipt"], condition=Q(reason="lost_confirmation"), name="status_query_lost_once"
            ),
        ]
        indexes = [
            # The recovery job's query: lost confirmations to ask again.
            models.Index(
                fields=["next_attempt_at"],
                condition=Q(reason="lost_confirmation", state__in=["sent", "retry"]),
                name="status_query_due_idx",
            ),
        ]

    def __str__(self) -> str:
        return f"Status of {self.receipt} ({self.get_state_display()})"


class ReconciliationState(models.TextChoices):
    UPLOADED = "uploaded", "Uploaded"
    QUEUED = "queued", "Queued"
    DONE = "done", "Done"
    FAILED = "failed", "Failed"


class ReconciliationRun(models.Model):
    """One org-portal statement file matched receipt by receipt against the books."""

    business = models.ForeignKey(Business, on_delete=models.PROTECT, related_name="mpesa_reconciliations")
    till = models.ForeignKey(Till, on_delete=models.PROTECT, related_name="reconciliations")
    statement = models.FileField(upload_to="mpesa/statements/%Y/%m/")
    state = models.CharField(max_length=10, choices=ReconciliationState.choices, default=ReconciliationState.UPLOADED)
    period_start = models.DateField(null=True, blank=True)
    period_end = models.DateField(null=True, blank=True)
    matched_count = models.PositiveIntegerField(default=0)
    missing_in_books_count = models.PositiveIntegerField(default=0)
    missing_in_statement_count = models.PositiveIntegerField(default=0)
    mismatch_count = models.PositiveIntegerField(default=0)
    charges_count = models.PositiveIntegerField(default=0)
    # From the statement's description lines (blank when it carries none).
    statement_shortcode = models.CharField(max_length=20, blank=True, default="")
    statement_organisation = models.CharField(max_length=120, blank=True, default="")
    # Balance check: the statement's closing - opening balance against the books' movement of the
    # till's money over the period; a difference is money moved outside the back office (or missing).
    opening_balance = MoneyField(null=True, blank=True)
    closing_balance = MoneyField(null=True, blank=True)
    books_movement = MoneyField(null=True, blank=True)
    balance_difference = MoneyField(null=True, blank=True)
    # What the run could not check (no shortcode in the statement, no balances...).
    notes = models.CharField(max_length=255, blank=True, default="")
    error = models.TextField(blank=True, default="")
    uploaded_by = models.ForeignKey(
        settings.AUTH_USER_MODEL, on_delete=models.SET_NULL, null=True, blank=True, related_name="+"
    )
    created_at = models.DateTimeField(auto_now_add=True)
    finished_at = models.DateTimeField(null=True, blank=True)

    class Meta:
        ordering = ["-created_at", "-id"]

    def __str__(self) -> str:
        return f"Reconciliation {self.pk} of {self.till}"


class LineStatus(models.TextChoices):
    MATCHED = "matched", "Matched"
    MISSING_IN_BOOKS = "missing_in_books", "In the statement, not in the books"
    MISSING_IN_STATEMENT = "missing_in_statement", "In the books, not in the statement"
    AMOUNT_MISMATCH = "amount_mismatch", "Amount mismatch"
    CHARGE = "charge", "Charge"
    OTHER = "other", "Not a payment (ignored)"
    BALANCE_DIFFERENCE = "balance_difference", "Balance difference (money moved outside the books?)"


class ReconciliationLine(models.Model):
    run = models.ForeignKey(ReconciliationRun, on_delete=models.CASCADE, related_name="lines")
    business = models.ForeignKey(Business, on_delete=models.PROTECT, related_name="+")
    receipt = models.CharField(max_length=32)
    completed_at = models.DateTimeField(null=True, blank=True)
    details = models.CharField(max_length=255, blank=True, default="")
    statement_amount = MoneyField(null=True, blank=True)
    books_amount = MoneyField(null=True, blank=True)
    status = models.CharField(max_length=24, choices=LineStatus.choices)
    linked_receipt = models.CharField(max_length=32, blank=True, default="")
    other_party = models.CharField(max_length=120, blank=True, default="")
    account_number = models.CharField(max_length=40, blank=True, default="")
    payment = models.ForeignKey(Payment, on_delete=models.SET_NULL, null=True, blank=True, related_name="+")
    entry = models.ForeignKey(
        "accounts.JournalEntry", on_delete=models.PROTECT, null=True, blank=True, related_name="+"
    )

    class Meta:
        ordering = ["run", "id"]
        permissions = [("post_missing_receipt", "Can post a statement receipt that is missing from the books")]
        constraints = [models.UniqueConstraint(fields=["run", "receipt"], name="recon_line_run_receipt_uniq")]

    def __str__(self) -> str:
        return f"{self.receipt} {self.get_status_display()}"

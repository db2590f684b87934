"""STK Push: asking a customer's phone for a PIN, the callbacks that answer, and the recovery of
requests whose answer never came."""

from __future__ import annotations

import datetime as dt
import logging
from decimal import Decimal
from typing import Any, TypeVar

from django.db import connection, models, transaction
from django.utils import timezone

from integrations.mpesa.exceptions import (
    DarajaError,
    DarajaTransientError,
    DarajaUnavailable,
    InvalidRequest,
    NeedsAttention,
)
from integrations.mpesa.models import InboxMessage, PaymentRequest, PaymentRequestState, Till, TillKind
from integrations.mpesa.payloads import StkCallback, parse_stk_callback
from integrations.mpesa.payments import PostingGroup, payment_outcome, payment_record
from integrations.mpesa.secrets import SecretUnreadable
from integrations.mpesa.tills import daraja_client_for, till_callback_urls
from operations.exceptions import InvalidInput, InvalidState
from operations.models import Sale, SaleStatus
from operations.phones import normalise_msisdn
from operations.services.postings import same_business

logger = logging.getLogger(__name__)

M = TypeVar("M", bound=models.Model)


_STK_STATES = {
    "cancelled": PaymentRequestState.CANCELLED,
    "timeout": PaymentRequestState.TIMEOUT,
    "wrong_pin": PaymentRequestState.FAILED,
    "insufficient_funds": PaymentRequestState.FAILED,
    "failed": PaymentRequestState.FAILED,
}


def stk_callback_process(
    msg: InboxMessage, *, callback: StkCallback | None = None, group: PostingGroup | None = None
) -> str:
    """Settle the STK request an STK callback answers and record its payment, if any. `callback`:
    the body already parsed; `group`: the transaction's PostingGroup (inbox.inbox_process_group)."""
    cb = callback or parse_stk_callback(msg.body)
    group = group or PostingGroup()
    group.requests_lock([cb.checkout_request_id])
    request = group.requests.get(cb.checkout_request_id)
    if request is not None and request.till_id != msg.till_id:
        raise NeedsAttention(f"STK request {request.pk} belongs to another till than the callback URL's")
    if not cb.succeeded:
        category = cb.category
        if request is not None and request.state != PaymentRequestState.PAID:
            request.state = _STK_STATES[category]
            request.result_code = cb.result_code
            request.result_desc = cb.result_desc[:255]
            request.completed_at = timezone.now()
            request.save(update_fields=["state", "result_code", "result_desc", "completed_at"])
        who = f"request {request.pk}" if request else "an unknown request"
        return f"STK {category} ({cb.result_code}) for {who}: {cb.result_desc}"
    assert cb.mpesa_receipt_number and cb.amount is not None and cb.transaction_date is not None
    if request is not None:
        request.state = PaymentRequestState.PAID
        request.result_code = cb.result_code
        request.result_desc = cb.result_desc[:255]
        request.receipt = cb.mpesa_receipt_number
        request.completed_at = timezone.now()
        request.save(update_fields=["state", "result_code", "result_desc", "receipt", "completed_at"])
    phone = cb.phone_number or (request.phone if request else "")
    payment, created = payment_record(
        till=msg.till,
        receipt=cb.mpesa_receipt_number,
        amount=cb.amount,
        paid_at=cb.transaction_date,
        msisdn=phone,
        payer_name="",
        account_reference=request.account_reference if request else "",
        payment_request=request,
        group=group,
    )
    return payment_outcome(payment, created)


def stk_push_request(
    *,
    till: Till,
    phone: str,
    amount: Decimal,
    account_reference: str,
    description: str,
    acting_user: Any,
) -> PaymentRequest:
    """Send an STK Push (PIN prompt) for `amount` to `phone`, and track it as a PaymentRequest.

    The request row is committed first, then Daraja is called outside any transaction (it can take
    seconds). On acceptance the row keeps the CheckoutRequestID (the callback and STK Query meet on
    it) and stays "sent"; on refusal or an unusable answer it is "error" with the message. Never
    resent automatically: a second push could make the customer pay twice. Raises InvalidRequest
    for a bad phone, amount or inactive till, before anything is stored.
    """
    if not till.is_active:
        raise InvalidRequest(f"till {till} is not active")
    try:
        number = normalise_msisdn(phone)
    except ValueError as exc:
        raise InvalidRequest(str(exc)) from exc
    amount = Decimal(str(amount))
    if amount != amount.to_integral_value() or not till.min_amount <= amount <= min(till.max_amount, 250000):
        raise InvalidRequest(
            f"amount {amount} must be whole shillings between {till.min_amount} and {min(till.max_amount, 250000)}"
        )
    reference = (account_reference or "").strip()[:12] or till.shortcode
    desc = (description or "").strip()[:13] or "Payment"
    with transaction.atomic():
        request = PaymentRequest.objects.create(
            till=till,
            business_id=till.business_id,
            phone=number,
            amount=amount,
            account_reference=reference,
            description=desc,
            state=PaymentRequestState.SENDING,
            requested_by=acting_user if getattr(acting_user, "pk", None) else None,
        )
    if connection.in_atomic_block:
        logger.warning("stk_push_request called inside a transaction: Daraja is called while it is open")
    try:
        client = daraja_client_for(till)
        try:
            answer = client.stk_push(
                amount=amount,
                phone=number,
                account_reference=reference,
                transaction_desc=desc,
                callback_url=till_callback_urls(till)["stk"],
                transaction_type="CustomerBuyGoodsOnline" if till.kind == TillKind.TILL else "CustomerPayBillOnline",
                party_b=till.shortcode,
            )
        finally:
            client.close()
    except (DarajaError, DarajaUnavailable, InvalidRequest, SecretUnreadable, ValueError) as exc:
        message = str(exc)
        if isinstance(exc, DarajaTransientError) and exc.may_have_been_processed:
            message = f"{message} - the prompt may have reached the phone: wait for the payment before asking again"
        PaymentRequest.objects.filter(pk=request.pk).update(
            state=PaymentRequestState.ERROR, result_desc=message[:255], completed_at=timezone.now()
        )
        request.refresh_from_db()
        return request
    PaymentRequest.objects.filter(pk=request.pk, state=PaymentRequestState.SENDING).update(
        state=PaymentRequestState.SENT,
        merchant_request_id=answer.merchant_request_id,
        checkout_request_id=answer.checkout_request_id,
        result_desc=answer.customer_message[:255],
    )
    request.refresh_from_db()
    return request


def payment_requests_recover(*, older_than_seconds: int = 180, batch_size: int = 50) -> dict[str, int]:
    """Ask Daraja (STK Query) about requests "sent" longer ago than `older_than_seconds` with no callback.

    "Still being processed" stays sent (asked again next time); a failure updates the request;
    a success marks it "paid (awaiting callback)": STK Query carries no receipt, so the posting is
    left to the callback, the C2B confirmation or reconciliation. Safe to run concurrently
    (rows are claimed with SKIP LOCKED) and repeatedly. Returns counts by outcome.
    """
    cutoff = timezone.now() - dt.timedelta(seconds=older_than_seconds)
    counts: dict[str, int] = {}
    with transaction.atomic():
        ids = list(
            PaymentRequest.objects.select_for_update(skip_locked=True)
            .filter(state=PaymentRequestState.SENT, created_at__lte=cutoff)
            .exclude(checkout_request_id="")
            .exclude(last_queried_at__gt=cutoff)
            .order_by("created_at")
            .values_list("id", flat=True)[:batch_size]
        )
        PaymentRequest.objects.filter(pk__in=ids).update(last_queried_at=timezone.now())
    for request in PaymentRequest.objects.filter(pk__in=ids).select_related("till").order_by("created_at", "id"):
        outcome = payment_requests_recover_one(request=request)
        counts[outcome] = counts.get(outcome, 0) + 1
    return counts


def payment_requests_recover_one(*, request: PaymentRequest) -> str:
    """STK Query for one sent request (see payment_requests_recover); returns the outcome."""
    try:
        client = daraja_client_for(request.till)
        try:
            result = client.stk_query(checkout_request_id=request.checkout_request_id)
        finally:
            client.close()
    except (DarajaError, DarajaUnavailable, SecretUnreadable) as exc:
        logger.warning("STK query for request %s failed: %s", request.pk, exc)
        PaymentRequest.objects.filter(pk=request.pk).update(query_attempts=request.query_attempts + 1)
        return "error"
    fields: dict[str, Any] = {"query_attempts": request.query_attempts + 1}
    if result.pending:
        outcome = "pending"
    elif result.succeeded:
        outcome = "paid"
        fields.update(state=PaymentRequestState.PAID_AWAITING_CALLBACK, result_code=result.result_code)
        fields["result_desc"] = result.result_desc[:255]
    else:
        outcome = result.status
        fields.update(
            state=_STK_STATES.get(result.status, PaymentRequestState.FAILED),
            result_code=result.result_code,
            result_desc=result.result_desc[:255],
            completed_at=timezone.now(),
        )
    # Only while no callback settled it meanwhile.
    PaymentRequest.objects.filter(pk=request.pk, state=PaymentRequestState.SENT).update(**fields)
    return outcome


def sale_request_mpesa(*, sale: Sale, till: Till, phone: str = "", acting_user: Any = None) -> PaymentRequest:
    """Send an STK Push for what the sale still owes, with the sale number as account reference."""
    if sale.status != SaleStatus.POSTED or sale.total - sale.amount_paid <= 0:
        raise InvalidState(f"Sale {sale.number} has nothing left to pay.")
    same_business(sale.business, [till], "Till")
    number = phone or sale.mpesa_phone or (sale.customer.phone if sale.customer else "")
    if not number:
        raise InvalidInput("Enter the customer's M-Pesa phone number on the sale first.")
    return stk_push_request(
        till=till,
        phone=number,
        amount=sale.total - sale.amount_paid,
        account_reference=sale.number,
        description=f"Sale {sale.number}"[:13],
        acting_user=acting_user,
    )

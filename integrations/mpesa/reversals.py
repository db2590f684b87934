"""Reversals of received payments: the request to Daraja, its result, and the ledger entries undone."""

from __future__ import annotations

from decimal import Decimal
from typing import Any, TypeVar

from django.db import models, transaction
from django.utils import timezone

from accounts.models import JournalEntry
from accounts.services import entry_reverse
from integrations.mpesa.exceptions import (
    DarajaError,
    DarajaTransientError,
    DarajaUnavailable,
    InvalidRequest,
    NeedsAttention,
)
from integrations.mpesa.models import InboxMessage, Payment, PaymentApplication, PaymentStatus, Reversal, ReversalState
from integrations.mpesa.payloads import ReversalResult, parse_result_callback, parse_reversal_result
from integrations.mpesa.secrets import SecretUnreadable
from integrations.mpesa.status_queries import by_conversation, split_party
from integrations.mpesa.tills import daraja_client_for, till_callback_urls
from operations.payments import payment_placing_reversed

M = TypeVar("M", bound=models.Model)


def reversal_request(*, payment: Payment, reason: str, acting_user: Any) -> Reversal:
    """Ask Daraja to reverse a received payment; posted only when the result callback confirms it.

    The Reversal row is committed first (one live reversal per payment, a database constraint),
    then Daraja is called outside the transaction. Never resent automatically.
    """
    reason = (reason or "").strip()[:100] or "Reversal"
    with transaction.atomic():
        locked = Payment.objects.select_for_update().select_related("till").get(pk=payment.pk)
        if locked.status == PaymentStatus.REVERSED:
            raise InvalidRequest(f"payment {locked.receipt} is already reversed")
        if Reversal.objects.filter(
            payment=locked, state__in=[ReversalState.REQUESTED, ReversalState.COMPLETED]
        ).exists():
            raise InvalidRequest(f"a reversal of {locked.receipt} is already requested")
        reversal = Reversal.objects.create(
            business_id=locked.business_id,
            payment=locked,
            amount=locked.amount,
            reason=reason,
            requested_by=acting_user if getattr(acting_user, "pk", None) else None,
        )
    till = locked.till
    try:
        urls = till_callback_urls(till)
        client = daraja_client_for(till)
        try:
            answer = client.reversal(
                transaction_id=locked.receipt,
                amount=locked.amount,
                receiver_party=till.shortcode,
                result_url=urls["result_reversal"],
                timeout_url=urls["timeout_reversal"],
                remarks=reason,
            )
        finally:
            client.close()
    except (DarajaError, DarajaUnavailable, InvalidRequest, SecretUnreadable, ValueError) as exc:
        message = str(exc)
        if isinstance(exc, DarajaTransientError) and exc.may_have_been_processed:
            # Daraja may have acted: keep it requested, the result callback (or a person) settles it.
            Reversal.objects.filter(pk=reversal.pk).update(result_desc=f"no clear answer: {message}"[:255])
        else:
            Reversal.objects.filter(pk=reversal.pk).update(
                state=ReversalState.ERROR, result_desc=message[:255], completed_at=timezone.now()
            )
        reversal.refresh_from_db()
        return reversal
    Reversal.objects.filter(pk=reversal.pk).update(
        conversation_id=answer.conversation_id,
        originator_conversation_id=answer.originator_conversation_id,
        result_desc=answer.response_description[:255],
    )
    reversal.refresh_from_db()
    return reversal


def _find_reversal(conversation_id: str, originator: str) -> Reversal:
    found = by_conversation(Reversal.objects.select_for_update(), conversation_id, originator)
    if found is None:
        raise NeedsAttention(f"no reversal request with ConversationID {conversation_id or originator}")
    return found


def _reversal_differences(reversal: Reversal, payment: Payment, msg: InboxMessage, result: ReversalResult) -> list[str]:
    """What a successful reversal result says that does not fit our Reversal row: the till (the
    callback URL's, and the party the money left: Daraja's DebitPartyPublicName), the original
    receipt and the amount. Empty when it fits."""
    till = payment.till
    ours = {till.shortcode, till.store_number} - {""}
    problems = []
    if msg.till_id != payment.till_id:
        problems.append(f"the result came to the URL of till {msg.till_id}, the payment is on till {payment.till_id}")
    debit_party, _ = split_party(result.debit_party_public_name)
    if debit_party not in ours:
        problems.append(f"the money left party {debit_party or '(none given)'}, not till {till.shortcode}")
    if result.original_transaction_id != payment.receipt:
        problems.append(
            f"it reverses receipt {result.original_transaction_id or '(none given)'}, not {payment.receipt}"
        )
    if result.amount != reversal.amount:
        problems.append(f"it reverses KES {result.amount}, not KES {reversal.amount}")
    return problems


def reversal_result_process(msg: InboxMessage) -> str:
    result = parse_reversal_result(msg.body)
    reversal = _find_reversal(result.conversation_id, result.originator_conversation_id)
    if reversal.state in (ReversalState.COMPLETED, ReversalState.FAILED):
        return f"reversal {reversal.pk} already {reversal.state}"
    reversal.result_code = result.result_code[:20]
    reversal.result_desc = result.result_desc[:255]
    reversal.completed_at = timezone.now()
    if not result.succeeded:
        reversal.state = ReversalState.FAILED
        reversal.save(update_fields=["state", "result_code", "result_desc", "completed_at"])
        return f"reversal {reversal.pk} failed: {result.result_code} {result.result_desc}"
    payment = Payment.objects.select_for_update().select_related("till").get(pk=reversal.payment_id)
    problems = _reversal_differences(reversal, payment, msg, result)
    if problems:
        # Rolled back with the attempt: nothing posted, the Reversal stays requested for a person.
        raise NeedsAttention(f"reversal {reversal.pk} of {payment.receipt} not applied: " + "; ".join(problems))
    reversal.entry = payment_reverse_entries(payment=payment, acting_user=reversal.requested_by)
    reversal.state = ReversalState.COMPLETED
    reversal.reversal_receipt = result.transaction_id[:32]
    reversal.save(update_fields=["state", "result_code", "result_desc", "completed_at", "entry", "reversal_receipt"])
    return f"reversal {reversal.pk} of {payment.receipt} completed and posted"


def payment_reverse_entries(*, payment: Payment, acting_user: Any) -> JournalEntry:
    """Post the ledger reversal of a payment - each allocation, latest first, then the receipt - and
    undo what each placing recorded (listeners: the sale's amount paid goes down, the customer gets
    a reversing transaction; nothing is deleted). Returns the receipt's reversal. Idempotent."""
    with transaction.atomic(savepoint=False):
        placings = list(
            PaymentApplication.objects.select_for_update(of=("self",))
            .filter(payment=payment, reversal_entry__isnull=True)
            .select_related("entry")
            .order_by("-id")
        )
        for placing in placings:
            is_receipt = placing.entry_id == payment.entry_id
            if is_receipt:
                key, memo = f"mpesa-reversal:{payment.receipt}", f"M-Pesa {payment.receipt} reversed"
            else:
                suffix = placing.entry.idempotency_key.partition(":")[2]
                key, memo = f"mpesa-reversal-allocation:{suffix}", f"M-Pesa {payment.receipt} reversed (allocation)"
            reversed_by = entry_reverse(entry=placing.entry, memo=memo, acting_user=acting_user, idempotency_key=key)
            placing.reversal_entry = reversed_by
            placing.save(update_fields=["reversal_entry"])
            if placing.credit_role == "receivables" and (placing.applied or placing.credit):
                payment_placing_reversed(
                    business_id=payment.business_id,
                    receipt=payment.receipt,
                    reference_kind=placing.reference_kind,
                    reference_id=placing.reference_id,
                    applied=placing.applied,
                    placing_entry_id=placing.entry_id,
                    reversal_entry=reversed_by,
                )
        payment.status = PaymentStatus.REVERSED
        payment.unallocated_amount = Decimal("0.00")
        payment.save(update_fields=["status", "unallocated_amount"])
        return JournalEntry.objects.get(reverses_id=payment.entry_id)


def reversal_timeout_process(msg: InboxMessage) -> str:
    result = parse_result_callback(msg.body)
    reversal = _find_reversal(result.conversation_id, result.originator_conversation_id)
    if reversal.state != ReversalState.REQUESTED:
        return f"reversal {reversal.pk} already {reversal.state}; timeout ignored"
    reversal.state = ReversalState.FAILED
    reversal.result_code = result.result_code[:20]
    reversal.result_desc = f"queue timeout: {result.result_desc}"[:255]
    reversal.completed_at = timezone.now()
    reversal.save(update_fields=["state", "result_code", "result_desc", "completed_at"])
    return f"reversal {reversal.pk} timed out at Daraja; ask again if still wanted"

"""Transaction status queries: asking Daraja about a receipt, their results, retries, and the
recovery of confirmations that never came."""

from __future__ import annotations

import datetime as dt
import logging
import re
from typing import Any, TypeVar

from django.db import IntegrityError, connection, models, transaction
from django.db.models import QuerySet
from django.utils import timezone

from integrations.mpesa import conf
from integrations.mpesa.exceptions import (
    DarajaError,
    DarajaTransientError,
    DarajaUnavailable,
    InvalidRequest,
    NeedsAttention,
)
from integrations.mpesa.models import (
    InboxKind,
    InboxMessage,
    InboxState,
    Payment,
    PaymentRequest,
    PaymentRequestState,
    StatusQuery,
    StatusQueryReason,
    StatusQueryState,
    Till,
    TillKind,
)
from integrations.mpesa.payloads import (
    PayloadError,
    parse_c2b_validation,
    parse_result_callback,
    parse_transaction_status_result,
)
from integrations.mpesa.payments import payment_outcome, payment_record
from integrations.mpesa.secrets import SecretUnreadable
from integrations.mpesa.tills import daraja_client_for, till_callback_urls

logger = logging.getLogger(__name__)

M = TypeVar("M", bound=models.Model)


def by_conversation(query: QuerySet[M], conversation_id: str, originator: str) -> M | None:
    """The row a result callback answers: by Daraja's ConversationID, else by the
    OriginatorConversationID it gave when accepting the request."""
    found = query.filter(conversation_id=conversation_id).first() if conversation_id else None
    if found is None and originator:
        found = query.filter(originator_conversation_id=originator).first()
    return found


RECEIPT_PATTERN = re.compile(r"[A-Z0-9]{10}")


def status_query_request(
    *,
    till: Till,
    receipt: str,
    acting_user: Any,
    reason: str = StatusQueryReason.MANUAL,
    payment_request: PaymentRequest | None = None,
    account_reference: str = "",
) -> StatusQuery:
    """Ask Daraja (Transaction Status) about M-Pesa `receipt` on `till`; the answer comes to the
    till's status result URL and is processed like any callback (see status_result_process).

    The StatusQuery row is committed first, then Daraja is called outside any transaction. Raises
    InvalidRequest for a malformed receipt or an inactive till (nothing stored), and IntegrityError
    when the recovery job already asked about this receipt. Daraja's refusal leaves the row "error"
    (a lost confirmation: asked again later); a call Daraja may have taken stays "sent", so its
    result is applied when it comes.
    """
    receipt = (receipt or "").strip().upper()
    if not RECEIPT_PATTERN.fullmatch(receipt):
        raise InvalidRequest(f"{receipt!r} is not an M-Pesa receipt (10 letters and digits, e.g. TJR4XK2Q1M)")
    if not till.is_active:
        raise InvalidRequest(f"till {till} is not active")
    if connection.in_atomic_block:
        logger.warning("status_query_request called inside a transaction: Daraja is called while it is open")
    with transaction.atomic():
        query = StatusQuery.objects.create(
            business_id=till.business_id,
            till=till,
            receipt=receipt,
            reason=reason,
            payment_request=payment_request,
            account_reference=(account_reference or "")[:40],
            requested_by=acting_user if getattr(acting_user, "pk", None) else None,
            attempts=1,
            # If this process dies before Daraja answers, the recovery job asks again after this.
            next_attempt_at=timezone.now() + dt.timedelta(seconds=conf.status_result_wait_seconds()),
        )
    return _status_query_send(query)


def _status_query_send(query: StatusQuery) -> StatusQuery:
    """Call Daraja for a committed, "sent" query and record its answer (outside any transaction)."""
    till = query.till
    try:
        urls = till_callback_urls(till)
        client = daraja_client_for(till)
        try:
            answer = client.transaction_status(
                transaction_id=query.receipt,
                result_url=urls["result_status"],
                timeout_url=urls["timeout_status"],
                remarks="Payment check",
                identifier_type="2" if till.kind == TillKind.TILL and not till.store_number else "4",
            )
        finally:
            client.close()
    except (DarajaError, DarajaUnavailable, InvalidRequest, SecretUnreadable, ValueError) as exc:
        message = str(exc)
        if isinstance(exc, DarajaTransientError) and exc.may_have_been_processed:
            # Daraja may have taken it: stay "sent" so the result, when it comes, is applied (it is
            # found by receipt); a lost confirmation is asked again after the result wait.
            StatusQuery.objects.filter(pk=query.pk, state=StatusQueryState.SENT).update(
                result_desc=f"no clear answer: {message}"[:255]
            )
        elif query.reason == StatusQueryReason.LOST_CONFIRMATION:
            _status_query_no_answer(query_id=query.pk, why=f"could not send: {message}")
        else:
            StatusQuery.objects.filter(pk=query.pk, state=StatusQueryState.SENT).update(
                state=StatusQueryState.ERROR, result_desc=message[:255], completed_at=timezone.now()
            )
        query.refresh_from_db()
        return query
    StatusQuery.objects.filter(pk=query.pk).update(
        conversation_id=answer.conversation_id, originator_conversation_id=answer.originator_conversation_id
    )
    # Only while no result settled it meanwhile.
    StatusQuery.objects.filter(pk=query.pk, state=StatusQueryState.SENT).update(
        result_desc=answer.response_description[:255],
        next_attempt_at=timezone.now() + dt.timedelta(seconds=conf.status_result_wait_seconds()),
    )
    query.refresh_from_db()
    return query


# Answers after which a receipt's query is settled; any other state still takes a (late) result.
STATUS_SETTLED = (StatusQueryState.CONFIRMED, StatusQueryState.NOT_COMPLETED)


def _status_retry_delay(attempts: int) -> dt.timedelta:
    """2, 4, 8, 16... minutes after the n-th try (at most 6 hours)."""
    return dt.timedelta(minutes=min(2 ** max(attempts, 1), 360))


def _status_no_answer_fields(query: StatusQuery, why: str) -> list[str]:
    """The try of a lost-confirmation query ended without a definite answer: ask again later, or,
    after MPESA_STATUS_MAX_ATTEMPTS tries, leave it to a person. Changes `query`; the fields to save."""
    if query.attempts >= conf.status_max_attempts():
        query.state = StatusQueryState.NEEDS_ATTENTION
        query.next_attempt_at = None
        query.result_desc = f"no definite answer after {query.attempts} tries; last: {why}"[:255]
    else:
        query.state = StatusQueryState.RETRY
        query.next_attempt_at = timezone.now() + _status_retry_delay(query.attempts)
        query.result_desc = f"try {query.attempts}: {why}"[:255]
    return ["state", "next_attempt_at", "result_desc"]


def _status_query_no_answer(*, query_id: int, why: str) -> None:
    with transaction.atomic():
        query = StatusQuery.objects.select_for_update().filter(pk=query_id, state=StatusQueryState.SENT).first()
        if query is not None:
            query.save(update_fields=_status_no_answer_fields(query, why))


def status_queries_retry(*, batch_size: int = 20) -> dict[str, int]:
    """Ask Daraja again about lost confirmations whose last try gave no definite answer, or whose
    result never came (still "sent" after MPESA_STATUS_RESULT_WAIT_SECONDS, e.g. the process died
    during the call); park them for a person after MPESA_STATUS_MAX_ATTEMPTS tries.

    Rows are claimed with SKIP LOCKED and their next try moved on before Daraja is called, so
    overlapping runs ask once. The ids of earlier tries are kept: their late results still apply.
    Returns counts by the query's new state.
    """
    now = timezone.now()
    counts: dict[str, int] = {}
    claimed: list[StatusQuery] = []
    with transaction.atomic():
        due = (
            StatusQuery.objects.select_for_update(of=("self",), skip_locked=True)
            .filter(
                reason=StatusQueryReason.LOST_CONFIRMATION,
                state__in=[StatusQueryState.SENT, StatusQueryState.RETRY],
                next_attempt_at__lte=now,
            )
            .select_related("till")
            .order_by("next_attempt_at", "id")[:batch_size]
        )
        for query in due:
            if query.attempts >= conf.status_max_attempts():
                why = "no result came" if query.state == StatusQueryState.SENT else query.result_desc
                query.save(update_fields=_status_no_answer_fields(query, why))
                counts[query.state] = counts.get(query.state, 0) + 1
                continue
            earlier = [i for i in (query.conversation_id, query.originator_conversation_id) if i]
            query.earlier_conversation_ids = [*query.earlier_conversation_ids, *earlier]
            query.conversation_id = query.originator_conversation_id = ""
            query.state = StatusQueryState.SENT
            query.attempts += 1
            query.next_attempt_at = now + dt.timedelta(seconds=conf.status_result_wait_seconds())
            query.save(
                update_fields=[
                    "earlier_conversation_ids",
                    "conversation_id",
                    "originator_conversation_id",
                    "state",
                    "attempts",
                    "next_attempt_at",
                ]
            )
            claimed.append(query)
    for query in claimed:
        if not query.till.is_active:
            _status_query_no_answer(query_id=query.pk, why=f"till {query.till} is not active")
            query.refresh_from_db()
        else:
            query = _status_query_send(query)
        counts[query.state] = counts.get(query.state, 0) + 1
    return counts


def _find_status_query(
    conversation_id: str, originator: str, *, till_id: int | None = None, receipt: str = ""
) -> StatusQuery | None:
    """The query a result answers: by the ids Daraja gave it (this try's or an earlier try's), else
    - a call that timed out but reached Daraja has no ids - the unsettled query of this till about
    the result's receipt."""
    query = StatusQuery.objects.select_for_update(of=("self",)).select_related("payment_request")
    found = by_conversation(query, conversation_id, originator)
    ids = [i for i in (conversation_id, originator) if i]
    if found is None and ids:
        found = query.filter(earlier_conversation_ids__overlap=ids).order_by("-id").first()
    if found is None and till_id is not None and receipt:
        # Only a query whose latest try got no ids from Daraja: others are answered by their ids.
        found = (
            query.filter(till_id=till_id, receipt=receipt, conversation_id="", originator_conversation_id="")
            .exclude(state__in=STATUS_SETTLED)
            .order_by("-id")
            .first()
        )
    return found


def _is_current_try(query: StatusQuery, conversation_id: str, originator: str) -> bool:
    """Whether a callback answers the query's latest try (not a late one of an earlier try)."""
    if not query.conversation_id and not query.originator_conversation_id:
        return True  # the latest try got no ids (no clear answer from Daraja): it may be this one
    return (bool(conversation_id) and conversation_id == query.conversation_id) or (
        bool(originator) and originator == query.originator_conversation_id
    )


def split_party(text: str | None) -> tuple[str, str]:
    """("254708374149", "John Doe") from "254708374149 - John Doe", as Daraja's results and the
    org-portal statement name a party; ("", "") if absent."""
    number, _, name = (text or "").partition(" - ")
    return number.strip(), name.strip()


def status_result_process(msg: InboxMessage) -> str:
    status = parse_transaction_status_result(msg.body)
    summary = (
        f"transaction status {status.result_code} {status.result_desc}: receipt {status.receipt_no or '-'} "
        f"{status.transaction_status or ''} {status.amount or ''}"
    )
    query = _find_status_query(
        status.conversation_id,
        status.originator_conversation_id,
        till_id=msg.till_id,
        receipt=(status.receipt_no or "").strip().upper(),
    )
    if query is None:
        return f"{summary} (not a query of ours)"
    if query.till_id != msg.till_id:
        raise NeedsAttention(f"status query {query.pk} belongs to another till than the result URL's")
    if query.state in STATUS_SETTLED:
        return f"status query {query.pk} already {query.state}"
    if status.receipt_no and status.receipt_no != query.receipt:
        raise NeedsAttention(
            f"status query {query.pk} asked about {query.receipt}, the result is about {status.receipt_no}"
        )
    current = _is_current_try(query, status.conversation_id, status.originator_conversation_id)
    if not query.conversation_id and current:
        query.conversation_id = status.conversation_id[:120]
        query.originator_conversation_id = status.originator_conversation_id[:120]
    query.result_code = status.result_code[:20]
    query.result_desc = status.result_desc[:255]
    query.transaction_status = (status.transaction_status or "")[:40]
    query.amount = status.amount
    fields = [
        "state",
        "result_code",
        "result_desc",
        "transaction_status",
        "amount",
        "completed_at",
        "next_attempt_at",
        "conversation_id",
        "originator_conversation_id",
    ]
    till = msg.till
    receiver, _ = split_party(status.credit_party_name)
    if not status.succeeded:
        if query.reason != StatusQueryReason.LOST_CONFIRMATION:
            query.state = StatusQueryState.FAILED
            query.completed_at = timezone.now()
        elif query.state == StatusQueryState.SENT and current:
            # Daraja could not tell (this time): the recovery job asks again, or a person takes over.
            fields += _status_no_answer_fields(query, f"{status.result_code} {status.result_desc}")
        # else: a late failure of an earlier try; the state and schedule stay as they are.
        query.save(update_fields=list(dict.fromkeys(fields)))
        return f"status query {query.pk} {query.state}: {summary}"[:255]
    query.completed_at = timezone.now()
    query.next_attempt_at = None
    if (
        (status.transaction_status or "").lower() != "completed"
        or status.amount is None
        or receiver not in {till.shortcode, till.store_number} - {""}
    ):
        # Not money into this till (failed, reversed, or paid elsewhere): nothing to post.
        query.state = StatusQueryState.NOT_COMPLETED
    else:
        phone, name = split_party(status.debit_party_name)
        request = query.payment_request
        payment, created = payment_record(
            till=till,
            receipt=query.receipt,
            amount=status.amount,
            paid_at=status.finalised_time or status.initiated_time or timezone.now(),
            msisdn=phone,
            payer_name=name,
            account_reference=query.account_reference or (request.account_reference if request else ""),
            payment_request=request,
        )
        if request is not None:
            PaymentRequest.objects.filter(pk=request.pk).exclude(state=PaymentRequestState.PAID).update(
                state=PaymentRequestState.PAID, receipt=query.receipt, completed_at=timezone.now()
            )
        query.state = StatusQueryState.CONFIRMED
        query.payment = payment
        fields.append("payment")
        query.save(update_fields=fields)
        return f"status query {query.pk}: {payment_outcome(payment, created)}"[:255]
    query.save(update_fields=fields)
    return f"status query {query.pk} {query.state}: {summary}"[:255]


def status_timeout_process(msg: InboxMessage) -> str:
    result = parse_result_callback(msg.body)
    query = _find_status_query(result.conversation_id, result.originator_conversation_id)
    if query is None:
        return f"queue timeout {result.result_code} {result.result_desc}"
    if query.state != StatusQueryState.SENT or not _is_current_try(
        query, result.conversation_id, result.originator_conversation_id
    ):
        return f"status query {query.pk} already {query.state}; timeout ignored"
    query.result_code = result.result_code[:20]
    why = f"queue timeout: {result.result_desc}"
    if query.reason == StatusQueryReason.LOST_CONFIRMATION:
        query.save(update_fields=["result_code", *_status_no_answer_fields(query, why)])
        return f"status query {query.pk} timed out at Daraja: {query.get_state_display()}"
    query.state = StatusQueryState.TIMEOUT
    query.result_desc = why[:255]
    query.completed_at = timezone.now()
    query.save(update_fields=["state", "result_code", "result_desc", "completed_at"])
    return f"status query {query.pk} timed out at Daraja; ask again if still wanted"


def lost_confirmations_recover(
    *, older_than_seconds: int = 600, within_days: int = 3, batch_size: int = 20
) -> dict[str, int]:
    """Ask Daraja (Transaction Status) about C2B payments we accepted at validation more than
    `older_than_seconds` ago (and within `within_days`) whose confirmation never came: no Payment
    has their receipt. One query row per receipt (a database constraint); a try without a definite
    answer (refused, timed out, no result, "could not tell") is asked again with backoff by
    `status_queries_retry`, up to MPESA_STATUS_MAX_ATTEMPTS tries, then left to a person. A
    "completed" answer records and posts the payment. Returns counts by the query's state.
    """
    counts = status_queries_retry(batch_size=batch_size)
    now = timezone.now()
    candidates = (
        InboxMessage.objects.filter(
            kind=InboxKind.C2B_VALIDATION,
            state=InboxState.PROCESSED,
            outcome="accepted",
            received_at__lte=now - dt.timedelta(seconds=older_than_seconds),
            received_at__gte=now - dt.timedelta(days=within_days),
        )
        .exclude(daraja_id__in=Payment.objects.values("receipt"))
        .exclude(daraja_id__in=StatusQuery.objects.filter(reason=StatusQueryReason.LOST_CONFIRMATION).values("receipt"))
        .select_related("till")
        .order_by("received_at")[:batch_size]
    )
    for row in candidates:
        try:
            reference = parse_c2b_validation(row.body).bill_ref_number
        except PayloadError:
            reference = ""
        try:
            query = status_query_request(
                till=row.till,
                receipt=row.daraja_id,
                acting_user=None,
                reason=StatusQueryReason.LOST_CONFIRMATION,
                account_reference=reference,
            )
        except IntegrityError:
            continue  # another run asked meanwhile
        except InvalidRequest as exc:
            logger.warning("not asking about validated payment %s: %s", row.daraja_id, exc)
            continue
        counts[query.state] = counts.get(query.state, 0) + 1
    return counts

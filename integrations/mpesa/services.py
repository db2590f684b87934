"""Every write of the M-Pesa payment path: the inbox, payments and their ledger entries, STK
requests, allocation, URL registration and reversals.

How a payment is posted exactly once (docs/mpesa.md):
- a callback is stored in the inbox, unique on (kind, Daraja id): a duplicate is a no-op;
- `inbox_process` locks the inbox row and returns if it was processed; otherwise it parses,
  matches, posts and marks the row processed in ONE transaction, so a crash anywhere before the
  commit leaves nothing behind and the next delivery starts again;
- a payment is one `Payment` row per receipt (unique) and one ledger entry whose idempotency key
  is "mpesa:<receipt>"; an STK callback and the C2B confirmation of the same receipt meet on a
  transaction-scoped advisory lock on the receipt, and the second one only adds what it knows to
  the Payment row (never a second entry).
"""

from __future__ import annotations

import atexit
import datetime as dt
import hashlib
import json
import logging
import os
import queue
import re
import socket
import threading
import time
from collections.abc import Mapping, Sequence
from contextlib import ExitStack
from decimal import Decimal
from typing import Any, TypeVar
from urllib.parse import urlsplit

from celery import current_app
from django.db import IntegrityError, connection, models, transaction
from django.db.models import QuerySet
from django.utils import timezone

from accounts.exceptions import InvalidAccount, LedgerError, PeriodLocked
from accounts.models import Account, Books, JournalEntry, SourceType
from accounts.selectors import account_for_role
from accounts.services import LineSpec, entry_post, entry_reverse
from integrations.mpesa import conf
from integrations.mpesa.client import PRODUCTION_BASE_URL, SANDBOX_BASE_URL, DarajaClient
from integrations.mpesa.errors import (
    DarajaUnavailable,
    InvalidRequest,
    NeedsAttention,
    NotUnallocated,
    TransientProcessingError,
)
from integrations.mpesa.exceptions import DarajaError, DarajaTransientError
from integrations.mpesa.matching import Match, notify_listeners, resolve_reference
from integrations.mpesa.models import (
    DarajaEnvironment,
    InboxKind,
    InboxMessage,
    InboxState,
    Payment,
    PaymentRequest,
    PaymentRequestState,
    PaymentStatus,
    Reversal,
    ReversalState,
    StatusQuery,
    StatusQueryReason,
    StatusQueryState,
    Till,
    TillKind,
)
from integrations.mpesa.payloads import (
    NAIROBI,
    C2BRegisterResponse,
    CallbackKind,
    PayloadError,
    parse_account_balance_result,
    parse_c2b_confirmation,
    parse_c2b_validation,
    parse_result_callback,
    parse_reversal_result,
    parse_stk_callback,
    parse_transaction_status_result,
)
from integrations.mpesa.phones import classify_msisdn, mask_matches, normalise_msisdn
from integrations.mpesa.secrets import SecretUnreadable, encrypt, reencrypt, till_credentials
from operations.models import Business, Customer

logger = logging.getLogger(__name__)

M = TypeVar("M", bound=models.Model)

# The payloads module's name for each inbox kind (what callback_unique_id / parse_callback expect).
PAYLOAD_KIND: dict[str, CallbackKind] = {
    InboxKind.STK_CALLBACK: "stk",
    InboxKind.C2B_VALIDATION: "c2b_validation",
    InboxKind.C2B_CONFIRMATION: "c2b_confirmation",
    InboxKind.STATUS_RESULT: "transaction_status",
    InboxKind.REVERSAL_RESULT: "reversal",
    InboxKind.BALANCE_RESULT: "account_balance",
    InboxKind.STATUS_TIMEOUT: "timeout",
    InboxKind.REVERSAL_TIMEOUT: "timeout",
    InboxKind.BALANCE_TIMEOUT: "timeout",
}

# ------------------------------------------------------------------------------------ the inbox


_INSERT_SQL = """
INSERT INTO integrations_inboxmessage
    (till_id, kind, daraja_id, body, headers, remote_addr, received_at, state, attempts,
     last_enqueued_at, processed_at, error, outcome)
VALUES (%s, %s, %s, %s, %s::jsonb, %s, now(), %s, 0, CASE WHEN %s THEN now() END,
        CASE WHEN %s = 'processed' THEN now() END, %s, %s)
ON CONFLICT (kind, daraja_id) DO NOTHING
RETURNING id
"""


def body_text(raw: bytes) -> str:
    """The body as storable text: PostgreSQL text holds neither invalid UTF-8 nor NUL characters."""
    return raw.decode("utf-8", errors="replace").replace("\x00", "\ufffd")


def malformed_id(raw: bytes) -> str:
    return "malformed:" + hashlib.sha256(raw).hexdigest()


def inbox_store(
    *,
    till_id: int,
    kind: str,
    daraja_id: str,
    body: bytes,
    headers: Mapping[str, str],
    remote_addr: str | None,
    state: str = InboxState.RECEIVED,
    error: str = "",
    outcome: str = "",
) -> int | None:
    """Store one callback; its new id, or None when (kind, daraja_id) is already stored.

    One statement (INSERT ... ON CONFLICT DO NOTHING RETURNING id) in autocommit: a duplicate is
    a no-op however many arrive at once. A RECEIVED row gets last_enqueued_at = now() because the
    caller enqueues it next; if that enqueue fails the sweeper still finds it (state received).
    """
    enqueued = state == InboxState.RECEIVED
    with connection.cursor() as cursor:
        cursor.execute(
            _INSERT_SQL,
            [
                till_id,
                kind,
                daraja_id[:120],
                body_text(body),
                json.dumps(dict(headers)),
                remote_addr,
                state,
                enqueued,
                state,
                error,
                outcome[:255],
            ],
        )
        row = cursor.fetchone()
    return None if row is None else int(row[0])


# Inbox ids per message at most: a message is processed by one task, row after row, each in its own
# transaction (tasks.process_inbox), so a batch only saves the per-message cost of Celery.
BATCH_MAX = 50


def inbox_enqueue(inbox_ids: int | Sequence[int]) -> int:
    """Send "process these inbox rows" to the payments queue without retrying; how many ids went
    (fewer than given when the broker is down: the rest were not sent).

    One message per BATCH_MAX ids. Never raises: Redis is only a delivery mechanism here, the
    sweeper re-sends what did not go.
    """
    from integrations.mpesa.tasks import process_inbox

    ids = [inbox_ids] if isinstance(inbox_ids, int) else list(inbox_ids)
    sent = 0
    if not ids:
        return sent
    try:
        with ExitStack() as stack:
            broker = conf.broker_url_override()
            options: dict[str, Any]
            if broker:
                options = {"connection": stack.enter_context(current_app.connection_for_write(broker))}
            else:  # the app's pooled producer (its connection is kept between calls)
                options = {"producer": stack.enter_context(current_app.producer_or_acquire())}
            for start in range(0, len(ids), BATCH_MAX):
                chunk = ids[start : start + BATCH_MAX]
                payload = chunk[0] if len(chunk) == 1 else chunk
                process_inbox.apply_async(args=(payload,), retry=False, **options)
                sent += len(chunk)
    except Exception as exc:  # a broker outage must not fail the caller
        logger.warning("inbox %s stored but not enqueued (broker down?): %r; the sweeper will send it", ids[sent:], exc)
    return sent


class _Publisher:
    """Hands new inbox ids to one background thread per process that publishes them to Redis.

    Why not publish in the request: even with retry=False, redis-py retries a refused connection
    with backoff (about 6 s), and a hung Redis can stall a publish for its socket timeout. Daraja
    must get its answer within milliseconds whatever Redis does, so the view only puts the id in
    this bounded in-memory queue. What is lost here (queue full, broker down, the process killed
    before publishing) is still in the inbox as "received" and the sweeper sends it.
    The thread waits up to LINGER seconds after an id for more to arrive and publishes them as
    one message (up to BATCH_MAX): under load this divides the cost of Celery's messages (in
    the web process and in the worker) by the batch size, for at most LINGER of extra delay.
    After a failed publish, for PAUSE seconds a batch is published only if a quick TCP connect to
    the broker succeeds (else it is left to the sweeper), instead of each waiting for Redis.
    """

    MAX_PENDING = 10_000
    PAUSE = 5.0
    LINGER = 0.05
    EXIT_FLUSH_SECONDS = 2.0

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._pid: int | None = None
        self._queue: queue.Queue[int] = queue.Queue(self.MAX_PENDING)
        self._paused_until = 0.0

    def submit(self, inbox_id: int) -> bool:
        self._ensure_thread()
        try:
            self._queue.put_nowait(inbox_id)
        except queue.Full:
            logger.warning("enqueue backlog full: inbox %s left to the sweeper", inbox_id)
            return False
        return True

    def flush(self, timeout: float = 10.0) -> bool:
        """Wait until every submitted id was published or dropped (tests, shutdown)."""
        deadline = time.monotonic() + timeout
        while self._queue.unfinished_tasks and time.monotonic() < deadline:
            time.sleep(0.005)
        return not self._queue.unfinished_tasks

    def _ensure_thread(self) -> None:
        if self._pid == os.getpid():
            return
        with self._lock:
            if self._pid == os.getpid():
                return
            # A new process (gunicorn forks after import): start afresh, the parent's thread is not here.
            self._queue = queue.Queue(self.MAX_PENDING)
            threading.Thread(target=self._run, args=(self._queue,), name="mpesa-enqueue", daemon=True).start()
            # A process ending normally (gunicorn recycling a worker after max-requests, a stop)
            # publishes what it holds first, rather than leaving it to the sweeper.
            atexit.register(self.flush, self.EXIT_FLUSH_SECONDS)
            self._pid = os.getpid()

    def _take_batch(self, pending: queue.Queue[int]) -> list[int]:
        """The next id (waiting for it), then whatever else arrives within LINGER, up to BATCH_MAX."""
        batch = [pending.get()]
        deadline = time.monotonic() + self.LINGER
        while len(batch) < BATCH_MAX:
            left = deadline - time.monotonic()
            try:
                batch.append(pending.get(timeout=left) if left > 0 else pending.get_nowait())
            except queue.Empty:
                break
        return batch

    def _run(self, pending: queue.Queue[int]) -> None:
        while True:
            batch = self._take_batch(pending)
            try:
                if time.monotonic() < self._paused_until and not _broker_reachable():
                    logger.warning("broker recently down: inbox %s left to the sweeper", batch)
                elif inbox_enqueue(batch) < len(batch):
                    self._paused_until = time.monotonic() + self.PAUSE
            except Exception:  # never let the thread die
                logger.exception("enqueue of inbox %s failed", batch)
            finally:
                for _ in batch:
                    pending.task_done()


def _broker_reachable(timeout: float = 0.25) -> bool:
    """Whether the broker accepts a TCP connection right now (a cheap probe while it was down)."""
    url = conf.broker_url_override() or str(current_app.conf.broker_url or "")
    parts = urlsplit(url)
    try:
        with socket.create_connection((parts.hostname or "127.0.0.1", parts.port or 6379), timeout=timeout):
            return True
    except OSError:
        return False


publisher = _Publisher()


def inbox_enqueue_soon(inbox_id: int) -> bool:
    """Enqueue without waiting for Redis (see _Publisher); False if the backlog is full."""
    return publisher.submit(inbox_id)


def inbox_mark_failed(*, inbox_id: int, error: str) -> None:
    """Record a transient failure (the task retries it; the sweeper catches it if retries run out)."""
    InboxMessage.objects.filter(pk=inbox_id, state__in=[InboxState.RECEIVED, InboxState.FAILED]).update(
        state=InboxState.FAILED, error=error[:2000]
    )


def inbox_reprocess(*, inbox: InboxMessage, acting_user: Any) -> bool:
    """A person asks to process a row again (after fixing the cause, or vouching for its source).

    Rows already processed are left alone (False). Enqueued after commit.
    """
    with transaction.atomic():
        row = InboxMessage.objects.select_for_update().get(pk=inbox.pk)
        if row.state == InboxState.PROCESSED:
            return False
        row.state = InboxState.RECEIVED
        row.error = f"reprocess asked by {acting_user}"[:2000]
        row.last_enqueued_at = timezone.now()
        row.save(update_fields=["state", "error", "last_enqueued_at"])
        transaction.on_commit(lambda: inbox_enqueue(row.pk))
    return True


def inbox_sweep(*, min_age_seconds: int | None = None, batch_size: int = 500) -> int:
    """Re-enqueue inbox rows still received/failed `min_age_seconds` after arrival and last enqueue.

    Catches what Redis lost, a process that died between commit and enqueue, and tasks whose
    retries ran out. Safe to run any number of times: processing is idempotent. Returns the count.
    """
    age = conf.sweep_age_seconds() if min_age_seconds is None else min_age_seconds
    cutoff = timezone.now() - dt.timedelta(seconds=age)
    with transaction.atomic():
        ids = list(
            InboxMessage.objects.select_for_update(skip_locked=True)
            .filter(state__in=[InboxState.RECEIVED, InboxState.FAILED], received_at__lte=cutoff)
            .exclude(last_enqueued_at__gt=cutoff)
            .order_by("received_at")
            .values_list("id", flat=True)[:batch_size]
        )
        InboxMessage.objects.filter(pk__in=ids).update(last_enqueued_at=timezone.now())
    sent = inbox_enqueue(ids)  # fewer when the broker is down: the rest waits for the next sweep
    if ids:
        logger.info("sweeper re-enqueued %s of %s unprocessed inbox rows", sent, len(ids))
    return sent


def inbox_process(*, inbox_id: int) -> str:
    """Process one inbox row: parse, match, post, mark processed - all in one transaction.

    Returns the outcome. Safe to call any number of times (a processed row is left alone).
    Transient database errors (lock timeout, connection loss) propagate for the task to retry;
    a payload or business problem rolls the attempt back and puts the row in "needs attention"
    with the error, in a transaction of its own.
    """
    try:
        with transaction.atomic():
            msg = _inbox_lock(inbox_id)
            if msg is None or msg.state in (InboxState.PROCESSED, InboxState.NEEDS_ATTENTION):
                return "missing" if msg is None else f"already {msg.state}"
            outcome = _dispatch(msg)
            msg.attempts += 1
            msg.state = InboxState.PROCESSED
            msg.processed_at = timezone.now()
            msg.error = ""
            msg.outcome = outcome[:255]
            msg.save(update_fields=["state", "attempts", "error", "outcome", "processed_at"])
            return msg.outcome
    except (PayloadError, NeedsAttention, LedgerError, SecretUnreadable) as exc:
        problem = exc
    with transaction.atomic():
        msg = _inbox_lock(inbox_id)
        if msg is None or msg.state in (InboxState.PROCESSED, InboxState.NEEDS_ATTENTION):
            return "missing" if msg is None else f"already {msg.state}"
        msg.attempts += 1
        msg.state = InboxState.NEEDS_ATTENTION
        msg.error = f"{type(problem).__name__}: {problem}"[:2000]
        msg.outcome = "needs a person"
        logger.warning("inbox %s (%s %s) needs attention: %s", msg.pk, msg.kind, msg.daraja_id, problem)
        msg.save(update_fields=["state", "attempts", "error", "outcome"])
        return msg.outcome


def _inbox_lock(inbox_id: int) -> InboxMessage | None:
    """The inbox row, locked until the transaction ends. Any lock of this transaction is waited for
    MPESA_LOCK_TIMEOUT_SECONDS at most (then OperationalError: the task retries later)."""
    with connection.cursor() as cursor:
        cursor.execute("SELECT set_config('lock_timeout', %s, true)", [f"{int(conf.lock_timeout_seconds() * 1000)}ms"])
    msg = (
        InboxMessage.objects.select_for_update(of=("self",))
        .select_related("till__business")
        .filter(pk=inbox_id)
        .first()
    )
    if msg is None:
        logger.warning("inbox row %s does not exist", inbox_id)
    return msg


def _dispatch(msg: InboxMessage) -> str:
    if msg.daraja_id.startswith("malformed:"):
        raise NeedsAttention("the body carries no Daraja id (malformed); read it and act by hand")
    kind = msg.kind
    if kind == InboxKind.STK_CALLBACK:
        return _process_stk(msg)
    if kind == InboxKind.C2B_CONFIRMATION:
        return _process_c2b_confirmation(msg)
    if kind == InboxKind.C2B_VALIDATION:
        parse_c2b_validation(msg.body)
        return "validation request (answered at once; nothing to post)"
    if kind == InboxKind.REVERSAL_RESULT:
        return _process_reversal_result(msg)
    if kind == InboxKind.REVERSAL_TIMEOUT:
        return _process_reversal_timeout(msg)
    if kind == InboxKind.STATUS_RESULT:
        return _process_status_result(msg)
    if kind == InboxKind.STATUS_TIMEOUT:
        return _process_status_timeout(msg)
    if kind == InboxKind.BALANCE_RESULT:
        balance = parse_account_balance_result(msg.body)
        parts = [f"{a.name} {a.currency} {a.current}" for a in balance.accounts]
        return f"balance {balance.result_code}: " + "; ".join(parts)
    if kind == InboxKind.BALANCE_TIMEOUT:
        result = parse_result_callback(msg.body)
        return f"queue timeout {result.result_code} {result.result_desc}"
    raise NeedsAttention(f"unknown inbox kind {kind!r}")


# ------------------------------------------------------------------------------------ STK


_STK_STATES = {
    "cancelled": PaymentRequestState.CANCELLED,
    "timeout": PaymentRequestState.TIMEOUT,
    "wrong_pin": PaymentRequestState.FAILED,
    "insufficient_funds": PaymentRequestState.FAILED,
    "failed": PaymentRequestState.FAILED,
}


def _process_stk(msg: InboxMessage) -> str:
    cb = parse_stk_callback(msg.body)
    request = PaymentRequest.objects.select_for_update().filter(checkout_request_id=cb.checkout_request_id).first()
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
    )
    return _payment_outcome(payment, created)


def _payment_outcome(payment: Payment, created: bool) -> str:
    if not created:
        return f"receipt {payment.receipt} already recorded (payment {payment.pk}); details updated"
    where = "suspense (unallocated)" if payment.status == PaymentStatus.UNALLOCATED else payment.match_description
    return f"posted {payment.receipt} KES {payment.amount}: {where}"[:255]


def _process_c2b_confirmation(msg: InboxMessage) -> str:
    tx = parse_c2b_confirmation(msg.body)
    till = msg.till
    if tx.business_short_code not in {till.shortcode, till.store_number} - {""}:
        raise NeedsAttention(
            f"confirmation for shortcode {tx.business_short_code} arrived on the URL of till {till.shortcode}"
        )
    payment, created = payment_record(
        till=till,
        receipt=tx.trans_id,
        amount=tx.amount,
        paid_at=tx.trans_time,
        msisdn=tx.msisdn,
        payer_name=tx.payer_name,
        account_reference=tx.bill_ref_number,
        payment_request=None,
    )
    return _payment_outcome(payment, created)


# ------------------------------------------------------------------------------------ payments


def _lock_receipt(receipt: str) -> None:
    """Serialise everything that records this receipt, until the transaction ends."""
    with connection.cursor() as cursor:
        cursor.execute("SELECT pg_advisory_xact_lock(hashtextextended(%s, 0))", [f"mpesa:{receipt}"])


def _open_date(business_id: int, wanted: dt.date) -> dt.date:
    """`wanted` unless the books are closed on it; then the first open day."""
    lock_date = Books.objects.filter(business_id=business_id).values_list("lock_date", flat=True).first()
    if lock_date is not None and wanted <= lock_date:
        return lock_date + dt.timedelta(days=1)
    return wanted


def _post_once(*, business: Business, wanted: dt.date, post: Any) -> JournalEntry:
    """Post on `wanted`, or, when PostgreSQL refuses that date as closed, on the first open date
    (the refused attempt leaves the transaction usable: entry_post posts in a savepoint).
    If the lock date moves again meanwhile, the caller retries later."""
    try:
        return post(wanted)  # type: ignore[no-any-return]
    except PeriodLocked:
        try:
            return post(_open_date(business.pk, wanted))  # type: ignore[no-any-return]
        except PeriodLocked as exc:
            raise TransientProcessingError(f"the books moved their lock date while posting: {exc}") from exc


def _msisdn_kind(msisdn: str) -> str:
    try:
        return classify_msisdn(msisdn)
    except ValueError:
        return "unknown"


def match_payment(
    *, business: Business, account_reference: str, request: PaymentRequest | None, msisdn: str
) -> tuple[Match | None, str]:
    """(match, how) by reference, then our STK request's reference, then the phone; (None, "") if none."""
    found = resolve_reference(business, account_reference)
    if found is not None:
        return found, "account reference"
    if request is not None and request.account_reference.strip() != account_reference.strip():
        found = resolve_reference(business, request.account_reference)
        if found is not None:
            return found, "STK request reference"
    customer = _customer_by_phone(business, msisdn)
    if customer is None and request is not None:
        customer = _customer_by_phone(business, request.phone)
    if customer is not None:
        return Match(customer.pk, "customer", customer.pk, f"phone of {customer.name}"), "phone"
    return None, ""


def _customer_by_phone(business: Business, msisdn: str) -> Customer | None:
    kind = _msisdn_kind(msisdn)
    customers = Customer.objects.filter(business=business, is_active=True).only("id", "name", "phone")
    if kind == "plain":
        number = normalise_msisdn(msisdn.strip())
        return customers.filter(phone=number).order_by("id").first()
    if kind == "sha256":
        return customers.filter(phone_sha256=msisdn.strip().lower()).order_by("id").first()
    if kind == "masked":
        candidates = [c for c in customers.exclude(phone="") if _fits(msisdn, c.phone)]
        return candidates[0] if len(candidates) == 1 else None
    return None


def _fits(masked: str, phone: str) -> bool:
    try:
        return mask_matches(masked, phone)
    except ValueError:
        return False


def payment_record(
    *,
    till: Till,
    receipt: str,
    amount: Decimal,
    paid_at: dt.datetime,
    msisdn: str,
    payer_name: str,
    account_reference: str,
    payment_request: PaymentRequest | None,
    acting_user: Any = None,
) -> tuple[Payment, bool]:
    """Record money received on `till` under M-Pesa `receipt`: (payment, created).

    The first call for a receipt creates the Payment and posts Dr M-Pesa clearing / Cr
    receivables (matched) or Cr suspense (unmatched), idempotency key "mpesa:<receipt>", dated the
    payment's Nairobi date (or the first open day when that is closed; paid_at keeps the truth).
    Later calls (the STK callback after the C2B confirmation, a reconciliation) only fill in what
    the Payment row lacks, and allocate it if it sat in suspense and can now be matched.
    Runs in the caller's transaction (or its own); safe to retry.
    """
    # No savepoint of its own: inside inbox_process a failure rolls back to that savepoint anyway.
    with transaction.atomic(savepoint=False):
        _lock_receipt(receipt)
        existing = Payment.objects.select_for_update().filter(receipt=receipt).first()
        if existing is not None:
            _payment_enrich(existing, till, amount, msisdn, payer_name, account_reference, payment_request)
            return existing, False
        business = till.business
        match, how = match_payment(
            business=business, account_reference=account_reference, request=payment_request, msisdn=msisdn
        )
        clearing, credit = _accounts(business, "mpesa_clearing", "receivables" if match else "suspense")
        local_day = paid_at.astimezone(NAIROBI).date()

        def post(day: dt.date) -> JournalEntry:
            return entry_post(
                business=business,
                entry_date=day,
                lines=[LineSpec(account=clearing, debit=amount), LineSpec(account=credit, credit=amount)],
                memo=f"M-Pesa {receipt}",
                source_type=SourceType.MPESA,
                source_ref=receipt,
                idempotency_key=f"mpesa:{receipt}",
                acting_user=acting_user,
            )

        entry = _post_once(business=business, wanted=local_day, post=post)
        payment = Payment.objects.create(
            business=business,
            till=till,
            receipt=receipt,
            amount=amount,
            paid_at=paid_at,
            msisdn=msisdn[:80],
            msisdn_kind=_msisdn_kind(msisdn) if msisdn else "",
            payer_name=payer_name[:120],
            account_reference=account_reference[:40],
            payment_request=payment_request,
            customer_id=match.customer_id if match else None,
            status=PaymentStatus.ALLOCATED if match else PaymentStatus.UNALLOCATED,
            matched_by=how,
            reference_kind=match.reference_kind if match else "",
            reference_id=match.reference_id if match else None,
            match_description=(match.description if match else "")[:255],
            entry=entry,
        )
        if match is not None:
            notify_listeners(payment, match)
        return payment, True


def _payment_enrich(
    payment: Payment,
    till: Till,
    amount: Decimal,
    msisdn: str,
    payer_name: str,
    account_reference: str,
    request: PaymentRequest | None,
) -> None:
    if payment.till_id != till.pk:
        raise NeedsAttention(f"receipt {payment.receipt} was already recorded on another till ({payment.till_id})")
    if payment.amount != amount:
        raise NeedsAttention(f"receipt {payment.receipt} recorded as KES {payment.amount}, now announced as {amount}")
    changed: list[str] = []
    kind = _msisdn_kind(msisdn) if msisdn else ""
    # A plain number beats a hash, a hash beats a mask.
    rank = {"plain": 3, "sha256": 2, "masked": 1}
    if msisdn and rank.get(kind, 0) > rank.get(payment.msisdn_kind, 0):
        payment.msisdn, payment.msisdn_kind = msisdn[:80], kind
        changed += ["msisdn", "msisdn_kind"]
    if payer_name and not payment.payer_name:
        payment.payer_name = payer_name[:120]
        changed.append("payer_name")
    if account_reference and not payment.account_reference:
        payment.account_reference = account_reference[:40]
        changed.append("account_reference")
    if request is not None and payment.payment_request_id is None:
        payment.payment_request = request
        changed.append("payment_request")
    if changed:
        payment.save(update_fields=changed)
    if payment.status == PaymentStatus.UNALLOCATED:
        match, how = match_payment(
            business=payment.business,
            account_reference=payment.account_reference,
            request=payment.payment_request,
            msisdn=payment.msisdn,
        )
        if match is not None:
            _allocate(payment, credit_role="receivables", match=match, how=how, acting_user=None)
            notify_listeners(payment, match)


def _accounts(business: Business, *roles: str) -> list[Account]:
    """The business's accounts for `roles`, in that order, with one query."""
    found = {a.role: a for a in Account.objects.filter(business=business, role__in=roles)}
    missing = [role for role in roles if role not in found]
    if missing:
        raise InvalidAccount(f"business {business.pk} has no account with role {missing[0]!r}")
    return [found[role] for role in roles]


def _allocate(payment: Payment, *, credit_role: str, match: Match, how: str, acting_user: Any) -> JournalEntry:
    business = payment.business
    suspense = account_for_role(business=business, role="suspense")
    credit = account_for_role(business=business, role=credit_role)

    def post(day: dt.date) -> JournalEntry:
        return entry_post(
            business=business,
            entry_date=day,
            lines=[LineSpec(account=suspense, debit=payment.amount), LineSpec(account=credit, credit=payment.amount)],
            memo=f"M-Pesa {payment.receipt} allocated: {match.description}"[:255],
            source_type=SourceType.MPESA,
            source_ref=payment.receipt,
            idempotency_key=f"mpesa-allocate:{payment.receipt}",
            acting_user=acting_user,
        )

    entry = _post_once(business=business, wanted=timezone.localdate(), post=post)
    payment.status = PaymentStatus.ALLOCATED
    payment.customer_id = match.customer_id
    payment.reference_kind = match.reference_kind
    payment.reference_id = match.reference_id
    payment.match_description = match.description[:255]
    payment.matched_by = how
    payment.allocation_entry = entry
    payment.allocated_by = acting_user if getattr(acting_user, "pk", None) else None
    payment.allocated_at = timezone.now()
    payment.save(
        update_fields=[
            "status",
            "customer",
            "reference_kind",
            "reference_id",
            "match_description",
            "matched_by",
            "allocation_entry",
            "allocated_by",
            "allocated_at",
        ]
    )
    return entry


def payment_allocate(
    *,
    payment: Payment,
    credit_role: str = "receivables",
    customer: Customer | None = None,
    reference_kind: str,
    reference_id: int | None,
    acting_user: Any,
) -> JournalEntry:
    """Allocate a payment sitting in suspense: Dr suspense / Cr `credit_role`, key "mpesa-allocate:<receipt>".

    Locks the payment; raises NotUnallocated unless it is unallocated, InvalidRequest if the
    customer belongs to another business. Marks it allocated (customer, reference, who, when) and
    returns the allocation entry. Runs in the caller's transaction when there is one.
    """
    with transaction.atomic():
        locked = Payment.objects.select_for_update().select_related("business").get(pk=payment.pk)
        if locked.status != PaymentStatus.UNALLOCATED:
            raise NotUnallocated(f"payment {locked.receipt} is {locked.get_status_display().lower()}, not in suspense")
        if customer is not None and customer.business_id != locked.business_id:
            raise InvalidRequest("that customer belongs to another business")
        description = f"{reference_kind} {reference_id}" if reference_id is not None else reference_kind
        if customer is not None:
            description = f"{description} ({customer.name})"
        match = Match(customer.pk if customer else None, reference_kind, reference_id, f"allocated to {description}")
        entry = _allocate(
            locked, credit_role=credit_role, match=match, how="allocated by hand", acting_user=acting_user
        )
        # The caller's object reflects the allocation too.
        for name in ("status", "customer_id", "reference_kind", "reference_id", "allocation_entry_id", "allocated_at"):
            setattr(payment, name, getattr(locked, name))
        return entry


# ------------------------------------------------------------------------------------ Daraja calls


def till_callback_urls(till: Till, *, base_url: str = "") -> dict[str, str]:
    """The full callback URLs of a till (what the owner registers with Safaricom), by name."""
    base = (base_url or till.callback_base_url or conf.callback_base_url()).rstrip("/")
    if not base:
        raise InvalidRequest(f"till {till} has no callback base URL (set it on the till or MPESA_CALLBACK_BASE_URL)")
    root = f"{base}/daraja/{till.callback_token}"
    urls = {
        "stk": f"{root}/stk/",
        "c2b_validation": f"{root}/c2b/validate/",
        "c2b_confirmation": f"{root}/c2b/confirm/",
    }
    for kind in ("status", "reversal", "balance"):
        urls[f"result_{kind}"] = f"{root}/result/{kind}/"
        urls[f"timeout_{kind}"] = f"{root}/timeout/{kind}/"
    return urls


def daraja_client_for(till: Till) -> DarajaClient:
    """A client with the till's credentials; base URL by its environment unless MPESA_BASE_URL overrides."""
    from django.conf import settings

    creds = till_credentials(till)
    base = conf.base_url_override() or (
        PRODUCTION_BASE_URL if till.environment == DarajaEnvironment.PRODUCTION else SANDBOX_BASE_URL
    )
    signing = till.store_number if till.kind == TillKind.TILL and till.store_number else till.shortcode
    try:
        return DarajaClient(
            base_url=base,
            consumer_key=creds.consumer_key,
            consumer_secret=creds.consumer_secret,
            shortcode=signing,
            passkey=creds.passkey,
            initiator_name=creds.initiator_name,
            security_credential=creds.security_credential,
            redis_url=settings.REDIS_URL,
        )
    except DarajaError as exc:
        raise DarajaUnavailable(f"till {till}: {exc}") from exc


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


def till_register_urls(*, till: Till, acting_user: Any, version: str = "v1") -> C2BRegisterResponse:
    """Register the till's C2B validation and confirmation URLs with Daraja (v1: hashed MSISDN).

    Idempotent at Daraja (registering again replaces). Raises DarajaUnavailable with Daraja's message.
    """
    urls = till_callback_urls(till)
    client = daraja_client_for(till)
    try:
        answer = client.c2b_register_urls(
            confirmation_url=urls["c2b_confirmation"],
            validation_url=urls["c2b_validation"],
            version="v2" if version == "v2" else "v1",
        )
    except (DarajaError, ValueError) as exc:
        raise DarajaUnavailable(f"registering the URLs of {till} failed: {exc}") from exc
    finally:
        client.close()
    logger.info("C2B URLs of till %s registered by %s: %s", till.pk, acting_user, answer.response_description)
    return answer


def till_set_credentials(
    *,
    till: Till,
    consumer_key: str = "",
    consumer_secret: str = "",
    passkey: str = "",
    security_credential: str = "",
) -> list[str]:
    """Encrypt and store the credentials given (blank = keep the stored one). Returns the fields changed.

    Does not save the till: the caller (the admin form) saves it with its other fields.
    """
    changed = []
    for name, value in (
        ("consumer_key", consumer_key),
        ("consumer_secret", consumer_secret),
        ("passkey", passkey),
        ("security_credential", security_credential),
    ):
        if value:
            setattr(till, f"{name}_encrypted", encrypt(value.strip()))
            changed.append(f"{name}_encrypted")
    return changed


ENCRYPTED_CREDENTIAL_FIELDS = (
    "consumer_key_encrypted",
    "consumer_secret_encrypted",
    "passkey_encrypted",
    "security_credential_encrypted",
)


def till_credentials_reencrypt() -> tuple[int, list[tuple[int, str]]]:
    """Encrypt every stored till credential with the first MPESA_ENCRYPTION_KEY (key rotation).

    Returns (credentials rewritten, [(till id, field) that no key can read]). One transaction with the
    tills locked, so a crash leaves every credential as it was (still readable: the old keys stay
    configured until this has run). Idempotent: a credential already under the first key is not
    rewritten, so a second run reports 0. An unreadable credential is left as it is and reported
    (enter it again in the till's form); the others are still moved.
    """
    rewritten = 0
    unreadable: list[tuple[int, str]] = []
    with transaction.atomic():
        for till in Till.objects.select_for_update().order_by("pk"):
            changed = []
            for field in ENCRYPTED_CREDENTIAL_FIELDS:
                try:
                    fresh = reencrypt(getattr(till, field))
                except SecretUnreadable:
                    unreadable.append((till.pk, field))
                    continue
                if fresh is not None:
                    setattr(till, field, fresh)
                    changed.append(field)
            if changed:
                till.save(update_fields=changed)
                rewritten += len(changed)
    if rewritten or unreadable:
        logger.info("till credentials re-encrypted: %s rewritten, %s unreadable", rewritten, len(unreadable))
    return rewritten, unreadable


# ------------------------------------------------------------------------------------ reversals


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


def _by_conversation(query: QuerySet[M], conversation_id: str, originator: str) -> M | None:
    """The row a result callback answers: by Daraja's ConversationID, else by the
    OriginatorConversationID it gave when accepting the request."""
    found = query.filter(conversation_id=conversation_id).first() if conversation_id else None
    if found is None and originator:
        found = query.filter(originator_conversation_id=originator).first()
    return found


def _find_reversal(conversation_id: str, originator: str) -> Reversal:
    found = _by_conversation(Reversal.objects.select_for_update(), conversation_id, originator)
    if found is None:
        raise NeedsAttention(f"no reversal request with ConversationID {conversation_id or originator}")
    return found


def _process_reversal_result(msg: InboxMessage) -> str:
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
    payment = Payment.objects.select_for_update().get(pk=reversal.payment_id)
    reversal.entry = payment_reverse_entries(payment=payment, acting_user=reversal.requested_by)
    reversal.state = ReversalState.COMPLETED
    reversal.reversal_receipt = result.transaction_id[:32]
    reversal.save(update_fields=["state", "result_code", "result_desc", "completed_at", "entry", "reversal_receipt"])
    return f"reversal {reversal.pk} of {payment.receipt} completed and posted"


def payment_reverse_entries(*, payment: Payment, acting_user: Any) -> JournalEntry:
    """Post the ledger reversal of a payment (its allocation first, then the receipt). Idempotent."""
    if payment.allocation_entry_id is not None:
        entry_reverse(
            entry=payment.allocation_entry,  # type: ignore[arg-type]
            memo=f"M-Pesa {payment.receipt} reversed (allocation)",
            acting_user=acting_user,
            idempotency_key=f"mpesa-reversal-allocation:{payment.receipt}",
        )
    reversal_entry = entry_reverse(
        entry=payment.entry,
        memo=f"M-Pesa {payment.receipt} reversed",
        acting_user=acting_user,
        idempotency_key=f"mpesa-reversal:{payment.receipt}",
    )
    payment.status = PaymentStatus.REVERSED
    payment.save(update_fields=["status"])
    return reversal_entry


def _process_reversal_timeout(msg: InboxMessage) -> str:
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


# ------------------------------------------------------------------------------------ transaction status

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
    till's status result URL and is processed like any callback (see _process_status_result).

    The StatusQuery row is committed first, then Daraja is called outside any transaction. Raises
    InvalidRequest for a malformed receipt or an inactive till (nothing stored), and IntegrityError
    when the recovery job already asked about this receipt. Daraja's refusal leaves the row "error".
    """
    receipt = (receipt or "").strip().upper()
    if not RECEIPT_PATTERN.fullmatch(receipt):
        raise InvalidRequest(f"{receipt!r} is not an M-Pesa receipt (10 letters and digits, e.g. TJR4XK2Q1M)")
    if not till.is_active:
        raise InvalidRequest(f"till {till} is not active")
    with transaction.atomic():
        query = StatusQuery.objects.create(
            business_id=till.business_id,
            till=till,
            receipt=receipt,
            reason=reason,
            payment_request=payment_request,
            account_reference=(account_reference or "")[:40],
            requested_by=acting_user if getattr(acting_user, "pk", None) else None,
        )
    try:
        urls = till_callback_urls(till)
        client = daraja_client_for(till)
        try:
            answer = client.transaction_status(
                transaction_id=receipt,
                result_url=urls["result_status"],
                timeout_url=urls["timeout_status"],
                remarks="Payment check",
                identifier_type="2" if till.kind == TillKind.TILL and not till.store_number else "4",
            )
        finally:
            client.close()
    except (DarajaError, DarajaUnavailable, InvalidRequest, SecretUnreadable, ValueError) as exc:
        StatusQuery.objects.filter(pk=query.pk).update(
            state=StatusQueryState.ERROR, result_desc=str(exc)[:255], completed_at=timezone.now()
        )
        query.refresh_from_db()
        return query
    StatusQuery.objects.filter(pk=query.pk).update(
        conversation_id=answer.conversation_id,
        originator_conversation_id=answer.originator_conversation_id,
        result_desc=answer.response_description[:255],
    )
    query.refresh_from_db()
    return query


def _find_status_query(conversation_id: str, originator: str) -> StatusQuery | None:
    query = StatusQuery.objects.select_for_update(of=("self",)).select_related("payment_request")
    return _by_conversation(query, conversation_id, originator)


def split_party(text: str | None) -> tuple[str, str]:
    """("254708374149", "John Doe") from "254708374149 - John Doe", as Daraja's results and the
    org-portal statement name a party; ("", "") if absent."""
    number, _, name = (text or "").partition(" - ")
    return number.strip(), name.strip()


def _process_status_result(msg: InboxMessage) -> str:
    status = parse_transaction_status_result(msg.body)
    summary = (
        f"transaction status {status.result_code} {status.result_desc}: receipt {status.receipt_no or '-'} "
        f"{status.transaction_status or ''} {status.amount or ''}"
    )
    query = _find_status_query(status.conversation_id, status.originator_conversation_id)
    if query is None:
        return f"{summary} (not a query of ours)"
    if query.till_id != msg.till_id:
        raise NeedsAttention(f"status query {query.pk} belongs to another till than the result URL's")
    if query.state != StatusQueryState.SENT:
        return f"status query {query.pk} already {query.state}"
    if status.receipt_no and status.receipt_no != query.receipt:
        raise NeedsAttention(
            f"status query {query.pk} asked about {query.receipt}, the result is about {status.receipt_no}"
        )
    query.result_code = status.result_code[:20]
    query.result_desc = status.result_desc[:255]
    query.transaction_status = (status.transaction_status or "")[:40]
    query.amount = status.amount
    query.completed_at = timezone.now()
    fields = ["state", "result_code", "result_desc", "transaction_status", "amount", "completed_at"]
    till = msg.till
    receiver, _ = split_party(status.credit_party_name)
    if not status.succeeded:
        query.state = StatusQueryState.FAILED
    elif (
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
        return f"status query {query.pk}: {_payment_outcome(payment, created)}"[:255]
    query.save(update_fields=fields)
    return f"status query {query.pk} {query.state}: {summary}"[:255]


def _process_status_timeout(msg: InboxMessage) -> str:
    result = parse_result_callback(msg.body)
    query = _find_status_query(result.conversation_id, result.originator_conversation_id)
    if query is None:
        return f"queue timeout {result.result_code} {result.result_desc}"
    if query.state != StatusQueryState.SENT:
        return f"status query {query.pk} already {query.state}; timeout ignored"
    query.state = StatusQueryState.TIMEOUT
    query.result_code = result.result_code[:20]
    query.result_desc = f"queue timeout: {result.result_desc}"[:255]
    query.completed_at = timezone.now()
    query.save(update_fields=["state", "result_code", "result_desc", "completed_at"])
    return f"status query {query.pk} timed out at Daraja; ask again if still wanted"


def lost_confirmations_recover(
    *, older_than_seconds: int = 600, within_days: int = 3, batch_size: int = 20
) -> dict[str, int]:
    """Ask Daraja (Transaction Status) about C2B payments we accepted at validation more than
    `older_than_seconds` ago (and within `within_days`) whose confirmation never came: no Payment
    has their receipt. Each receipt is asked about once (a database constraint); a "completed"
    answer records and posts the payment. Returns counts by the query's state.
    """
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
    counts: dict[str, int] = {}
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

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
import traceback
from collections.abc import Mapping, Sequence
from contextlib import ExitStack
from dataclasses import dataclass, replace
from decimal import Decimal
from typing import Any, TypeVar
from urllib.parse import urlsplit

from celery import current_app
from celery.exceptions import SoftTimeLimitExceeded
from django.db import IntegrityError, InterfaceError, OperationalError, connection, models, transaction
from django.db.models import QuerySet
from django.utils import timezone

from accounts.exceptions import InvalidAccount, LedgerError, PeriodLocked
from accounts.models import Account, JournalEntry, SourceType
from accounts.selectors import books_first_open_date
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
from integrations.mpesa.matching import (
    Match,
    Placed,
    claim_for,
    resolve_reference,
)
from integrations.mpesa.models import (
    DarajaEnvironment,
    InboxKind,
    InboxMessage,
    InboxState,
    Payment,
    PaymentApplication,
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
    ReversalResult,
    parse_account_balance_result,
    parse_c2b_confirmation,
    parse_c2b_validation,
    parse_result_callback,
    parse_reversal_result,
    parse_stk_callback,
    parse_transaction_status_result,
)
from integrations.mpesa.secrets import SecretUnreadable, encrypt, reencrypt, till_credentials
from operations.exceptions import InvalidInput, InvalidState
from operations.models import Customer, PaymentMethod, Sale, SaleStatus
from operations.payments import payment_placed, payment_placing_reversed
from operations.phones import classify_msisdn, mask_matches, normalise_msisdn
from operations.services.postings import same_business
from tenancy.models import Business

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
    (till_id, kind, daraja_id, body, body_sha256, headers, remote_addr, received_at, state, attempts,
     last_enqueued_at, processed_at, error, traceback, outcome)
VALUES (%s, %s, %s, %s, %s, %s::jsonb, %s, now(), %s, 0, CASE WHEN %s THEN now() END,
        CASE WHEN %s = 'processed' THEN now() END, %s, '', %s)
ON CONFLICT (kind, daraja_id, body_sha256) DO NOTHING
RETURNING id
"""

# The first row already stored for this (kind, daraja_id) with another body, if any.
_EARLIER_SQL = """
SELECT id, state FROM integrations_inboxmessage
WHERE kind = %s AND daraja_id = %s AND body_sha256 <> %s
ORDER BY id LIMIT 1
"""

# Errors that may go away by themselves (lock timeout, deadlock, connection lost, the books' lock
# date moving): the task retries the row with backoff. Anything else is not retried at once.
TRANSIENT_ERRORS: tuple[type[Exception], ...] = (OperationalError, InterfaceError, TransientProcessingError)


def body_text(raw: bytes) -> str:
    """The body as storable text: PostgreSQL text holds neither invalid UTF-8 nor NUL characters."""
    return raw.decode("utf-8", errors="replace").replace("\x00", "\ufffd")


def malformed_id(raw: bytes) -> str:
    return "malformed:" + hashlib.sha256(raw).hexdigest()


def body_sha256(text: str) -> str:
    """SHA-256 of a stored body, as PostgreSQL computes it: encode(sha256(convert_to(body, 'UTF8')), 'hex')."""
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


def error_summary(exc: BaseException) -> str:
    """One line for the inbox's error column: the class and the first line of the message."""
    lines = str(exc).strip().splitlines()
    return f"{type(exc).__name__}: {lines[0] if lines else ''}".strip()[:500]


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
    """Store one callback; its new id, or None when the same body is already stored for (kind, daraja_id).

    A byte-identical duplicate is a no-op however many arrive at once (INSERT ... ON CONFLICT DO
    NOTHING on (kind, daraja_id, body_sha256)). Another body for a (kind, daraja_id) already stored
    (an STK failure, then a success for the same CheckoutRequestID) is stored as a new row in
    "needs a person", naming the earlier row: Daraja told two stories about one request and a
    person decides (Reprocess) - it is never dropped silently, nor posted without a look.
    A transaction-scoped advisory lock on (kind, daraja_id) makes "is there an earlier row?" and
    the insert one step even when two different bodies arrive at once.
    A RECEIVED row gets last_enqueued_at = now() because the caller enqueues it next; if that
    enqueue fails the sweeper still finds it (state received).
    """
    daraja_id = daraja_id[:120]
    text = body_text(body)
    digest = body_sha256(text)
    with transaction.atomic(), connection.cursor() as cursor:
        cursor.execute("SELECT pg_advisory_xact_lock(hashtextextended(%s, 0))", [f"inbox:{kind}:{daraja_id}"])
        cursor.execute(_EARLIER_SQL, [kind, daraja_id, digest])
        earlier = cursor.fetchone()
        if earlier is not None:
            note = (
                f"another body for this {kind} id was stored earlier as inbox row {earlier[0]} ({earlier[1]}); "
                "not processed: compare the two and Reprocess this row if it is genuine"
            )
            state, error, outcome = InboxState.NEEDS_ATTENTION, f"{error}; {note}" if error else note, "needs a person"
            logger.warning("inbox %s %s: a different body after row %s; held for a person", kind, daraja_id, earlier[0])
        cursor.execute(
            _INSERT_SQL,
            [
                till_id,
                kind,
                daraja_id,
                text,
                digest,
                json.dumps(dict(headers)),
                remote_addr,
                state,
                state == InboxState.RECEIVED,
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


def inbox_mark_failed(*, inbox_id: int, error: str, trace: str = "") -> str:
    """Record a failed attempt whose transaction was rolled back, in a transaction of its own: one
    attempt more, `error` (one line) and `trace` (the traceback). The row is "failed" (the task's
    retry or the sweeper tries it again) until it has failed MPESA_MAX_ATTEMPTS times; then it is
    parked in "needs a person", so that no row is tried for ever. Returns the row's state after.
    """
    with transaction.atomic():
        msg = _inbox_lock(inbox_id)
        if msg is None:
            return "missing"
        if msg.state not in (InboxState.RECEIVED, InboxState.FAILED):
            return str(msg.state)  # processed or parked meanwhile (another delivery of the same id)
        msg.attempts += 1
        msg.error = (error.strip().splitlines() or [""])[0][:2000]
        msg.traceback = trace[-20000:]
        limit = conf.max_attempts()
        if msg.attempts >= limit:
            msg.state = InboxState.NEEDS_ATTENTION
            msg.outcome = f"needs a person: failed {msg.attempts} times"
            logger.error("inbox %s (%s %s) parked after %s attempts: %s", msg.pk, msg.kind, msg.daraja_id, limit, error)
        else:
            msg.state = InboxState.FAILED
        msg.save(update_fields=["state", "attempts", "error", "traceback", "outcome"])
        return str(msg.state)


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
    Whatever goes wrong rolls this row's attempt back (and only it); then, in a transaction of its own:
    - transient errors (TRANSIENT_ERRORS: lock timeout, connection loss) propagate for the task to
      record (inbox_mark_failed) and retry;
    - a payload or business problem puts the row in "needs attention" with the error at once;
    - any other exception (a DataError, an IntegrityError, a bug in a payment listener) is recorded
      with its traceback as a failed attempt (parked after MPESA_MAX_ATTEMPTS) and the outcome is
      returned, so the task goes on with the next row; the sweeper tries this one again later.
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
            msg.error = msg.traceback = ""
            msg.outcome = outcome[:255]
            msg.save(update_fields=["state", "attempts", "error", "traceback", "outcome", "processed_at"])
            return msg.outcome
    except TRANSIENT_ERRORS:
        raise
    except (PayloadError, NeedsAttention, LedgerError, SecretUnreadable) as exc:
        problem, trace = exc, traceback.format_exc()
    except Exception as exc:
        # Unexpected: the atomic block above has rolled this row back, so the connection is usable
        # again even if the error aborted the transaction; record it in a transaction of its own.
        trace, summary = traceback.format_exc(), error_summary(exc)
        logger.exception("inbox %s failed unexpectedly", inbox_id)
        state = inbox_mark_failed(inbox_id=inbox_id, error=summary, trace=trace)
        if isinstance(exc, SoftTimeLimitExceeded):
            raise  # counted; the task itself must stop now
        return f"{state}: {summary}"[:255]
    with transaction.atomic():
        msg = _inbox_lock(inbox_id)
        if msg is None or msg.state in (InboxState.PROCESSED, InboxState.NEEDS_ATTENTION):
            return "missing" if msg is None else f"already {msg.state}"
        msg.attempts += 1
        msg.state = InboxState.NEEDS_ATTENTION
        msg.error = f"{type(problem).__name__}: {problem}"[:2000]
        msg.traceback = trace[-20000:]
        msg.outcome = "needs a person"
        logger.warning("inbox %s (%s %s) needs attention: %s", msg.pk, msg.kind, msg.daraja_id, problem)
        msg.save(update_fields=["state", "attempts", "error", "traceback", "outcome"])
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


def _post_once(*, business: Business, wanted: dt.date, post: Any) -> JournalEntry:
    """Post on `wanted`, or, when PostgreSQL refuses that date as closed, on the first open date
    (the refused attempt leaves the transaction usable: entry_post posts in a savepoint).
    If the lock date moves again meanwhile, the caller retries later."""
    try:
        return post(wanted)  # type: ignore[no-any-return]
    except PeriodLocked:
        try:
            return post(books_first_open_date(business_id=business.pk, wanted=wanted))  # type: ignore[no-any-return]
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

    The first call for a receipt creates the Payment and posts, with idempotency key
    "mpesa:<receipt>", Dr M-Pesa clearing / Cr receivables for what the matched reference owed
    (and what is over it, when it has a customer to credit) / Cr suspense for the rest (all of it
    when unmatched); see _payment_split. Dated the payment's Nairobi date (or the first open day
    when that is closed; paid_at keeps the truth).
    Later calls (the STK callback after the C2B confirmation, a reconciliation) only fill in what
    the Payment row lacks, and allocate what sits in suspense if it can now be matched.
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
        split = _payment_split(business, match, amount, credit_role="receivables")
        clearing, receivables, suspense = _accounts(business, "mpesa_clearing", "receivables", "suspense")
        lines = [LineSpec(account=clearing, debit=amount)]
        if split.moved:
            lines.append(LineSpec(account=receivables, credit=split.moved))
        if split.unallocated:
            lines.append(LineSpec(account=suspense, credit=split.unallocated))
        local_day = paid_at.astimezone(NAIROBI).date()

        def post(day: dt.date) -> JournalEntry:
            return entry_post(
                business=business,
                entry_date=day,
                lines=lines,
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
            status=PaymentStatus.UNALLOCATED,
            unallocated_amount=amount,
            entry=entry,
        )
        _payment_placed(payment, split, entry=entry, how=how, credit_role="receivables", acting_user=None)
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
            # Nothing moves when the match takes nothing more (e.g. the sale it overpaid): it stays for a person.
            _allocate(payment, credit_role="receivables", match=match, how=how, acting_user=None, refuse_nothing=False)


def _accounts(business: Business, *roles: str) -> list[Account]:
    """The business's accounts for `roles`, in that order, with one query."""
    found = {a.role: a for a in Account.objects.filter(business=business, role__in=roles)}
    missing = [role for role in roles if role not in found]
    if missing:
        raise InvalidAccount(f"business {business.pk} has no account with role {missing[0]!r}")
    return [found[role] for role in roles]


@dataclass(frozen=True)
class _Split:
    """Where an amount goes: `applied` to the matched reference, `credit` (over what it owed) to
    customer `customer_id`'s credit, `unallocated` to suspense for a person; `description` says so."""

    match: Match | None
    customer_id: int | None
    applied: Decimal
    credit: Decimal
    unallocated: Decimal
    description: str

    @property
    def moved(self) -> Decimal:
        """What is credited to the chosen account (receivables): applied + credit."""
        return self.applied + self.credit


def _payment_split(business: Business, match: Match | None, amount: Decimal, *, credit_role: str) -> _Split:
    """Split `amount` by what `match` still owes (asked of the claim resolvers, under their lock).

    Only what is owed is applied to the reference (a sale never gets more than its total); the
    rest goes to the customer's credit when the reference (or the match) has a customer, else it
    stays in suspense with the reason. Never silently: the description says where each part went.
    Money allocated to another account than receivables (owner's money, an expense refund) is
    not a customer's and is moved whole.
    """
    zero = Decimal("0.00")
    if match is None:
        return _Split(None, None, zero, zero, amount, "")
    if credit_role != "receivables":
        return _Split(match, match.customer_id, amount, zero, zero, match.description)
    claim = claim_for(business, match)
    if match.customer_id is not None and claim.customer_id not in (None, match.customer_id):
        raise InvalidRequest(f"{match.description}: the reference belongs to another customer than the one chosen")
    customer_id = claim.customer_id if claim.customer_id is not None else match.customer_id
    applied = amount if claim.owed is None else max(min(amount, claim.owed), zero)
    over = amount - applied
    description = match.description
    if not over:
        return _Split(match, customer_id, applied, zero, zero, description)
    why = claim.description or f"it owed KES {applied}"
    part = f"KES {over} paid over it" if applied else f"the KES {over}"
    if customer_id is not None:
        text = f"{description}: {why}; {part} is the customer's credit"
        return _Split(match, customer_id, applied, over, zero, text[:255])
    text = f"{description}: {why}; {part} waits in suspense (no customer to credit)"
    return _Split(match, None, applied, zero, over, text[:255])


def _payment_placed(
    payment: Payment, split: _Split, *, entry: JournalEntry, how: str, credit_role: str, acting_user: Any
) -> None:
    """After `entry` placed `split` of `payment`: the application row, the payment's state, and the
    listeners (operations: the sale's amount paid, the customer's transactions). One place for the
    receipt's own posting and every allocation, so both record the same things."""
    PaymentApplication.objects.create(
        payment=payment,
        entry=entry,
        credit_role=credit_role,
        customer_id=split.customer_id,
        reference_kind=split.match.reference_kind if split.match else "",
        reference_id=split.match.reference_id if split.match else None,
        applied=split.applied,
        credit=split.credit,
        unallocated=split.unallocated,
    )
    fields = ["status", "unallocated_amount"]
    payment.unallocated_amount = split.unallocated
    payment.status = PaymentStatus.UNALLOCATED if split.unallocated else PaymentStatus.ALLOCATED
    match = split.match
    if match is not None:
        payment.customer_id = split.customer_id
        payment.reference_kind = match.reference_kind
        payment.reference_id = match.reference_id
        payment.match_description = split.description[:255]
        payment.matched_by = how
        fields += ["customer", "reference_kind", "reference_id", "match_description", "matched_by"]
    if entry.pk != payment.entry_id:
        payment.allocation_entry = entry
        payment.allocated_by = acting_user if getattr(acting_user, "pk", None) else None
        payment.allocated_at = timezone.now()
        fields += ["allocation_entry", "allocated_by", "allocated_at"]
    payment.save(update_fields=fields)
    if split.unallocated and match is not None:
        logger.warning("M-Pesa %s: %s", payment.receipt, split.description)
    if match is not None and credit_role == "receivables" and split.moved:
        placed = Placed(
            replace(match, customer_id=split.customer_id),
            split.applied,
            split.credit,
            entry,
            timezone.localdate(payment.paid_at),
        )
        payment_placed(business_id=payment.business_id, receipt=payment.receipt, placed=placed)


def _allocate(
    payment: Payment, *, credit_role: str, match: Match, how: str, acting_user: Any, refuse_nothing: bool = True
) -> JournalEntry | None:
    """Move what of `payment` sits in suspense to `match` (see _payment_split): Dr suspense / Cr
    `credit_role`, key "mpesa-allocate:<receipt>" (":<n>" for a later one). The payment is locked
    by the caller. Nothing to move: InvalidRequest (or None when `refuse_nothing` is off)."""
    business = payment.business
    split = _payment_split(business, match, payment.unallocated_amount, credit_role=credit_role)
    if not split.moved:
        if refuse_nothing:
            raise InvalidRequest(f"{split.description or match.description}: nothing of it can be allocated there")
        return None
    suspense, credit = _accounts(business, "suspense", credit_role)
    placings = PaymentApplication.objects.filter(payment=payment).count()
    key = f"mpesa-allocate:{payment.receipt}" + (f":{placings}" if placings > 1 else "")

    def post(day: dt.date) -> JournalEntry:
        return entry_post(
            business=business,
            entry_date=day,
            lines=[LineSpec(account=suspense, debit=split.moved), LineSpec(account=credit, credit=split.moved)],
            memo=f"M-Pesa {payment.receipt} allocated: {match.description}"[:255],
            source_type=SourceType.MPESA,
            source_ref=payment.receipt,
            idempotency_key=key,
            acting_user=acting_user,
        )

    entry = _post_once(business=business, wanted=timezone.localdate(), post=post)
    _payment_placed(payment, split, entry=entry, how=how, credit_role=credit_role, acting_user=acting_user)
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
    """Allocate what of a payment sits in suspense: Dr suspense / Cr `credit_role`, key
    "mpesa-allocate:<receipt>", and record it as the automatic match does (one path,
    _payment_placed): on receivables, the sale's amount paid and the customer's transactions;
    only what the reference owes is applied, the rest is the customer's credit or stays in suspense.

    Locks the payment; raises NotUnallocated unless some of it is in suspense, InvalidRequest if the
    customer belongs to another business or nothing can go there. Returns the allocation entry.
    Runs in the caller's transaction when there is one.
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
        assert entry is not None
        # The caller's object reflects the allocation too.
        for name in (
            "status",
            "customer_id",
            "reference_kind",
            "reference_id",
            "match_description",
            "allocation_entry_id",
            "allocated_at",
            "unallocated_amount",
        ):
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
    found = _by_conversation(query, conversation_id, originator)
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


def _process_status_result(msg: InboxMessage) -> str:
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
        return f"status query {query.pk}: {_payment_outcome(payment, created)}"[:255]
    query.save(update_fields=fields)
    return f"status query {query.pk} {query.state}: {summary}"[:255]


def _process_status_timeout(msg: InboxMessage) -> str:
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


# Sales paid by M-Pesa: the admin's actions on a sale (operations never calls M-Pesa itself).


def sale_settle_mpesa(*, sale: Sale, payment: Payment, acting_user: Any = None) -> Sale:
    """Settle an M-Pesa sale with a received payment that sits in suspense (unallocated):
    payment_allocate posts Dr suspense / Cr receivables and records it as any
    matched payment (the sale's amount paid, the customer's transactions; what is over what the
    sale owes is the customer's credit or stays in suspense), in this same transaction."""
    with transaction.atomic():
        # The payment before the sale, as every M-Pesa placing locks them (no deadlock with "Allocate").
        type(payment).objects.select_for_update().filter(pk=payment.pk).values_list("pk", flat=True).first()
        sale = Sale.objects.select_for_update().get(pk=sale.pk)
        if sale.status != SaleStatus.POSTED or sale.payment_method == PaymentMethod.CASH:
            raise InvalidState(f"Sale {sale.number} is not waiting for an M-Pesa payment.")
        if sale.total - sale.amount_paid <= 0:
            raise InvalidState(f"Sale {sale.number} is paid already.")
        if payment.business_id != sale.business_id:
            raise InvalidInput("That M-Pesa payment was received by another business.")
        payment_allocate(
            payment=payment,
            credit_role="receivables",
            customer=sale.customer,
            reference_kind="sale",
            reference_id=sale.pk,
            acting_user=acting_user,
        )
        sale.refresh_from_db()
        return sale


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

"""The inbox of Daraja callbacks: stored once per (kind, Daraja id, body), then processed once.

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

import datetime as dt
import hashlib
import json
import logging
import traceback
from collections.abc import Mapping
from typing import Any

from celery.exceptions import SoftTimeLimitExceeded
from django.db import InterfaceError, OperationalError, connection, transaction
from django.utils import timezone

from accounts.exceptions import LedgerError
from integrations.mpesa import conf
from integrations.mpesa.exceptions import NeedsAttention, TransientProcessingError
from integrations.mpesa.models import InboxKind, InboxMessage, InboxState
from integrations.mpesa.payloads import (
    CallbackKind,
    PayloadError,
    parse_account_balance_result,
    parse_c2b_validation,
    parse_result_callback,
)
from integrations.mpesa.payments import c2b_confirmation_process
from integrations.mpesa.publisher import inbox_enqueue
from integrations.mpesa.reversals import reversal_result_process, reversal_timeout_process
from integrations.mpesa.secrets import SecretUnreadable
from integrations.mpesa.status_queries import status_result_process, status_timeout_process
from integrations.mpesa.stk import stk_callback_process

logger = logging.getLogger(__name__)


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
        return stk_callback_process(msg)
    if kind == InboxKind.C2B_CONFIRMATION:
        return c2b_confirmation_process(msg)
    if kind == InboxKind.C2B_VALIDATION:
        parse_c2b_validation(msg.body)
        return "validation request (answered at once; nothing to post)"
    if kind == InboxKind.REVERSAL_RESULT:
        return reversal_result_process(msg)
    if kind == InboxKind.REVERSAL_TIMEOUT:
        return reversal_timeout_process(msg)
    if kind == InboxKind.STATUS_RESULT:
        return status_result_process(msg)
    if kind == InboxKind.STATUS_TIMEOUT:
        return status_timeout_process(msg)
    if kind == InboxKind.BALANCE_RESULT:
        balance = parse_account_balance_result(msg.body)
        parts = [f"{a.name} {a.currency} {a.current}" for a in balance.accounts]
        return f"balance {balance.result_code}: " + "; ".join(parts)
    if kind == InboxKind.BALANCE_TIMEOUT:
        result = parse_result_callback(msg.body)
        return f"queue timeout {result.result_code} {result.result_desc}"
    raise NeedsAttention(f"unknown inbox kind {kind!r}")

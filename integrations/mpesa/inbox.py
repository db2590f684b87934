"""The inbox of Daraja callbacks: stored once per (kind, Daraja id, body), then processed once.

How a payment is posted exactly once (docs/mpesa.md):
- a callback is stored in the inbox, unique on (kind, Daraja id): a duplicate is a no-op;
- `inbox_process` locks the inbox row and returns if it was processed; otherwise it parses,
  matches, posts and marks the row processed in ONE transaction, so a crash anywhere before the
  commit leaves nothing behind and the next delivery starts again;
- a payment is one `Payment` row per receipt (unique) and one ledger entry whose idempotency key
  is "mpesa:<receipt>"; an STK callback and the C2B confirmation of the same receipt meet on a
  transaction-scoped advisory lock on the receipt, and the second one only adds what it knows to
  the Payment row (never a second entry);
- the payments task records payment callbacks in groups (`inbox_process_group`): up to
  MPESA_GROUP_SIZE rows in one transaction, each still recorded exactly as `inbox_process` would,
  all or none of them committed; a row that fails takes no other row down with it (it goes on
  alone through `inbox_process`, the rest of the group again without it).
"""

from __future__ import annotations

import datetime as dt
import hashlib
import json
import logging
import traceback
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from celery.exceptions import SoftTimeLimitExceeded
from django.db import InterfaceError, OperationalError, connection, transaction
from django.utils import timezone

from accounts.exceptions import LedgerError
from integrations.mpesa import conf
from integrations.mpesa.exceptions import NeedsAttention, TransientProcessingError
from integrations.mpesa.models import InboxKind, InboxMessage, InboxState
from integrations.mpesa.payloads import (
    C2BTransaction,
    CallbackKind,
    PayloadError,
    StkCallback,
    parse_account_balance_result,
    parse_c2b_confirmation,
    parse_c2b_validation,
    parse_result_callback,
    parse_stk_callback,
)
from integrations.mpesa.payments import PostingGroup, c2b_confirmation_process, c2b_till_check
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


# The kinds recorded in groups (inbox_process_group): the payments. Any other kind goes one by one.
# The partial index inbox_payments_waiting_idx (models.InboxMessage) names the same kinds.
GROUP_KINDS = (InboxKind.STK_CALLBACK, InboxKind.C2B_CONFIRMATION)
# A message whose rows are all settled takes younger waiting rows only by a group's worth (_settled_already).
TOP_UP_AGE_SECONDS = 2.0
# Rows of one group that may fail and go on alone before the rest of the group goes one by one too.
GROUP_MAX_FAILURES = 3

# A group's rows marked processed, each with its outcome, in one statement.
_PROCESSED_SQL = """
UPDATE integrations_inboxmessage AS m
   SET state = %s, attempts = m.attempts + 1, processed_at = %s, error = '', traceback = '', outcome = v.outcome
  FROM unnest(%s::bigint[], %s::text[]) AS v(id, outcome)
 WHERE m.id = v.id
"""


@dataclass
class GroupResult:
    """What inbox_process_group did: the `outcomes` of the rows it settled (recorded now, or found
    settled already), by id, and the rows it leaves to `inbox_process`, one by one (`alone`, in id order)."""

    outcomes: dict[int, str] = field(default_factory=dict)
    alone: list[int] = field(default_factory=list)


@dataclass
class _GroupAttempt:
    """One transaction of a group: the rows it locked, the row it was recording (when an exception
    came), and what it decided."""

    locked: list[int] = field(default_factory=list)
    current: int | None = None
    outcomes: dict[int, str] = field(default_factory=dict)
    alone: list[int] = field(default_factory=list)


def inbox_process_group(*, inbox_ids: Sequence[int], take: int = 0) -> GroupResult:
    """Record the payment callbacks among inbox rows `inbox_ids`, and up to `take` others waiting in
    the inbox, in ONE transaction: the commit, the locks and the reads are shared by the group, and
    each payment costs a handful of statements (payments.PostingGroup).

    - The rows `inbox_ids` are locked (waiting for a task that holds one, as inbox_process does);
      the `take` others are the oldest "received" STK callbacks and C2B confirmations that no one
      holds (SKIP LOCKED): a task with a few rows records, in the same transaction, what waits
      besides them; the message that brings them later finds them processed.
    - Each row is recorded exactly as inbox_process records it (stk_callback_process,
      c2b_confirmation_process) and marked processed in the same transaction, so a crash anywhere
      leaves every row of the group as it was, and redelivery starts again.
    - Rows processed or parked already are left alone (their outcome says so). Rows of other kinds,
      or whose body cannot be read, are left to inbox_process (`alone`), which records why.
    - A row that raises rolls the group back and goes on alone (inbox_process records its error,
      or retries it); the rest of the group is recorded again without it. After GROUP_MAX_FAILURES
      such rows, or on a transient error (a lock waited for too long, a lost connection), every row
      goes on alone, where each one is retried and counted on its own.
    """
    own = list(dict.fromkeys(int(i) for i in inbox_ids))
    result = GroupResult()
    settled = _settled_already(own, take)
    if settled is not None:
        result.outcomes = settled
        return result
    alone: set[int] = set()
    failures = 0
    while own or take > 0:
        attempt = _GroupAttempt()
        try:
            with transaction.atomic():
                _group_record(attempt, own, take)
        except SoftTimeLimitExceeded:
            raise  # the task must stop now; the rows are as they were
        except TRANSIENT_ERRORS as exc:
            logger.warning("inbox group %s: %s; its rows go on one by one", own or attempt.locked, error_summary(exc))
            alone.update(own, attempt.locked)
            break
        except Exception as exc:
            failures += 1
            rows = {*own, *attempt.locked}
            if attempt.current is None or failures >= GROUP_MAX_FAILURES:
                summary = error_summary(exc)
                logger.warning("inbox group %s failed (%s); its rows go on one by one", sorted(rows), summary)
                alone.update(rows)
                break
            logger.info("inbox %s failed in a group (%s); it goes on alone", attempt.current, error_summary(exc))
            alone.add(attempt.current)
            own, take = sorted(rows - {attempt.current}), 0
            continue
        result.outcomes.update(attempt.outcomes)
        alone.update(attempt.alone)
        break
    result.alone = sorted(alone - set(result.outcomes))
    return result


def _settled_already(own: list[int], take: int) -> dict[int, str] | None:
    """The outcomes of rows `own` when every one is settled (processed or parked: most messages
    under load, whose rows an earlier group took) and no group is worth taking from the inbox; else
    None. Two short reads and no transaction, where the group's would take five round trips to find
    the same. A row settled stays settled (a person's Reprocess sends it again).

    Worth taking: at least half of `take` payment rows waiting, or one that has waited
    TOP_UP_AGE_SECONDS. Fewer, younger rows are left to their own messages, which follow: when a
    queue has fallen behind, every message would otherwise record the handful of rows stored since
    the last one (groups of a few rows, each paying a group's fixed cost), so the worker never gets
    ahead of the queue and the messages pile up; with this, the stale ones are skipped in a few
    milliseconds each and the rows wait for a group's worth, at most TOP_UP_AGE_SECONDS."""
    if not own:
        return None
    states = dict(
        InboxMessage.objects.filter(pk__in=own)
        .exclude(state__in=[InboxState.RECEIVED, InboxState.FAILED])
        .values_list("pk", "state")
    )
    if len(states) < len(own):
        return None
    if take > 0:
        enough = max(1, take // 2)
        waiting = list(
            InboxMessage.objects.filter(state=InboxState.RECEIVED, kind__in=GROUP_KINDS)
            .order_by("pk")
            .values_list("received_at", flat=True)[:enough]
        )
        oldest = min(waiting, default=None)
        if len(waiting) >= enough or (
            oldest is not None and timezone.now() - oldest >= dt.timedelta(seconds=TOP_UP_AGE_SECONDS)
        ):
            return None
    return {pk: f"already {state}" for pk, state in states.items()}


def _group_record(attempt: _GroupAttempt, own: list[int], take: int) -> None:
    """One transaction of inbox_process_group (see there)."""
    _lock_timeout_set()
    rows = InboxMessage.objects.select_related("till__business")
    msgs = list(rows.select_for_update(of=("self",)).filter(pk__in=own).order_by("pk")) if own else []
    if take > 0:
        # The oldest payment rows waiting that no other transaction holds, through the partial index
        # inbox_payments_waiting_idx (its predicate is this filter; LIMIT applies after SKIP LOCKED).
        waiting = (
            rows.select_for_update(of=("self",), skip_locked=True)
            .filter(state=InboxState.RECEIVED, kind__in=GROUP_KINDS)
            .exclude(pk__in=own)
            .order_by("pk")
        )
        msgs += list(waiting[:take])
    attempt.locked = [msg.pk for msg in msgs]
    for inbox_id in set(own) - set(attempt.locked):
        logger.warning("inbox row %s does not exist", inbox_id)
        attempt.outcomes[inbox_id] = "missing"
    todo: list[tuple[InboxMessage, StkCallback | C2BTransaction]] = []
    for msg in msgs:
        if msg.state in (InboxState.PROCESSED, InboxState.NEEDS_ATTENTION):
            attempt.outcomes[msg.pk] = f"already {msg.state}"
            continue
        parsed = _group_parse(msg)
        if parsed is None:
            attempt.alone.append(msg.pk)
        else:
            todo.append((msg, parsed))
    if not todo:
        return
    # What every payment of the group needs, read and locked with a few statements.
    group = PostingGroup(deferred=True)
    group.requests_lock(p.checkout_request_id for _, p in todo if isinstance(p, StkCallback))
    group.receipts_lock(receipt for _, p in todo if (receipt := _receipt(p)))
    phones: dict[int, list[str]] = {}
    for msg, parsed in todo:
        numbers = phones.setdefault(msg.till.business_id, [])
        if isinstance(parsed, StkCallback):
            request = group.requests.get(parsed.checkout_request_id)
            numbers += [parsed.phone_number or "", request.phone if request else ""]
        else:
            numbers.append(parsed.msisdn)
    businesses = {msg.till.business_id: msg.till.business for msg, _ in todo}
    for business_id, numbers in phones.items():
        group.customers_read(businesses[business_id], [n for n in numbers if n])
    recorded: list[tuple[int, str]] = []
    try:
        for msg, parsed in todo:
            attempt.current = group.tag = msg.pk
            if isinstance(parsed, StkCallback):
                outcome = stk_callback_process(msg, callback=parsed, group=group)
            else:
                outcome = c2b_confirmation_process(msg, confirmation=parsed, group=group)
            recorded.append((msg.pk, outcome[:255]))
        attempt.current = None
        group.flush()  # the group's ledger entries with one statement, then its Payment rows
    except Exception:
        # A waiting entry that was refused (or whose placing raised): its row goes on alone.
        if group.failed is not None:
            attempt.current = group.failed
        raise
    with connection.cursor() as cursor:
        cursor.execute(
            _PROCESSED_SQL,
            [InboxState.PROCESSED, timezone.now(), [pk for pk, _ in recorded], [o for _, o in recorded]],
        )
    attempt.outcomes.update(recorded)


def _group_parse(msg: InboxMessage) -> StkCallback | C2BTransaction | None:
    """The parsed body of a row the group can record; None for a row inbox_process must look at
    alone (another kind, a body it cannot read, a confirmation for another till)."""
    if msg.kind not in GROUP_KINDS or msg.daraja_id.startswith("malformed:"):
        return None
    try:
        if msg.kind == InboxKind.STK_CALLBACK:
            return parse_stk_callback(msg.body)
        tx = parse_c2b_confirmation(msg.body)
        c2b_till_check(msg.till, tx)
        return tx
    except (PayloadError, NeedsAttention):
        return None


def _receipt(parsed: StkCallback | C2BTransaction) -> str | None:
    if isinstance(parsed, StkCallback):
        return parsed.mpesa_receipt_number if parsed.succeeded else None
    return parsed.trans_id


def _lock_timeout_set() -> None:
    """Every lock of this transaction is waited for MPESA_LOCK_TIMEOUT_SECONDS at most (then
    OperationalError: the task retries later)."""
    with connection.cursor() as cursor:
        cursor.execute("SELECT set_config('lock_timeout', %s, true)", [f"{int(conf.lock_timeout_seconds() * 1000)}ms"])


def _inbox_lock(inbox_id: int) -> InboxMessage | None:
    """The inbox row, locked until the transaction ends. Any lock of this transaction is waited for
    MPESA_LOCK_TIMEOUT_SECONDS at most (then OperationalError: the task retries later)."""
    _lock_timeout_set()
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

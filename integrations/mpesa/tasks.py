"""The payments queue's tasks: thin wrappers that re-fetch by id and call one service.

Names start with "payments." so celeryconf routes them to the `payments` queue.
"""

from __future__ import annotations

import logging
import time
import traceback
from typing import Any

from celery import shared_task
from django.db import DatabaseError

from celeryconf.app import LIMITS
from integrations.mpesa import conf
from integrations.mpesa.inbox import (
    TRANSIENT_ERRORS,
    error_summary,
    inbox_mark_failed,
    inbox_process,
    inbox_process_group,
    inbox_sweep,
)
from integrations.mpesa.models import InboxState
from integrations.mpesa.publisher import inbox_enqueue
from integrations.mpesa.spool import spool_import
from integrations.mpesa.status_queries import lost_confirmations_recover
from integrations.mpesa.stk import payment_requests_recover

logger = logging.getLogger(__name__)

# 60 s / 50 s, within the global limits (the visibility-timeout rule is checked against them).
TIME_LIMIT = min(60, LIMITS.task_time_limit)
SOFT_TIME_LIMIT = min(50, LIMITS.task_soft_time_limit, TIME_LIMIT - 1)
TRANSIENT = TRANSIENT_ERRORS


def _backoff(retries: int) -> int:
    return int(min(LIMITS.max_countdown, 2 ** (retries + 1)))


@shared_task(
    name="payments.process_inbox",
    bind=True,
    acks_late=True,
    max_retries=10,
    time_limit=TIME_LIMIT,
    soft_time_limit=SOFT_TIME_LIMIT,
)
def process_inbox(self: Any, inbox_ids: int | list[int]) -> list[str]:
    """Process inbox rows `inbox_ids` (one id or a batch), in order. Safe to deliver any number of
    times: processed rows are skipped.

    The payment callbacks are recorded in groups of MPESA_GROUP_SIZE rows, one transaction each
    (inbox.inbox_process_group); the last group is topped up with payment callbacks waiting in the
    inbox that no other task holds, so that a backlog is recorded in full groups whatever the
    size of the messages. What a group leaves (other kinds, rows that failed in it, every row of a
    group that met a transient error) is processed one row per transaction (inbox.inbox_process).

    Transient database trouble on such a row counts a failed attempt and retries the task, with
    exponential backoff (capped by CELERY_MAX_COUNTDOWN), for that row and the ones after it; the
    rows before it stay done. A row that has failed MPESA_MAX_ATTEMPTS times is parked for a person
    and the batch goes on without it. When retries run out the rows stay "failed" and the sweeper
    sends them again. Any other error is recorded on its row by inbox_process, and the batch goes on.
    Outcomes: those of `inbox_ids` in order, then those of the rows taken from the inbox.
    """
    ids = [inbox_ids] if isinstance(inbox_ids, int) else [int(i) for i in inbox_ids]
    # Rows slowed by lock waits must not carry the batch to the soft time limit.
    budget = min(conf.batch_seconds(), SOFT_TIME_LIMIT / 2)
    size = conf.group_size()
    started = time.monotonic()
    outcomes: dict[int, str] = {}
    pending = list(ids)
    while pending:
        if outcomes and time.monotonic() - started > budget:
            _send_on(pending)
            break
        chunk, pending = pending[:size], pending[size:]
        group = inbox_process_group(inbox_ids=chunk, take=0 if pending else size - len(chunk))
        outcomes.update(group.outcomes)
        for position, inbox_id in enumerate(group.alone):
            if position and time.monotonic() - started > budget:
                pending = [*group.alone[position:], *pending]
                break
            try:
                outcomes[inbox_id] = inbox_process(inbox_id=inbox_id)
            except TRANSIENT as exc:
                try:
                    state = inbox_mark_failed(inbox_id=inbox_id, error=error_summary(exc), trace=traceback.format_exc())
                except DatabaseError:
                    logger.warning("could not mark inbox %s failed", inbox_id)
                    state = InboxState.FAILED
                if state != InboxState.FAILED:  # parked (or settled meanwhile): nothing to retry for it
                    outcomes[inbox_id] = f"{state}: {error_summary(exc)}"[:255]
                    continue
                rest = [*group.alone[position:], *pending]
                raise self.retry(args=(rest,), exc=exc, countdown=_backoff(self.request.retries)) from exc
    asked = dict.fromkeys(ids)
    return [outcomes[i] for i in asked if i in outcomes] + [o for i, o in outcomes.items() if i not in asked]


def _send_on(rest: list[int]) -> None:
    """The batch is out of time: the rows not started go on in new messages."""
    if inbox_enqueue(rest) < len(rest):
        logger.warning("inbox %s left to the sweeper: batch out of time and the broker is down", rest)


@shared_task(name="payments.sweep_inbox", time_limit=TIME_LIMIT, soft_time_limit=SOFT_TIME_LIMIT)
def sweep_inbox(min_age_seconds: int | None = None, batch_size: int = 500) -> int:
    """Import callbacks spooled while the database was down, then re-enqueue inbox rows left
    unprocessed (beat: every minute). Safe to run at any time."""
    try:
        spool_import()
    except Exception:  # the spool's trouble must not stop the sweep (a database still down stops both)
        logger.exception("spool import failed; the files wait for the next sweep")
    return inbox_sweep(min_age_seconds=min_age_seconds, batch_size=batch_size)


@shared_task(name="payments.recover_requests", time_limit=TIME_LIMIT, soft_time_limit=SOFT_TIME_LIMIT)
def recover_requests(
    older_than_seconds: int = 180, batch_size: int = 50, confirmation_age_seconds: int = 600
) -> dict[str, int]:
    """Ask Daraja about what never got its callback (beat: every 2 minutes): STK requests (STK
    Query), and C2B payments validated but never confirmed (Transaction Status, asked again with
    backoff until a definite answer). A run cut short by the time limit leaves nothing stuck: its
    rows are due again later."""
    counts = payment_requests_recover(older_than_seconds=older_than_seconds, batch_size=batch_size)
    for state, n in lost_confirmations_recover(older_than_seconds=confirmation_age_seconds).items():
        counts[f"status_query_{state}"] = n
    return counts

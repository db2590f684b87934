"""End-of-day closing per business.

closing_run works out the day's takings (cash and M-Pesa, from the ledger: sales, payments and
their reversals dated that day), the cash expected in the drawer (the balance of the cash account
at the end of the day), posts the difference with the counted cash to cash over/short, records the
closing and moves the ledger's lock date to the day, so nothing more can be dated on it.
closings_due is the end-of-day schedule (task operations.close_due_days): every active business's
days that have ended and are not closed, oldest first, without a count (docs/operations.md).
  Variance (key "closing:<business>:<day>"): short: Dr cash_over_short / Cr cash;
                                             over:  Dr cash / Cr cash_over_short
"""

from __future__ import annotations

import datetime as dt
import logging
from dataclasses import dataclass, field
from decimal import Decimal
from typing import Any

from django.db import transaction
from django.utils import timezone

from accounts.fields import ZERO
from accounts.journal import Journal
from accounts.models import SourceType
from accounts.selectors import takings_by_business
from accounts.services import books_close_period
from operations.exceptions import ClosingsFailed, DayClosed, InvalidInput, InvalidState
from operations.models import ClosingStatus, DayClosing
from operations.selectors import cash_expected, closing_days_due
from operations.services.postings import acting, books_read
from tenancy.models import Business

logger = logging.getLogger(__name__)


def closing_run(
    *,
    business: Business,
    day: dt.date,
    counted_cash: Decimal | None,
    acting_user: Any = None,
    automatic: bool = False,
) -> DayClosing:
    """Close `day` for `business`. Idempotent and safe to run twice (as a retried job):

    - the day already closed with the same counted cash (or none given): the closing is returned;
    - the day already closed with a different counted cash: InvalidState, nothing changes;
    - the books already locked past the day without a closing of ours: DayClosed.
    Without a count (`counted_cash` None) the count entered on the day's closing beforehand is used,
    else the expected cash is taken as counted (no variance). `automatic`: closed by the schedule
    (kept on the row; a day already closed keeps what it was).
    The variance entry, the closing row and the lock date move commit together.
    """
    if day > timezone.localdate():
        raise InvalidInput(f"{day:%d %b %Y} has not ended yet: it cannot be closed.")
    with transaction.atomic():
        # The day's row, created if missing (no savepoint: a row inserted meanwhile is kept), locked.
        DayClosing.objects.bulk_create([DayClosing(business=business, day=day)], ignore_conflicts=True)
        closing = DayClosing.objects.select_for_update().get(business=business, day=day)
        if closing.status == ClosingStatus.CLOSED:
            if counted_cash is not None and closing.counted_cash != counted_cash:
                raise InvalidState(
                    f"{day:%d %b %Y} was already closed with KES {closing.counted_cash} counted; "
                    f"it cannot be closed again with KES {counted_cash}."
                )
            return closing
        counted = closing.counted_cash if counted_cash is None else counted_cash
        books = books_read(business)
        if books.lock_date is not None and day <= books.lock_date:
            raise DayClosed(f"The books of {business} are already closed up to {books.lock_date:%d %b %Y}.")
        takings = takings_by_business(business_ids=[business.pk], day=day)[business.pk]
        expected = cash_expected(business=business, day=day)
        variance = ZERO if counted is None else counted - expected
        journal = Journal(books.roles)
        journal.debit("cash", variance, f"Cash count {day}")
        journal.credit("cash_over_short", variance, f"Cash count {day}")
        entry = journal.post(
            entry_date=day,
            memo=f"Cash over/short {day}",
            source_type=SourceType.CLOSING,
            source_ref=f"closing {day}",
            idempotency_key=f"closing:{business.pk}:{day}",
            acting_user=acting_user,
        )
        books_close_period(business=business, lock_date=day, acting_user=acting(acting_user))
        closing.status = ClosingStatus.CLOSED
        closing.counted_cash = counted
        closing.cash_takings, closing.mpesa_takings = takings.cash, takings.mpesa
        closing.expected_cash, closing.variance, closing.entry = expected, variance, entry
        closing.closed_by, closing.closed_at = acting(acting_user), timezone.now()
        closing.automatic = automatic
        closing.save()
    return closing


def closing_catch_up(*, business: Business, now: dt.datetime) -> list[DayClosing]:
    """Close every day of `business` that has ended at `now` and is not closed, oldest first
    (operations.selectors.closing_days_due): without a count (one entered beforehand on the day's
    closing is used), no one as closer, marked automatic. Each day commits on its own, so a run cut
    short keeps the days it closed and the next run goes on from there.

    Raises the error of the first day refused (the days after it cannot be closed before it: the
    lock date moves forward only). Safe to retry, and to run alongside itself or a closing by hand:
    a day closed meanwhile is returned as it is.
    """
    return [
        closing_run(business=business, day=day, counted_cash=None, automatic=True)
        for day in closing_days_due(business=business, now=now)
    ]


@dataclass(frozen=True)
class ClosingsDue:
    """What one run of the end-of-day schedule did: days closed and errors, by business name."""

    closed: dict[str, list[dt.date]] = field(default_factory=dict)
    failed: dict[str, str] = field(default_factory=dict)

    def __str__(self) -> str:
        done = "; ".join(f"{name}: {', '.join(f'{d:%d %b %Y}' for d in days)}" for name, days in self.closed.items())
        failed = "; ".join(f"{name}: {error}" for name, error in self.failed.items())
        parts = [f"closed {done}" if done else "nothing to close"]
        if failed:
            parts.insert(0, f"end-of-day closing failed for {len(self.failed)} business(es): {failed}")
        return " - ".join(parts)


def closings_due(*, now: dt.datetime) -> ClosingsDue:
    """The end-of-day schedule: closing_catch_up for every active business, at `now`.

    A business that fails does not stop the others: its error is logged with its traceback and,
    once every business has had its turn, ClosingsFailed is raised naming each failure (chained to
    the first), so the periodic task shows as failed with its traceback. Safe to retry at any time.
    """
    closed: dict[str, list[dt.date]] = {}
    failed: dict[str, str] = {}
    first_error: Exception | None = None
    for business in Business.objects.filter(is_active=True).order_by("pk"):
        try:
            closings = closing_catch_up(business=business, now=now)
        except Exception as exc:  # any error, so that one business's trouble never keeps the others open
            logger.exception("end-of-day closing of %s failed", business)
            failed[business.name] = f"{type(exc).__name__}: {exc}"
            first_error = first_error or exc
            continue
        if closings:
            closed[business.name] = [c.day for c in closings]
    result = ClosingsDue(closed=closed, failed=failed)
    logger.info("end-of-day closing: %s", result)
    if failed:
        raise ClosingsFailed(str(result)) from first_error
    return result

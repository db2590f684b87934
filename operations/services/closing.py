"""End-of-day closing per business.

closing_run works out the day's takings (cash and M-Pesa, from the ledger: sales, payments and
their reversals dated that day), the cash expected in the drawer (the balance of the cash account
at the end of the day), posts the difference with the counted cash to cash over/short, records the
closing and moves the ledger's lock date to the day, so nothing more can be dated on it.
  Variance (key "closing:<business>:<day>"): short: Dr cash_over_short / Cr cash;
                                             over:  Dr cash / Cr cash_over_short
"""

from __future__ import annotations

import datetime as dt
from decimal import Decimal
from typing import Any

from django.db import transaction
from django.utils import timezone

from accounts.fields import ZERO
from accounts.journal import Journal
from accounts.models import SourceType
from accounts.selectors import books_lock_date, takings_by_business
from accounts.services import books_close_period
from operations.exceptions import DayClosed, InvalidInput, InvalidState
from operations.models import ClosingStatus, DayClosing
from operations.selectors import cash_expected
from operations.services.postings import Roles, acting
from tenancy.models import Business


def closing_run(
    *, business: Business, day: dt.date, counted_cash: Decimal | None, acting_user: Any = None
) -> DayClosing:
    """Close `day` for `business`. Idempotent and safe to run twice (as a retried job):

    - the day already closed with the same counted cash (or none given): the closing is returned;
    - the day already closed with a different counted cash: InvalidState, nothing changes;
    - the books already locked past the day without a closing of ours: DayClosed.
    Without a count (`counted_cash` None) the expected cash is taken as counted (no variance).
    The variance entry, the closing row and the lock date move commit together.
    """
    if day > timezone.localdate():
        raise InvalidInput(f"{day:%d %b %Y} has not ended yet: it cannot be closed.")
    with transaction.atomic():
        closing, _ = DayClosing.objects.get_or_create(business=business, day=day)
        closing = DayClosing.objects.select_for_update().get(pk=closing.pk)
        if closing.status == ClosingStatus.CLOSED:
            if counted_cash is not None and closing.counted_cash != counted_cash:
                raise InvalidState(
                    f"{day:%d %b %Y} was already closed with KES {closing.counted_cash} counted; "
                    f"it cannot be closed again with KES {counted_cash}."
                )
            return closing
        counted = closing.counted_cash if counted_cash is None else counted_cash
        lock_date = books_lock_date(business_id=business.pk)
        if lock_date is not None and day <= lock_date:
            raise DayClosed(f"The books of {business} are already closed up to {lock_date:%d %b %Y}.")
        takings = takings_by_business(business_ids=[business.pk], day=day)[business.pk]
        expected = cash_expected(business=business, day=day)
        variance = ZERO if counted is None else counted - expected
        journal = Journal(Roles(business))
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
        closing.save()
    return closing

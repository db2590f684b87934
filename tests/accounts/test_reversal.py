"""Reversals: a new entry with the sides swapped, dated in an open period, at most one per entry."""

from __future__ import annotations

import datetime as dt
from decimal import Decimal

import pytest

from accounts.exceptions import AlreadyReversed, InvalidReversal, PeriodLocked
from accounts.models import JournalEntry, SourceType
from accounts.selectors import account_balance, trial_balance
from accounts.services import books_close_period, entry_reverse
from tests.accounts.conftest import fire_deferred
from tests.factories.accounts import acct, sale

pytestmark = pytest.mark.django_db


def test_a_reversal_swaps_the_sides_and_nets_to_zero(water, owner, today):
    entry = sale(water, "116.00")
    reversal = entry_reverse(entry=entry, acting_user=owner, memo="customer returned the bottles")
    assert reversal.source_type == SourceType.REVERSAL and reversal.reverses_id == entry.pk
    assert reversal.number == 2 and reversal.created_by_id == owner.pk and reversal.entry_date == today
    original = sorted(entry.lines.values_list("account_id", "debit", "credit"))
    swapped = sorted(reversal.lines.values_list("account_id", "credit", "debit"))
    assert original == swapped
    assert account_balance(account=acct(water, "cash"), as_of=today) == Decimal("0.00")
    assert trial_balance(business_ids=[water.pk], as_of=today).rows == []
    fire_deferred()


def test_an_entry_is_reversed_once(water):
    entry = sale(water)
    entry_reverse(entry=entry)
    with pytest.raises(AlreadyReversed):
        entry_reverse(entry=entry)
    with pytest.raises(AlreadyReversed):
        entry_reverse(entry=entry, idempotency_key="another-key")
    assert JournalEntry.objects.filter(reverses=entry).count() == 1


def test_a_reversal_with_its_own_key_is_safe_to_retry(water):
    entry = sale(water)
    first = entry_reverse(entry=entry, idempotency_key="refund:1")
    again = entry_reverse(entry=entry, idempotency_key="refund:1")
    assert first.pk == again.pk


def test_a_reversal_is_not_reversed(water):
    reversal = entry_reverse(entry=sale(water))
    with pytest.raises(InvalidReversal):
        entry_reverse(entry=reversal)


def test_a_reversal_of_a_closed_period_entry_is_dated_in_the_open_period(water, today):
    old_day = today - dt.timedelta(days=10)
    entry = sale(water, day=old_day)
    books_close_period(business=water, lock_date=today - dt.timedelta(days=3))
    with pytest.raises(PeriodLocked):
        entry_reverse(entry=entry, entry_date=today - dt.timedelta(days=5))
    reversal = entry_reverse(entry=entry)
    assert reversal.entry_date == today
    with pytest.raises(InvalidReversal):
        entry_reverse(entry=sale(water, day=today), entry_date=today - dt.timedelta(days=1))


def test_when_today_is_closed_the_reversal_takes_the_first_open_day(water, today):
    entry = sale(water, day=today)
    books_close_period(business=water, lock_date=today)
    assert entry_reverse(entry=entry).entry_date == today + dt.timedelta(days=1)

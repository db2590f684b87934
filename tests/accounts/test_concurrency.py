"""Posting from several connections at once: one entry per key, and no posting lands in a closed period."""

from __future__ import annotations

import datetime as dt
import threading
import time
from collections.abc import Callable
from typing import Any

import pytest
from django.db import connection, connections, transaction

from accounts.exceptions import AlreadyReversed, PeriodLocked
from accounts.models import Books, JournalEntry
from accounts.services import books_close_period, entry_reverse
from tests.factories.accounts import sale

pytestmark = pytest.mark.django_db(transaction=True)


class Worker(threading.Thread):
    """Runs `fn` on its own database connection; keeps its result or exception."""

    def __init__(self, fn: Callable[[], Any]) -> None:
        super().__init__(daemon=True)
        self.fn = fn
        self.result: Any = None
        self.error: Exception | None = None

    def run(self) -> None:
        try:
            self.result = self.fn()
        except Exception as exc:
            self.error = exc
        finally:
            connections.close_all()


def wait_for_lock_waiters(count: int, timeout: float = 10.0) -> None:
    """Block until `count` other sessions of this database wait on a row lock."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        with connection.cursor() as cursor:
            cursor.execute(
                "SELECT count(*) FROM pg_stat_activity WHERE datname = current_database() AND wait_event_type = 'Lock'"
            )
            if cursor.fetchone()[0] >= count:
                return
        time.sleep(0.02)
    raise AssertionError(f"expected {count} session(s) waiting on a lock")


def test_two_connections_posting_the_same_key_make_one_entry(water):
    # Given a posting of key K held open (not committed) on one connection
    posted, release = threading.Event(), threading.Event()

    def first() -> JournalEntry:
        with transaction.atomic():
            entry = sale(water, key="mpesa:QK7", memo="M-Pesa QK7")
            posted.set()
            release.wait(10)
        return entry

    a = Worker(first)
    a.start()
    assert posted.wait(10)
    # When a second connection posts the same key and content: it waits for the first...
    b = Worker(lambda: sale(water, key="mpesa:QK7", memo="M-Pesa QK7"))
    b.start()
    wait_for_lock_waiters(1)
    release.set()
    a.join(10)
    b.join(10)
    # Then both get the same entry, posted once, and no number is skipped
    assert a.error is None and b.error is None, (a.error, b.error)
    assert a.result.pk == b.result.pk
    assert JournalEntry.objects.filter(idempotency_key="mpesa:QK7").count() == 1
    assert Books.objects.get(business=water).last_number == 1


def test_many_threads_racing_on_one_key_post_once(water):
    barrier = threading.Barrier(6)

    def attempt() -> int:
        barrier.wait(10)
        return sale(water, key="race", memo="race").pk

    workers = [Worker(attempt) for _ in range(6)]
    for w in workers:
        w.start()
    for w in workers:
        w.join(20)
    assert [w.error for w in workers] == [None] * 6
    assert len({w.result for w in workers}) == 1
    assert JournalEntry.objects.count() == 1
    assert Books.objects.get(business=water).last_number == 1


def test_a_close_waits_for_a_posting_in_flight(water, today):
    # Given a posting dated today, in flight on one connection
    posted, release = threading.Event(), threading.Event()

    def posting() -> JournalEntry:
        with transaction.atomic():
            entry = sale(water, day=today)
            posted.set()
            release.wait(10)
        return entry

    poster = Worker(posting)
    poster.start()
    assert posted.wait(10)
    # When the period up to today is closed on another connection
    closer = Worker(lambda: books_close_period(business=water, lock_date=today))
    closer.start()
    # Then the close waits for the posting to commit, and the entry is part of the closed period
    wait_for_lock_waiters(1)
    assert closer.is_alive()
    release.set()
    poster.join(10)
    closer.join(10)
    assert poster.error is None and closer.error is None, (poster.error, closer.error)
    assert Books.objects.get(business=water).lock_date == today
    assert JournalEntry.objects.filter(entry_date=today).count() == 1


def test_a_posting_that_waits_for_a_close_never_lands_in_the_closed_period(water, today):
    yesterday = today - dt.timedelta(days=1)
    # Given a close up to yesterday in flight (not committed) on one connection
    closed, release = threading.Event(), threading.Event()

    def closing() -> Books:
        with transaction.atomic():
            books = books_close_period(business=water, lock_date=yesterday)
            closed.set()
            release.wait(10)
        return books

    closer = Worker(closing)
    closer.start()
    assert closed.wait(10)
    # When a posting dated yesterday starts on another connection: it waits for the close
    poster = Worker(lambda: sale(water, day=yesterday))
    poster.start()
    wait_for_lock_waiters(1)
    release.set()
    closer.join(10)
    poster.join(10)
    # Then it sees the new lock date and is refused
    assert closer.error is None
    assert isinstance(poster.error, PeriodLocked), poster.error
    assert not JournalEntry.objects.exists()
    assert Books.objects.get(business=water).last_number == 0


def test_a_reversal_racing_another_reversal_of_the_same_entry_is_refused_cleanly(water):
    # Given an entry, and its reversal under one key in flight (not committed) on one connection
    original = sale(water)
    posted, release = threading.Event(), threading.Event()

    def first() -> JournalEntry:
        with transaction.atomic():
            reversal = entry_reverse(entry=original, idempotency_key="reverse-a")
            posted.set()
            release.wait(10)
        return reversal

    a = Worker(first)
    a.start()
    assert posted.wait(10)

    # When another connection reverses it under another key, inside a transaction with work in it
    def second() -> tuple[str, int]:
        with transaction.atomic():
            kept = sale(water)
            try:
                entry_reverse(entry=original, idempotency_key="reverse-b")
            except AlreadyReversed as exc:
                refused = str(exc)
            else:
                refused = ""
            # the transaction is still usable
            return refused, JournalEntry.objects.filter(pk=kept.pk).count()

    b = Worker(second)
    b.start()
    wait_for_lock_waiters(1)
    release.set()
    a.join(10)
    b.join(10)
    # Then it is refused as already reversed, its transaction carries on, and no number is lost
    assert a.error is None and b.error is None, (a.error, b.error)
    refused, kept = b.result
    assert "already reversed" in refused and kept == 1
    assert JournalEntry.objects.filter(reverses=original).count() == 1
    assert Books.objects.get(business=water).last_number == 3
    assert sale(water).number == 4

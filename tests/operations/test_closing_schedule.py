"""The end-of-day schedule: each business's days closed at its closing time (Nairobi), missed days
caught up in order, nothing closed twice, one business's failure not stopping the others, and what
is recorded after the closing (a late M-Pesa payment, a late sale) going to the next day."""

from __future__ import annotations

import datetime as dt
import threading
from decimal import Decimal

import pytest
import redis
from django.core.exceptions import ValidationError
from django.db import connection
from django.test import Client
from django.urls import reverse
from django.utils import timezone
from django_celery_beat.models import PeriodicTask

from accounts.models import Account, Books, JournalEntry, PeriodClose
from celeryconf.app import app
from integrations.mpesa.inbox import inbox_process, inbox_store
from integrations.mpesa.models import InboxKind, InboxMessage, InboxState, Payment
from integrations.mpesa.payloads import NAIROBI
from jobs.models import TaskEvent, TaskEventKind
from operations.exceptions import ClosingsFailed, DayClosed, InvalidInput
from operations.models import ClosingStatus, DayClosing, Item, ItemKind, PaymentMethod, Sale, SaleStatus
from operations.selectors import AUTO_CLOSE_FIRST_DAYS, closing_days_due
from operations.services.closing import closing_catch_up, closing_run, closings_due
from operations.services.postings import business_open_day
from operations.services.sales import LineInput, sale_create, sale_refund
from tenancy.models import Business
from tests.celery_support import WorkerProcess, wait_for
from tests.factories.mpesa import TillFactory, c2b_confirmation
from tests.factories.operations import ItemFactory
from tests.migration_support import data_migration_apply
from tests.operations.ledger import D, lines_by_role

pytestmark = pytest.mark.django_db

DAY = dt.timedelta(days=1)


def at(day: dt.date, hh: int, mm: int = 0) -> dt.datetime:
    """`day` at hh:mm in Nairobi: the "now" each test passes in."""
    return dt.datetime.combine(day, dt.time(hh, mm), tzinfo=NAIROBI)


def service(business: Business, role: str, price: str = "100.00") -> Item:
    return ItemFactory.create(
        business=business, name=f"Service {role}", kind=ItemKind.SERVICE, price=D(price), sales_role=role
    )


def cash_sale(business: Business, item: Item, day: dt.date, quantity: str = "1") -> None:
    sale_create(business=business, sale_date=day, lines=[LineInput(item, D(quantity))])


def lock_date(business: Business) -> dt.date | None:
    return Books.objects.get(business=business).lock_date


def closed_days(business: Business) -> list[dt.date]:
    return list(
        DayClosing.objects.filter(business=business, status=ClosingStatus.CLOSED)
        .order_by("day")
        .values_list("day", flat=True)
    )


def test_today_is_due_only_once_each_business_closing_time_has_passed(
    retail: Business, water: Business, today: dt.date
) -> None:
    water.closing_time = dt.time(18, 30)
    water.save()
    cash_sale(retail, service(retail, "sales_shop"), today)
    cash_sale(water, service(water, "sales_refill"), today)

    assert closing_days_due(business=retail, now=at(today, 20, 59)) == []
    assert closing_days_due(business=water, now=at(today, 18, 29)) == []
    assert closings_due(now=at(today, 18, 29)).closed == {}
    assert lock_date(retail) is None and lock_date(water) is None

    # 18:30: the laundry of water's day is done, the shop's is not
    result = closings_due(now=at(today, 18, 30))
    assert result.closed == {water.name: [today]} and result.failed == {}
    assert lock_date(water) == today and lock_date(retail) is None

    result = closings_due(now=at(today, 21, 0))
    assert result.closed == {retail.name: [today]}
    closing = DayClosing.objects.get(business=retail, day=today)
    # closed by the schedule: nobody as closer, no count (expected taken as counted), marked automatic
    assert closing.status == ClosingStatus.CLOSED and closing.automatic and closing.closed_by is None
    assert (closing.cash_takings, closing.expected_cash, closing.counted_cash) == (D("100.00"), D("100.00"), None)
    assert closing.variance == D("0.00") and closing.entry is None  # nothing counted: no variance posted


def test_missed_days_are_caught_up_oldest_first_and_a_second_run_changes_nothing(
    retail: Business, today: dt.date
) -> None:
    item = service(retail, "sales_shop")
    cash_sale(retail, item, today - 5 * DAY)
    closing_run(business=retail, day=today - 4 * DAY, counted_cash=None)  # closed by hand, then nothing
    for n, back in enumerate((3, 2, 1), start=1):
        cash_sale(retail, item, today - back * DAY, quantity=str(n))

    now = at(today, 10, 0)  # before the closing time: today is not due
    assert closing_days_due(business=retail, now=now) == [today - 3 * DAY, today - 2 * DAY, today - DAY]
    closings = closing_catch_up(business=retail, now=now)

    assert [c.day for c in closings] == [today - 3 * DAY, today - 2 * DAY, today - DAY]
    # each day closed on its own, in order: the ledger's audit trail moved the lock date one day at a time
    moves = list(PeriodClose.objects.filter(books__business=retail).order_by("id").values_list("lock_date", flat=True))
    assert moves == [today - 4 * DAY, today - 3 * DAY, today - 2 * DAY, today - DAY]
    # the drawer's expected cash grows day after day (100, +100, +200, +300)
    assert [c.expected_cash for c in closings] == [D("200.00"), D("400.00"), D("700.00")]
    assert [c.cash_takings for c in closings] == [D("100.00"), D("200.00"), D("300.00")]
    assert all(c.automatic and c.closed_by is None for c in closings)
    assert not DayClosing.objects.get(business=retail, day=today - 4 * DAY).automatic

    rows, entries = DayClosing.objects.count(), JournalEntry.objects.count()
    assert closings_due(now=now).closed == {}
    assert closing_catch_up(business=retail, now=now) == []
    assert (DayClosing.objects.count(), JournalEntry.objects.count()) == (rows, entries)
    assert lock_date(retail) == today - DAY


def test_a_business_never_closed_is_closed_from_its_first_activity_at_most_a_month_back(
    retail: Business, water: Business, laundry: Business, today: dt.date
) -> None:
    cash_sale(retail, service(retail, "sales_shop"), today - 3 * DAY)
    cash_sale(water, service(water, "sales_refill"), today - 40 * DAY)
    # laundry: books, but nothing ever recorded

    result = closings_due(now=at(today, 21, 30))

    assert closed_days(retail) == [today - 3 * DAY + n * DAY for n in range(4)]
    water_days = closed_days(water)
    assert len(water_days) == AUTO_CLOSE_FIRST_DAYS
    assert water_days[0] == today - (AUTO_CLOSE_FIRST_DAYS - 1) * DAY and water_days[-1] == today
    # the days before the month are locked by the first closing, their sale still in the ledger
    assert lock_date(water) == today and JournalEntry.objects.filter(business=water).count() == 1
    assert laundry.name not in result.closed and lock_date(laundry) is None


def test_a_count_entered_before_the_schedule_is_used(retail: Business, today: dt.date) -> None:
    yesterday = today - DAY
    cash_sale(retail, service(retail, "sales_shop"), yesterday, quantity="3")
    DayClosing.objects.create(business=retail, day=yesterday, counted_cash=D("290.00"))  # entered, not run

    closing_catch_up(business=retail, now=at(today, 9, 0))

    closing = DayClosing.objects.get(business=retail, day=yesterday)
    assert closing.automatic and (closing.counted_cash, closing.variance) == (D("290.00"), D("-10.00"))
    assert lines_by_role(closing.entry) == {"cash_over_short": (D("10.00"), 0), "cash": (0, D("10.00"))}


def test_one_business_failing_does_not_stop_the_others_and_is_caught_up_once_fixed(
    retail: Business, water: Business, today: dt.date
) -> None:
    assert retail.pk < water.pk  # the failing business comes first
    yesterday = today - DAY
    # retail: a count 50 over, and its cash over/short account switched off: the variance cannot post
    DayClosing.objects.create(business=retail, day=yesterday, counted_cash=D("50.00"))
    Account.objects.filter(business=retail, role="cash_over_short").update(is_active=False)
    cash_sale(water, service(water, "sales_refill"), yesterday)

    with pytest.raises(ClosingsFailed) as failed:
        closings_due(now=at(today, 8, 0))

    message = str(failed.value)
    assert retail.name in message and "InvalidAccount" in message
    assert f"closed {water.name}: {yesterday:%d %b %Y}" in message
    assert failed.value.__cause__ is not None  # the first failure's traceback goes with it
    assert closed_days(water) == [yesterday] and lock_date(water) == yesterday
    assert lock_date(retail) is None
    assert DayClosing.objects.get(business=retail, day=yesterday).status == ClosingStatus.PENDING

    Account.objects.filter(business=retail, role="cash_over_short").update(is_active=True)
    result = closings_due(now=at(today, 8, 5))
    assert result.closed == {retail.name: [yesterday]} and result.failed == {}
    assert DayClosing.objects.get(business=retail, day=yesterday).variance == D("50.00")


@pytest.mark.django_db(transaction=True)
def test_two_runs_at_once_close_each_day_once(retail: Business, today: dt.date) -> None:
    """Beat sending twice (a restart, "Run now" beside the schedule): both runs go through the days
    together; each day is closed once, the later run finding it closed."""
    item = service(retail, "sales_shop")
    for back in (3, 2, 1):
        cash_sale(retail, item, today - back * DAY)
    now = at(today, 9, 0)
    barrier = threading.Barrier(2)
    outcomes: list[object] = []

    def run() -> None:
        try:
            barrier.wait(5)
            outcomes.append([c.day for c in closing_catch_up(business=retail, now=now)])
        except Exception as exc:  # collected for the assertion below
            outcomes.append(exc)
        finally:
            connection.close()

    threads = [threading.Thread(target=run) for _ in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    days = [today - 3 * DAY, today - 2 * DAY, today - DAY]
    assert outcomes == [days, days]
    assert closed_days(retail) == days and DayClosing.objects.filter(business=retail).count() == 3
    moves = list(PeriodClose.objects.filter(books__business=retail).order_by("id").values_list("lock_date", flat=True))
    assert moves == days


def test_an_inactive_business_is_left_alone(retail: Business, today: dt.date) -> None:
    cash_sale(retail, service(retail, "sales_shop"), today - DAY)
    Business.objects.filter(pk=retail.pk).update(is_active=False)
    assert closings_due(now=at(today, 22, 0)).closed == {}
    assert lock_date(retail) is None


def test_after_the_automatic_closing_a_late_mpesa_payment_and_a_late_sale_go_to_the_next_day(
    retail: Business, airtime: Item, today: dt.date
) -> None:
    tomorrow = today + DAY
    till = TillFactory.create(business=retail, shortcode="600977")
    mpesa_sale = sale_create(
        business=retail, sale_date=today, payment_method=PaymentMethod.MPESA, lines=[LineInput(airtime, D("1"))]
    )
    cash_item = service(retail, "sales_shop")
    cash_sale(retail, cash_item, today)
    closings_due(now=at(today, 21, 0))
    closing = DayClosing.objects.get(business=retail, day=today)
    assert closing.automatic and lock_date(retail) == today
    assert (closing.cash_takings, closing.mpesa_takings) == (D("100.00"), D("0.00"))

    # 23:00: the customer pays the M-Pesa sale, quoting its number; the callback arrives after the closing
    paid_at = at(today, 23, 0)
    body = c2b_confirmation(
        trans_id="TKL9000001", shortcode=till.shortcode, amount="580.00", bill_ref=mpesa_sale.number, when=paid_at
    )
    inbox_id = inbox_store(
        till_id=till.pk,
        kind=InboxKind.C2B_CONFIRMATION,
        daraja_id="TKL9000001",
        body=body,
        headers={},
        remote_addr=None,
    )
    assert inbox_id is not None
    inbox_process(inbox_id=inbox_id)

    msg = InboxMessage.objects.get(pk=inbox_id)
    assert msg.state == InboxState.PROCESSED, msg.error
    payment = Payment.objects.get(receipt="TKL9000001")
    # posted, on the next open day; the payment keeps its true time; the sale is paid
    assert payment.paid_at == paid_at and payment.entry.entry_date == tomorrow
    assert lines_by_role(payment.entry) == {"mpesa_clearing": (D("580.00"), 0), "receivables": (0, D("580.00"))}
    mpesa_sale.refresh_from_db()
    assert mpesa_sale.amount_paid == mpesa_sale.total == D("580.00")
    closing.refresh_from_db()
    assert closing.mpesa_takings == D("0.00")  # the closed day is not changed

    # 21:30: a cash sale dated today is refused with the day to use; dated tomorrow it is taken
    with pytest.raises(DayClosed, match=f"Record it on an open day \\({tomorrow:%d %b %Y} or later\\)"):
        cash_sale(retail, cash_item, today)
    assert business_open_day(retail) == tomorrow
    cash_sale(retail, cash_item, tomorrow)
    late = JournalEntry.objects.filter(business=retail, entry_date=tomorrow, source_type="sale").get()
    assert lines_by_role(late)["cash"] == (D("100.00"), 0)
    # a refund without a date goes to the open day too; two days ahead is still the future
    refunded = sale_refund(sale=Sale.objects.get(business=retail, sale_date=tomorrow))
    assert refunded.status == SaleStatus.REFUNDED and refunded.reversal_entry is not None
    assert refunded.reversal_entry.entry_date == tomorrow
    with pytest.raises(InvalidInput, match="in the future"):
        cash_sale(retail, cash_item, tomorrow + DAY)


def test_without_a_closing_today_the_next_day_is_still_the_future(retail: Business, today: dt.date) -> None:
    item = service(retail, "sales_shop")
    assert business_open_day(retail) == today
    with pytest.raises(InvalidInput, match="in the future"):
        cash_sale(retail, item, today + DAY)
    closing_run(business=retail, day=today - DAY, counted_cash=None)  # yesterday closed: today still open
    assert business_open_day(retail) == today
    with pytest.raises(InvalidInput, match="in the future"):
        cash_sale(retail, item, today + DAY)


def test_a_closing_time_in_the_early_morning_is_refused(retail: Business) -> None:
    retail.closing_time = dt.time(6, 0)
    with pytest.raises(ValidationError, match="12:00 or later"):
        retail.full_clean()
    retail.closing_time = dt.time(23, 59)
    retail.full_clean()


def test_the_money_fields_stay_decimal(retail: Business, today: dt.date) -> None:
    cash_sale(retail, service(retail, "sales_shop", price="0.10"), today - DAY, quantity="3")
    [closing] = closing_catch_up(business=retail, now=at(today, 7, 0))
    assert isinstance(closing.expected_cash, Decimal) and closing.expected_cash == D("0.30")


SCHEDULE_MIGRATION = ("operations", "0008_closing_schedule")


def apply_schedule_migration() -> None:
    data_migration_apply(SCHEDULE_MIGRATION)


@pytest.mark.worker
@pytest.mark.django_db(transaction=True)
def test_the_schedule_is_seeded_and_a_default_worker_runs_it_as_beat_sends_it(
    retail: Business, clean_broker: redis.Redis
) -> None:
    apply_schedule_migration()
    apply_schedule_migration()  # safe to run twice
    schedule = PeriodicTask.objects.get(task="operations.close_due_days")
    assert schedule.enabled and schedule.queue == "default" and schedule.interval is None
    crontab = schedule.crontab
    assert (crontab.minute, crontab.hour, crontab.day_of_month, crontab.month_of_year, crontab.day_of_week) == (
        "*/5",
        "*",
        "*",
        "*",
        "*",
    )
    assert str(crontab.timezone) == "Africa/Nairobi"

    today = timezone.localdate()
    cash_sale(retail, service(retail, "sales_shop"), today - 2 * DAY)
    due_before = closing_days_due(business=retail, now=timezone.now())
    worker = WorkerProcess("closing", queues="default").start()
    try:
        # as beat sends it: by name, to the default queue, with django-celery-beat's header
        app.send_task(
            schedule.task, queue="default", routing_key="default", headers={"periodic_task_name": schedule.name}
        )
        wait_for(
            lambda: TaskEvent.objects.filter(kind=TaskEventKind.SUCCEEDED, periodic_task=schedule.name).exists(),
            30,
            "the closing task's success",
        )
    finally:
        worker.stop()
    due_after = closing_days_due(business=Business.objects.get(pk=retail.pk), now=timezone.now())
    assert due_after in ([], [today])  # (today only if its closing time passed during the test)
    closed = closed_days(retail)
    assert closed[: len(due_before)] == due_before and closed[0] == today - 2 * DAY
    assert all(c.automatic for c in DayClosing.objects.filter(business=retail))
    assert not TaskEvent.objects.filter(kind=TaskEventKind.FAILED).exists()


def test_the_day_closings_list_tells_automatic_closings_apart(
    retail: Business, today: dt.date, owner_client: Client
) -> None:
    item = service(retail, "sales_shop")
    cash_sale(retail, item, today - 2 * DAY)
    by_hand = closing_run(business=retail, day=today - 2 * DAY, counted_cash=D("100.00"))
    cash_sale(retail, item, today - DAY)
    [automatic] = closing_catch_up(business=retail, now=at(today, 9, 0))

    url = reverse("admin:operations_dayclosing_changelist")
    page = owner_client.get(url, {"automatic__exact": "1"}).content.decode()
    assert f"/dayclosing/{automatic.pk}/change/" in page and f"/dayclosing/{by_hand.pk}/change/" not in page
    page = owner_client.get(url, {"automatic__exact": "0"}).content.decode()
    assert f"/dayclosing/{by_hand.pk}/change/" in page and f"/dayclosing/{automatic.pk}/change/" not in page
    detail = owner_client.get(reverse("admin:operations_dayclosing_change", args=[automatic.pk])).content.decode()
    assert "closed automatically" in detail.lower()

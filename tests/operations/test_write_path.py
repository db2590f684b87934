"""The write path of the services: each document written once, no savepoint of their own inside
them, every check before the first write (a refused document leaves nothing), the stock and the
customer rows locked so concurrent postings cannot both take the same stock."""

from __future__ import annotations

import datetime as dt
import threading

import pytest
from django.db import connection, transaction
from django.db.models import Sum
from django.test.utils import CaptureQueriesContext
from django.utils import timezone

from accounts.models import JournalEntry, JournalLine
from operations.exceptions import InsufficientStock, InvalidInput
from operations.models import (
    CustomerTransaction,
    Item,
    ItemKind,
    LaundryOrder,
    LaundryOrderLine,
    OpeningStock,
    OrderStatus,
    PaidFrom,
    ProductionBatch,
    Purchase,
    Sale,
    SaleLine,
    StockLevel,
    StockMovement,
)
from operations.selectors import cash_expected
from operations.services.closing import closing_run
from operations.services.laundry import laundry_order_advance, laundry_order_create
from operations.services.purchases import expense_create, purchase_create
from operations.services.sales import LineInput, customer_payment_record, sale_create
from operations.services.stock import stock_opening_post
from operations.services.water import production_batch_create
from tenancy.models import Business
from tests.factories.operations import CustomerFactory, ItemFactory, SupplierFactory
from tests.operations.ledger import D, lines_by_role


def _stocked(business: Business, name: str, quantity: str, cost: str, price: str, day: dt.date, **fields: str) -> Item:
    fields = {"sales_role": "sales_shop", **fields}
    item = ItemFactory.create(business=business, name=name, price=D(price), **fields)
    opening = OpeningStock.objects.create(
        business=business, item=item, stock_date=day, quantity=D(quantity), unit_cost=D(cost)
    )
    stock_opening_post(opening=opening)
    return item


@pytest.fixture
def counter(retail: Business, today: dt.date) -> dict:
    return {
        "soap": _stocked(retail, "Bar soap", "20", "80.00", "116.00", today),
        "bread": _stocked(retail, "Bread", "10", "50.00", "65.00", today),
        "airtime": ItemFactory.create(
            business=retail, name="Airtime", kind=ItemKind.SERVICE, price=D("50.00"), sales_role="sales_shop"
        ),
    }


@pytest.mark.django_db
def test_a_cash_sale_is_written_once_without_a_savepoint(retail: Business, counter: dict, today: dt.date) -> None:
    lines = [LineInput(counter["soap"], D("1")), LineInput(counter["airtime"], D("1"))]
    with CaptureQueriesContext(connection) as queries:
        sale = sale_create(business=retail, sale_date=today, lines=lines)
    sqls = [q["sql"] for q in queries.captured_queries]
    # The test runs in a transaction, so the service's own atomic block is a savepoint: one, none nested.
    assert [sql.split()[0] for sql in sqls if "SAVEPOINT" in sql] == ["SAVEPOINT", "RELEASE"]
    sqls = [sql for sql in sqls if "SAVEPOINT" not in sql]
    # The books (lock date, accounts, the sale's number), the items, the stock locked; then one
    # statement writes the sale, its lines, the stock movement and the level (the entry is the
    # ledger's one statement, not counted here).
    assert len(sqls) == 4, sqls
    write = sqls[-1]
    for table in ("operations_sale", "operations_saleline", "operations_stockmovement"):
        assert write.count(f'INSERT INTO "{table}"') == 1, write
    assert write.count('UPDATE "operations_stocklevel"') == 1, write
    assert not [sql for sql in sqls if 'UPDATE "operations_sale' in sql]  # sale and lines: final at insert
    assert sale.entry is not None and sale.entry.idempotency_key == f"sale:{sale.pk}"
    assert sale.entry.source_ref == sale.number
    stored = Sale.objects.get(pk=sale.pk)
    assert (stored.status, stored.total, stored.cost_total, stored.amount_paid, stored.entry_id) == (
        "posted",
        D("166.00"),
        D("80.00"),
        D("166.00"),
        sale.entry.pk,
    )
    assert sorted(SaleLine.objects.filter(sale=sale).values_list("amount", "cost")) == [
        (D("50.00"), D("0.00")),
        (D("116.00"), D("80.00")),
    ]


@pytest.mark.django_db
def test_the_same_item_twice_in_one_sale(retail: Business, counter: dict, today: dt.date) -> None:
    sale = sale_create(
        business=retail,
        sale_date=today,
        lines=[LineInput(counter["soap"], D("3")), LineInput(counter["soap"], D("2"), unit_price=D("100.00"))],
    )
    assert (sale.total, sale.cost_total) == (D("548.00"), D("400.00"))
    level = StockLevel.objects.get(item=counter["soap"])
    assert (level.quantity, level.value) == (D("15"), D("1200.00"))
    moved = StockMovement.objects.filter(reference=sale.number).order_by("id")
    assert [(m.quantity, m.value) for m in moved] == [(D("-3"), D("-240.00")), (D("-2"), D("-160.00"))]
    assert lines_by_role(sale.entry)["inventory"] == (0, D("400.00"))


@pytest.mark.django_db
def test_a_refused_sale_writes_nothing_and_leaves_the_callers_transaction_usable(
    retail: Business, counter: dict, today: dt.date
) -> None:
    entries = JournalEntry.objects.count()
    with transaction.atomic():
        with pytest.raises(InsufficientStock, match="Only 10 of Bread"):
            sale_create(
                business=retail,
                sale_date=today,
                lines=[LineInput(counter["soap"], D("1")), LineInput(counter["bread"], D("11"))],
            )
        # The caller goes on in its transaction (as seed_demo does after a refused sale).
        sale = sale_create(business=retail, sale_date=today, lines=[LineInput(counter["bread"], D("10"))])
    assert list(Sale.objects.values_list("pk", flat=True)) == [sale.pk]
    assert list(SaleLine.objects.values_list("sale_id", flat=True)) == [sale.pk]
    assert JournalEntry.objects.count() == entries + 1
    assert StockLevel.objects.get(item=counter["soap"]).quantity == D("20")
    assert StockLevel.objects.get(item=counter["bread"]).quantity == D("0")
    assert not StockMovement.objects.filter(item=counter["soap"], kind="sale").exists()


@pytest.mark.django_db
def test_quantities_and_prices_are_used_as_they_are_stored(retail: Business, counter: dict, today: dt.date) -> None:
    with pytest.raises(InvalidInput, match="more than zero"):
        sale_create(business=retail, sale_date=today, lines=[LineInput(counter["soap"], D("0"))])
    with pytest.raises(InvalidInput, match="more than zero"):
        sale_create(business=retail, sale_date=today, lines=[LineInput(counter["soap"], D("-1"))])
    # 1.0004 is stored as 1.000 (3 places): the amount and the stock follow what is stored.
    sale = sale_create(
        business=retail,
        sale_date=today,
        lines=[LineInput(counter["airtime"], D("1.0004"), unit_price=D("10.005"))],
    )
    line = SaleLine.objects.get(sale=sale)
    assert (line.quantity, line.unit_price, line.amount) == (D("1.000"), D("10.01"), D("10.01"))
    assert sale.total == D("10.01")


@pytest.mark.django_db(transaction=True)
def test_two_concurrent_sales_of_the_last_unit_cannot_both_take_it(retail: Business, today: dt.date) -> None:
    item = _stocked(retail, "Last loaf", "1", "50.00", "65.00", today)
    outcomes: list[str] = []
    barrier = threading.Barrier(2)

    def sell() -> None:
        try:
            barrier.wait()
            sale_create(business=retail, sale_date=today, lines=[LineInput(item, D("1"))])
            outcomes.append("sold")
        except InsufficientStock:
            outcomes.append("refused")
        finally:
            connection.close()

    threads = [threading.Thread(target=sell) for _ in range(2)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert sorted(outcomes) == ["refused", "sold"]
    level = StockLevel.objects.get(item=item)
    assert (level.quantity, level.value) == (D("0"), D("0.00"))
    assert StockMovement.objects.filter(item=item, kind="sale").count() == 1
    assert Sale.objects.filter(business=retail).count() == 1


@pytest.mark.django_db
def test_a_laundry_order_refused_for_its_tag_writes_nothing(laundry: Business, today: dt.date) -> None:
    wash = ItemFactory.create(
        business=laundry, name="Wash", kind=ItemKind.SERVICE, price=D("150.00"), sales_role="sales_wash_fold"
    )
    customer = CustomerFactory.create(business=laundry, name="Wanjiru")
    order = laundry_order_create(
        business=laundry,
        customer=customer,
        tag="T-1",
        received_date=today,
        promised_date=today,
        lines=[(wash, D("2"))],
        deposit=D("100.00"),
    )
    assert order.deposit_entry is not None and order.deposit_entry.idempotency_key == f"laundry-deposit:{order.pk}"
    entries = JournalEntry.objects.count()
    with pytest.raises(InvalidInput, match="Tag T-1 is on another open order"):
        laundry_order_create(
            business=laundry,
            customer=customer,
            tag="T-1",
            received_date=today,
            promised_date=today,
            lines=[(wash, D("1"))],
            deposit=D("50.00"),
        )
    assert list(LaundryOrder.objects.values_list("pk", flat=True)) == [order.pk]
    assert LaundryOrderLine.objects.count() == 1 and JournalEntry.objects.count() == entries


@pytest.mark.django_db
def test_advancing_a_laundry_order_from_a_stale_copy_moves_the_row_one_step(laundry: Business, today: dt.date) -> None:
    wash = ItemFactory.create(
        business=laundry, name="Wash", kind=ItemKind.SERVICE, price=D("150.00"), sales_role="sales_wash_fold"
    )
    customer = CustomerFactory.create(business=laundry, name="Wanjiru")
    order = laundry_order_create(
        business=laundry, customer=customer, tag="T-2", received_date=today, promised_date=today, lines=[(wash, D("1"))]
    )
    stale = LaundryOrder.objects.get(pk=order.pk)
    assert laundry_order_advance(order=order).status == OrderStatus.WASHING
    # The copy still says "received": the row moves from where it is (washing -> ready), not back.
    assert laundry_order_advance(order=stale).status == OrderStatus.READY
    assert LaundryOrder.objects.get(pk=order.pk).status == OrderStatus.READY


@pytest.mark.django_db
def test_a_production_batch_short_of_material_writes_nothing(water: Business, today: dt.date) -> None:
    preform = _stocked(water, "Preform", "100", "6.50", "0.00", today, kind=ItemKind.MATERIAL, sales_role="")
    crate = ItemFactory.create(business=water, name="Crate", price=D("480.00"), sales_role="sales_bottled_water")
    with pytest.raises(InsufficientStock):
        production_batch_create(
            business=water, batch_date=today, output_item=crate, output_quantity=D("5"), inputs=[(preform, D("120"))]
        )
    assert not ProductionBatch.objects.exists()
    assert StockLevel.objects.get(item=preform).quantity == D("100")
    batch = production_batch_create(
        business=water, batch_date=today, output_item=crate, output_quantity=D("4"), inputs=[(preform, D("96"))]
    )
    assert (batch.status, batch.total_cost) == ("posted", D("624.00"))
    assert StockMovement.objects.filter(reference=f"batch #{batch.pk}").count() == 2


@pytest.mark.django_db
def test_purchases_expenses_and_payments_are_keyed_by_their_own_ids(retail: Business, today: dt.date) -> None:
    soap = ItemFactory.create(business=retail, name="Soap", price=D("116.00"), sales_role="sales_shop")
    supplier = SupplierFactory.create(business=retail, name="Wholesaler")
    purchase = purchase_create(
        business=retail,
        supplier=supplier,
        purchase_date=today,
        lines=[(soap, D("10"), D("800.00"))],
        paid_from=PaidFrom.CASH,
    )
    assert purchase.entry is not None and purchase.entry.idempotency_key == f"purchase:{purchase.pk}"
    assert Purchase.objects.get(pk=purchase.pk).total == D("800.00")
    assert StockLevel.objects.get(item=soap).value == D("800.00")
    expense = expense_create(
        business=retail, expense_date=today, category="expense_transport", amount=D("300"), description="boda"
    )
    assert expense.entry is not None and expense.entry.idempotency_key == f"expense:{expense.pk}"
    with pytest.raises(InvalidInput, match="more than zero"):
        expense_create(business=retail, expense_date=today, category="expense_transport", amount=D("-5"))
    customer = CustomerFactory.create(business=retail, name="Otieno", credit_limit=D("1000.00"))
    payment = customer_payment_record(customer=customer, amount=D("200.00"), payment_date=today)
    assert payment.entry is not None and payment.entry.idempotency_key == f"customer-payment:{payment.pk}"


@pytest.mark.django_db
def test_a_sale_on_account_written_in_one_statement_has_every_row_and_default(
    retail: Business, counter: dict, today: dt.date
) -> None:
    customer = CustomerFactory.create(business=retail, credit_limit=D("1000.00"))
    before = timezone.now()
    sale = sale_create(
        business=retail,
        sale_date=today,
        lines=[LineInput(counter["soap"], D("2")), LineInput(counter["airtime"], D("1"), unit_price=D("40.00"))],
        customer=customer,
        payment_method="account",
    )
    stored = Sale.objects.get(pk=sale.pk)
    assert stored.created_at >= before and stored.customer_id == customer.pk  # auto_now_add, as save() sets it
    assert (stored.total, stored.amount_paid, stored.status) == (D("272.00"), D("0.00"), "posted")
    lines = SaleLine.objects.filter(sale=sale).order_by("id")
    assert [(line.item_id, line.quantity, line.unit_price, line.amount) for line in lines] == [
        (counter["soap"].pk, D("2.000"), None, D("232.00")),
        (counter["airtime"].pk, D("1.000"), D("40.00"), D("40.00")),
    ]
    moved = StockMovement.objects.get(reference=sale.number)
    assert (moved.quantity, moved.value, moved.entry_id) == (D("-2.000"), D("-160.00"), sale.entry_id)
    assert moved.created_at >= before
    charge = CustomerTransaction.objects.get(sale=sale)
    assert (charge.amount, charge.customer_id, charge.entry_id, charge.kind) == (
        D("272.00"),
        customer.pk,
        sale.entry_id,
        "sale",
    )
    assert StockLevel.objects.get(item=counter["soap"]).quantity == D("18")


@pytest.mark.django_db
def test_cash_expected_after_a_counted_closing_is_every_cash_line_up_to_the_day(
    retail: Business, counter: dict, today: dt.date
) -> None:
    first, second = today - dt.timedelta(days=2), today - dt.timedelta(days=1)
    sale_create(business=retail, sale_date=first, lines=[LineInput(counter["soap"], D("1"))])
    closing_run(business=retail, day=first, counted_cash=D("100.00"))  # 116 expected: 16 short
    sale_create(business=retail, sale_date=second, lines=[LineInput(counter["bread"], D("2"))])
    for day in (first, second):
        every_line = JournalLine.objects.filter(
            account__business=retail, account__role="cash", entry__entry_date__lte=day
        ).aggregate(d=Sum("debit"), c=Sum("credit"))
        assert cash_expected(business=retail, day=day) == every_line["d"] - every_line["c"]
    assert cash_expected(business=retail, day=second) == D("230.00")  # the 100 counted, then 130


@pytest.mark.django_db
def test_a_sales_reads_go_in_one_round_trip_with_its_begin(retail: Business, counter: dict, today: dt.date) -> None:
    """The books, the items and the stock rows are sent together (postings.pipelined): one sync of
    psycopg's pipeline for the three, then the ledger's statement and the writes one by one."""
    lines = [LineInput(counter["soap"], D("1")), LineInput(counter["airtime"], D("1"))]
    raw = connection.connection
    pipelines: list[int] = []
    real = type(raw).pipeline

    def counted(self: object) -> object:
        pipelines.append(1)
        return real(self)  # type: ignore[arg-type]

    type(raw).pipeline = counted  # type: ignore[method-assign]
    try:
        with CaptureQueriesContext(connection) as queries:
            sale = sale_create(business=retail, sale_date=today, lines=lines)
    finally:
        type(raw).pipeline = real  # type: ignore[method-assign]
    assert pipelines == [1]
    reads = [q["sql"] for q in queries.captured_queries if "SAVEPOINT" not in q["sql"]][:3]
    assert "accounts_books" in reads[0] and "operations_item" in reads[1] and "FOR UPDATE" in reads[2]
    assert StockLevel.objects.get(item=counter["soap"]).quantity == D("19")
    assert sale.cost_total == D("80.00")


@pytest.mark.django_db
def test_a_sale_of_a_stocked_item_without_a_stock_row_creates_the_row_and_refuses_the_stock(
    retail: Business, today: dt.date
) -> None:
    """The stock rows read with the sale's other reads lack one: stock_lock's own path creates it."""
    item = ItemFactory.create(business=retail, name="New stock", price=D("10.00"), sales_role="sales_shop")
    assert not StockLevel.objects.filter(item=item).exists()
    with transaction.atomic():
        with pytest.raises(InsufficientStock, match="Only 0 of New stock"):
            sale_create(business=retail, sale_date=today, lines=[LineInput(item, D("1"))])
        assert not Sale.objects.exists()
    opening = OpeningStock.objects.create(
        business=retail, item=item, stock_date=today, quantity=D("2"), unit_cost=D("4.00")
    )
    stock_opening_post(opening=opening)
    sale = sale_create(business=retail, sale_date=today, lines=[LineInput(item, D("2"))])
    assert sale.cost_total == D("8.00")
    level = StockLevel.objects.get(item=item)
    assert (level.quantity, level.value) == (D("0"), D("0.00"))


@pytest.mark.django_db
def test_writes_reads_a_field_as_save_would(retail: Business, counter: dict, today: dt.date) -> None:
    """Writes takes plain fields' values as they are (postings.value_reader): the same as Django's
    pre_save + get_db_prep_save for every field of the rows a sale writes, whatever the value's type."""
    from operations.models import PaymentMethod, SaleStatus
    from operations.services.postings import value_reader

    db = connection
    sale = Sale(
        pk=10**9,
        business=retail,
        sale_date=today,
        payment_method=PaymentMethod.MPESA,  # a TextChoices member
        status=SaleStatus.POSTED,
        route="Kayole",
        total=D("166.00"),
        vat_total=D("16.00"),
        cost_total=7,  # an int in a money field
        amount_paid=D("0"),
        entry_id=None,
        note="",
    )
    line = SaleLine(sale=sale, item=counter["soap"], quantity=D("1.5"), unit_price=None, amount=D("174.00"))
    level = StockLevel(pk=5, business_id=retail.pk, item_id=counter["soap"].pk, quantity=D("2"), value=D("1.10"))
    for row in (sale, line, level):
        for field in type(row)._meta.concrete_fields:
            if getattr(field, "auto_now_add", False):
                continue
            for add in (True, False):
                expected = field.get_db_prep_save(field.pre_save(row, add), db)
                got = value_reader(field, add)(row)
                assert str(got) == str(expected) and type(got) is type(expected), (field, got, expected)


@pytest.mark.django_db(transaction=True)
def test_a_database_error_in_the_sales_pipelined_reads_is_djangos_and_leaves_the_transaction_usable(
    retail: Business, today: dt.date
) -> None:
    """The stock row is held by another transaction and the lock times out inside the pipeline: the
    error is Django's OperationalError, the sale's savepoint is rolled back, the caller goes on."""
    from django.db import OperationalError

    item = _stocked(retail, "Held loaf", "3", "50.00", "65.00", today)
    held, release = threading.Event(), threading.Event()

    def hold() -> None:
        try:
            with transaction.atomic():
                list(StockLevel.objects.select_for_update().filter(item=item))
                held.set()
                release.wait(10)
        finally:
            connection.close()

    holder = threading.Thread(target=hold)
    holder.start()
    try:
        assert held.wait(10)
        with transaction.atomic():
            with connection.cursor() as cursor:
                cursor.execute("SET LOCAL lock_timeout = '200ms'")
            with pytest.raises(OperationalError, match="lock timeout"):
                sale_create(business=retail, sale_date=today, lines=[LineInput(item, D("1"))])
            release.set()
            holder.join()
            sale = sale_create(business=retail, sale_date=today, lines=[LineInput(item, D("1"))])
    finally:
        release.set()
        holder.join()
    assert list(Sale.objects.values_list("pk", flat=True)) == [sale.pk]
    assert StockLevel.objects.get(item=item).quantity == D("2")


@pytest.mark.django_db
def test_a_sale_on_account_locks_its_customer_before_its_stock(retail: Business, counter: dict, today: dt.date) -> None:
    """Every service locks a customer before stock rows (the credit check, then the stock), so two
    of them never wait for each other in a circle: a sale on account keeps that order, its stock
    rows are not locked with its pipelined reads but after the check."""
    customer = CustomerFactory.create(business=retail, credit_limit=D("1000.00"))
    with CaptureQueriesContext(connection) as queries:
        sale_create(
            business=retail,
            sale_date=today,
            lines=[LineInput(counter["soap"], D("1"))],
            customer=customer,
            payment_method="account",
        )
    locks = [q["sql"] for q in queries.captured_queries if "FOR UPDATE" in q["sql"]]
    assert len(locks) == 2, locks
    assert "operations_customer" in locks[0] and "operations_stocklevel" in locks[1]
    assert StockLevel.objects.get(item=counter["soap"]).quantity == D("19")

"""`manage.py seed_demo --days N`: the three demo businesses with catalogues, customers, suppliers
and N days of activity, all posted through the operations services (so the ledger stays balanced).

The days seeded are the N days before today (today stays open for people to try the admin); each
day ends with a closing, which locks it. A week of a business commits at a time. Run again, it
continues after the last closed day and skips days already closed (so it never posts twice for a
day); `--if-empty` does nothing when any sale exists (used on first start).

The businesses are seeded at the same time, each by a worker process (`--workers`, default one
per business): each has its own books, chain, stock and customers, so they share no row they
write. Random but reproducible: each business draws from its own generator seeded with `--seed`
(default 2026) and its name, so the same seed gives the same activity whatever the workers; the
ids (and so the sale numbers) depend on how the processes interleave, except with `--workers 1`.

M-Pesa: each business gets a demo till; M-Pesa sales and laundry payments are posted by the
operations services to receivables and then paid with synthetic receipts recorded through
integrations.mpesa.payments.payment_record (as a Daraja callback would), which matches them by
sale number, laundry tag or phone and calls operations' payment listener.
"""

from __future__ import annotations

import datetime as dt
import multiprocessing
import random
import time
from collections import defaultdict
from collections.abc import Callable
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass
from decimal import Decimal
from typing import Any
from zoneinfo import ZoneInfo

from django.core.management import call_command
from django.core.management.base import BaseCommand, CommandError, CommandParser
from django.db import connection, connections, transaction
from django.db.models import Sum
from django.utils import timezone

from accounts.selectors import books_lock_date
from operations.exceptions import CreditLimitExceeded, InsufficientStock
from operations.management.commands.setup_demo import DEMO_BUSINESSES
from operations.models import (
    Customer,
    CustomerTransaction,
    Item,
    ItemKind,
    LaundryOrder,
    OpeningStock,
    OrderStatus,
    PaidFrom,
    PaymentMethod,
    Sale,
    StockLevel,
    Supplier,
    TaxRate,
    Unit,
)
from operations.selectors import cash_expected, supplier_balance
from operations.services.businesses import business_ensure
from operations.services.closing import closing_run
from operations.services.laundry import laundry_order_advance, laundry_order_collect, laundry_order_create
from operations.services.lpg import lpg_cylinder_ensure
from operations.services.purchases import expense_create, purchase_create, supplier_payment_create
from operations.services.sales import LineInput, customer_payment_record, deposit_return, sale_create
from operations.services.stock import stock_opening_post
from operations.services.water import production_batch_create
from tenancy.models import Business, BusinessKind

D = Decimal
DAYS_PER_TRANSACTION = 7
NAIROBI = ZoneInfo("Africa/Nairobi")
NAMES = [
    "Wanjiku",
    "Otieno",
    "Akinyi",
    "Kamau",
    "Njeri",
    "Mutua",
    "Chebet",
    "Wafula",
    "Achieng",
    "Kiprop",
    "Nyambura",
    "Omondi",
    "Wairimu",
    "Mwangi",
    "Atieno",
    "Kibet",
    "Muthoni",
    "Ouma",
    "Jeptoo",
    "Karanja",
]
SHOPS = [
    "Mama Njeri shop",
    "Kayole Mini-mart",
    "Umoja Supermarket",
    "Baraka Kiosk",
    "Tumaini Hotel",
    "Jirani Butchery",
    "Neema Salon",
    "Faraja School",
]


def _phone(rng: random.Random) -> str:
    return f"2547{rng.randint(0, 99_999_999):08d}"


def _item(business: Business, name: str, **fields: Any) -> Item:
    item, _ = Item.objects.get_or_create(business=business, name=name, defaults=fields)
    return item


def _customers(business: Business, rng: random.Random, names: list[str], limit: Decimal) -> list[Customer]:
    result = []
    for name in names:
        customer, _ = Customer.objects.get_or_create(
            business=business, name=name, defaults={"phone": _phone(rng), "credit_limit": limit}
        )
        if customer.phone and not customer.phone_sha256:
            customer.full_clean()
            customer.save()
        result.append(customer)
    return result


def _opening(business: Business, day: dt.date, stock: list[tuple[Item, str, str]]) -> None:
    if OpeningStock.objects.filter(business=business).exists():
        return
    for item, quantity, cost in stock:
        opening = OpeningStock.objects.create(
            business=business, item=item, stock_date=day, quantity=D(quantity), unit_cost=D(cost)
        )
        stock_opening_post(opening=opening)


class Seeder:
    """One business's catalogue and its daily activity."""

    def __init__(self, business: Business, rng: random.Random) -> None:
        from integrations.mpesa.models import Till

        self.business = business
        self.rng = rng
        self.counts: dict[str, int] = {}
        self.till, _ = Till.objects.get_or_create(
            business=business,
            name=f"{business.name} till (demo)",
            defaults={"shortcode": f"99{business.pk:04d}"},
        )
        self.till.business = business  # read by every payment recorded on it
        self.receipts = 0

    def count(self, what: str, n: int = 1) -> None:
        self.counts[what] = self.counts.get(what, 0) + n

    def sell(
        self,
        day: dt.date,
        lines: list[LineInput],
        *,
        customer: Customer | None = None,
        method: str = PaymentMethod.CASH,
        route: str = "",
    ) -> Sale | None:
        try:
            sale = sale_create(
                business=self.business,
                sale_date=day,
                lines=lines,
                customer=customer,
                payment_method=method,
                route=route,
            )
        except (InsufficientStock, CreditLimitExceeded):
            self.count("sales skipped (stock or credit)")
            return None
        self.count("sales")
        if method == PaymentMethod.MPESA and self.rng.random() < 0.97:  # a few stay unpaid
            self.mpesa_pay(day, sale.total, reference=sale.number, phone=customer.phone if customer else "")
        return sale

    def on_hand(self) -> dict[int, Decimal]:
        """The quantity in stock of each of the business's stocked items (one query)."""
        return defaultdict(
            Decimal, StockLevel.objects.filter(business=self.business).values_list("item_id", "quantity").order_by()
        )

    def method(self, mpesa_share: float) -> str:
        return PaymentMethod.MPESA if self.rng.random() < mpesa_share else PaymentMethod.CASH

    def collect_debts(self, day: dt.date, customers: list[Customer], share: float) -> None:
        balances = dict(
            CustomerTransaction.objects.filter(customer__in=customers)
            .values("customer_id")
            .annotate(owed=Sum("amount"))
            .values_list("customer_id", "owed")
        )
        for customer in customers:
            if self.rng.random() >= share:
                continue
            owed = balances.get(customer.pk) or D(0)
            if owed > 0:
                customer_payment_record(customer=customer, amount=owed, payment_date=day, reference="cash")
                self.count("customer payments")

    def expenses(self, day: dt.date, monthly: list[tuple[str, str, str]], daily: list[tuple[str, int, int]]) -> None:
        for category, amount, paid_from in monthly:
            if day.day == 1:
                expense_create(
                    business=self.business,
                    expense_date=day,
                    category=category,
                    amount=D(amount),
                    paid_from=paid_from,
                    description="monthly",
                )
                self.count("expenses")
        for category, low, high in daily:
            expense_create(
                business=self.business,
                expense_date=day,
                category=category,
                amount=D(self.rng.randint(low, high)),
                paid_from=PaidFrom.CASH,
                description="daily",
            )
            self.count("expenses")

    def pay_supplier(self, day: dt.date, supplier: Supplier) -> None:
        owed = supplier_balance(supplier=supplier)
        if owed > 0:
            supplier_payment_create(
                supplier=supplier, payment_date=day, amount=owed, paid_from=PaidFrom.BANK, reference=f"EFT {day:%d%m}"
            )
            self.count("supplier payments")

    def mpesa_pay(self, day: dt.date, amount: Decimal, *, reference: str, phone: str = "") -> None:
        """A synthetic M-Pesa payment received on the business's till, recorded by the M-Pesa services."""
        from integrations.mpesa.payments import payment_record

        self.receipts += 1
        paid_at = dt.datetime.combine(day, dt.time(8), tzinfo=NAIROBI) + dt.timedelta(minutes=self.receipts % 600)
        payment_record(
            till=self.till,
            receipt=f"SD{self.business.pk}{day:%y%m%d}{self.receipts:06d}"[:20],
            amount=amount,
            paid_at=paid_at,
            msisdn=phone or _phone(self.rng),
            payer_name="DEMO CUSTOMER",
            account_reference=reference,
            payment_request=None,
        )
        self.count("M-Pesa payments")

    def close(self, day: dt.date) -> None:
        expected = cash_expected(business=self.business, day=day)
        roll = self.rng.random()
        counted = expected - D(self.rng.choice([10, 20, 50])) if roll < 0.1 else expected
        closing_run(business=self.business, day=day, counted_cash=counted if roll < 0.8 else None)
        self.count("closings")


class WaterSeeder(Seeder):
    def setup(self, first_day: dt.date) -> None:
        b = self.business
        m = {"kind": ItemKind.MATERIAL, "sales_role": "", "unit": Unit.EACH}
        self.preform = _item(b, "Preform 500 ml", reorder_level=D(2000), **m)
        self.preform1l = _item(b, "Preform 1 L", reorder_level=D(1000), **m)
        self.cap = _item(b, "Cap 28 mm", reorder_level=D(3000), **m)
        self.label = _item(b, "Label roll (per label)", reorder_level=D(3000), **m)
        self.chlorine = _item(b, "Treatment inputs (per crate)", reorder_level=D(200), **m)
        self.bottle20 = _item(b, "20 L bottle (empty, new)", reorder_level=D(20), **m)
        self.crate500 = _item(
            b,
            "500 ml x 24 crate",
            price=D("480.00"),
            sales_role="sales_bottled_water",
            unit=Unit.CRATE,
            reorder_level=D(30),
        )
        self.crate1l = _item(
            b,
            "1 L x 12 crate",
            price=D("420.00"),
            sales_role="sales_bottled_water",
            unit=Unit.CRATE,
            reorder_level=D(20),
        )
        self.refill = _item(b, "20 L refill", kind=ItemKind.SERVICE, price=D("60.00"), sales_role="sales_refill")
        self.new20 = _item(
            b,
            "20 L with new bottle",
            kind=ItemKind.SERVICE,
            price=D("450.00"),
            sales_role="sales_containers",
            stock_item=self.bottle20,
        )
        self.deposit = _item(
            b,
            "20 L bottle deposit",
            kind=ItemKind.DEPOSIT,
            price=D("300.00"),
            tax_rate=TaxRate.EXEMPT,
            sales_role="bottle_deposits",
        )
        self.delivery = _item(
            b, "Delivery charge", kind=ItemKind.SERVICE, price=D("100.00"), sales_role="sales_delivery"
        )
        self.supplier, _ = Supplier.objects.get_or_create(business=b, name="Nairobi Plastics Ltd")
        self.walk_in = _customers(b, self.rng, NAMES[:8], D("0"))
        self.shops = _customers(b, self.rng, SHOPS, D("20000.00"))
        _opening(
            b,
            first_day,
            [
                (self.preform, "3000", "6.50"),
                (self.preform1l, "1500", "9.00"),
                (self.cap, "5000", "1.20"),
                (self.label, "5000", "0.80"),
                (self.chlorine, "400", "4.00"),
                (self.bottle20, "60", "220.00"),
            ],
        )

    def day(self, day: dt.date) -> None:
        b, rng = self.business, self.rng
        stock = self.on_hand()
        if stock[self.preform.pk] < 1500 or stock[self.cap.pk] < 2500:
            purchase_create(
                business=b,
                supplier=self.supplier,
                purchase_date=day,
                paid_from=PaidFrom.CREDIT,
                lines=[
                    (self.preform, D(3000), D("19500.00")),
                    (self.preform1l, D(1200), D("10800.00")),
                    (self.cap, D(4200), D("5040.00")),
                    (self.label, D(4200), D("3360.00")),
                    (self.chlorine, D(400), D("1600.00")),
                    (self.bottle20, D(20), D("4400.00")),
                ],
            )
            self.count("purchases")
        n500, n1l = rng.randint(25, 40), rng.randint(12, 20)
        production_batch_create(
            business=b,
            batch_date=day,
            output_item=self.crate500,
            output_quantity=D(n500),
            inputs=[
                (self.preform, D(24 * n500)),
                (self.cap, D(24 * n500)),
                (self.label, D(24 * n500)),
                (self.chlorine, D(n500)),
            ],
        )
        production_batch_create(
            business=b,
            batch_date=day,
            output_item=self.crate1l,
            output_quantity=D(n1l),
            inputs=[
                (self.preform1l, D(12 * n1l)),
                (self.cap, D(12 * n1l)),
                (self.label, D(12 * n1l)),
                (self.chlorine, D(n1l)),
            ],
        )
        self.count("production batches", 2)
        for _ in range(rng.randint(6, 10)):
            roll = rng.random()
            if roll < 0.55:
                lines = [LineInput(self.refill, D(rng.randint(1, 3)))]
            elif roll < 0.65:
                lines = [LineInput(self.new20, D(1)), LineInput(self.deposit, D(1))]
            else:
                lines = [LineInput(rng.choice([self.crate500, self.crate1l]), D(rng.randint(1, 3)))]
            self.sell(
                day, lines, customer=rng.choice(self.walk_in) if rng.random() < 0.3 else None, method=self.method(0.4)
            )
        for shop in rng.sample(self.shops, 2):
            self.sell(
                day,
                [
                    LineInput(self.crate500, D(rng.randint(3, 8)), unit_price=D("450.00")),
                    LineInput(self.crate1l, D(rng.randint(2, 5)), unit_price=D("400.00")),
                    LineInput(self.delivery, D(1)),
                ],
                customer=shop,
                method=PaymentMethod.ACCOUNT,
                route=rng.choice(["Kayole", "Umoja", "Donholm"]),
            )
        if rng.random() < 0.2:
            deposit_return(
                business=b, item=self.deposit, quantity=D(1), return_date=day, reference=f"{day.isoformat()}-1"
            )
            self.count("deposit returns")
        self.collect_debts(day, self.shops, 0.25)
        if day.day == 15:
            self.pay_supplier(day, self.supplier)
        self.expenses(
            day,
            [
                ("expense_rent", "35000", PaidFrom.BANK),
                ("expense_wages", "60000", PaidFrom.BANK),
                ("expense_electricity", "18000", PaidFrom.BANK),
            ],
            [("expense_transport", 300, 900)],
        )


class LaundrySeeder(Seeder):
    def setup(self, first_day: dt.date) -> None:
        b = self.business
        s = {"kind": ItemKind.SERVICE}
        self.wash = _item(
            b, "Wash and fold (per kg)", price=D("150.00"), unit=Unit.KG, sales_role="sales_wash_fold", **s
        )
        self.duvet = _item(b, "Duvet", price=D("600.00"), sales_role="sales_wash_fold", **s)
        self.suit = _item(b, "Suit dry cleaning", price=D("650.00"), sales_role="sales_dry_cleaning", **s)
        self.shirt = _item(b, "Shirt ironing", price=D("80.00"), sales_role="sales_ironing", **s)
        self.pickup = _item(b, "Pickup and delivery", price=D("200.00"), sales_role="sales_delivery", **s)
        self.customers = _customers(b, self.rng, NAMES, D("3000.00"))
        self.tag = LaundryOrder.objects.filter(business=b).count()

    def day(self, day: dt.date) -> None:
        b, rng = self.business, self.rng
        for order in LaundryOrder.objects.filter(business=b, status__in=[OrderStatus.RECEIVED, OrderStatus.WASHING]):
            laundry_order_advance(order=order)
        for order in LaundryOrder.objects.filter(
            business=b, status=OrderStatus.READY, promised_date__lte=day
        ).select_related("customer"):
            if rng.random() < 0.85:
                roll = rng.random()
                method = PaymentMethod.ACCOUNT if roll < 0.1 else self.method(0.4)
                try:
                    laundry_order_collect(order=order, collected_date=day, balance_method=method)
                except CreditLimitExceeded:
                    method = PaymentMethod.CASH
                    laundry_order_collect(order=order, collected_date=day)
                if method == PaymentMethod.MPESA and order.total > order.deposit:
                    # Collected orders are no longer open: the payment is matched by the phone.
                    self.mpesa_pay(day, order.total - order.deposit, reference="", phone=order.customer.phone)
                self.count("laundry collections")
        for _ in range(rng.randint(4, 7)):
            self.tag += 1
            lines: list[tuple[Item, Decimal]] = [(self.wash, D(rng.randint(20, 120)) / 10)]
            if rng.random() < 0.3:
                lines.append((rng.choice([self.duvet, self.suit, self.shirt]), D(rng.randint(1, 4))))
            if rng.random() < 0.1:
                lines.append((self.pickup, D(1)))
            estimate = sum((item.price * qty for item, qty in lines), D(0))
            deposit = min(D(rng.choice([0, 200, 300, 500])), estimate)
            by_mpesa = self.method(0.4) == PaymentMethod.MPESA
            tag = f"T{self.tag % 10000:04d}"
            laundry_order_create(
                business=b,
                customer=rng.choice(self.customers),
                tag=tag,
                received_date=day,
                promised_date=day + dt.timedelta(days=rng.randint(1, 3)),
                lines=lines,
                deposit=deposit,
                deposit_method=PaymentMethod.MPESA if by_mpesa else PaymentMethod.CASH,
            )
            if by_mpesa and deposit:
                self.mpesa_pay(day, deposit, reference=tag)
            self.count("laundry orders")
        self.collect_debts(day, self.customers, 0.3)
        self.expenses(
            day,
            [
                ("expense_rent", "25000", PaidFrom.BANK),
                ("expense_wages", "45000", PaidFrom.BANK),
                ("expense_water", "6000", PaidFrom.BANK),
            ],
            [("expense_detergents", 200, 700)],
        )


class RetailSeeder(Seeder):
    def setup(self, first_day: dt.date) -> None:
        b = self.business
        self.gas = [
            lpg_cylinder_ensure(
                business=b,
                size_kg=D(6),
                brand=brand,
                refill_price=D(p6),
                new_cylinder_price=D(n6),
                deposit_price=D("2000.00"),
            )
            for brand, p6, n6 in (("Total", "1350.00", "4200.00"), ("K-Gas", "1300.00", "4000.00"))
        ] + [
            lpg_cylinder_ensure(
                business=b,
                size_kg=D(13),
                brand=brand,
                refill_price=D(p),
                new_cylinder_price=D(n),
                deposit_price=D("3500.00"),
            )
            for brand, p, n in (("Total", "3000.00", "7500.00"), ("K-Gas", "2900.00", "7200.00"))
        ]
        g = {"sales_role": "sales_shop", "reorder_level": D(10)}
        self.goods = [
            (_item(b, "Bread 400 g", price=D("65.00"), tax_rate=TaxRate.EXEMPT, **g), D("55.00")),
            (_item(b, "Milk 500 ml", price=D("60.00"), tax_rate=TaxRate.ZERO, **g), D("50.00")),
            (_item(b, "Sugar 1 kg", price=D("180.00"), tax_rate=TaxRate.STANDARD, **g), D("150.00")),
            (_item(b, "Maize flour 2 kg", price=D("190.00"), tax_rate=TaxRate.ZERO, **g), D("160.00")),
            (_item(b, "Bar soap", price=D("120.00"), tax_rate=TaxRate.STANDARD, **g), D("90.00")),
            (_item(b, "Cooking oil 1 L", price=D("380.00"), tax_rate=TaxRate.STANDARD, **g), D("310.00")),
        ]
        self.burner = _item(b, "Gas burner 6 kg", price=D("950.00"), sales_role="sales_accessories", reorder_level=D(3))
        self.depot, _ = Supplier.objects.get_or_create(business=b, name="Gas depot Industrial Area")
        self.wholesaler, _ = Supplier.objects.get_or_create(business=b, name="Wholesale Naivas")
        self.customers = _customers(b, self.rng, NAMES[:12], D("5000.00"))
        stock = [(c.empty, "20", "1800.00" if c.full.cylinder_size_kg == 6 else "3000.00") for c in self.gas]
        stock += [(c.full, "6", "2900.00" if c.full.cylinder_size_kg == 6 else "5400.00") for c in self.gas]
        stock += [(item, "40", str(cost)) for item, cost in self.goods] + [(self.burner, "10", "700.00")]
        _opening(b, first_day, stock)

    def day(self, day: dt.date) -> None:
        b, rng = self.business, self.rng
        stock = self.on_hand()
        refills = [
            (c.full, D(6), D("1050.00") if c.full.cylinder_size_kg == 6 else D("2300.00"))
            for c in self.gas
            if stock[c.full.pk] < 4 and stock[c.empty.pk] >= 6
        ]
        if refills:
            purchase_create(
                business=b,
                supplier=self.depot,
                purchase_date=day,
                paid_from=PaidFrom.MPESA,
                lines=[(item, qty, price * qty) for item, qty, price in refills],
            )
            self.count("depot refills")
        low = [(item, D(40), cost * 40) for item, cost in self.goods if stock[item.pk] < 15]
        if low:
            purchase_create(
                business=b,
                supplier=self.wholesaler,
                purchase_date=day,
                paid_from=PaidFrom.CREDIT,
                lines=low,
                vat_claimable=True,
            )
            self.count("purchases")
        for _ in range(rng.randint(3, 6)):
            c = rng.choice(self.gas)
            roll = rng.random()
            if roll < 0.8:
                lines = [LineInput(c.refill, D(1))]
            elif roll < 0.9:
                lines = [LineInput(c.new_cylinder, D(1))]
            else:
                lines = [LineInput(c.gas_on_deposit, D(1)), LineInput(c.deposit, D(1))]
            self.sell(day, lines, method=self.method(0.5))
        for _ in range(rng.randint(6, 12)):
            picks = rng.sample(self.goods, rng.randint(1, 3))
            lines = [LineInput(item, D(rng.randint(1, 3))) for item, _ in picks]
            if rng.random() < 0.03:
                lines.append(LineInput(self.burner, D(1)))
            on_account = rng.random() < 0.1
            self.sell(
                day,
                lines,
                customer=rng.choice(self.customers) if on_account else None,
                method=PaymentMethod.ACCOUNT if on_account else PaymentMethod.CASH,
            )
        self.collect_debts(day, self.customers, 0.2)
        if day.weekday() == 4:
            self.pay_supplier(day, self.wholesaler)
        self.expenses(
            day,
            [
                ("expense_rent", "20000", PaidFrom.BANK),
                ("expense_wages", "30000", PaidFrom.BANK),
                ("expense_licences", "1500", PaidFrom.MPESA),
            ],
            [("expense_transport", 100, 400)],
        )


SEEDERS: dict[str, type[WaterSeeder | LaundrySeeder | RetailSeeder]] = {
    BusinessKind.WATER: WaterSeeder,
    BusinessKind.LAUNDRY: LaundrySeeder,
    BusinessKind.RETAIL_LPG: RetailSeeder,
}


@dataclass(frozen=True)
class SeedRun:
    """One business's part of a seed_demo run (what a worker process is given)."""

    name: str
    kind: str
    seed: int
    first: dt.date
    days: int


@dataclass(frozen=True)
class Seeded:
    """What a business's part of the run did: from which day, and the counts of what was posted."""

    name: str
    start: dt.date
    counts: dict[str, int]


def business_seed(run: SeedRun, report: Callable[[str], None] | None = None) -> Seeded:
    """Seed one business's days from `run.first` (or the day after its last closed day), a week per
    transaction, each day closed in it: a failure leaves the weeks before it seeded and closed, and
    a second run goes on from the last closed day. Its own random generator (seeded with the run's
    seed and the business's name), so its data does not depend on the other businesses or on the
    order the businesses run in. `report` is told of the progress every four weeks."""
    business = Business.objects.get(name=run.name)
    seeder = SEEDERS[run.kind](business, random.Random(f"{run.seed}:{run.name}"))  # noqa: S311 - demo data
    lock_date = books_lock_date(business_id=business.pk)
    start = run.first if lock_date is None else max(run.first, lock_date + dt.timedelta(days=1))
    last = run.first + dt.timedelta(days=run.days - 1)
    with transaction.atomic():
        seeder.setup(start)
    day = start
    while day <= last:
        with transaction.atomic():
            for _ in range(DAYS_PER_TRANSACTION):
                if day > last:
                    break
                seeder.day(day)
                seeder.close(day)
                day += dt.timedelta(days=1)
        done = (day - start).days
        if report is not None and (done % 28 == 0 or day > last):
            report(f"  {run.name}: {done} of {(last - start).days + 1} days")
    return Seeded(name=run.name, start=start, counts=seeder.counts)


def _business_seed_in_worker(run: SeedRun) -> Seeded:
    """business_seed in a worker process, on a connection of its own, closed at the end."""
    try:
        return business_seed(run, report=lambda line: print(line, flush=True))
    finally:
        connections.close_all()


class Command(BaseCommand):
    help = "Seed the three demo businesses with N days of activity through the services (see module docstring)."

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("--days", type=int, default=30, help="How many days before today to fill.")
        parser.add_argument("--seed", type=int, default=2026, help="Random seed (same seed, same data).")
        parser.add_argument("--if-empty", action="store_true", help="Do nothing if any sale exists.")
        parser.add_argument(
            "--workers",
            type=int,
            default=len(DEMO_BUSINESSES),
            help="Businesses seeded at the same time, each by a process of its own (1: one after the other, "
            "in this process; then the ids, and so the sale numbers, are the same from run to run too).",
        )

    def handle(self, *args: Any, **options: Any) -> None:
        days: int = options["days"]
        if days < 1:
            raise CommandError("--days must be at least 1")
        if options["if_empty"] and Sale.objects.exists():
            self.stdout.write("Sales exist already: nothing seeded.")
            return
        call_command("setup_demo", stdout=self.stdout)
        started = time.monotonic()
        first = timezone.localdate() - dt.timedelta(days=days)
        runs = []
        for name, kind, _ in DEMO_BUSINESSES:
            business_ensure(name=name, kind=kind)
            runs.append(SeedRun(name=name, kind=kind, seed=options["seed"], first=first, days=days))
        # Worker processes need what is set up committed, and connections of their own.
        workers = 1 if connection.in_atomic_block else max(1, min(options["workers"], len(runs)))
        outcomes: list[Seeded | BaseException] = []
        if workers == 1:
            outcomes = [business_seed(run, report=self.stdout.write) for run in runs]
        else:
            self.stdout.flush()
            connections.close_all()  # a forked process must not share the parent's connection
            with ProcessPoolExecutor(workers, mp_context=multiprocessing.get_context("fork")) as pool:
                futures = [pool.submit(_business_seed_in_worker, run) for run in runs]
            outcomes = [future.exception() or future.result() for future in futures]
        failed = []
        for run, outcome in zip(runs, outcomes, strict=True):
            if isinstance(outcome, BaseException):
                failed.append(f"{run.name}: {type(outcome).__name__}: {outcome}")
                continue
            summary = ", ".join(f"{v} {k}" for k, v in sorted(outcome.counts.items())) or "nothing new"
            self.stdout.write(f"{outcome.name}: from {outcome.start}: {summary}")
        if failed:
            raise CommandError("seeding failed (the weeks before the failure are seeded): " + "; ".join(failed))
        self.stdout.write(self.style.SUCCESS(f"Seeded {days} days in {time.monotonic() - started:.1f}s"))

"""Statements in columns: the period chooser's rules, the column selectors against the journal lines,
and the statement PDFs read back as text (every total equals the selector's and the ledger's)."""

from __future__ import annotations

import datetime as dt
import io
import re
from decimal import Decimal

import pytest
from django.db.models import Q, Sum
from pypdf import PdfReader

from accounts.models import Account, AccountType, JournalLine
from accounts.periods import (
    CUSTOM,
    DAY,
    LAST_YEAR,
    MONTH,
    NO_COMPARISON,
    PREVIOUS,
    QUARTER,
    YEAR,
    Period,
    comparison_period,
    period_containing,
    period_from_params,
)
from accounts.reports import statement_pdf_render, statement_story
from accounts.selectors import (
    Column,
    balance_sheet,
    balance_sheet_columns,
    cash_flow_columns,
    cash_flow_statement,
    income_statement,
    income_statement_columns,
    trial_balance,
    trial_balance_columns,
)
from accounts.statements import INTERCOMPANY_NOTE, Statement, StatementTable, statement_build, statement_filename
from tenancy.models import Business
from tests.accounts.conftest import fire_deferred
from tests.factories.accounts import post, sale

D = Decimal
d = dt.date
MARCH = Period(MONTH, d(2025, 3, 1), d(2025, 3, 31))
FEBRUARY = Period(MONTH, d(2025, 2, 1), d(2025, 2, 28))


# --- the period chooser ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("kind", "anchor", "start", "end"),
    [
        (DAY, d(2024, 2, 29), d(2024, 2, 29), d(2024, 2, 29)),
        (MONTH, d(2024, 2, 10), d(2024, 2, 1), d(2024, 2, 29)),  # leap year
        (MONTH, d(2025, 2, 10), d(2025, 2, 1), d(2025, 2, 28)),
        (QUARTER, d(2026, 3, 31), d(2026, 1, 1), d(2026, 3, 31)),  # last day of Q1
        (QUARTER, d(2026, 4, 1), d(2026, 4, 1), d(2026, 6, 30)),  # first day of Q2
        (QUARTER, d(2026, 12, 31), d(2026, 10, 1), d(2026, 12, 31)),
        (YEAR, d(2024, 2, 29), d(2024, 1, 1), d(2024, 12, 31)),
    ],
)
def test_the_period_holding_a_date(kind, anchor, start, end):
    period = period_containing(kind, anchor)
    assert (period.date_from, period.date_to) == (start, end)


@pytest.mark.parametrize(
    ("period", "compare", "start", "end"),
    [
        (period_containing(QUARTER, d(2026, 2, 1)), PREVIOUS, d(2025, 10, 1), d(2025, 12, 31)),
        (period_containing(QUARTER, d(2026, 7, 1)), PREVIOUS, d(2026, 4, 1), d(2026, 6, 30)),
        (period_containing(MONTH, d(2024, 3, 31)), PREVIOUS, d(2024, 2, 1), d(2024, 2, 29)),
        (period_containing(DAY, d(2026, 1, 1)), PREVIOUS, d(2025, 12, 31), d(2025, 12, 31)),
        (period_containing(DAY, d(2024, 2, 29)), LAST_YEAR, d(2023, 2, 28), d(2023, 2, 28)),
        (period_containing(MONTH, d(2024, 2, 29)), LAST_YEAR, d(2023, 2, 1), d(2023, 2, 28)),
        (period_containing(MONTH, d(2025, 2, 1)), LAST_YEAR, d(2024, 2, 1), d(2024, 2, 29)),
        (period_containing(QUARTER, d(2026, 5, 5)), LAST_YEAR, d(2025, 4, 1), d(2025, 6, 30)),
        (period_containing(YEAR, d(2026, 5, 5)), PREVIOUS, d(2025, 1, 1), d(2025, 12, 31)),
        (Period(CUSTOM, d(2026, 3, 1), d(2026, 3, 10)), PREVIOUS, d(2026, 2, 19), d(2026, 2, 28)),
        (Period(CUSTOM, d(2024, 2, 29), d(2024, 3, 5)), LAST_YEAR, d(2023, 2, 28), d(2023, 3, 5)),
    ],
)
def test_the_comparison_period(period, compare, start, end):
    other = comparison_period(period, compare)
    assert other is not None and (other.date_from, other.date_to) == (start, end)


def test_no_comparison_and_bad_periods():
    assert comparison_period(MARCH, NO_COMPARISON) is None
    with pytest.raises(ValueError, match="after it ends"):
        Period(CUSTOM, d(2026, 3, 2), d(2026, 3, 1))
    assert period_from_params({**MARCH.params(), "compare": LAST_YEAR}) == (MARCH, LAST_YEAR)
    with pytest.raises(ValueError, match="not a month"):
        period_from_params({"period": MONTH, "date_from": "2025-03-01", "date_to": "2025-03-30"})
    assert period_containing(QUARTER, d(2026, 5, 1)).label == "Q2 2026"
    assert MARCH.slug == "2025-03" and period_containing(QUARTER, d(2026, 5, 1)).slug == "2026-q2"


# --- the ledger the statements are read from ------------------------------------------------------


@pytest.fixture
def books(water: Business, laundry: Business) -> tuple[Business, Business]:
    """February and March 2025 of two businesses, with a loan between them on intercompany accounts."""
    for business, code, name, type_ in [
        (water, "1400", "Due from other businesses", AccountType.ASSET),
        (laundry, "2400", "Due to other businesses", AccountType.LIABILITY),
    ]:
        Account.objects.create(
            business=business, code=code, name=name, type=type_, role=f"ic_{code}", intercompany=True
        )
    post(water, [("bank", "50000.00", 0), ("owner_equity", 0, "50000.00")], day=d(2025, 2, 1), source_type="opening")
    sale(water, "1160.00", day=d(2025, 2, 10))
    post(water, [("expense_rent", "3000.00", 0), ("bank", 0, "3000.00")], day=d(2025, 2, 20), source_type="expense")
    sale(water, "2320.00", day=d(2025, 3, 1))
    post(water, [("cost_of_sales", "900.00", 0), ("inventory", 0, "900.00")], day=d(2025, 3, 10), source_type="stock")
    post(water, [("ic_1400", "5000.00", 0), ("bank", 0, "5000.00")], day=d(2025, 3, 12), source_type="manual")
    sale(water, "580.00", via="mpesa_clearing", day=d(2025, 3, 31), source_type="mpesa")
    sale(water, "116.00", day=d(2025, 4, 1))  # the next month: in no column
    post(laundry, [("cash", "2000.00", 0), ("owner_equity", 0, "2000.00")], day=d(2025, 2, 1), source_type="opening")
    sale(laundry, "232.00", day=d(2025, 2, 28))
    sale(laundry, "464.00", day=d(2025, 3, 1))
    post(laundry, [("bank", "5000.00", 0), ("ic_2400", 0, "5000.00")], day=d(2025, 3, 12), source_type="manual")
    post(laundry, [("expense_wages", "300.00", 0), ("cash", 0, "300.00")], day=d(2025, 3, 15), source_type="expense")
    fire_deferred()  # the seals (the ledger heads in the footer) are written at commit
    return water, laundry


def _lines(ids: list[int] | None, start: dt.date | None, end: dt.date):  # type: ignore[no-untyped-def]
    lines = JournalLine.objects.filter(entry__entry_date__lte=end)
    if start is not None:
        lines = lines.filter(entry__entry_date__gte=start)
    return lines if ids is None else lines.filter(entry__business_id__in=ids)


def _net(ids: list[int] | None, start: dt.date | None, end: dt.date, *types: str) -> Decimal:
    """Debits less credits of the journal lines on accounts of `types` (independent of the daily totals)."""
    sums = _lines(ids, start, end).filter(account__type__in=types).aggregate(dr=Sum("debit"), cr=Sum("credit"))
    return (sums["dr"] or D(0)) - (sums["cr"] or D(0))


def ledger_pnl(ids: list[int] | None, period: Period) -> tuple[Decimal, Decimal, Decimal]:
    income = -_net(ids, period.date_from, period.date_to, AccountType.INCOME)
    expenses = _net(ids, period.date_from, period.date_to, AccountType.EXPENSE)
    return income, expenses, income - expenses


def ledger_balance_sheet(ids: list[int] | None, as_of: dt.date) -> tuple[Decimal, Decimal, Decimal]:
    assets = _net(ids, None, as_of, AccountType.ASSET)
    liabilities = -_net(ids, None, as_of, AccountType.LIABILITY)
    equity = -_net(ids, None, as_of, AccountType.EQUITY, AccountType.INCOME, AccountType.EXPENSE)
    return assets, liabilities, equity


def ledger_trial_balance(ids: list[int] | None, as_of: dt.date) -> tuple[Decimal, Decimal]:
    """Total debit and credit balances, accounts of the same type and name counted as one."""
    groups = (
        _lines(ids, None, as_of)
        .values("account__type", "account__name")
        .annotate(dr=Sum("debit"), cr=Sum("credit"))
        .order_by()
    )
    nets = [g["dr"] - g["cr"] for g in groups]
    return sum((n for n in nets if n > 0), D(0)), -sum((n for n in nets if n < 0), D(0))


def ledger_cash(ids: list[int] | None, as_of: dt.date) -> Decimal:
    cash = Q(account__role__in=["cash", "mpesa_clearing", "bank"])
    sums = _lines(ids, None, as_of).filter(cash).aggregate(dr=Sum("debit"), cr=Sum("credit"))
    return (sums["dr"] or D(0)) - (sums["cr"] or D(0))


# --- the column selectors -------------------------------------------------------------------------


@pytest.mark.django_db
def test_income_statement_columns_match_the_ledger_and_the_one_column_selector(books):
    water, laundry = books
    columns = [
        Column("water", (water.pk,), MARCH.date_to, MARCH.date_from),
        Column("laundry", (laundry.pk,), MARCH.date_to, MARCH.date_from),
        Column("total", None, MARCH.date_to, MARCH.date_from),
        Column("water feb", (water.pk,), FEBRUARY.date_to, FEBRUARY.date_from),
    ]
    s = income_statement_columns(columns=columns)
    for i, (ids, period) in enumerate(
        [([water.pk], MARCH), ([laundry.pk], MARCH), (None, MARCH), ([water.pk], FEBRUARY)]
    ):
        income, expenses, net = ledger_pnl(ids, period)
        assert (s.total_income[i], s.total_expenses[i], s.net_income[i]) == (income, expenses, net)
        old = income_statement(business_ids=ids, date_from=period.date_from, date_to=period.date_to)
        assert (old.total_income, old.net_income) == (income, net)
    assert s.total_income == (D("2500.00"), D("400.00"), D("2900.00"), D("1000.00"))
    # Accounts of different businesses with the same name share a row; different names do not.
    names = [r.name for r in s.income]
    assert names == ["Bottled water sales", "Wash and fold"]


@pytest.mark.django_db
def test_balance_sheet_trial_balance_and_cash_flow_columns(books):
    water, laundry = books
    scopes = [[water.pk], [laundry.pk], None]
    columns = [
        Column(str(i), None if ids is None else tuple(ids), MARCH.date_to, MARCH.date_from)
        for i, ids in enumerate(scopes)
    ]
    sheet = balance_sheet_columns(columns=columns)
    tb = trial_balance_columns(columns=columns)
    flow = cash_flow_columns(columns=columns)
    assert sheet.is_balanced and tb.is_balanced
    for i, ids in enumerate(scopes):
        assets, liabilities, equity = ledger_balance_sheet(ids, MARCH.date_to)
        assert (sheet.total_assets[i], sheet.total_liabilities[i], sheet.total_equity[i]) == (
            assets,
            liabilities,
            equity,
        )
        assert (tb.total_debit[i], tb.total_credit[i]) == ledger_trial_balance(ids, MARCH.date_to)
        assert flow.opening_cash[i] == ledger_cash(ids, FEBRUARY.date_to)
        assert flow.closing_cash[i] == ledger_cash(ids, MARCH.date_to)
        old = cash_flow_statement(business_ids=ids, date_from=MARCH.date_from, date_to=MARCH.date_to)
        assert (old.net_operating, old.net_financing) == (flow.net_operating[i], flow.net_financing[i])
        if ids is not None:
            assert balance_sheet(business_ids=ids, as_of=MARCH.date_to).total_assets == assets
            assert trial_balance(business_ids=ids, as_of=MARCH.date_to).total_debit == tb.total_debit[i]
    marked = {r.name for r in sheet.assets + sheet.liabilities if r.intercompany}
    assert marked == {"Due from other businesses", "Due to other businesses"}


# --- the statements and their PDFs ----------------------------------------------------------------

MONEY = re.compile(r"^-?\d{1,3}(,\d{3})*\.\d\d$")


def pdf_text(pdf: bytes) -> list[str]:
    lines: list[str] = []
    for page in PdfReader(io.BytesIO(pdf)).pages:
        lines += [line.strip() for line in page.extract_text().splitlines()]
    return lines


def figures(lines: list[str], label: str, occurrence: int = 0) -> list[Decimal]:
    """The figures printed after the row labelled `label` (its `occurrence`-th, 0 first)."""
    starts = [i for i, line in enumerate(lines[:-1]) if line == label and MONEY.match(lines[i + 1])]
    assert len(starts) > occurrence, f"{label!r} not in the PDF"
    out = []
    for line in lines[starts[occurrence] + 1 :]:
        if not MONEY.match(line):
            break
        out.append(D(line.replace(",", "")))
    return out


def render(
    report: str, ids: list[int] | None, period: Period = MARCH, compare: str = PREVIOUS
) -> tuple[list[str], Statement]:
    out = io.BytesIO()
    statement = statement_pdf_render(
        out, report=report, business_ids=ids, period=period, compare=compare, generated_by="Wanjiru"
    )
    return pdf_text(out.getvalue()), statement


@pytest.mark.django_db
def test_consolidated_profit_and_loss_pdf_columns_are_the_businesses_and_the_total(books):
    water, laundry = books
    text, statement = render("profit_and_loss", None)
    laundry_pnl, water_pnl, total_pnl = (ledger_pnl(ids, MARCH) for ids in ([laundry.pk], [water.pk], None))
    feb_total = ledger_pnl(None, FEBRUARY)
    assert text.index("Fresh Fold Laundry") < text.index("Maji Safi Water") < text.index("Total")
    for row, n in [("Total income", 0), ("Total expenses", 1), ("Net profit (loss)", 2)]:
        # Side by side: laundry, water, total; then the total against February's, and the change.
        assert figures(text, row, 0) == [laundry_pnl[n], water_pnl[n], total_pnl[n]]
        assert figures(text, row, 1) == [total_pnl[n], feb_total[n], total_pnl[n] - feb_total[n]]
    table = statement.tables[0]
    assert table.columns == ("Fresh Fold Laundry", "Maji Safi Water", "Total")
    net = next(line for line in table.lines if line.key == "net_income")
    assert net.amounts == (laundry_pnl[2], water_pnl[2], total_pnl[2])
    assert "Generated at" in "\n".join(text) and "by Wanjiru" in "\n".join(text)
    assert any(line.startswith("Ledger heads: ") for line in text)
    assert "Mar 2025: 1 Mar 2025 to 31 Mar 2025 (compared with Feb 2025)" in text


@pytest.mark.django_db
def test_per_business_pdfs_compare_with_the_previous_period(books):
    water, _ = books
    text, _ = render("profit_and_loss", [water.pk])
    march, february = ledger_pnl([water.pk], MARCH), ledger_pnl([water.pk], FEBRUARY)
    for row, n in [("Total income", 0), ("Total expenses", 1), ("Net profit (loss)", 2)]:
        assert figures(text, row) == [march[n], february[n], march[n] - february[n]]
    assert "4010  Bottled water sales" in text  # one business: with its codes

    text, _ = render("balance_sheet", [water.pk])
    now, before = ledger_balance_sheet([water.pk], MARCH.date_to), ledger_balance_sheet([water.pk], FEBRUARY.date_to)
    for row, n in [("Total assets", 0), ("Total liabilities", 1), ("Total equity", 2)]:
        assert figures(text, row) == [now[n], before[n], now[n] - before[n]]
    assert figures(text, "Total liabilities and equity")[:2] == [now[1] + now[2], before[1] + before[2]]
    assert "Balance check: assets = liabilities + equity" in text
    assert "As of 31 Mar 2025 (end of Mar 2025), compared with 28 Feb 2025" in text

    text, _ = render("trial_balance", [water.pk], compare=LAST_YEAR)
    debit, credit = ledger_trial_balance([water.pk], MARCH.date_to)
    assert figures(text, "Total") == [debit, credit, D("0.00"), D("0.00")]  # March 2024: nothing yet
    assert "Debits = credits" in text

    text, _ = render("cash_flow", [water.pk])
    assert figures(text, "Opening cash") == [
        ledger_cash([water.pk], FEBRUARY.date_to),
        D("0.00"),
        ledger_cash([water.pk], FEBRUARY.date_to),
    ]
    assert figures(text, "Closing cash")[:2] == [
        ledger_cash([water.pk], MARCH.date_to),
        ledger_cash([water.pk], FEBRUARY.date_to),
    ]


@pytest.mark.django_db
def test_consolidated_balance_sheet_trial_balance_and_cash_flow_pdfs(books):
    water, laundry = books
    order = ([laundry.pk], [water.pk], None)
    text, statement = render("balance_sheet", None)
    sheets = [ledger_balance_sheet(ids, MARCH.date_to) for ids in order]
    assert figures(text, "Total assets") == [s[0] for s in sheets]
    assert figures(text, "Total liabilities") == [s[1] for s in sheets]
    assert figures(text, "Total equity") == [s[2] for s in sheets]
    # Intercompany accounts are marked, and the note under the table says what that means.
    assert "Due from other businesses *" in text and "Due to other businesses *" in text
    assert INTERCOMPANY_NOTE.split(":")[0] in "\n".join(text)
    assert statement.tables[0].notes == (INTERCOMPANY_NOTE,)

    text, _ = render("trial_balance", None, compare=NO_COMPARISON)
    totals = figures(text, "Total")
    expected = [x for ids in order for x in ledger_trial_balance(ids, MARCH.date_to)]
    assert totals == expected and totals[0::2] == totals[1::2]
    assert "Debits = credits" in text

    text, _ = render("cash_flow", None)
    assert figures(text, "Closing cash", 0) == [ledger_cash(ids, MARCH.date_to) for ids in order]


@pytest.mark.django_db
def test_wide_statements_print_landscape(books):
    out = io.BytesIO()
    statement_pdf_render(
        out, report="trial_balance", business_ids=None, period=MARCH, compare=PREVIOUS, generated_by="x"
    )
    page = PdfReader(io.BytesIO(out.getvalue())).pages[0]
    assert page.mediabox.width > page.mediabox.height  # 6 figure columns
    out = io.BytesIO()
    statement_pdf_render(
        out, report="profit_and_loss", business_ids=[books[0].pk], period=MARCH, compare=PREVIOUS, generated_by="x"
    )
    page = PdfReader(io.BytesIO(out.getvalue())).pages[0]
    assert page.mediabox.width < page.mediabox.height


def test_a_failed_check_prints_not_balanced():
    statement = Statement(
        report="trial_balance",
        business_ids=[1],
        business_label="Maji",
        period=MARCH,
        comparison=None,
        tables=[StatementTable(columns=("Debit", "Credit"), lines=[])],
        checks=[("Debits = credits", False)],
    )
    from accounts.pdf import PdfHeader, pdf_render

    out = io.BytesIO()
    pdf_render(out, PdfHeader("Trial balance", "Maji", "x", "y"), statement_story(statement, width=500))
    assert "NOT BALANCED" in "\n".join(pdf_text(out.getvalue()))


@pytest.mark.django_db
def test_statement_build_has_no_comparison_table_when_not_compared(books):
    statement = statement_build(
        report="profit_and_loss", business_ids=None, business_label="All", period=MARCH, compare=NO_COMPARISON
    )
    assert len(statement.tables) == 1 and statement.comparison is None
    assert statement_filename(report="profit_and_loss", business_label="Maji Safi", period=MARCH) == (
        "profit-and-loss-maji-safi-2025-03.pdf"
    )

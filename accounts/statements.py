"""The four statements laid out for reading: tables of labelled rows and figure columns.

`statement_build` reads one column selector (accounts.selectors) and lays its figures out the way
the report page and the PDF both show them, so the two can never disagree:

- one business: the period and the comparison period side by side, and the change (P&L, balance
  sheet, cash flow); the trial balance as debit/credit pairs as of each period's end;
- all businesses: a column per business and a Total column, then (when compared) a second table
  with the Total of the period beside the Total of the comparison period.

Rows are accounts grouped by type and name; intercompany accounts are marked and explained in a
note under the table.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from decimal import Decimal
from typing import Any

from django.utils.text import slugify

from accounts import selectors
from accounts.fields import ZERO
from accounts.models import AccountType
from accounts.periods import CUSTOM, Period, comparison_period, day_text
from accounts.selectors import Column, StatementRow
from tenancy.models import Business

SECTION, LINE, SUBTOTAL, TOTAL, NOTE_ROW = "section", "line", "subtotal", "total", "note"

REPORT_TITLES = {
    "trial_balance": "Trial balance",
    "profit_and_loss": "Profit and loss",
    "balance_sheet": "Balance sheet",
    "cash_flow": "Cash flow",
}
PLURALS = {"asset": "Assets", "liability": "Liabilities", "equity": "Equity", "income": "Income", "expense": "Expenses"}
# Statements of a moment (as of a period's end) rather than of a period.
AS_OF_REPORTS = ("trial_balance", "balance_sheet")

INTERCOMPANY_NOTE = (
    "* Intercompany account: a balance with another of the owner's businesses. It is not eliminated: "
    "the Total column adds both businesses' sides as recorded."
)


@dataclass(frozen=True)
class Line:
    """One row: its kind (section, line, subtotal, total, note), label, account code and figures.

    `key` names the row's figures for the page (data-total) and the tests; `alert` marks a failed
    check (shown in red). None in `amounts` is an empty cell.
    """

    kind: str
    label: str
    amounts: tuple[Decimal | None, ...] = ()
    code: str = ""
    marked: bool = False
    key: str = ""
    alert: bool = False
    cell_keys: tuple[str, ...] = ()  # a name per cell; by default `key` for the first, "key-N" for cell N

    @property
    def cells(self) -> list[tuple[Decimal | None, str]]:
        """(amount, name) per cell; the name is "" for a row without a key."""
        if self.cell_keys:
            return list(zip(self.amounts, self.cell_keys, strict=True))
        if not self.key:
            return [(a, "") for a in self.amounts]
        return [(a, self.key if i == 0 else f"{self.key}-{i}") for i, a in enumerate(self.amounts)]


@dataclass(frozen=True)
class StatementTable:
    columns: tuple[str, ...]  # figure column headers
    lines: list[Line]
    groups: tuple[tuple[str, int], ...] = ()  # headers spanning figure columns (trial balance: Dr/Cr pairs)
    title: str = ""
    notes: tuple[str, ...] = ()

    @property
    def width(self) -> int:
        return len(self.columns)


@dataclass(frozen=True)
class Statement:
    report: str
    business_ids: list[int] | None
    business_label: str
    period: Period
    comparison: Period | None
    tables: list[StatementTable]
    checks: list[tuple[str, bool]] = field(default_factory=list)  # ("Debits = credits", ok)

    @property
    def title(self) -> str:
        return REPORT_TITLES[self.report]

    @property
    def consolidated(self) -> bool:
        return self.business_ids is None

    @property
    def figure_columns(self) -> int:
        return max((t.width for t in self.tables), default=0)

    @property
    def period_text(self) -> str:
        """ "Jan 2026: 1 Jan 2026 to 31 Jan 2026 (compared with Dec 2025)" or "As of 31 Jan 2026 (...)"."""
        if self.report in AS_OF_REPORTS:
            text = f"As of {day_text(self.period.date_to)} (end of {self.period.label})"
            if self.comparison:
                text += f", compared with {day_text(self.comparison.date_to)}"
            return text
        text = self.period.dates if self.period.kind == CUSTOM else f"{self.period.label}: {self.period.dates}"
        if self.comparison:
            other = self.comparison
            text += f" (compared with {other.dates if other.kind == CUSTOM else other.label})"
        return text


def _change(amounts: tuple[Decimal, ...]) -> tuple[Decimal, ...]:
    """`amounts` and, for two periods, the change from the second to the first."""
    return (*amounts, amounts[0] - amounts[1]) if len(amounts) == 2 else amounts


@dataclass(frozen=True)
class _Layout:
    """Columns to read and how to show them: with a change column (two periods) or not (businesses)."""

    columns: tuple[Column, ...]
    headers: tuple[str, ...]
    with_change: bool
    one_business: bool
    title: str = ""


def _layouts(report: str, business_ids: list[int] | None, period: Period, comparison: Period | None) -> list[_Layout]:
    as_of = report in AS_OF_REPORTS

    def column(label: str, ids: tuple[int, ...] | None, p: Period) -> Column:
        return Column(label, ids, p.date_to, None if as_of else p.date_from)

    def period_header(p: Period) -> str:
        return day_text(p.date_to) if as_of else p.label

    layouts = []
    if business_ids is None:
        businesses = list(Business.objects.order_by("name").values_list("pk", "name"))
        columns = [column(name, (pk,), period) for pk, name in businesses] + [column("Total", None, period)]
        layouts.append(_Layout(tuple(columns), tuple(c.label for c in columns), False, False))
        scope: tuple[int, ...] | None = None
    else:
        scope = tuple(business_ids)
    if comparison is None:
        if business_ids is not None:
            layouts.append(_Layout((column(period.label, scope, period),), (period_header(period),), False, True))
        return layouts
    pair = (column(period.label, scope, period), column(comparison.label, scope, comparison))
    with_change = report != "trial_balance"
    headers = (period_header(period), period_header(comparison)) + (("Change",) if with_change else ())
    title = f"All businesses together: {headers[0]} compared with {headers[1]}" if business_ids is None else ""
    layouts.append(_Layout(pair, headers, with_change, business_ids is not None, title))
    return layouts


def _rows(rows: Sequence[StatementRow], attr: str, layout: _Layout) -> list[Line]:
    """Account rows: a zero is an empty cell (the account may not exist in that business); codes only
    for one business (across businesses the same name may have different codes)."""
    lines = []
    for row in rows:
        amounts: tuple[Decimal, ...] = getattr(row, attr)
        figures = _change(amounts) if layout.with_change else amounts
        lines.append(
            Line(
                LINE,
                row.name,
                tuple(a or None for a in figures),
                code=row.code if layout.one_business else "",
                marked=row.intercompany,
            )
        )
    return lines


def _figures(amounts: tuple[Decimal, ...], with_change: bool) -> tuple[Decimal, ...]:
    return _change(amounts) if with_change else amounts


def _profit_and_loss(layout: _Layout) -> tuple[list[Line], bool, list[tuple[str, bool]]]:
    s = selectors.income_statement_columns(columns=layout.columns)
    w = layout.with_change
    lines = [Line(SECTION, "Income"), *_rows(s.income, "balances", layout)]
    lines.append(Line(SUBTOTAL, "Total income", _figures(s.total_income, w), key="total_income"))
    lines += [Line(SECTION, "Expenses"), *_rows(s.expenses, "balances", layout)]
    lines.append(Line(SUBTOTAL, "Total expenses", _figures(s.total_expenses, w), key="total_expenses"))
    lines.append(Line(TOTAL, "Net profit (loss)", _figures(s.net_income, w), key="net_income"))
    marked = any(r.intercompany for r in s.income + s.expenses)
    return lines, marked, []


def _balance_sheet(layout: _Layout) -> tuple[list[Line], bool, list[tuple[str, bool]]]:
    s = selectors.balance_sheet_columns(columns=layout.columns)
    w = layout.with_change
    lines = [Line(SECTION, "Assets"), *_rows(s.assets, "balances", layout)]
    lines.append(Line(SUBTOTAL, "Total assets", _figures(s.total_assets, w), key="assets"))
    lines += [Line(SECTION, "Liabilities"), *_rows(s.liabilities, "balances", layout)]
    lines.append(Line(SUBTOTAL, "Total liabilities", _figures(s.total_liabilities, w), key="liabilities"))
    lines += [Line(SECTION, "Equity"), *_rows(s.equity, "balances", layout)]
    lines.append(
        Line(
            LINE,
            "Current earnings (not yet closed)",
            _figures(s.current_earnings, w),
            key="current_earnings",
        )
    )
    lines.append(Line(SUBTOTAL, "Total equity", _figures(s.total_equity, w), key="equity"))
    lines.append(
        Line(
            TOTAL,
            "Total liabilities and equity",
            _figures(s.total_liabilities_and_equity, w),
            key="liabilities_and_equity",
        )
    )
    lines.append(
        Line(
            NOTE_ROW,
            "Check: assets less liabilities and equity",
            _figures(s.difference, w),
            key="difference",
            alert=not s.is_balanced,
        )
    )
    marked = any(r.intercompany for r in s.assets + s.liabilities + s.equity)
    check = ("Balance check: assets = liabilities + equity", s.is_balanced)
    return lines, marked, [check]


def _trial_balance(layout: _Layout) -> tuple[list[Line], bool, list[tuple[str, bool]]]:
    s = selectors.trial_balance_columns(columns=layout.columns)
    lines = []
    for type_, label in AccountType.choices:
        rows = [r for r in s.rows if r.type == type_]
        if not rows:
            continue
        lines.append(Line(SECTION, PLURALS.get(type_, label)))
        for row in rows:
            pairs: list[Decimal | None] = []
            for debit, credit in zip(row.debit_balances, row.credit_balances, strict=True):
                pairs += [debit or None, credit or None]
            code = row.code if layout.one_business else ""
            lines.append(Line(LINE, row.name, tuple(pairs), code=code, marked=row.intercompany))
        subtotal: list[Decimal | None] = []
        for i in range(len(layout.columns)):
            subtotal += [
                sum((r.debit_balances[i] for r in rows), ZERO),
                sum((r.credit_balances[i] for r in rows), ZERO),
            ]
        lines.append(Line(SUBTOTAL, f"Total {PLURALS.get(type_, label).lower()}", tuple(subtotal)))
    totals: list[Decimal | None] = []
    for debit, credit in zip(s.total_debit, s.total_credit, strict=True):
        totals += [debit, credit]
    keys = tuple(
        k for i in range(len(layout.columns)) for k in ((f"debit-{i}", f"credit-{i}") if i else ("debit", "credit"))
    )
    lines.append(Line(TOTAL, "Total", tuple(totals), key="debit", cell_keys=keys))
    differences: list[Decimal | None] = []
    for debit, credit in zip(s.total_debit, s.total_credit, strict=True):
        differences += [debit - credit, None]
    lines.append(
        Line(NOTE_ROW, "Check: debits less credits", tuple(differences), key="difference", alert=not s.is_balanced)
    )
    check = ("Debits = credits", s.is_balanced)
    return lines, any(r.intercompany for r in s.rows), [check]


def _cash_flow(layout: _Layout) -> tuple[list[Line], bool, list[tuple[str, bool]]]:
    s = selectors.cash_flow_columns(columns=layout.columns)
    w = layout.with_change
    lines = [Line(SUBTOTAL, "Opening cash", _figures(s.opening_cash, w), key="opening")]
    lines += [Line(SECTION, "Operating activities"), *_rows(s.operating, "nets", layout)]
    lines.append(Line(SUBTOTAL, "Net cash from operating activities", _figures(s.net_operating, w), key="operating"))
    lines += [Line(SECTION, "Financing activities (owner)"), *_rows(s.financing, "nets", layout)]
    lines.append(Line(SUBTOTAL, "Net cash from financing activities", _figures(s.net_financing, w), key="financing"))
    lines.append(Line(TOTAL, "Net change in cash", _figures(s.net_change, w), key="net_change"))
    lines.append(Line(TOTAL, "Closing cash", _figures(s.closing_cash, w), key="closing"))
    return lines, any(r.intercompany for r in s.operating + s.financing), []


BUILDERS = {
    "profit_and_loss": _profit_and_loss,
    "balance_sheet": _balance_sheet,
    "trial_balance": _trial_balance,
    "cash_flow": _cash_flow,
}


def statement_build(
    *, report: str, business_ids: Sequence[int] | None, business_label: str, period: Period, compare: str
) -> Statement:
    """The statement `report` of the businesses (None: all, side by side) for `period`, compared as asked."""
    if report not in BUILDERS:
        raise ValueError(f"unknown report {report!r}")
    ids = list(business_ids) if business_ids is not None else None
    comparison = comparison_period(period, compare)
    tables, checks = [], []
    for layout in _layouts(report, ids, period, comparison):
        lines, marked, table_checks = BUILDERS[report](layout)
        headers = layout.headers
        groups: tuple[tuple[str, int], ...] = ()
        if report == "trial_balance":
            groups = tuple((h, 2) for h in headers)
            headers = tuple(x for _ in layout.headers for x in ("Debit", "Credit"))
        tables.append(
            StatementTable(
                columns=headers,
                lines=lines,
                groups=groups,
                title=layout.title,
                notes=(INTERCOMPANY_NOTE,) if marked else (),
            )
        )
        for check in table_checks:
            if check not in checks:
                checks.append(check)
    # One line per check: failed anywhere is failed.
    merged: dict[str, bool] = {}
    for label, ok in checks:
        merged[label] = merged.get(label, True) and ok
    return Statement(
        report=report,
        business_ids=ids,
        business_label=business_label,
        period=period,
        comparison=comparison,
        tables=tables,
        checks=list(merged.items()),
    )


# The statement PDF job's names (the job kind itself, with ReportLab, is accounts/reports.py's): here,
# so that the report pages and the admin can launch it without loading ReportLab.
STATEMENT_PDF = "accounts.statement_pdf"
ALL_BUSINESSES = "all"
CONSOLIDATED_LABEL = "All businesses (consolidated)"


def statement_filename(*, report: str, business_label: str, period: Period) -> str:
    """ "profit-and-loss-maji-safi-water-2026-01.pdf"."""
    return f"{slugify(REPORT_TITLES[report])}-{slugify(business_label)}-{period.slug}.pdf"


def statement_params(*, report: str, business: str, period: Period, compare: str) -> dict[str, Any]:
    """The parameters of a statement PDF job (`business`: an id as text, or "all")."""
    return {"report": report, "business": business, **period.params(), "compare": compare}

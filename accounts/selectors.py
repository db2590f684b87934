"""The ledger's reads: balances, statements and takings, aggregated in SQL.

Balances and statements read the daily account totals (AccountDayTotal) that PostgreSQL keeps on
every line insert, so they cost the same with 4,000 lines or 4 million. Each selector runs one or
two queries. `business_ids=None` means every business (consolidated); accounts of different
businesses are added together when they have the same type, code and name. The statements in
columns (`*_columns`, below) put periods or businesses side by side and group by type and name.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Sequence
from dataclasses import dataclass, field
from decimal import Decimal
from typing import Any

from django.db import connection

from accounts.exceptions import InvalidAccount
from accounts.fields import ZERO
from accounts.models import DEBIT_NORMAL, Account, AccountType, Books, SourceType
from tenancy.models import Business

CASH_ROLES = ("cash", "mpesa_clearing", "bank")
TAKINGS_ROLES = ("cash", "mpesa_clearing")
TAKINGS_SOURCES = (SourceType.SALE.value, SourceType.MPESA.value, SourceType.PAYMENT.value)


def account_for_role(*, business: Business | int, role: str) -> Account:
    """The business's account with this role ("cash", "mpesa_clearing", ...); InvalidAccount if none."""
    business_id = business if isinstance(business, int) else business.pk
    try:
        return Account.objects.get(business_id=business_id, role=role)
    except Account.DoesNotExist:
        raise InvalidAccount(f"business {business_id} has no account with role {role!r}") from None


def books_lock_date(*, business_id: int) -> dt.date | None:
    """The last day of the business's closed period (nothing may be posted on or before it); None if never closed."""
    return Books.objects.filter(business_id=business_id).values_list("lock_date", flat=True).first()


def books_first_open_date(*, business_id: int, wanted: dt.date) -> dt.date:
    """`wanted` unless the books are closed on it; then the first open day."""
    lock_date = books_lock_date(business_id=business_id)
    if lock_date is not None and wanted <= lock_date:
        return lock_date + dt.timedelta(days=1)
    return wanted


def _fetch(sql: str, params: Sequence[Any] | dict[str, Any]) -> list[tuple[Any, ...]]:
    with connection.cursor() as cursor:
        cursor.execute(sql, params)
        return list(cursor.fetchall())


def _scope(business_ids: Sequence[int] | None) -> dict[str, Any]:
    """Parameters of the "(%(all)s OR business_id = ANY(%(ids)s))" filter every query has."""
    return {"all": business_ids is None, "ids": list(business_ids or [])}


@dataclass(frozen=True)
class AccountTotal:
    """The debits and credits of one account (or of same-named accounts, consolidated)."""

    type: str
    code: str
    name: str
    debit: Decimal
    credit: Decimal

    @property
    def balance(self) -> Decimal:
        """Signed the account's natural way: positive for a debit asset or a credit income."""
        net = self.debit - self.credit
        return net if self.type in DEBIT_NORMAL else -net

    @property
    def debit_balance(self) -> Decimal:
        return max(self.debit - self.credit, ZERO)

    @property
    def credit_balance(self) -> Decimal:
        return max(self.credit - self.debit, ZERO)


_ACCOUNT_TOTALS_SQL = """
SELECT a.type, a.code, a.name, sum(t.debit), sum(t.credit)
  FROM accounts_accountdaytotal t JOIN accounts_account a ON a.id = t.account_id
 WHERE t.day <= %(date_to)s AND (%(date_from)s::date IS NULL OR t.day >= %(date_from)s)
   AND (%(types)s::text[] IS NULL OR a.type = ANY(%(types)s))
   AND (%(all)s OR t.business_id = ANY(%(ids)s))
 GROUP BY a.type, a.code, a.name
 ORDER BY a.code, a.name
"""


def _account_totals(
    *, business_ids: Sequence[int] | None, date_from: dt.date | None, date_to: dt.date, types: Sequence[str] | None
) -> list[AccountTotal]:
    params = {
        "date_to": date_to,
        "date_from": date_from,
        "types": list(types) if types is not None else None,
        **_scope(business_ids),
    }
    rows = _fetch(_ACCOUNT_TOTALS_SQL, params)
    return [AccountTotal(type=r[0], code=r[1], name=r[2], debit=r[3], credit=r[4]) for r in rows]


def account_balance(*, account: Account, as_of: dt.date) -> Decimal:
    """Debits minus credits posted to `account` on or before `as_of`."""
    rows = _fetch(
        "SELECT coalesce(sum(debit), 0) - coalesce(sum(credit), 0) FROM accounts_accountdaytotal"
        " WHERE account_id = %s AND day <= %s",
        [account.pk, as_of],
    )
    return Decimal(rows[0][0]).quantize(Decimal("0.01"))


@dataclass(frozen=True)
class TrialBalance:
    as_of: dt.date
    rows: list[AccountTotal]

    @property
    def total_debit(self) -> Decimal:
        return sum((r.debit_balance for r in self.rows), ZERO)

    @property
    def total_credit(self) -> Decimal:
        return sum((r.credit_balance for r in self.rows), ZERO)

    @property
    def is_balanced(self) -> bool:
        return self.total_debit == self.total_credit


def trial_balance(*, business_ids: Sequence[int] | None, as_of: dt.date) -> TrialBalance:
    """Every account's debit or credit balance on `as_of`; the two columns total the same."""
    rows = _account_totals(business_ids=business_ids, date_from=None, date_to=as_of, types=None)
    return TrialBalance(as_of=as_of, rows=[r for r in rows if r.debit != r.credit])


@dataclass(frozen=True)
class IncomeStatement:
    date_from: dt.date
    date_to: dt.date
    income: list[AccountTotal]
    expenses: list[AccountTotal]

    @property
    def total_income(self) -> Decimal:
        return sum((r.balance for r in self.income), ZERO)

    @property
    def total_expenses(self) -> Decimal:
        return sum((r.balance for r in self.expenses), ZERO)

    @property
    def net_income(self) -> Decimal:
        return self.total_income - self.total_expenses


def income_statement(*, business_ids: Sequence[int] | None, date_from: dt.date, date_to: dt.date) -> IncomeStatement:
    """Income and expenses of the entries dated from `date_from` to `date_to` inclusive (P&L)."""
    rows = _account_totals(
        business_ids=business_ids,
        date_from=date_from,
        date_to=date_to,
        types=[AccountType.INCOME, AccountType.EXPENSE],
    )
    return IncomeStatement(
        date_from=date_from,
        date_to=date_to,
        income=[r for r in rows if r.type == AccountType.INCOME and r.debit != r.credit],
        expenses=[r for r in rows if r.type == AccountType.EXPENSE and r.debit != r.credit],
    )


@dataclass(frozen=True)
class BalanceSheet:
    as_of: dt.date
    assets: list[AccountTotal]
    liabilities: list[AccountTotal]
    equity: list[AccountTotal]
    # Income minus expenses of all time up to `as_of` not yet closed to retained earnings.
    current_earnings: Decimal

    @property
    def total_assets(self) -> Decimal:
        return sum((r.balance for r in self.assets), ZERO)

    @property
    def total_liabilities(self) -> Decimal:
        return sum((r.balance for r in self.liabilities), ZERO)

    @property
    def total_equity(self) -> Decimal:
        return sum((r.balance for r in self.equity), ZERO) + self.current_earnings

    @property
    def total_liabilities_and_equity(self) -> Decimal:
        return self.total_liabilities + self.total_equity

    @property
    def is_balanced(self) -> bool:
        return self.total_assets == self.total_liabilities_and_equity


def balance_sheet(*, business_ids: Sequence[int] | None, as_of: dt.date) -> BalanceSheet:
    """Assets, liabilities and equity on `as_of`; assets = liabilities + equity (with current earnings)."""
    rows = _account_totals(business_ids=business_ids, date_from=None, date_to=as_of, types=None)
    by_type: dict[str, list[AccountTotal]] = {t: [] for t in AccountType.values}
    for row in rows:
        by_type[row.type].append(row)
    earnings = sum((r.balance for r in by_type[AccountType.INCOME]), ZERO) - sum(
        (r.balance for r in by_type[AccountType.EXPENSE]), ZERO
    )
    return BalanceSheet(
        as_of=as_of,
        assets=[r for r in by_type[AccountType.ASSET] if r.debit != r.credit],
        liabilities=[r for r in by_type[AccountType.LIABILITY] if r.debit != r.credit],
        equity=[r for r in by_type[AccountType.EQUITY] if r.debit != r.credit],
        current_earnings=earnings,
    )


@dataclass(frozen=True)
class CashFlowLine:
    type: str
    code: str
    name: str
    inflow: Decimal
    outflow: Decimal

    @property
    def net(self) -> Decimal:
        return self.inflow - self.outflow


@dataclass(frozen=True)
class CashFlowStatement:
    """Direct method: the cash and M-Pesa (and bank) movements of the period, by counter account."""

    date_from: dt.date
    date_to: dt.date
    opening_cash: Decimal
    operating: list[CashFlowLine] = field(default_factory=list)
    financing: list[CashFlowLine] = field(default_factory=list)

    @property
    def net_operating(self) -> Decimal:
        return sum((r.net for r in self.operating), ZERO)

    @property
    def net_financing(self) -> Decimal:
        return sum((r.net for r in self.financing), ZERO)

    @property
    def net_change(self) -> Decimal:
        return self.net_operating + self.net_financing

    @property
    def closing_cash(self) -> Decimal:
        return self.opening_cash + self.net_change


_CASH_FLOW_SQL = """
WITH cash_entries AS (
  SELECT DISTINCT l.entry_id
    FROM accounts_journalline l
    JOIN accounts_journalentry e ON e.id = l.entry_id
    JOIN accounts_account a ON a.id = l.account_id
   WHERE e.entry_date BETWEEN %(date_from)s AND %(date_to)s AND a.role = ANY(%(cash_roles)s)
     AND (%(all)s OR e.business_id = ANY(%(ids)s))
)
SELECT a.type, a.code, a.name, sum(l.credit), sum(l.debit)
  FROM accounts_journalline l
  JOIN cash_entries c ON c.entry_id = l.entry_id
  JOIN accounts_account a ON a.id = l.account_id
 WHERE a.role <> ALL(%(cash_roles)s)
 GROUP BY a.type, a.code, a.name
 ORDER BY a.code, a.name
"""

# Cash on `as_of` (inclusive) or before `before` (exclusive): one of the two is set.
_CASH_SQL = """
SELECT coalesce(sum(t.debit - t.credit), 0)
  FROM accounts_accountdaytotal t JOIN accounts_account a ON a.id = t.account_id
 WHERE (t.day <= %(as_of)s OR t.day < %(before)s) AND a.role = ANY(%(cash_roles)s)
   AND (%(all)s OR t.business_id = ANY(%(ids)s))
"""


def cash_flow_statement(
    *, business_ids: Sequence[int] | None, date_from: dt.date, date_to: dt.date
) -> CashFlowStatement:
    """Cash received and paid from `date_from` to `date_to`, attributed to the other side of each entry.

    Cash accounts are those with the roles cash, mpesa_clearing and bank; moves between them net to
    nothing. For every entry touching a cash account, each non-cash line is a cash inflow (credit)
    or outflow (debit). Equity lines (owner's money in or out) are financing; the rest operating.
    """
    params = {"date_from": date_from, "date_to": date_to, "cash_roles": list(CASH_ROLES), **_scope(business_ids)}
    rows = _fetch(_CASH_FLOW_SQL, params)
    opening = _fetch(_CASH_SQL, {**params, "before": date_from, "as_of": None})[0][0]
    statement = CashFlowStatement(date_from=date_from, date_to=date_to, opening_cash=Decimal(opening))
    for type_, code, name, inflow, outflow in rows:
        line = CashFlowLine(type=type_, code=code, name=name, inflow=inflow, outflow=outflow)
        (statement.financing if type_ == AccountType.EQUITY else statement.operating).append(line)
    return statement


def cash_balance(*, business_ids: Sequence[int] | None, as_of: dt.date) -> Decimal:
    """Cash, M-Pesa and bank together on `as_of`."""
    params = {"as_of": as_of, "before": None, "cash_roles": list(CASH_ROLES), **_scope(business_ids)}
    return Decimal(_fetch(_CASH_SQL, params)[0][0])


@dataclass(frozen=True)
class Takings:
    """Money received in a business day into the cash drawer and the M-Pesa till."""

    cash: Decimal = ZERO
    mpesa: Decimal = ZERO
    total: Decimal = ZERO

    def __add__(self, other: Takings) -> Takings:
        return Takings(cash=self.cash + other.cash, mpesa=self.mpesa + other.mpesa, total=self.total + other.total)


_TAKINGS_SQL = """
SELECT e.business_id, e.entry_date, a.role, sum(l.debit) - sum(l.credit)
  FROM accounts_journalentry e
  JOIN accounts_journalline l ON l.entry_id = e.id
  JOIN accounts_account a ON a.id = l.account_id
  LEFT JOIN accounts_journalentry o ON o.id = e.reverses_id
 WHERE e.business_id = ANY(%(ids)s) AND e.entry_date BETWEEN %(date_from)s AND %(date_to)s
   AND a.role = ANY(%(roles)s)
   AND (e.source_type = ANY(%(sources)s) OR (e.source_type = 'reversal' AND o.source_type = ANY(%(sources)s)))
 GROUP BY e.business_id, e.entry_date, a.role
"""


def takings_by_day(
    *, business_ids: Sequence[int], date_from: dt.date, date_to: dt.date
) -> dict[tuple[int, dt.date], Takings]:
    """Per (business, day) from `date_from` to `date_to`: the takings, as `takings_by_business` counts them.

    One query over the journal lines of those days (the daily totals cannot tell a sale's cash from
    an owner's deposit). Only days with takings are in the result: a missing key is Takings().
    """
    if not business_ids:
        return {}
    params = {
        "ids": list(business_ids),
        "date_from": date_from,
        "date_to": date_to,
        "roles": list(TAKINGS_ROLES),
        "sources": list(TAKINGS_SOURCES),
    }
    amounts: dict[tuple[int, dt.date], dict[str, Decimal]] = {}
    for business_id, day, role, amount in _fetch(_TAKINGS_SQL, params):
        amounts.setdefault((business_id, day), {})[role] = Decimal(amount)
    result = {}
    for key, by_role in amounts.items():
        cash, mpesa = by_role.get("cash", ZERO), by_role.get("mpesa_clearing", ZERO)
        result[key] = Takings(cash=cash, mpesa=mpesa, total=cash + mpesa)
    return result


def takings_by_business(*, business_ids: list[int], day: dt.date) -> dict[int, Takings]:
    """Per business: the day's sales and payments received into cash and the M-Pesa till.

    For entries dated `day` whose source is a sale, an M-Pesa receipt or a payment - or which
    reverse such an entry, so a reversed sale nets out - the sum of debits minus credits on the
    accounts with roles "cash" and "mpesa_clearing". Every requested id is in the result.
    Read from the lines, so postings made earlier in the caller's transaction count (closing needs it).
    """
    by_day = takings_by_day(business_ids=business_ids, date_from=day, date_to=day)
    return {b: by_day.get((b, day), Takings()) for b in business_ids}


# Roles whose expense is the cost of what was sold (gross profit = income - these); every other
# expense account is an operating expense.
COST_OF_SALES_ROLES = ("cost_of_sales", "stock_variance")


@dataclass(frozen=True)
class Trading:
    """What a business earned and spent in a day (or a period), from its income and expense accounts.

    `income` is every income account (sales net of VAT), `cost_of_sales` the accounts with the roles
    in COST_OF_SALES_ROLES, `expenses` every other expense account (rent, wages, M-Pesa charges,
    cash over and short...). Each is signed the natural way: a reversal brings it down.
    """

    income: Decimal = ZERO
    cost_of_sales: Decimal = ZERO
    expenses: Decimal = ZERO

    @property
    def gross_profit(self) -> Decimal:
        return self.income - self.cost_of_sales

    @property
    def net_profit(self) -> Decimal:
        return self.gross_profit - self.expenses

    def __add__(self, other: Trading) -> Trading:
        return Trading(
            income=self.income + other.income,
            cost_of_sales=self.cost_of_sales + other.cost_of_sales,
            expenses=self.expenses + other.expenses,
        )


_TRADING_SQL = """
SELECT t.business_id, t.day,
       coalesce(sum(t.credit - t.debit) FILTER (WHERE a.type = 'income'), 0),
       coalesce(sum(t.debit - t.credit) FILTER (WHERE a.type = 'expense' AND a.role = ANY(%(cost_roles)s)), 0),
       coalesce(sum(t.debit - t.credit) FILTER (WHERE a.type = 'expense' AND a.role <> ALL(%(cost_roles)s)), 0)
  FROM accounts_accountdaytotal t JOIN accounts_account a ON a.id = t.account_id
 WHERE t.business_id = ANY(%(ids)s) AND t.day BETWEEN %(date_from)s AND %(date_to)s
   AND a.type IN ('income', 'expense')
 GROUP BY t.business_id, t.day
"""


def trading_by_day(
    *, business_ids: Sequence[int], date_from: dt.date, date_to: dt.date
) -> dict[tuple[int, dt.date], Trading]:
    """Per (business, day) from `date_from` to `date_to`: income, cost of sales and expenses.

    One query over the daily account totals (entries dated those days, whatever their source), so it
    costs the same on a year of data as on a week; what the P&L of the same days would show, split.
    Only days with income or expense postings are in the result: a missing key is Trading().
    """
    if not business_ids:
        return {}
    params = {
        "ids": list(business_ids),
        "date_from": date_from,
        "date_to": date_to,
        "cost_roles": list(COST_OF_SALES_ROLES),
    }
    return {
        (business_id, day): Trading(income=Decimal(income), cost_of_sales=Decimal(cost), expenses=Decimal(other))
        for business_id, day, income, cost, other in _fetch(_TRADING_SQL, params)
    }


# --- statements in columns: periods side by side, businesses side by side ----------------------
#
# One column is a set of businesses (None: all) over a date window; a statement in columns is read
# in one query whatever the number of columns (each column is a FILTER of one grouped scan of the
# daily totals). Rows are accounts grouped by type and name, so "Cash on hand" of every business
# shares a row: across businesses the names line up, the codes need not.

TYPE_ORDER = {t: i for i, t in enumerate(AccountType.values)}


@dataclass(frozen=True)
class Column:
    """Which businesses (None: every one) and which dates (from None: since the first entry) a figure covers."""

    label: str
    business_ids: tuple[int, ...] | None
    date_to: dt.date
    date_from: dt.date | None = None


@dataclass(frozen=True)
class StatementRow:
    """The accounts of one type and name, with their debits and credits per column."""

    type: str
    name: str
    code: str  # the accounts' code when they share one, else ""
    intercompany: bool
    debits: tuple[Decimal, ...]
    credits: tuple[Decimal, ...]

    @property
    def balances(self) -> tuple[Decimal, ...]:
        """Per column, signed the natural way (positive for a debit asset or a credit income)."""
        pairs = zip(self.debits, self.credits, strict=True)
        if self.type in DEBIT_NORMAL:
            return tuple(d - c for d, c in pairs)
        return tuple(c - d for d, c in pairs)  # not -(d - c): that prints a zero as -0.00

    @property
    def debit_balances(self) -> tuple[Decimal, ...]:
        return tuple(max(d - c, ZERO) for d, c in zip(self.debits, self.credits, strict=True))

    @property
    def credit_balances(self) -> tuple[Decimal, ...]:
        return tuple(max(c - d, ZERO) for d, c in zip(self.debits, self.credits, strict=True))


def _column_sums(rows: Sequence[StatementRow], attr: str, width: int) -> tuple[Decimal, ...]:
    totals = [ZERO] * width
    for row in rows:
        for i, value in enumerate(getattr(row, attr)):
            totals[i] += value
    return tuple(totals)


def _minus(a: tuple[Decimal, ...], b: tuple[Decimal, ...]) -> tuple[Decimal, ...]:
    return tuple(x - y for x, y in zip(a, b, strict=True))


def _columns_params(columns: Sequence[Column], day: str, business: str) -> tuple[list[str], dict[str, Any]]:
    """A FILTER condition per column on `day` and `business` (SQL expressions) and their parameters."""
    conditions: list[str] = []
    params: dict[str, Any] = {}
    for i, column in enumerate(columns):
        conditions.append(
            f"{day} <= %(to{i})s AND (%(from{i})s::date IS NULL OR {day} >= %(from{i})s)"
            f" AND (%(all{i})s OR {business} = ANY(%(ids{i})s))"
        )
        params |= {
            f"to{i}": column.date_to,
            f"from{i}": column.date_from,
            f"all{i}": column.business_ids is None,
            f"ids{i}": list(column.business_ids or []),
        }
    every = [c.business_ids for c in columns]
    union = None if any(ids is None for ids in every) else sorted({b for ids in every for b in ids or ()})
    starts = [c.date_from for c in columns]
    params |= {
        "max_to": max(c.date_to for c in columns),
        "min_from": None if any(s is None for s in starts) else min(s for s in starts if s is not None),
        **_scope(union),
    }
    return conditions, params


def _statement_rows(result: list[tuple[Any, ...]], width: int) -> list[StatementRow]:
    rows = []
    for type_, name, code_min, code_max, intercompany, *sums in result:
        debits, credits = tuple(Decimal(v) for v in sums[0::2]), tuple(Decimal(v) for v in sums[1::2])
        if debits == credits:
            continue  # nothing (or nothing left) in any column
        code = code_min if code_min == code_max else ""
        row = StatementRow(type_, name, code, bool(intercompany), debits, credits)
        rows.append(((TYPE_ORDER.get(type_, 99), code_min, name), row))
    rows.sort(key=lambda pair: pair[0])
    return [row for _, row in rows]


def statement_rows(*, columns: Sequence[Column], types: Sequence[str] | None = None) -> list[StatementRow]:
    """Every account (of `types`) with its debits and credits per column, in one query over the daily totals.

    Accounts that add up to nothing in every column are left out.
    """
    if not columns:
        return []
    conditions, params = _columns_params(columns, "t.day", "t.business_id")
    sums = ",\n".join(
        f"coalesce(sum(t.debit) FILTER (WHERE {c}), 0), coalesce(sum(t.credit) FILTER (WHERE {c}), 0)"
        for c in conditions
    )
    # Only FILTER conditions of our own (placeholders numbered by column) are interpolated.
    sql = f"""
SELECT a.type, a.name, min(a.code), max(a.code), bool_or(a.intercompany),
       {sums}
  FROM accounts_accountdaytotal t JOIN accounts_account a ON a.id = t.account_id
 WHERE t.day <= %(max_to)s AND (%(min_from)s::date IS NULL OR t.day >= %(min_from)s)
   AND (%(types)s::text[] IS NULL OR a.type = ANY(%(types)s))
   AND (%(all)s OR t.business_id = ANY(%(ids)s))
 GROUP BY a.type, a.name
"""  # noqa: S608
    params["types"] = list(types) if types is not None else None
    return _statement_rows(_fetch(sql, params), len(columns))


@dataclass(frozen=True)
class IncomeStatementColumns:
    columns: tuple[Column, ...]
    income: list[StatementRow]
    expenses: list[StatementRow]

    @property
    def total_income(self) -> tuple[Decimal, ...]:
        return _column_sums(self.income, "balances", len(self.columns))

    @property
    def total_expenses(self) -> tuple[Decimal, ...]:
        return _column_sums(self.expenses, "balances", len(self.columns))

    @property
    def net_income(self) -> tuple[Decimal, ...]:
        return _minus(self.total_income, self.total_expenses)


def income_statement_columns(*, columns: Sequence[Column]) -> IncomeStatementColumns:
    """The P&L in columns (periods or businesses side by side); each column needs its date_from."""
    if any(c.date_from is None for c in columns):
        raise ValueError("a P&L column needs a start date")
    rows = statement_rows(columns=columns, types=[AccountType.INCOME, AccountType.EXPENSE])
    return IncomeStatementColumns(
        columns=tuple(columns),
        income=[r for r in rows if r.type == AccountType.INCOME],
        expenses=[r for r in rows if r.type == AccountType.EXPENSE],
    )


@dataclass(frozen=True)
class BalanceSheetColumns:
    columns: tuple[Column, ...]
    assets: list[StatementRow]
    liabilities: list[StatementRow]
    equity: list[StatementRow]
    # Per column: income minus expenses up to its date, not yet closed to retained earnings.
    current_earnings: tuple[Decimal, ...]

    @property
    def total_assets(self) -> tuple[Decimal, ...]:
        return _column_sums(self.assets, "balances", len(self.columns))

    @property
    def total_liabilities(self) -> tuple[Decimal, ...]:
        return _column_sums(self.liabilities, "balances", len(self.columns))

    @property
    def total_equity(self) -> tuple[Decimal, ...]:
        equity = _column_sums(self.equity, "balances", len(self.columns))
        return tuple(e + c for e, c in zip(equity, self.current_earnings, strict=True))

    @property
    def total_liabilities_and_equity(self) -> tuple[Decimal, ...]:
        return tuple(x + y for x, y in zip(self.total_liabilities, self.total_equity, strict=True))

    @property
    def difference(self) -> tuple[Decimal, ...]:
        """Assets minus liabilities and equity: zero in every column when the books balance."""
        return _minus(self.total_assets, self.total_liabilities_and_equity)

    @property
    def is_balanced(self) -> bool:
        return not any(self.difference)


def balance_sheet_columns(*, columns: Sequence[Column]) -> BalanceSheetColumns:
    """The balance sheet in columns, each as of its date_to (dates from are ignored: balances are cumulative)."""
    columns = tuple(Column(c.label, c.business_ids, c.date_to) for c in columns)
    rows = statement_rows(columns=columns)
    width = len(columns)
    income = _column_sums([r for r in rows if r.type == AccountType.INCOME], "balances", width)
    expenses = _column_sums([r for r in rows if r.type == AccountType.EXPENSE], "balances", width)
    return BalanceSheetColumns(
        columns=columns,
        assets=[r for r in rows if r.type == AccountType.ASSET],
        liabilities=[r for r in rows if r.type == AccountType.LIABILITY],
        equity=[r for r in rows if r.type == AccountType.EQUITY],
        current_earnings=_minus(income, expenses),
    )


@dataclass(frozen=True)
class TrialBalanceColumns:
    columns: tuple[Column, ...]
    rows: list[StatementRow]

    @property
    def total_debit(self) -> tuple[Decimal, ...]:
        return _column_sums(self.rows, "debit_balances", len(self.columns))

    @property
    def total_credit(self) -> tuple[Decimal, ...]:
        return _column_sums(self.rows, "credit_balances", len(self.columns))

    @property
    def is_balanced(self) -> bool:
        return self.total_debit == self.total_credit


def trial_balance_columns(*, columns: Sequence[Column]) -> TrialBalanceColumns:
    """Every account's debit or credit balance per column, each as of its date_to."""
    columns = tuple(Column(c.label, c.business_ids, c.date_to) for c in columns)
    return TrialBalanceColumns(columns=columns, rows=statement_rows(columns=columns))


@dataclass(frozen=True)
class CashFlowColumns:
    """Direct method, in columns: the counter accounts of cash movements (inflows as debits, outflows as credits)."""

    columns: tuple[Column, ...]
    opening_cash: tuple[Decimal, ...]
    operating: list[StatementRow]
    financing: list[StatementRow]

    @property
    def net_operating(self) -> tuple[Decimal, ...]:
        return _column_sums(self.operating, "nets", len(self.columns)) if self.operating else self._zero

    @property
    def net_financing(self) -> tuple[Decimal, ...]:
        return _column_sums(self.financing, "nets", len(self.columns)) if self.financing else self._zero

    @property
    def net_change(self) -> tuple[Decimal, ...]:
        return tuple(a + b for a, b in zip(self.net_operating, self.net_financing, strict=True))

    @property
    def closing_cash(self) -> tuple[Decimal, ...]:
        return tuple(a + b for a, b in zip(self.opening_cash, self.net_change, strict=True))

    @property
    def _zero(self) -> tuple[Decimal, ...]:
        return (ZERO,) * len(self.columns)


@dataclass(frozen=True)
class CashFlowRow(StatementRow):
    """A counter account of the cash flow: `debits` hold the cash received, `credits` the cash paid."""

    @property
    def nets(self) -> tuple[Decimal, ...]:
        return _minus(self.debits, self.credits)


def cash_flow_columns(*, columns: Sequence[Column]) -> CashFlowColumns:
    """The cash flow statement (as `cash_flow_statement`) in columns; each column needs its date_from.

    Two queries: the counter lines of the entries touching cash, and the opening cash per column.
    """
    if any(c.date_from is None for c in columns):
        raise ValueError("a cash flow column needs a start date")
    conditions, params = _columns_params(columns, "c.entry_date", "c.business_id")
    params["cash_roles"] = list(CASH_ROLES)
    sums = ",\n".join(
        f"coalesce(sum(l.credit) FILTER (WHERE {c}), 0), coalesce(sum(l.debit) FILTER (WHERE {c}), 0)"
        for c in conditions
    )
    # Only FILTER conditions of our own (placeholders numbered by column) are interpolated.
    sql = f"""
WITH cash_entries AS (
  SELECT DISTINCT l.entry_id, e.entry_date, e.business_id
    FROM accounts_journalline l
    JOIN accounts_journalentry e ON e.id = l.entry_id
    JOIN accounts_account a ON a.id = l.account_id
   WHERE e.entry_date BETWEEN %(min_from)s AND %(max_to)s AND a.role = ANY(%(cash_roles)s)
     AND (%(all)s OR e.business_id = ANY(%(ids)s))
)
SELECT a.type, a.name, min(a.code), max(a.code), bool_or(a.intercompany),
       {sums}
  FROM accounts_journalline l
  JOIN cash_entries c ON c.entry_id = l.entry_id
  JOIN accounts_account a ON a.id = l.account_id
 WHERE a.role <> ALL(%(cash_roles)s)
 GROUP BY a.type, a.name
"""  # noqa: S608
    rows = [CashFlowRow(**vars(r)) for r in _statement_rows(_fetch(sql, params), len(columns))]
    opening_sql = "SELECT " + ", ".join(
        f"coalesce(sum(t.debit - t.credit) FILTER (WHERE t.day < %(from{i})s"
        f" AND (%(all{i})s OR t.business_id = ANY(%(ids{i})s))), 0)"
        for i in range(len(columns))
    )
    opening_sql += """
  FROM accounts_accountdaytotal t JOIN accounts_account a ON a.id = t.account_id
 WHERE t.day < %(max_to)s AND a.role = ANY(%(cash_roles)s) AND (%(all)s OR t.business_id = ANY(%(ids)s))
"""
    opening = tuple(Decimal(v) for v in _fetch(opening_sql, params)[0])
    return CashFlowColumns(
        columns=tuple(columns),
        opening_cash=opening,
        operating=[r for r in rows if r.type != AccountType.EQUITY],
        financing=[r for r in rows if r.type == AccountType.EQUITY],
    )

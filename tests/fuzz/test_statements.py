"""Fuzzing the M-Pesa statement parsers (integrations/mpesa/reconciliation.py) and a reconciliation
run on what they accept.

A CSV or XLSX file - a statement with awkward cells, a broken one, any bytes - is either read into
rows the books can hold (receipts of the receipt format, amounts that fit a money column, times
a database can store, text without NULs) or refused with a StatementError saying why. A
reconciliation run on it then completes, or is refused having written nothing.
"""

from __future__ import annotations

import csv
import datetime as dt
import io
import zipfile
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest
from django.core.files.base import ContentFile
from hypothesis import event, given
from hypothesis import strategies as st
from openpyxl import Workbook
from openpyxl.cell.cell import ILLEGAL_CHARACTERS_RE

from integrations.mpesa.models import ReconciliationRun, ReconciliationState, Till
from integrations.mpesa.payloads import MAX_AMOUNT
from integrations.mpesa.reconciliation import (
    StatementError,
    StatementHeader,
    StatementRow,
    parse_statement,
    parse_statement_header,
    reconciliation_run,
)
from operations.services.businesses import business_ensure
from tenancy.models import BusinessKind
from tests.factories.mpesa import TillFactory
from tests.fuzz.support import awkward_text, changed, date_text, fuzz, number_text, row_counts

COLUMNS = [
    "Receipt No.",
    "Completion Time",
    "Initiation Time",
    "Details",
    "Transaction Status",
    "Paid In",
    "Withdrawn",
    "Balance",
    "Reason Type",
    "Other Party Info",
    "Linked Transaction ID",
    "A/C No.",
]


def money(low: int, high: int) -> st.SearchStrategy[str]:
    return st.decimals(low, high, places=2).map(str)


statement_times = st.datetimes(dt.datetime(2020, 1, 1), dt.datetime(2030, 12, 31)).map(
    lambda d: d.strftime("%d-%m-%Y %H:%M:%S")
)
receipts = st.from_regex(r"[A-Z][A-Z0-9]{9}", fullmatch=True)
# What each column holds in a statement the portal exported.
GOOD: dict[str, st.SearchStrategy[Any]] = {
    "Receipt No.": receipts,
    "Completion Time": statement_times,
    "Initiation Time": statement_times,
    "Details": st.sampled_from(["Pay Bill Online", "Business Pay Bill Charge", "Organization Settle to Bank"]),
    "Transaction Status": st.sampled_from(["Completed", "Completed", "Failed", "Cancelled"]),
    "Paid In": money(0, 1_000_000) | st.just(""),
    "Withdrawn": money(-100_000, 0) | st.just(""),
    "Balance": money(0, 10_000_000),
    "Reason Type": st.sampled_from(["Pay Bill Online", "Business Pay Bill Charge", ""]),
    "Other Party Info": st.sampled_from(["2547****126 - NICHOLAS", "KCB BANK", ""]),
    "Linked Transaction ID": receipts | st.just(""),
    "A/C No.": st.sampled_from(["INV-1001", ""]),
}
# What a damaged file, a hand edit or another system might put in any cell.
anything = awkward_text | number_text | date_text | st.from_regex(r"[A-Za-z0-9]{1,25}", fullmatch=True)
PREAMBLE: dict[str, st.SearchStrategy[str]] = {
    "Organisation Name:": st.just("Maji Safi Water") | awkward_text,
    "Short Code:": st.just("600966") | st.from_regex(r"[0-9]{5,7}", fullmatch=True) | awkward_text,
    "Opening Balance:": money(0, 10_000_000) | number_text,
    "Closing Balance:": money(0, 10_000_000) | number_text,
}


@st.composite
def statements(draw: st.DrawFn) -> list[list[Any]]:
    """The cells of a statement: description lines, the header, rows of what each column holds;
    then now and then a column dropped or added, a line moved, a cell replaced by anything."""
    preamble = [[key, draw(value)] for key, value in PREAMBLE.items() if draw(st.booleans())]
    preamble += draw(st.lists(st.lists(awkward_text, max_size=3), max_size=2))
    columns = list(draw(st.permutations(COLUMNS)) if draw(st.booleans()) else COLUMNS)
    if draw(st.integers(0, 9)) == 0:
        columns.pop(draw(st.integers(0, len(columns) - 1)))
    columns += draw(st.lists(awkward_text, max_size=1))
    rows = draw(st.lists(st.tuples(*[GOOD.get(name, anything) for name in columns]).map(list), max_size=8))
    for row in rows:
        if draw(st.integers(0, 7)) == 0:
            row[draw(st.integers(0, len(row) - 1))] = draw(anything)
    if rows and draw(st.integers(0, 3)) == 0:
        rows.append(list(rows[draw(st.integers(0, len(rows) - 1))]))  # a receipt twice
    return [*preamble, columns, *rows]


def as_csv(cells: list[list[Any]], encoding: str) -> bytes:
    out = io.StringIO()
    csv.writer(out).writerows(cells)
    return out.getvalue().encode(encoding, errors="replace")


def as_xlsx(cells: list[list[Any]], typed: bool) -> bytes:
    """The cells in a workbook; `typed`: numbers and times as Excel numbers and dates, as a portal would."""
    book = Workbook()
    sheet = book.active
    assert sheet is not None
    for row in cells:
        values = []
        for cell in row:
            value = ILLEGAL_CHARACTERS_RE.sub("", str(cell))[:32_000]
            if typed:
                try:
                    value = float(value)  # type: ignore[assignment]
                except ValueError:
                    for fmt in ("%d-%m-%Y %H:%M:%S", "%d/%m/%Y"):
                        try:
                            value = dt.datetime.strptime(value, fmt)  # type: ignore[assignment]
                            break
                        except ValueError:
                            continue
            values.append(value)
        sheet.append(values)
    out = io.BytesIO()
    book.save(out)
    return _without_timestamps(out.getvalue())


CORE_PROPERTIES = (
    b'<cp:coreProperties xmlns:cp="http://schemas.openxmlformats.org/package/2006/metadata/core-properties"'
    b' xmlns:dc="http://purl.org/dc/elements/1.1/"><dc:creator>fuzz</dc:creator></cp:coreProperties>'
)


def _without_timestamps(content: bytes) -> bytes:
    """The workbook with fixed zip times and document properties: the same cells make the same
    bytes (Hypothesis replays an example, and must then draw the same damage)."""
    out = io.BytesIO()
    with zipfile.ZipFile(io.BytesIO(content)) as source, zipfile.ZipFile(out, "w", zipfile.ZIP_DEFLATED) as copy:
        for info in source.infolist():
            data = CORE_PROPERTIES if info.filename == "docProps/core.xml" else source.read(info)
            copy.writestr(zipfile.ZipInfo(info.filename, date_time=(2026, 1, 1, 0, 0, 0)), data)
    return out.getvalue()


@st.composite
def files(draw: st.DrawFn) -> tuple[bytes, str]:
    """(content, file name): a statement as CSV or XLSX, damaged or not, or arbitrary bytes."""
    how = draw(st.sampled_from(["csv", "csv", "xlsx", "damaged xlsx", "bytes"]))
    event(how)
    if how == "bytes":
        return draw(st.binary(max_size=400)), draw(st.sampled_from(["statement.csv", "statement.xlsx"]))
    cells = draw(statements())
    if how == "csv":
        return as_csv(cells, draw(st.sampled_from(["utf-8", "utf-8-sig", "latin-1", "utf-16"]))), "statement.csv"
    content = as_xlsx(cells, typed=draw(st.booleans()))
    if how == "damaged xlsx":
        at = draw(st.integers(0, 2**20)) % len(content)
        content = content[:at] + draw(st.binary(min_size=1, max_size=8)) + content[at + 8 :]
    return content, "statement.xlsx"


def assert_storable_header(header: StatementHeader) -> None:
    assert "\x00" not in header.shortcode + header.organisation
    assert len(header.organisation) <= 120
    for balance in (header.opening_balance, header.closing_balance):
        assert balance is None or (balance.is_finite() and abs(balance) <= MAX_AMOUNT), balance


def assert_storable_row(row: StatementRow) -> None:
    assert row.receipt.isalnum() and row.receipt.isascii() and 6 <= len(row.receipt) <= 20, row.receipt
    for amount in (row.paid_in, row.withdrawn):
        assert amount.is_finite() and Decimal(0) <= amount <= MAX_AMOUNT, amount
        assert amount == amount.quantize(Decimal("0.01"))
    if row.completed_at is not None:
        assert row.completed_at.tzinfo is not None
        assert 2000 <= row.completed_at.year <= 2100, row.completed_at
    for text in (row.details, row.status, row.reason_type, row.other_party, row.linked, row.account_no):
        assert "\x00" not in text


def read(content: bytes, name: str) -> tuple[StatementHeader, list[StatementRow]] | None:
    """The parsers' reading of a file, checked; None when they refused it (with a StatementError)."""
    try:
        header = parse_statement_header(content, name)
        rows = parse_statement(content, name)
    except StatementError:
        event("refused")
        return None
    event(f"read: {min(len(rows), 3)}+ rows")
    assert_storable_header(header)
    for row in rows:
        assert_storable_row(row)
    return header, rows


@fuzz(250)
@given(file=files())
def test_a_statement_is_read_into_storable_rows_or_refused(file: tuple[bytes, str]) -> None:
    read(*file)


@pytest.mark.parametrize(
    ("cell", "column"),
    [
        ("NaN", "Paid In"),
        ("Infinity", "Withdrawn"),
        ("1e30", "Paid In"),
        ("1000000000000.00", "Paid In"),
        ("a\x00b", "Details"),
        ("x" * 200_000, "Details"),
        ("01-01-0001 00:00:00", "Completion Time"),
        ("31-12-9999 23:59:59", "Completion Time"),
    ],
)
def test_cells_no_column_can_hold_are_refused(cell: str, column: str) -> None:
    """The minimal examples the fuzzing found: each crashed the parser or the run that followed (a
    NaN compared, a NUL or an amount over 14 digits refused by PostgreSQL after the charges were
    posted, year 1 unreadable once stored). Year 9999 is refused with it: not a statement's date."""
    values = {"Receipt No.": "TK61ABCD01", "Completion Time": "06-11-2025 09:15:22", "Paid In": "500.00", column: cell}
    content = as_csv([COLUMNS, [values.get(name, "") for name in COLUMNS]], "utf-8")
    with pytest.raises(StatementError):
        parse_statement(content, "statement.csv")


@pytest.mark.parametrize("balance", ["NaN", "Infinity", "1e30", "-1e13"])
def test_balances_no_column_can_hold_are_not_read(balance: str) -> None:
    content = as_csv([["Opening Balance:", balance], ["Closing Balance:", "5.00"], COLUMNS], "utf-8")
    header = parse_statement_header(content, "statement.csv")
    assert header.opening_balance is None and header.closing_balance == Decimal("5.00")


# ------------------------------------------------------------------ a run on what was read


@pytest.fixture
def statement_till(settings: Any, tmp_path: Path, transactional_db: None) -> Till:
    settings.MEDIA_ROOT = tmp_path / "media"
    business = business_ensure(name="Maji Safi Water", kind=BusinessKind.WATER)
    return TillFactory.create(business=business, shortcode="600966")


@fuzz(60)
@given(file=files())
def test_a_reconciliation_run_completes_or_is_refused_having_written_nothing(
    statement_till: Till, file: tuple[bytes, str]
) -> None:
    """Charges are posted in transactions of their own before the lines: a statement refused after
    that would leave them behind, so every refusal must come from the parsers, before anything."""
    content, name = file
    run = ReconciliationRun(business=statement_till.business, till=statement_till)
    run.statement.save(name, ContentFile(content), save=False)
    run.save()
    before = row_counts()
    try:
        reconciliation_run(run_id=run.pk)
    except StatementError as exc:
        event(f"refused: {type(exc).__name__}")
        assert changed(before, row_counts()) == {}
        return
    run.refresh_from_db()
    event(f"done: {min(run.lines.count(), 3)}+ lines, {min(run.charges_count, 1)}+ charges")
    assert run.state == ReconciliationState.DONE

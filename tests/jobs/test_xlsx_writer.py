"""jobs.xlsx, the streaming writer of the Excel exports: files read back with openpyxl."""

from __future__ import annotations

import datetime as dt
import zipfile
from decimal import Decimal
from pathlib import Path

import pytest
from openpyxl import load_workbook

from jobs.xlsx import XlsxColumn, XlsxWriter, column_letter, date_serial, escape_text

D = Decimal


def test_typed_cells_formats_and_layout_read_back(tmp_path: Path) -> None:
    path = tmp_path / "out.xlsx"
    columns = [
        XlsxColumn("text", width=11),
        XlsxColumn("date", "dd mmm yyyy", width=13),
        XlsxColumn("datetime", "dd mmm yyyy hh:mm"),
        XlsxColumn("number", "#,##0.00", width=15),
        XlsxColumn("number", "#,##0"),
        XlsxColumn("bool"),
    ]
    with XlsxWriter(path) as book:
        sheet = book.sheet("Sales", columns, header=["Sale", "Date", "At", "Total", "Count", "Paid"])
        sheet.row(["S0000001", dt.date(2025, 3, 1), dt.datetime(2025, 3, 1, 14, 30), D("1234.50"), 3, True])
        sheet.row(["S0000002", None, None, D("-0.05"), None, False])
        sheet.bold_row(["Total", None, None, D("1234.45"), 3])

    wb = load_workbook(path)
    ws = wb["Sales"]
    assert [c.value for c in ws[1]] == ["Sale", "Date", "At", "Total", "Count", "Paid"]
    assert all(c.font.b for c in ws[1])
    first = ws[2]
    assert first[0].value == "S0000001" and not first[0].font.b
    assert first[1].value == dt.datetime(2025, 3, 1) and first[1].is_date and first[1].number_format == "dd mmm yyyy"
    assert first[2].value == dt.datetime(2025, 3, 1, 14, 30) and first[2].number_format == "dd mmm yyyy hh:mm"
    assert first[3].value == 1234.5 and first[3].number_format == "#,##0.00" and not first[3].is_date
    assert first[4].value == 3 and first[4].number_format == "#,##0"
    assert first[5].value is True
    assert [c.value for c in ws[3]] == ["S0000002", None, None, -0.05, None, False]
    totals = ws[4]
    assert totals[0].value == "Total" and totals[0].font.b
    assert totals[3].value == 1234.45 and totals[3].font.b and totals[3].number_format == "#,##0.00"
    assert ws.freeze_panes == "A2"
    assert ws.auto_filter.ref == "A1:F3"  # header and data, not the totals
    assert ws.column_dimensions["A"].width == 11 and ws.column_dimensions["D"].width == 15
    assert ws.max_row == 4


def test_text_is_escaped_and_stripped_of_characters_xml_forbids(tmp_path: Path) -> None:
    path = tmp_path / "text.xlsx"
    nasty = [
        "Tom & Jerry <Ltd> \"quoted\" 'single'",
        "bell\x07 and nul\x00 and vt\x0b gone",
        "  leading and trailing  ",
        "line one\nline two\r\nthree\ttab",
        "Kiswahili: Habari, ñ, € and 😀",
        "</t></is></c><c>injected",
    ]
    with XlsxWriter(path) as book:
        sheet = book.sheet("Text & <more>", [XlsxColumn("text")], header=["Value"])
        for text in nasty:
            sheet.row([text])
        sheet.row([12345])  # a non-str value in a text column is its str()
    ws = load_workbook(path)["Text & <more>"]
    values = [row[0] for row in ws.iter_rows(min_row=2, values_only=True)]
    assert values == [
        "Tom & Jerry <Ltd> \"quoted\" 'single'",
        "bell and nul and vt gone",
        "  leading and trailing  ",
        "line one\nline two\r\nthree\ttab",
        "Kiswahili: Habari, ñ, € and 😀",
        "</t></is></c><c>injected",
        "12345",
    ]
    assert escape_text("a & b < c > d") == "a &amp; b &lt; c &gt; d"
    assert escape_text("x\x01y\ud800z") == "xyz"


def test_auto_columns_type_each_value_and_empty_values_are_empty_cells(tmp_path: Path) -> None:
    path = tmp_path / "auto.xlsx"
    with XlsxWriter(path) as book:
        sheet = book.sheet("Filters", [XlsxColumn(width=28), XlsxColumn(width=70)])
        sheet.bold_row(["What this export shows"])
        sheet.row(["Rows", 25000])
        sheet.row(["As of", dt.date(2025, 1, 31)])
        sheet.row(["At", dt.datetime(2025, 1, 31, 8, 0)])
        sheet.row(["Amount", D("10.10")])
        sheet.row(["Flag", False])
        sheet.row(["Empty", ""])
        sheet.row(["None", None])
    ws = load_workbook(path)["Filters"]
    rows = list(ws.iter_rows(values_only=True))
    assert rows == [
        ("What this export shows", None),
        ("Rows", 25000),
        ("As of", dt.datetime(2025, 1, 31)),
        ("At", dt.datetime(2025, 1, 31, 8, 0)),
        ("Amount", 10.1),
        ("Flag", False),
        ("Empty", None),
        ("None", None),
    ]
    assert ws["A1"].font.b and not ws["A2"].font.b
    assert ws.freeze_panes is None and ws.auto_filter.ref is None
    assert ws.column_dimensions["B"].width == 70


def test_many_sheets_interleaved_are_all_complete(tmp_path: Path) -> None:
    """Rows of several open sheets written in step (a parent and its lines): the first goes straight into
    the zip, the others are spooled and copied in at the end."""
    path = tmp_path / "many.xlsx"
    with XlsxWriter(path) as book:
        sheets = [book.sheet(f"S{i}", [XlsxColumn("number")], header=[f"n{i}"]) for i in range(5)]
        for n in range(1000):
            for i, sheet in enumerate(sheets):
                sheet.row([n * 10 + i])
        sheets[0].close()
        late = book.sheet("Late", [XlsxColumn("text")], header=["after the first closed"])
        late.row(["here"])
    wb = load_workbook(path)
    assert wb.sheetnames == ["S0", "S1", "S2", "S3", "S4", "Late"]
    for i in range(5):
        assert [r[0] for r in wb[f"S{i}"].iter_rows(min_row=2, values_only=True)] == [n * 10 + i for n in range(1000)]
        assert wb[f"S{i}"].auto_filter.ref == "A1:A1001"
    assert wb["Late"]["A2"].value == "here"
    with zipfile.ZipFile(path) as archive:
        names = set(archive.namelist())
        assert {
            "[Content_Types].xml",
            "_rels/.rels",
            "xl/workbook.xml",
            "xl/_rels/workbook.xml.rels",
            "xl/styles.xml",
        } <= names
        assert {f"xl/worksheets/sheet{i}.xml" for i in range(1, 7)} <= names
        assert archive.testzip() is None
        workbook_xml = archive.read("xl/workbook.xml").decode()
        assert "_xlnm._FilterDatabase" in workbook_xml and "'S0'!$A$1:$A$1001" in workbook_xml


def test_a_large_sheet_is_streamed(tmp_path: Path) -> None:
    path = tmp_path / "large.xlsx"
    columns = [XlsxColumn("text"), XlsxColumn("date", "dd mmm yyyy"), XlsxColumn("number", "#,##0.00")]
    count = 60_000
    with XlsxWriter(path) as book:
        sheet = book.sheet("Big", columns, header=["Name", "Date", "Amount"])
        start = dt.date(2024, 1, 1)
        for n in range(count):
            sheet.row([f"row {n}", start + dt.timedelta(days=n % 366), D(n) / 100])
    ws = load_workbook(path, read_only=True)["Big"]
    seen = 0
    total = D(0)
    last = None
    for row in ws.iter_rows(min_row=2, values_only=True):
        seen += 1
        total += D(str(row[2]))
        last = row
    assert seen == count
    assert total == sum(D(n) / 100 for n in range(count))
    assert last == (f"row {count - 1}", dt.datetime(2024, 1, 1) + dt.timedelta(days=(count - 1) % 366), 599.99)


def test_a_failed_write_leaves_no_file_and_bad_values_are_refused(tmp_path: Path) -> None:
    path = tmp_path / "failed.xlsx"

    def cancelled_midway() -> None:
        with XlsxWriter(path) as book:
            main = book.sheet("Main", [XlsxColumn("number")], header=["n"])
            spooled = book.sheet("Lines", [XlsxColumn("number")], header=["n"])
            main.row([1])
            spooled.row([2])
            assert path.exists()
            raise RuntimeError("cancelled")

    with pytest.raises(RuntimeError):
        cancelled_midway()
    assert not path.exists()

    with XlsxWriter(tmp_path / "refused.xlsx") as book:
        sheet = book.sheet("S", [XlsxColumn("number"), XlsxColumn("datetime")])
        with pytest.raises(TypeError):
            sheet.row(["not a number"])
        with pytest.raises(ValueError, match="aware"):
            sheet.row([None, dt.datetime(2025, 1, 1, tzinfo=dt.UTC)])
        with pytest.raises(ValueError):
            sheet.row([D("NaN")])
        with pytest.raises(ValueError, match="already"):
            book.sheet("s", [XlsxColumn()])


def test_helpers() -> None:
    assert [column_letter(i) for i in (1, 12, 26, 27, 52, 703)] == ["A", "L", "Z", "AA", "AZ", "AAA"]
    assert date_serial(dt.date(1900, 3, 1)) == 61
    assert date_serial(dt.date(2025, 1, 1)) == 45658
    assert date_serial(dt.datetime(2025, 1, 1, 12, 0)) == 45658.5


def test_text_that_looks_like_a_formula_is_stored_as_text_never_as_a_formula(tmp_path: Path) -> None:
    """A customer named '=HYPERLINK(...)' is a string cell: no <f> element, in text and auto columns."""
    path = tmp_path / "names.xlsx"
    risky = ['=HYPERLINK("http://evil.example","click")', "+1-1", "-2+3", "@SUM(A1)", "=1+1"]
    with XlsxWriter(path) as book:
        sheet = book.sheet("Names", [XlsxColumn("text"), XlsxColumn("auto")], header=["text", "auto"])
        for name in risky:
            sheet.row([name, name])
    with zipfile.ZipFile(path) as archive:
        assert b"<f>" not in archive.read("xl/worksheets/sheet1.xml")
    cells = list(load_workbook(path)["Names"].iter_rows(min_row=2))
    assert [(c.data_type, c.value) for row in cells for c in row] == [("s", n) for n in risky for _ in (0, 1)]

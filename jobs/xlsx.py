"""A small streaming .xlsx writer: typed cells written as XML text straight into the zip, in constant memory.

Why not openpyxl's write-only mode: it builds a cell object per value, binds and styles it, then
serialises it through an XML library; that is about 10 µs per cell even with lxml, a minute for the
million cells of a large export. Here each column renders its cells with one precomputed f-string (the
column letter and style id are fixed when the sheet is opened), so a cell costs about a microsecond,
and rows are written in blocks straight into the sheet's zip entry.

What a sheet can have: typed columns (text as inline strings, numbers, dates and datetimes as Excel
serials, booleans, or "auto" by the Python type), a number format per column, column widths, a bold
header row, a frozen header, an autofilter over the header and the data rows, and bold rows (totals)
after the data. No shared-strings table (inline strings keep memory flat), no formulas.

The zip can only write one entry at a time: the first sheet open is written straight into its entry;
a sheet opened while another is still open (the lines of each row, written in step with their parent)
is spooled to an anonymous temporary file and copied into the zip when the workbook is closed.

Values: text is str()-ed, XML-escaped, and stripped of the characters XML 1.0 forbids; datetimes must
be naive (convert to local time first); Decimals are written with all their digits.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import re
import shutil
import tempfile
import zipfile
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from decimal import Decimal
from pathlib import Path
from typing import IO, Any

COLUMN_KINDS = ("text", "number", "date", "datetime", "bool", "auto")
MAX_TEXT = 32767  # Excel's limit for the text of a cell
FLUSH_CHARS = 1 << 18  # rows are joined and written in blocks of about this many characters
DEFAULT_WIDTH = 12.0
# Excel's day 0 (serial dates, 1900 system, with its phantom 29 Feb 1900 folded in).
_EPOCH_ORDINAL = dt.date(1899, 12, 30).toordinal()
# Characters XML 1.0 does not allow (and lone surrogates, which cannot be encoded).
_FORBIDDEN = re.compile("[\x00-\x08\x0b\x0c\x0e-\x1f\ud800-\udfff\ufffe\uffff]")
_SHEET_NAME_FORBIDDEN = re.compile(r"[\[\]:*?/\\]")

NS_MAIN = "http://schemas.openxmlformats.org/spreadsheetml/2006/main"
NS_REL = "http://schemas.openxmlformats.org/officeDocument/2006/relationships"
NS_PKG_REL = "http://schemas.openxmlformats.org/package/2006/relationships"
XML_DECL = '<?xml version="1.0" encoding="UTF-8" standalone="yes"?>\n'


@dataclass(frozen=True)
class XlsxColumn:
    """A sheet column: its kind (how values are written), number format and width."""

    kind: str = "auto"
    number_format: str | None = None
    width: float | None = None

    def __post_init__(self) -> None:
        if self.kind not in COLUMN_KINDS:
            raise ValueError(f"unknown column kind {self.kind!r}")


def column_letter(index: int) -> str:
    """The letter(s) of the 1-based column `index`: 1 -> A, 27 -> AA."""
    letters = ""
    while index > 0:
        index, rest = divmod(index - 1, 26)
        letters = chr(65 + rest) + letters
    return letters


def escape_text(value: str) -> str:
    """`value` as XML character data: &, <, > escaped, characters XML 1.0 forbids removed, \\r kept."""
    if len(value) > MAX_TEXT:
        value = value[:MAX_TEXT]
    if "&" in value:
        value = value.replace("&", "&amp;")
    if "<" in value:
        value = value.replace("<", "&lt;")
    if ">" in value:
        value = value.replace(">", "&gt;")
    if not value.isprintable():  # rare: the slow path only for text with control or unusual characters
        value = _FORBIDDEN.sub("", value).replace("\r", "&#13;")
    return value


def _escape_attr(value: str) -> str:
    return escape_text(value).replace('"', "&quot;")


def _text_cell(head: str, tail: str) -> Callable[[Any, str], str]:
    def cell(value: Any, row: str) -> str:
        if value is None:
            return ""
        text = value if type(value) is str else str(value)
        if not text:
            return ""
        text = escape_text(text)
        if text[0] in " \t\n" or text[-1] in " \t\n":
            return f'{head}{row}{tail} t="inlineStr"><is><t xml:space="preserve">{text}</t></is></c>'
        return f'{head}{row}{tail} t="inlineStr"><is><t>{text}</t></is></c>'

    return cell


def number_text(value: Any) -> str:
    """A number as the text of a <v> element (Decimals with all their digits, never in E notation)."""
    if isinstance(value, Decimal):
        if not value.is_finite():
            raise ValueError(f"{value} cannot be written to a cell")
        text = str(value)
        return format(value, "f") if "E" in text else text
    if isinstance(value, bool):
        return "1" if value else "0"
    if isinstance(value, int):
        return str(value)
    if isinstance(value, float):
        if value != value or value in (float("inf"), float("-inf")):
            raise ValueError(f"{value} cannot be written to a cell")
        return repr(value)
    raise TypeError(f"not a number: {value!r}")


def _number_cell(head: str, tail: str) -> Callable[[Any, str], str]:
    def cell(value: Any, row: str) -> str:
        if value is None:
            return ""
        if type(value) is Decimal:  # the common case (money), inline
            text = str(value)
            if "E" in text or not value.is_finite():
                text = number_text(value)
        else:
            text = number_text(value)
        return f"{head}{row}{tail}><v>{text}</v></c>"

    return cell


def date_serial(value: dt.date) -> int | float:
    """Excel's serial number of a date (an int) or a naive datetime (a float)."""
    if isinstance(value, dt.datetime):
        if value.tzinfo is not None:
            raise ValueError(f"aware datetime {value!r}: convert it to a naive local time first")
        seconds = value.hour * 3600 + value.minute * 60 + value.second + value.microsecond / 1_000_000
        return value.toordinal() - _EPOCH_ORDINAL + seconds / 86400
    if isinstance(value, dt.date):
        return value.toordinal() - _EPOCH_ORDINAL
    raise TypeError(f"not a date: {value!r}")


def _date_cell(head: str, tail: str) -> Callable[[Any, str], str]:
    def cell(value: Any, row: str) -> str:
        if value is None:
            return ""
        return f"{head}{row}{tail}><v>{date_serial(value)!r}</v></c>"

    return cell


def _bool_cell(head: str, tail: str) -> Callable[[Any, str], str]:
    def cell(value: Any, row: str) -> str:
        if value is None:
            return ""
        return f'{head}{row}{tail} t="b"><v>{1 if value else 0}</v></c>'

    return cell


class _Styles:
    """The workbook's cell formats: (number format, bold) -> cellXfs index."""

    def __init__(self) -> None:
        self.formats: dict[str, int] = {}
        self.xfs: list[tuple[int, bool]] = [(0, False)]
        self.index: dict[tuple[str | None, bool], int] = {(None, False): 0}

    def get(self, number_format: str | None, bold: bool = False) -> int:
        key = (number_format, bold)
        if key not in self.index:
            fmt_id = 0
            if number_format is not None:
                fmt_id = self.formats.setdefault(number_format, 164 + len(self.formats))
            self.index[key] = len(self.xfs)
            self.xfs.append((fmt_id, bold))
        return self.index[key]

    def xml(self) -> str:
        num_fmts = "".join(
            f'<numFmt numFmtId="{fmt_id}" formatCode="{_escape_attr(code)}"/>' for code, fmt_id in self.formats.items()
        )
        xfs = "".join(
            f'<xf numFmtId="{fmt_id}" fontId="{1 if bold else 0}" fillId="0" borderId="0" xfId="0"'
            + (' applyNumberFormat="1"' if fmt_id else "")
            + (' applyFont="1"' if bold else "")
            + "/>"
            for fmt_id, bold in self.xfs
        )
        return (
            f'{XML_DECL}<styleSheet xmlns="{NS_MAIN}">'
            f'<numFmts count="{len(self.formats)}">{num_fmts}</numFmts>'
            '<fonts count="2"><font><sz val="11"/><name val="Calibri"/><family val="2"/></font>'
            '<font><b/><sz val="11"/><name val="Calibri"/><family val="2"/></font></fonts>'
            '<fills count="2"><fill><patternFill patternType="none"/></fill>'
            '<fill><patternFill patternType="gray125"/></fill></fills>'
            '<borders count="1"><border><left/><right/><top/><bottom/><diagonal/></border></borders>'
            '<cellStyleXfs count="1"><xf numFmtId="0" fontId="0" fillId="0" borderId="0"/></cellStyleXfs>'
            f'<cellXfs count="{len(self.xfs)}">{xfs}</cellXfs>'
            '<cellStyles count="1"><cellStyle name="Normal" xfId="0" builtinId="0"/></cellStyles>'
            "</styleSheet>"
        )


_RENDERERS: dict[str, Callable[[str, str], Callable[[Any, str], str]]] = {
    "text": _text_cell,
    "number": _number_cell,
    "date": _date_cell,
    "datetime": _date_cell,
    "bool": _bool_cell,
}


def _renderer(
    kind: str, letter: str, styles: _Styles, number_format: str | None, bold: bool
) -> Callable[[Any, str], str]:
    """The function that writes one cell of a column: (value, row number as text) -> XML."""

    def parts(fmt: str | None) -> tuple[str, str]:
        # A cell starts '<c r="B' + row number + '" s="3"' (no s for the default style).
        style = styles.get(fmt, bold)
        return f'<c r="{letter}', '"' + (f' s="{style}"' if style else "")

    if kind != "auto":
        return _RENDERERS[kind](*parts(number_format))
    text, number, boolean = (_RENDERERS[k](*parts(number_format)) for k in ("text", "number", "bool"))
    # Dates in an "auto" column without a format of its own get an ISO one, so they read as dates.
    date = _date_cell(*parts(number_format or "yyyy-mm-dd"))
    moment = _date_cell(*parts(number_format or "yyyy-mm-dd hh:mm"))

    def auto(value: Any, row: str) -> str:
        if isinstance(value, bool):
            return boolean(value, row)
        if isinstance(value, (int, float, Decimal)):
            return number(value, row)
        if isinstance(value, dt.datetime):
            return moment(value, row)
        if isinstance(value, dt.date):
            return date(value, row)
        return text(value, row)

    return auto


class SheetStream:
    """One sheet being written: `row()` for data rows, `bold_row()` for a header or totals, `close()`."""

    def __init__(
        self,
        book: XlsxWriter,
        index: int,
        title: str,
        columns: Sequence[XlsxColumn],
        out: IO[bytes],
        *,
        freeze_header: bool,
        autofilter: bool,
        direct: bool,
    ) -> None:
        self.book = book
        self.index = index
        self.title = title
        self.columns = list(columns)
        self.autofilter = autofilter
        self.direct = direct
        self.out = out
        self.closed = False
        self.rows_written = 0
        self.last_data_row = 0
        self.letters = [column_letter(i) for i in range(1, len(self.columns) + 1)]
        styles = book.styles
        pairs = list(zip(self.columns, self.letters, strict=True))
        self.cells = [_renderer(c.kind, letter, styles, c.number_format, False) for c, letter in pairs]
        # Bold rows (totals) are typed by their values: a "Total" label may sit in a date column.
        self.bold_cells = [_renderer("auto", letter, styles, c.number_format, True) for c, letter in pairs]
        self.header_cells = [_renderer("text", letter, styles, None, True) for letter in self.letters]
        self.buffer: list[str] = []
        self.buffered = 0
        cols = "".join(
            f'<col min="{i}" max="{i}" width="{c.width or DEFAULT_WIDTH}" customWidth="1"/>'
            for i, c in enumerate(self.columns, start=1)
        )
        pane = (
            '<pane ySplit="1" topLeftCell="A2" activePane="bottomLeft" state="frozen"/>'
            '<selection pane="bottomLeft" activeCell="A2" sqref="A2"/>'
            if freeze_header
            else ""
        )
        selected = ' tabSelected="1"' if index == 0 else ""
        self._write(
            f'{XML_DECL}<worksheet xmlns="{NS_MAIN}" xmlns:r="{NS_REL}">'
            f'<sheetViews><sheetView workbookViewId="0"{selected}>{pane}</sheetView></sheetViews>'
            f'<sheetFormatPr defaultRowHeight="15"/>{f"<cols>{cols}</cols>" if cols else ""}<sheetData>'
        )

    def _write(self, text: str) -> None:
        self.buffer.append(text)
        self.buffered += len(text)
        if self.buffered >= FLUSH_CHARS:
            self.flush()

    def flush(self) -> None:
        if self.buffer:
            self.out.write("".join(self.buffer).encode())
            self.buffer.clear()
            self.buffered = 0

    def _render(self, cells: list[Callable[[Any, str], str]], values: Sequence[Any]) -> None:
        if self.closed:
            raise ValueError(f"sheet {self.title!r} is closed")
        if len(values) > len(cells):
            raise ValueError(f"{len(values)} values for {len(cells)} columns in sheet {self.title!r}")
        row = str(self.rows_written + 1)
        text = f'<row r="{row}">{"".join([cell(value, row) for cell, value in zip(cells, values, strict=False)])}</row>'
        self.rows_written += 1  # after rendering: a refused value leaves no gap
        self.buffer.append(text)
        self.buffered += len(text)
        if self.buffered >= FLUSH_CHARS:
            self.flush()

    def row(self, values: Sequence[Any]) -> None:
        """A data row (inside the autofilter); values in column order, None for an empty cell."""
        self._render(self.cells, values)
        self.last_data_row = self.rows_written

    def rows(self, rows: Iterable[Sequence[Any]]) -> None:
        for values in rows:
            self.row(values)

    def header(self, values: Sequence[str]) -> None:
        """The bold header row (the first row: the one frozen and filtered)."""
        if self.rows_written:
            raise ValueError("the header is the first row")
        self._render(self.header_cells, values)
        self.last_data_row = self.rows_written

    def bold_row(self, values: Sequence[Any]) -> None:
        """A bold row, e.g. totals after the data (outside the autofilter)."""
        self._render(self.bold_cells, values)

    def close(self) -> None:
        """End the sheet; a direct sheet's zip entry is closed, a spooled one waits for the workbook's close."""
        if self.closed:
            return
        tail = "</sheetData>"
        if self.autofilter and self.last_data_row:
            tail += f'<autoFilter ref="{self.filter_ref()}"/>'
        tail += '<pageMargins left="0.7" right="0.7" top="0.75" bottom="0.75" header="0.3" footer="0.3"/></worksheet>'
        self._write(tail)
        self.flush()
        self.closed = True
        self.book._sheet_closed(self)

    def filter_ref(self) -> str:
        return f"A1:{self.letters[-1]}{self.last_data_row}"


class XlsxWriter:
    """A workbook written to `path` as it is filled; use as a context manager or call close()."""

    def __init__(self, path: str | Path, *, compresslevel: int = 1) -> None:
        self.path = Path(path)
        self.zip = zipfile.ZipFile(self.path, "w", zipfile.ZIP_DEFLATED, compresslevel=compresslevel)
        self.styles = _Styles()
        self.sheets: list[SheetStream] = []
        self.entry: SheetStream | None = None  # the sheet writing straight into the zip
        self.spooled: list[tuple[SheetStream, IO[bytes]]] = []
        self.closed = False

    def __enter__(self) -> XlsxWriter:
        return self

    def __exit__(self, exc_type: Any, exc: Any, tb: Any) -> None:
        if exc_type is None:
            self.close()
        else:
            self.abort()

    def sheet(
        self,
        title: str,
        columns: Sequence[XlsxColumn],
        *,
        header: Sequence[str] | None = None,
        freeze_header: bool | None = None,
        autofilter: bool | None = None,
    ) -> SheetStream:
        """A new sheet (title cut to Excel's 31 characters); with `header`, a bold, frozen, filtered first row."""
        title = _SHEET_NAME_FORBIDDEN.sub("-", title)[:31] or f"Sheet{len(self.sheets) + 1}"
        if title.lower() in {s.title.lower() for s in self.sheets}:
            raise ValueError(f"there is already a sheet {title!r}")
        if not columns:
            raise ValueError("a sheet needs at least one column")
        index = len(self.sheets)
        direct = self.entry is None
        out: IO[bytes]
        if direct:
            out = self.zip.open(f"xl/worksheets/sheet{index + 1}.xml", "w")
        else:
            out = tempfile.TemporaryFile(prefix="xlsx-sheet-")  # noqa: SIM115 (closed with the workbook)
        with_header = header is not None
        sheet = SheetStream(
            self,
            index,
            title,
            columns,
            out,
            freeze_header=with_header if freeze_header is None else freeze_header,
            autofilter=with_header if autofilter is None else autofilter,
            direct=direct,
        )
        self.sheets.append(sheet)
        if direct:
            self.entry = sheet
        else:
            self.spooled.append((sheet, out))
        if header is not None:
            sheet.header(header)
        return sheet

    def _sheet_closed(self, sheet: SheetStream) -> None:
        if sheet is self.entry:
            sheet.out.close()
            self.entry = None

    def close(self) -> None:
        """Close every sheet, copy the spooled ones into the zip, write the package parts."""
        if self.closed:
            return
        for sheet in self.sheets:
            sheet.close()
        for sheet, spool in self.spooled:
            spool.seek(0)
            with self.zip.open(f"xl/worksheets/sheet{sheet.index + 1}.xml", "w") as entry:
                shutil.copyfileobj(spool, entry, 1 << 20)
            spool.close()
        self.spooled.clear()
        self._write_parts()
        self.zip.close()
        self.closed = True

    def abort(self) -> None:
        """Stop after a failure: temporary files closed, the partial file deleted."""
        if self.closed:
            return
        self.closed = True
        for _, spool in self.spooled:
            spool.close()
        if self.entry is not None:
            with contextlib.suppress(OSError, ValueError, zipfile.BadZipFile):
                self.entry.out.close()
        with contextlib.suppress(OSError, ValueError):
            self.zip.close()
        self.path.unlink(missing_ok=True)

    def _write_parts(self) -> None:
        count = len(self.sheets)
        sheets = "".join(
            f'<Override PartName="/xl/worksheets/sheet{i}.xml" '
            'ContentType="application/vnd.openxmlformats-officedocument.spreadsheetml.worksheet+xml"/>'
            for i in range(1, count + 1)
        )
        self.zip.writestr(
            "[Content_Types].xml",
            f'{XML_DECL}<Types xmlns="http://schemas.openxmlformats.org/package/2006/content-types">'
            '<Default Extension="rels" ContentType="application/vnd.openxmlformats-package.relationships+xml"/>'
            '<Default Extension="xml" ContentType="application/xml"/>'
            '<Override PartName="/xl/workbook.xml" '
            'ContentType="application/vnd.openxmlformats-officedocument.spreadsheetml.sheet.main+xml"/>'
            '<Override PartName="/xl/styles.xml" '
            'ContentType="application/vnd.openxmlformats-officedocument.spreadsheetml.styles+xml"/>'
            f"{sheets}</Types>",
        )
        self.zip.writestr(
            "_rels/.rels",
            f'{XML_DECL}<Relationships xmlns="{NS_PKG_REL}">'
            '<Relationship Id="rId1" Target="xl/workbook.xml" '
            'Type="http://schemas.openxmlformats.org/officeDocument/2006/relationships/officeDocument"/>'
            "</Relationships>",
        )
        entries = "".join(
            f'<sheet name="{_escape_attr(s.title)}" sheetId="{i}" r:id="rId{i}"/>'
            for i, s in enumerate(self.sheets, start=1)
        )
        names = "".join(
            f'<definedName name="_xlnm._FilterDatabase" localSheetId="{s.index}" hidden="1">'
            f"{_escape_attr(_quote_sheet(s.title))}!{_absolute(s.filter_ref())}</definedName>"
            for s in self.sheets
            if s.autofilter and s.last_data_row
        )
        self.zip.writestr(
            "xl/workbook.xml",
            f'{XML_DECL}<workbook xmlns="{NS_MAIN}" xmlns:r="{NS_REL}">'
            '<bookViews><workbookView activeTab="0"/></bookViews>'
            f"<sheets>{entries}</sheets>{f'<definedNames>{names}</definedNames>' if names else ''}"
            '<calcPr calcId="191029"/></workbook>',
        )
        rels = "".join(
            f'<Relationship Id="rId{i}" Target="worksheets/sheet{i}.xml" '
            'Type="http://schemas.openxmlformats.org/officeDocument/2006/relationships/worksheet"/>'
            for i in range(1, count + 1)
        )
        self.zip.writestr(
            "xl/_rels/workbook.xml.rels",
            f'{XML_DECL}<Relationships xmlns="{NS_PKG_REL}">{rels}'
            f'<Relationship Id="rId{count + 1}" Target="styles.xml" '
            'Type="http://schemas.openxmlformats.org/officeDocument/2006/relationships/styles"/>'
            "</Relationships>",
        )
        self.zip.writestr("xl/styles.xml", self.styles.xml())


def _quote_sheet(title: str) -> str:
    return "'" + title.replace("'", "''") + "'"


def _absolute(ref: str) -> str:
    """'A1:L26' -> '$A$1:$L$26'."""
    return ":".join(re.sub(r"([A-Z]+)(\d+)", r"$\1$\2", part) for part in ref.split(":"))

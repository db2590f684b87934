"""The one PDF layout of every report (statements, customer statements, daily summary), with ReportLab.

A report is a list of ReportLab flowables (mostly `report_table`s) handed to `pdf_render` with a
`PdfHeader`: each page gets the business name beside a logo placeholder, the report title and its
period at the top, and at the bottom "generated at ... by ...", the ledger head(s) the figures were
read at, and "page X of Y". Money is printed by `money()`: thousands separated, two decimals,
negatives with a minus sign (so a PDF read back as text gives the same figures as the selectors).

ReportLab is pure Python plus wheels on PyPI (no Cairo, Pango or a browser), so a worker image and
`make run` need nothing from the system (docs/reports-statements.md).
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import IO, Any
from xml.sax.saxutils import escape as xml_escape

from django.utils import timezone
from reportlab.lib import colors
from reportlab.lib.enums import TA_CENTER, TA_LEFT, TA_RIGHT
from reportlab.lib.pagesizes import A4, landscape
from reportlab.lib.styles import ParagraphStyle, getSampleStyleSheet
from reportlab.lib.units import mm
from reportlab.pdfbase.pdfmetrics import stringWidth
from reportlab.pdfgen.canvas import Canvas
from reportlab.platypus import Flowable, Paragraph, SimpleDocTemplate, Spacer, Table, TableStyle

from accounts.anchors import ledger_heads
from accounts.formatting import money as money  # the PDF code imports it from here too
from tenancy.models import Business

MARGIN = 15 * mm
HEADER_HEIGHT = 24 * mm
FOOTER_HEIGHT = 14 * mm
INK = colors.HexColor("#1f2937")
MUTED = colors.HexColor("#6b7280")
RULE = colors.HexColor("#d1d5db")
BAND = colors.HexColor("#f3f4f6")
ALERT = colors.HexColor("#b91c1c")
OK = colors.HexColor("#15803d")

_styles = getSampleStyleSheet()
BODY = ParagraphStyle("body", parent=_styles["BodyText"], fontName="Helvetica", fontSize=9, leading=11, textColor=INK)
HEADING = ParagraphStyle(
    "heading", parent=BODY, fontName="Helvetica-Bold", fontSize=11, leading=14, spaceBefore=6, spaceAfter=4
)
NOTE = ParagraphStyle("note", parent=BODY, fontSize=8, leading=10, textColor=MUTED)
CHECK_OK = ParagraphStyle("check_ok", parent=BODY, fontName="Helvetica-Bold", textColor=OK)
CHECK_BAD = ParagraphStyle("check_bad", parent=BODY, fontName="Helvetica-Bold", textColor=ALERT)


def head_summary(business_ids: Sequence[int] | None) -> str:
    """ "Ledger head: Water #1,204 3fa2b1c4d5e6" for the businesses (None: all) the report reads."""
    names = dict(Business.objects.values_list("pk", "name"))
    heads = [(b, n, h) for b, n, h in ledger_heads() if business_ids is None or b in business_ids]
    if not heads:
        return "Ledger head: no entries"
    label = "Ledger head" if len(heads) == 1 else "Ledger heads"
    return f"{label}: " + "; ".join(f"{names.get(b, b)} #{n:,} {h[:12]}" for b, n, h in sorted(heads))


@dataclass(frozen=True)
class PdfHeader:
    """What every page of a report says about it."""

    title: str  # "Profit and loss"
    business: str  # "Wash & Go Laundry", or "All businesses (consolidated)"
    period: str  # "1 Jan 2026 to 31 Jan 2026 (previous: 1 Dec 2025 to 31 Dec 2025)"
    generated_by: str  # the user's name, or "scheduled"
    ledger: str = ""  # head_summary(...)
    generated_at: dt.datetime = field(default_factory=timezone.now)
    landscape: bool = False


class _NumberedCanvas(Canvas):
    """Keeps every page until the end so each can say "page X of Y"."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._pages: list[dict[str, Any]] = []

    def showPage(self) -> None:  # noqa: N802 - ReportLab's name
        state = dict(self.__dict__)
        # The page's drawing operators joined now, as ReportLab joins them when the page is added
        # (same bytes): kept as a list of tens of thousands of short strings until save(), 600 pages
        # took ~11 MB more (docs/worker-memory.md).
        state["_code"] = ["\n".join(self._code)] if self._code else []
        self._pages.append(state)
        self._startPage()

    def save(self) -> None:
        total = len(self._pages)
        for index in range(total):
            state, self._pages[index] = self._pages[index], {}  # each page's state freed once added
            self.__dict__.update(state)
            self.setFont("Helvetica", 7.5)
            self.setFillColor(MUTED)
            width = self._pagesize[0]
            self.drawRightString(width - MARGIN, MARGIN - 6 * mm, f"Page {self._pageNumber} of {total}")
            super().showPage()
        super().save()


def _page_decorations(header: PdfHeader) -> Any:
    generated = timezone.localtime(header.generated_at).strftime("%d %b %Y %H:%M %Z")

    def draw(canvas: Canvas, doc: SimpleDocTemplate) -> None:
        width, height = doc.pagesize
        top = height - MARGIN
        canvas.saveState()
        # Logo placeholder: a grey square with the business's initials.
        canvas.setFillColor(BAND)
        canvas.setStrokeColor(RULE)
        canvas.rect(MARGIN, top - 16 * mm, 16 * mm, 16 * mm, stroke=1, fill=1)
        words = [word for word in header.business.split() if word[:1].isalnum()]
        initials = "".join(word[0] for word in words[:2]).upper() or "BO"
        canvas.setFillColor(MUTED)
        canvas.setFont("Helvetica-Bold", 12)
        canvas.drawCentredString(MARGIN + 8 * mm, top - 9.5 * mm, initials)
        canvas.setFillColor(INK)
        canvas.setFont("Helvetica-Bold", 13)
        canvas.drawString(MARGIN + 20 * mm, top - 5 * mm, header.business)
        canvas.setFont("Helvetica-Bold", 11)
        canvas.drawString(MARGIN + 20 * mm, top - 10.5 * mm, header.title)
        canvas.setFont("Helvetica", 8.5)
        canvas.setFillColor(MUTED)
        canvas.drawString(MARGIN + 20 * mm, top - 15 * mm, header.period)
        canvas.setStrokeColor(RULE)
        canvas.line(MARGIN, top - 19 * mm, width - MARGIN, top - 19 * mm)
        # Footer: who and when, and the ledger head the figures were read at.
        canvas.line(MARGIN, MARGIN - 1 * mm, width - MARGIN, MARGIN - 1 * mm)
        canvas.setFont("Helvetica", 7.5)
        canvas.drawString(MARGIN, MARGIN - 4 * mm, f"Generated at {generated} by {header.generated_by}")
        if header.ledger:
            canvas.drawString(MARGIN, MARGIN - 7.5 * mm, header.ledger[:160])
        canvas.restoreState()

    return draw


def content_width(header: PdfHeader) -> float:
    """The width between the margins of the header's page (portrait or landscape A4)."""
    return float((landscape(A4) if header.landscape else A4)[0] - 2 * MARGIN)


class Later(Flowable):
    """A place in a story for flowables made only when the document reaches it: a report of many parts
    (a statement per customer) then holds one part's tables at a time, not every part's (300 customers'
    statements: ~33 MB of tables built before the first page, docs/worker-memory.md)."""

    def __init__(self, make: Callable[[], list[Flowable]]) -> None:
        super().__init__()
        self.make = make

    def wrap(self, available_width: float, available_height: float) -> tuple[float, float]:
        return 0, 0  # replaced before it is laid out (_Document); nothing of its own to draw


class _Document(SimpleDocTemplate):
    def handle_flowable(self, flowables: list[Flowable]) -> None:
        while flowables and isinstance(flowables[0], Later):
            flowables[0:1] = flowables[0].make()
        if flowables:
            super().handle_flowable(flowables)


def pdf_render(out: IO[bytes], header: PdfHeader, story: list[Flowable]) -> None:
    """Write the report to `out` (a file or BytesIO). A `Later` in `story` is made when it is reached."""
    pagesize = landscape(A4) if header.landscape else A4
    doc = _Document(
        out,
        pagesize=pagesize,
        leftMargin=MARGIN,
        rightMargin=MARGIN,
        topMargin=MARGIN + HEADER_HEIGHT,
        bottomMargin=MARGIN + FOOTER_HEIGHT,
        title=f"{header.title} - {header.business}",
        author=header.generated_by,
        subject=header.period,
        creator="Back office",
    )
    decorations = {header: _page_decorations(header)}

    def decorate(canvas: Canvas, doc: SimpleDocTemplate) -> None:
        current = getattr(canvas, "report_header", header)  # set by a NextPagesHeader in the story
        if current not in decorations:
            decorations[current] = _page_decorations(current)
        decorations[current](canvas, doc)

    story = story or [Paragraph("Nothing to report.", BODY)]
    doc.build(story, onFirstPage=decorate, onLaterPages=decorate, canvasmaker=_NumberedCanvas)


class NextPagesHeader(Flowable):
    """A story element of no size: the pages after this one carry `header` (a report of several
    parts - one customer or one business each - follows it with a PageBreak)."""

    def __init__(self, header: PdfHeader) -> None:
        super().__init__()
        self.header = header

    def wrap(self, available_width: float, available_height: float) -> tuple[float, float]:
        return 0, 0

    def draw(self) -> None:
        self.canv.report_header = self.header  # type: ignore[attr-defined]


# Row kinds of a report table.
SECTION, LINE, SUBTOTAL, TOTAL, NOTE_ROW = "section", "line", "subtotal", "total", "note"


@dataclass(frozen=True)
class Row:
    """One row of a report table: a label and its cells (already formatted text)."""

    kind: str
    label: str
    cells: Sequence[str] = ()
    marked: bool = False  # e.g. an intercompany line, shown in italics with a marker
    alert: bool = False  # a failed check: the row in red


def _fit(text: str, width: float, font: str, size: float, align: int = TA_LEFT, color: Any = INK) -> str | Paragraph:
    """`text` as is when it fits a cell `width` wide (padding aside), else a Paragraph that wraps in it."""
    if stringWidth(text, font, size) <= width - 12:
        return text
    style = ParagraphStyle("cell", fontName=font, fontSize=size, leading=size + 1.5, alignment=align, textColor=color)
    return Paragraph(xml_escape(text), style)


def grid_style(*, header_rows: int = 1) -> list[tuple[Any, ...]]:
    """The look every report table shares: muted bold header rows with a rule under the last one,
    8.5 pt rows below, tight padding. Add a table's own commands after these."""
    last = header_rows - 1
    return [
        ("FONT", (0, 0), (-1, last), "Helvetica-Bold", 8.5),
        ("TEXTCOLOR", (0, 0), (-1, last), MUTED),
        ("LINEBELOW", (0, last), (-1, last), 0.6, INK),
        ("FONT", (0, header_rows), (-1, -1), "Helvetica", 8.5),
        ("VALIGN", (0, 0), (-1, -1), "MIDDLE"),
        ("TOPPADDING", (0, 0), (-1, -1), 2.2),
        ("BOTTOMPADDING", (0, 0), (-1, -1), 2.2),
    ]


def report_table(
    columns: Sequence[str],
    rows: Sequence[Row],
    *,
    label_width: float | None = None,
    width: float = 180 * mm,
    groups: Sequence[tuple[str, int]] = (),
) -> Table:
    """A statement table: a label column and right-aligned figure columns, header repeated on every page.

    Sections are a shaded band, subtotals have a rule above, totals a rule above and a double rule below.
    `groups` adds a header row above the column names, each (text, n) spanning n figure columns
    (e.g. a business over its Debit and Credit columns).
    """
    figures = max(len(columns) - 1, 0)
    label_w = label_width or (width * (0.5 if figures <= 2 else 0.34 if figures <= 4 else 0.26))
    figure_w = (width - label_w) / figures if figures else 0
    top = 1 if groups else 0  # header rows above the first row of figures, less one
    data: list[list[Any]] = []
    style: list[tuple[Any, ...]] = []
    if groups:
        group_row: list[Any] = [""]
        col = 1
        for text, span in groups:
            group_row += [_fit(text, figure_w * span, "Helvetica-Bold", 8.5, TA_CENTER, MUTED)] + [""] * (span - 1)
            if span > 1:
                style.append(("SPAN", (col, 0), (col + span - 1, 0)))
            style.append(("LINEBELOW", (col, 0), (col + span - 1, 0), 0.4, RULE))
            col += span
        data.append(group_row + [""] * (figures + 1 - len(group_row)))
        style += [("FONT", (0, 0), (-1, 0), "Helvetica-Bold", 8.5), ("ALIGN", (1, 0), (-1, 0), "CENTER")]
    data.append(
        [_fit(columns[0], label_w, "Helvetica-Bold", 8.5, TA_LEFT, MUTED)]
        + [_fit(c, figure_w, "Helvetica-Bold", 8.5, TA_RIGHT, MUTED) for c in columns[1:]]
    )
    style += [*grid_style(header_rows=top + 1), ("ALIGN", (1, top), (-1, -1), "RIGHT")]
    for i, row in enumerate(rows, start=top + 1):
        cells = list(row.cells) + [""] * (figures - len(row.cells))
        label = f"{row.label} *" if row.marked else row.label
        font = {SECTION: "Helvetica-Bold", SUBTOTAL: "Helvetica-Bold", TOTAL: "Helvetica-Bold"}.get(row.kind, "")
        font = font or ("Helvetica-Oblique" if row.marked or row.kind == NOTE_ROW else "Helvetica")
        color = ALERT if row.alert else MUTED if row.kind == NOTE_ROW else INK
        data.append([_fit(label, label_w, font, 9 if row.kind == TOTAL else 8.5, TA_LEFT, color), *cells[:figures]])
        if row.kind == SECTION:
            style += [("BACKGROUND", (0, i), (-1, i), BAND), ("FONT", (0, i), (-1, i), "Helvetica-Bold", 8.5)]
        elif row.kind == SUBTOTAL:
            style += [("LINEABOVE", (1, i), (-1, i), 0.4, RULE), ("FONT", (0, i), (-1, i), "Helvetica-Bold", 8.5)]
        elif row.kind == TOTAL:
            style += [
                ("LINEABOVE", (1, i), (-1, i), 0.6, INK),
                ("LINEBELOW", (1, i), (-1, i), 1.2, INK),
                ("FONT", (0, i), (-1, i), "Helvetica-Bold", 9),
            ]
        elif row.kind == NOTE_ROW:
            style += [("FONT", (0, i), (-1, i), "Helvetica-Oblique", 8), ("TEXTCOLOR", (0, i), (-1, i), MUTED)]
        elif row.marked:
            style += [("FONT", (0, i), (-1, i), "Helvetica-Oblique", 8.5)]
        if row.alert:
            style += [("TEXTCOLOR", (0, i), (-1, i), ALERT), ("FONT", (0, i), (-1, i), "Helvetica-Bold", 8.5)]
    table = Table(data, colWidths=[label_w] + [figure_w] * figures, repeatRows=top + 1, hAlign="LEFT")
    table.setStyle(TableStyle(style))
    return table


def heading(text: str) -> Paragraph:
    """A section heading; `text` is plain text (escaped here, ReportLab reads markup)."""
    return Paragraph(xml_escape(text), HEADING)


def paragraph(text: str, *, note: bool = False) -> Paragraph:
    """A paragraph of plain text (escaped here)."""
    return Paragraph(xml_escape(text), NOTE if note else BODY)


def check_line(text: str, *, ok: bool) -> Paragraph:
    """A check's outcome in bold: green when it holds, red when it fails ("Debits = credits", "NOT BALANCED")."""
    return Paragraph(xml_escape(text), CHECK_OK if ok else CHECK_BAD)


def gap(height_mm: float = 4) -> Spacer:
    return Spacer(1, height_mm * mm)

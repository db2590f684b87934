"""The shared PDF layout: every page says whose report it is, when, by whom, at which ledger head,
and "page X of Y"; figures read back as text exactly as `money()` prints them."""

from __future__ import annotations

import datetime as dt
import io
from decimal import Decimal

import pytest
from pypdf import PdfReader

from accounts.pdf import LINE, SECTION, TOTAL, PdfHeader, Row, head_summary, money, paragraph, pdf_render, report_table
from tenancy.models import Business
from tests.accounts.conftest import fire_deferred
from tests.factories.accounts import sale


def test_money_prints_two_decimals_with_separators() -> None:
    assert money(Decimal("1234567.5")) == "1,234,567.50"
    assert money(Decimal("-3")) == "-3.00"
    assert money(None) == ""


def _text(pdf: bytes) -> list[str]:
    return [page.extract_text() for page in PdfReader(io.BytesIO(pdf)).pages]


def test_every_page_has_the_header_footer_and_page_numbers() -> None:
    rows = [Row(SECTION, "Income")]
    rows += [Row(LINE, f"Line {i} & more", [money(Decimal(i))]) for i in range(150)]
    rows.append(Row(TOTAL, "Total income", [money(Decimal(sum(range(150))))]))
    header = PdfHeader(
        title="Profit and loss",
        business="Maji Safi <Water>",
        period="1 Jan 2026 to 31 Jan 2026",
        generated_by="owner",
        ledger="Ledger head: Maji Safi #12 abcdef012345",
        generated_at=dt.datetime(2026, 2, 1, 6, 0, tzinfo=dt.UTC),
    )
    out = io.BytesIO()
    pdf_render(out, header, [paragraph("Figures in KES."), report_table(["Account", "Amount"], rows)])
    pages = _text(out.getvalue())
    assert len(pages) >= 3
    for number, text in enumerate(pages, start=1):
        assert "Maji Safi <Water>" in text and "Profit and loss" in text and "1 Jan 2026 to 31 Jan 2026" in text
        assert "Generated at 01 Feb 2026 09:00 EAT by owner" in text
        assert "Ledger head: Maji Safi #12 abcdef012345" in text
        assert f"Page {number} of {len(pages)}" in text
        assert "Account" in text  # the header row repeats
    everything = "\n".join(pages)
    assert "Line 149 & more" in everything and "Total income" in everything and "11,175.00" in everything


@pytest.mark.django_db
def test_head_summary_names_each_business_head(water: Business, laundry: Business) -> None:
    assert head_summary([water.pk]) == "Ledger head: no entries"
    sale(water)
    fire_deferred()  # the seal is written by a deferred trigger, at commit
    text = head_summary(None)
    assert text.startswith("Ledger head: ") and water.name in text and "#1 " in text
    assert laundry.name not in text

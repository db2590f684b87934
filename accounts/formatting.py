"""How money is written in reports, e-mails and pages: one function, with no ReportLab behind it
(accounts.pdf re-exports it for the PDF code)."""

from __future__ import annotations

from decimal import Decimal


def money(value: Decimal | int | None) -> str:
    """1234.5 -> "1,234.50"; -3 -> "-3.00"; None -> "" (an empty cell)."""
    if value is None:
        return ""
    return f"{Decimal(value).quantize(Decimal('0.01')):,}"

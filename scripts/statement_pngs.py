#!/usr/bin/env python3
"""Render the first page of each statement PDF to PNG (docs/reports/), from the database in DATABASE_URL.

    .venv/bin/python manage.py seed_demo --days 60
    .venv/bin/python scripts/statement_pngs.py [--anchor 2026-01-15] [--out docs/reports]

The statements are those of the month holding the anchor (default: last month), compared with the
month before; per business for the first business by name, and consolidated. Scale 1.2 keeps a page
under 200 KB.
"""

from __future__ import annotations

import argparse
import datetime as dt
import io
import os
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
os.environ.setdefault("DJANGO_SETTINGS_MODULE", "backoffice.settings")


def main() -> None:
    import django

    django.setup()
    import pypdfium2 as pdfium
    from django.utils import timezone

    from accounts.periods import MONTH, period_containing
    from accounts.reports import statement_pdf_render
    from tenancy.models import Business

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--anchor", type=dt.date.fromisoformat, default=None)
    parser.add_argument("--out", type=Path, default=ROOT / "docs" / "reports")
    parser.add_argument("--scale", type=float, default=1.2)
    args = parser.parse_args()
    anchor = args.anchor or (timezone.localdate().replace(day=1) - dt.timedelta(days=1))
    period = period_containing(MONTH, anchor)
    business = Business.objects.order_by("name").first()
    if business is None:
        raise SystemExit("no business: run manage.py setup_demo and seed_demo first")
    args.out.mkdir(parents=True, exist_ok=True)
    wanted: list[tuple[str, list[int] | None]] = [
        (r, None) for r in ("profit_and_loss", "balance_sheet", "cash_flow", "trial_balance")
    ]
    wanted += [(r, [business.pk]) for r in ("profit_and_loss", "balance_sheet", "cash_flow", "trial_balance")]
    for report, ids in wanted:
        buffer = io.BytesIO()
        statement_pdf_render(
            buffer, report=report, business_ids=ids, period=period, compare="previous", generated_by="owner"
        )
        page = pdfium.PdfDocument(buffer.getvalue())[0]
        image = page.render(scale=args.scale).to_pil().convert("P", palette=1, colors=64)
        name = f"{report.replace('_', '-')}-{'consolidated' if ids is None else 'business'}.png"
        image.save(args.out / name, optimize=True)
        print(f"{name}: {(args.out / name).stat().st_size // 1024} KB")


if __name__ == "__main__":
    main()

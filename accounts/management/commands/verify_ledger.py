"""`manage.py verify_ledger`: recompute every business's hash chain and balances from the raw rows.

Exit status 0 when the ledger is intact; 1 (a CommandError) naming the first broken entry (business, entry
number and id, what is wrong). Safe to run at any time: it only reads.
"""

from __future__ import annotations

import time
from typing import Any

from django.core.management.base import BaseCommand, CommandError, CommandParser

from accounts.verification import ledger_verify


class Command(BaseCommand):
    help = (
        "Verify the ledger: gap-free numbers, balanced entries and hash chains (--totals: daily totals too). "
        "Exit status 1 naming the first broken entry."
    )

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("--business", type=int, action="append", help="Only this business id (repeatable).")
        parser.add_argument("--workers", type=int, default=2, help="Businesses checked at once (default 2).")
        parser.add_argument("--all-broken", type=int, default=1, metavar="N", help="List up to N broken entries each.")
        parser.add_argument(
            "--totals",
            action="store_true",
            help="Also check the daily account totals reports read against the lines (about twice as long).",
        )

    def handle(self, *args: Any, **options: Any) -> None:
        started = time.monotonic()
        report = ledger_verify(
            business_ids=options["business"],
            limit=max(1, options["all_broken"]),
            workers=options["workers"],
            check_totals=options["totals"],
        )
        for business in report.businesses:
            status = "ok" if business.ok else "BROKEN"
            self.stdout.write(
                f"{business.name} (business {business.business_id}): {business.entries} entries, {status}"
            )
            for broken in business.broken:
                self.stdout.write(f"  entry no. {broken.number} (id {broken.entry_id}): {broken.problem}")
            for problem in business.problems:
                self.stdout.write(f"  {problem}")
        elapsed = time.monotonic() - started
        if report.ok:
            self.stdout.write(self.style.SUCCESS(f"Ledger verified: {report.entries} entries in {elapsed:.2f} s."))
            return
        first = report.first_broken
        if first is not None:
            business = next(b for b in report.businesses if b.business_id == first.business_id)
            message = (
                f"First broken entry: business {first.business_id} ({business.name}) entry no. {first.number} "
                f"(id {first.entry_id}): {first.problem}"
            )
        else:
            business = next(b for b in report.businesses if not b.ok)
            message = f"Broken: business {business.business_id} ({business.name}): {business.problems[0]}"
        raise CommandError(message, returncode=1)

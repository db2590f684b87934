"""`manage.py verify_ledger`: recompute every business's hash chain and balances from the raw rows, then
compare the chains with the anchors kept outside the database (accounts/anchors.py).

Exit status 0 when the ledger is intact; 1 (a CommandError) naming the first broken entry (business, entry
number and id, what is wrong), a business whose chain no longer holds an anchored head (re-sealed or cut
off), or a forged anchor. A missing anchors file is only a warning (a new install). Safe to run at any
time: it only reads.
"""

from __future__ import annotations

import time
from typing import Any

from django.core.management.base import BaseCommand, CommandError, CommandParser

from accounts.anchors import AnchorCheck, anchors_check, anchors_path
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
        parser.add_argument(
            "--anchors",
            metavar="PATH",
            help="Compare with this anchors file (e.g. one beside a dump), not LEDGER_ANCHOR_DIR/anchors.jsonl.",
        )

    def handle(self, *args: Any, **options: Any) -> None:
        if options["anchors"] and not anchors_path(options["anchors"]).is_file():
            raise CommandError(f"No anchors file at {options['anchors']}.", returncode=1)
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
        anchors = anchors_check(path=options["anchors"], business_ids=options["business"])
        self._write_anchors(anchors)
        elapsed = time.monotonic() - started
        if report.ok and anchors.ok:
            self.stdout.write(self.style.SUCCESS(f"Ledger verified: {report.entries} entries in {elapsed:.2f} s."))
            return
        if report.ok:
            raise CommandError(self._anchor_message(anchors), returncode=1)
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

    def _write_anchors(self, check: AnchorCheck) -> None:
        path = check.file.path
        if not check.file.exists:
            self.stdout.write(
                self.style.WARNING(
                    f"Anchors: no file at {path}: the chain heads were not compared with anything outside the "
                    "database (a new install; run `manage.py ledger_anchor`)."
                )
            )
            return
        for problem in check.file.forged:
            self.stdout.write(f"Anchors: {path}, {problem}")
        if check.file.torn:
            self.stdout.write(self.style.WARNING(f"Anchors: {path}: the last line is cut short (ignored)."))
        for business_id, details in check.failures.items():
            self.stdout.write(f"Anchors: business {business_id} ({check.names[business_id]}): BROKEN")
            for detail in details:
                self.stdout.write(f"  {detail}")
        status = "ok" if check.ok else "BROKEN"
        self.stdout.write(f"Anchors: {path}: {check.checked} anchored head(s) compared, {status}")

    @staticmethod
    def _anchor_message(check: AnchorCheck) -> str:
        if check.failures:
            business_id, details = next(iter(check.failures.items()))
            return f"Anchor broken: business {business_id} ({check.names[business_id]}): {details[0]}"
        return f"Forged anchor: {anchors_path(check.file.path)}, {check.file.forged[0]}"

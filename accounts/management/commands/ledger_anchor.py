"""`manage.py ledger_anchor`: append each business's hash-chain head, signed, to the anchors file.

The hourly `ledger.anchor` task does the same. Exit status 1 when a business's chain no longer holds its
last anchor (it is then not anchored again; `verify_ledger` names what changed). See accounts/anchors.py.
"""

from __future__ import annotations

from typing import Any

from django.core.management.base import BaseCommand, CommandError, CommandParser

from accounts.anchors import anchor_lines_current, anchor_write


class Command(BaseCommand):
    help = (
        "Anchor every business's hash-chain head outside the database: append a signed line to "
        "LEDGER_ANCHOR_DIR/anchors.jsonl (or --file) for each head that moved since its last anchor."
    )

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("--file", help="Append to this anchors file instead of LEDGER_ANCHOR_DIR/anchors.jsonl.")
        parser.add_argument("--source", default="command", help="Who wrote the anchors (default: command).")
        parser.add_argument(
            "--print",
            action="store_true",
            help="Only print signed anchor lines of the current heads (every business); write nothing.",
        )

    def handle(self, *args: Any, **options: Any) -> None:
        if options["print"]:
            for line in anchor_lines_current(source=options["source"]):
                self.stdout.write(line, ending="")
            return
        run = anchor_write(path=options["file"], source=options["source"])
        for anchor in run.written:
            self.stdout.write(f"business {anchor.business_id}: anchored entry no. {anchor.number} ({anchor.hash})")
        self.stdout.write(f"{run.path}: {len(run.written)} anchor(s) written, {run.unchanged} head(s) unchanged.")
        if run.refused:
            for reason in run.refused:
                self.stderr.write(f"NOT anchored: {reason}")
            raise CommandError(
                f"{len(run.refused)} business(es) no longer hold their last anchor; run verify_ledger.", returncode=1
            )

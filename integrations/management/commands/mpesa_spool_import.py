"""Import the Daraja callbacks spooled while PostgreSQL was down (integrations/mpesa/spool.py).

The sweeper does the same every minute; this is for an operator who wants it now, or a host without
beat. Safe to run at any time, alongside the sweeper or another copy of itself.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from django.core.management.base import BaseCommand, CommandError, CommandParser
from django.db import DatabaseError

from integrations.mpesa.spool import REJECTED, spool_dir, spool_import, spool_pending


class Command(BaseCommand):
    help = "Store the callbacks waiting in MPESA_SPOOL_DIR in the M-Pesa inbox."

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("--dir", default="", help="Spool directory (default: MPESA_SPOOL_DIR)")

    def handle(self, *args: Any, **options: Any) -> None:
        root = Path(options["dir"]) if options["dir"] else spool_dir()
        try:
            result = spool_import(directory=root)
        except DatabaseError as exc:
            raise CommandError(f"the database refused the import ({exc}); the files stay in {root}") from exc
        counts = ", ".join(f"{name} {n}" for name, n in result.as_dict().items())
        self.stdout.write(f"{root}: {counts}; still waiting {spool_pending(root)}")
        rejected = root / REJECTED
        if rejected.is_dir() and any(rejected.iterdir()):
            self.stdout.write(f"rejected files (unknown or inactive till, unreadable) are kept in {rejected}")

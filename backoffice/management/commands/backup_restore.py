"""`manage.py backup_restore DUMP --database NEW_NAME [--dry-run] [--verify]`: the disaster-recovery drill
(docs/deploy.md, "Restore").

Restores a backup's dump into a NEW database (an existing one, or the live database's name, is refused),
after checking its SHA-256 against the Backup row or the `.sha256` file beside it. `--dry-run`: only those
checks and `pg_restore --list`. `--verify`: then the restored database is checked like a nightly backup's
scratch copy (verify_ledger with the anchors beside the dump, row counts and heads against the Backup row
or the manifest beside the dump). Connects as BACKUP_DATABASE_URL's role, which owns what it restores.
Exit status 0 when everything asked for passed; 1 naming what did not.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from django.core.management.base import BaseCommand, CommandError, CommandParser

from backoffice.backups import BackupError, backup_restore


class Command(BaseCommand):
    help = "Restore a backup's dump into a new database (checksum first; --dry-run, --verify)."

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("dump", help="The .dump file (a .sha256 or a Backup row must vouch for it).")
        parser.add_argument("--database", required=True, help="The NEW database to create and restore into.")
        parser.add_argument("--dry-run", action="store_true", help="Check the file and list it; create nothing.")
        parser.add_argument("--verify", action="store_true", help="Check the restored database like a nightly backup.")

    def handle(self, *args: Any, **options: Any) -> None:
        path = Path(options["dump"])
        try:
            report = backup_restore(
                path=path, database=options["database"], dry_run=options["dry_run"], verify=options["verify"]
            )
        except BackupError as exc:
            raise CommandError(str(exc), returncode=1) from exc
        self.stdout.write(
            f"{path.name}: SHA-256 {report.sha256} matches {report.checksum_from}; {report.entries} archive entries, "
            f"{report.tables} tables with data, {report.triggers} ledger triggers."
        )
        if options["dry_run"]:
            self.stdout.write(self.style.SUCCESS(f"Dry run: nothing created; {report.database!r} is free."))
            return
        self.stdout.write(self.style.SUCCESS(f"Restored into the new database {report.database!r}."))
        if report.verified:
            self.stdout.write(self.style.SUCCESS(f"Verified: {report.verified}"))

"""`manage.py backup_run`: a backup now, then its restore check, as the nightly task does (cron, ops, before
a risky change). Exit status 0 when the backup succeeded and was verified; 1 naming what failed.

    manage.py backup_run [--no-verify]
"""

from __future__ import annotations

from typing import Any

from django.core.management.base import BaseCommand, CommandError, CommandParser
from django.template.defaultfilters import filesizeformat

from backoffice.backups import BackupError, backup_run, backup_verify
from backoffice.models import BackupState, VerifyState


class Command(BaseCommand):
    help = "Back up the database and uploaded files into BACKUP_DIR, then prove the dump by restoring it."

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("--no-verify", action="store_true", help="Skip the restore check (not recommended).")

    def handle(self, *args: Any, **options: Any) -> None:
        try:
            backup = backup_run()
        except BackupError as exc:
            raise CommandError(str(exc), returncode=1) from exc
        if backup.state != BackupState.SUCCEEDED:
            raise CommandError(f"Backup #{backup.pk} failed: {backup.error}", returncode=1)
        self.stdout.write(
            f"Backup #{backup.pk}: {backup.database_file} "
            f"({filesizeformat(backup.size_bytes or 0)} with the media archive) "
            f"in {backup.duration_seconds:.1f} s, SHA-256 {backup.sha256}."
        )
        if backup.offsite_location or backup.offsite_error:
            self.stdout.write(f"Off-site: {backup.offsite_location or '-'} {backup.offsite_error}".rstrip())
        if options["no_verify"]:
            self.stdout.write(self.style.WARNING("Not verified (--no-verify)."))
            return
        try:
            backup = backup_verify(backup=backup)
        except BackupError as exc:
            raise CommandError(str(exc), returncode=1) from exc
        if backup.verify_state != VerifyState.VERIFIED:
            raise CommandError(f"Backup #{backup.pk} failed its restore check: {backup.verify_message}", returncode=1)
        self.stdout.write(self.style.SUCCESS(f"Verified in {backup.verify_seconds:.1f} s: {backup.verify_message}"))

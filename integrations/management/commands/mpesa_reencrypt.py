"""Re-encrypt every stored till credential with the first MPESA_ENCRYPTION_KEY (key rotation).

Rotation (docs/deploy.md): put the new key first in MPESA_ENCRYPTION_KEY, keep the old one after it,
restart, run this, then drop the old key. Also moves credentials stored with the key derived from
SECRET_KEY (installs from before MPESA_ENCRYPTION_KEY was read). Safe to run again: a second run
rewrites nothing.
"""

from __future__ import annotations

from typing import Any

from django.core.management.base import BaseCommand, CommandError, CommandParser

from integrations.mpesa.tills import till_credentials_reencrypt


class Command(BaseCommand):
    help = "Re-encrypt every stored till credential with the first MPESA_ENCRYPTION_KEY (run after adding a key)."

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument(
            "--strict",
            action="store_true",
            help="exit with an error when a credential cannot be read with any key (the others are still moved)",
        )

    def handle(self, *args: Any, **options: Any) -> None:
        rewritten, unreadable = till_credentials_reencrypt()
        self.stdout.write(f"{rewritten} till credential(s) re-encrypted with the first key.")
        if not unreadable:
            return
        for till_id, field in unreadable:
            self.stderr.write(f"till {till_id}: {field} cannot be decrypted with any key; enter it again in the admin.")
        if options["strict"]:
            raise CommandError(f"{len(unreadable)} credential(s) could not be read")

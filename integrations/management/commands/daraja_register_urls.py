"""Register a till's C2B validation and confirmation URLs with Daraja."""

from __future__ import annotations

from typing import Any

from django.core.management.base import BaseCommand, CommandError, CommandParser

from integrations.mpesa.exceptions import MpesaError
from integrations.mpesa.models import Till
from integrations.mpesa.secrets import SecretUnreadable
from integrations.mpesa.tills import till_callback_urls, till_register_urls


class Command(BaseCommand):
    help = "Register the C2B URLs of --till ID with Daraja (v1: hashed MSISDN; --c2b-version v2: masked)."

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("--till", type=int, required=True)
        parser.add_argument("--c2b-version", dest="c2b_version", choices=["v1", "v2"], default="v1")

    def handle(self, *args: Any, **options: Any) -> None:
        till = Till.objects.filter(pk=options["till"]).first()
        if till is None:
            raise CommandError(f"no till with id {options['till']}")
        try:
            urls = till_callback_urls(till)
            answer = till_register_urls(till=till, acting_user="manage.py", version=options["c2b_version"])
        except (MpesaError, SecretUnreadable) as exc:
            raise CommandError(str(exc)) from exc
        self.stdout.write(f"Registered for {till}: {answer.response_code} {answer.response_description}")
        self.stdout.write(f"  confirmation {urls['c2b_confirmation']}")
        self.stdout.write(f"  validation   {urls['c2b_validation']}")

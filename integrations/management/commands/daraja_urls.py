"""Print each till's full callback URLs: what the owner registers with Safaricom."""

from __future__ import annotations

from typing import Any

from django.core.management.base import BaseCommand, CommandError, CommandParser

from integrations.mpesa.exceptions import MpesaError
from integrations.mpesa.models import Till
from integrations.mpesa.tills import till_callback_urls


class Command(BaseCommand):
    help = "Print the Daraja callback URLs of every till (or of --till ID)."

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("--till", type=int, help="Only this till (id)")
        parser.add_argument("--base-url", default="", help="Public base URL, if the till has none set")

    def handle(self, *args: Any, **options: Any) -> None:
        tills = Till.objects.select_related("business").order_by("business__name", "name")
        if options["till"]:
            tills = tills.filter(pk=options["till"])
            if not tills:
                raise CommandError(f"no till with id {options['till']}")
        for till in tills:
            state = "" if till.is_active else " (inactive)"
            self.stdout.write(f"{till.business} - {till.name} ({till.get_kind_display()} {till.shortcode}){state}")
            try:
                urls = till_callback_urls(till, base_url=options["base_url"])
            except MpesaError as exc:
                self.stdout.write(f"  {exc}")
                continue
            for name, url in urls.items():
                self.stdout.write(f"  {name:17} {url}")

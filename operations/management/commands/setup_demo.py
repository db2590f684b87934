"""`manage.py setup_demo`: the demo owner, the three businesses and one staff member each.

Safe to run on every start (`make run` does): existing rows are kept, passwords are not reset
unless --reset-passwords is given.
"""

from __future__ import annotations

import os
from typing import Any

from django.contrib.auth.models import User
from django.core.management.base import BaseCommand, CommandParser
from django.db import transaction

from operations.services.businesses import business_ensure
from tenancy.models import BusinessKind
from tenancy.services import membership_assign, staff_group_ensure

DEMO_BUSINESSES = [
    ("Maji Safi Water", BusinessKind.WATER, "maji"),
    ("Fresh Fold Laundry", BusinessKind.LAUNDRY, "fold"),
    ("Duka & Gas", BusinessKind.RETAIL_LPG, "duka"),
]


class Command(BaseCommand):
    help = "Create the demo owner, the three demo businesses and their staff (idempotent)."

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("--reset-passwords", action="store_true", help="Set the demo passwords again.")

    def handle(self, *args: Any, **options: Any) -> None:
        owner_password = os.environ.get("DEMO_OWNER_PASSWORD", "owner-demo-2026")
        staff_password = os.environ.get("DEMO_STAFF_PASSWORD", "staff-demo-2026")
        with transaction.atomic():
            owner, created = User.objects.get_or_create(
                username="owner", defaults={"is_staff": True, "is_superuser": True, "first_name": "Owner"}
            )
            if created or options["reset_passwords"]:
                owner.set_password(owner_password)
                owner.save()
            group = staff_group_ensure()
            for name, kind, username in DEMO_BUSINESSES:
                business = business_ensure(name=name, kind=kind)
                staff, created = User.objects.get_or_create(username=username, defaults={"is_staff": True})
                if created or options["reset_passwords"]:
                    staff.set_password(staff_password)
                    staff.save()
                staff.groups.add(group)
                membership_assign(user=staff, business=business)
        self.stdout.write(
            self.style.SUCCESS(
                f"Demo ready: owner + {len(DEMO_BUSINESSES)} businesses, staff: "
                + ", ".join(u for _, _, u in DEMO_BUSINESSES)
            )
        )

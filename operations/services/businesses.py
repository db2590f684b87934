"""Opening a business: the row (tenancy) with its books (the ledger's chart and operations' accounts)."""

from __future__ import annotations

from django.db import transaction

from accounts.services import chart_ensure_default
from operations.services.postings import chart_operations_ensure
from tenancy.models import Business


def business_ensure(*, name: str, kind: str) -> Business:
    """The business called `name`, created with its books if missing. Safe to run again."""
    with transaction.atomic():
        business, _ = Business.objects.get_or_create(name=name, defaults={"kind": kind})
        chart_ensure_default(business=business)
        chart_operations_ensure(business=business)
    return business

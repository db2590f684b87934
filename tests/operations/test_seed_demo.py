"""seed_demo: 30 days through the services leave the ledger verified and the trial balance at zero."""

from __future__ import annotations

import pytest
from django.core.management import call_command
from django.utils import timezone

from accounts.models import JournalEntry
from accounts.selectors import trial_balance
from operations.models import DayClosing, LaundryOrder, Sale, StockLevel, StockMovement
from tenancy.models import Business
from tests.operations.ledger import stock_total_value


@pytest.mark.slow
@pytest.mark.django_db(transaction=True)
def test_seed_demo_30_days_keeps_the_ledger_verified_and_balanced(settings) -> None:  # type: ignore[no-untyped-def]
    settings.PASSWORD_HASHERS = ["django.contrib.auth.hashers.MD5PasswordHasher"]
    call_command("seed_demo", "--days", "30")

    businesses = list(Business.objects.order_by("name"))
    assert [b.name for b in businesses] == ["Duka & Gas", "Fresh Fold Laundry", "Maji Safi Water"]
    assert Sale.objects.filter(status="posted").count() > 500
    assert LaundryOrder.objects.filter(status="collected").exists()
    assert DayClosing.objects.filter(status="closed").count() == 90
    assert JournalEntry.objects.count() > 1000

    call_command("verify_ledger", "--workers", "1")  # raises CommandError (exit 1) if anything is broken
    today = timezone.localdate()
    for business in businesses:
        tb = trial_balance(business_ids=[business.pk], as_of=today)
        assert tb.rows and tb.total_debit == tb.total_credit
        # the stock sub-ledger is the inventory account, to the cent
        inventory = next(r for r in tb.rows if r.name == "Inventory") if business.kind != "laundry" else None
        if inventory is not None:
            assert inventory.balance == stock_total_value(business=business, as_of=today)
            assert inventory.balance == sum(level.value for level in StockLevel.objects.filter(business=business))
    consolidated = trial_balance(business_ids=None, as_of=today)
    assert consolidated.total_debit == consolidated.total_credit

    # a second run does not post the closed days again
    entries = JournalEntry.objects.count()
    movements = StockMovement.objects.count()
    call_command("seed_demo", "--days", "30")
    assert JournalEntry.objects.count() == entries and StockMovement.objects.count() == movements

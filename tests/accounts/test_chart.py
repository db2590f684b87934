"""The chart of accounts: default charts per kind, roles, idempotent set-up; and flush of a ledger."""

from __future__ import annotations

import pytest
from django.core.management import call_command
from django.db import DatabaseError, connection

from accounts.charts import BY_KIND, COMMON, default_chart
from accounts.exceptions import InvalidAccount
from accounts.models import Account, AccountType, Books, JournalEntry
from accounts.selectors import account_for_role
from accounts.services import chart_ensure_default
from tenancy.models import Business, BusinessKind
from tests.factories.accounts import sale

ROLES_THE_PRODUCT_USES = {
    "cash",
    "mpesa_clearing",
    "bank",
    "receivables",
    "inventory",
    "vat_output",
    "vat_input",
    "cost_of_sales",
    "owner_equity",
    "retained_earnings",
    "rounding",
    "suspense",
    "mpesa_charges",
    "cash_over_short",
    "payables",
    "customer_deposits",
    "stock_variance",
}


@pytest.mark.parametrize("kind", BusinessKind.values)
def test_every_kind_gets_a_complete_chart(db, kind):
    business = Business.objects.create(name=f"A {kind}", kind=kind)
    chart_ensure_default(business=business)
    roles = set(Account.objects.filter(business=business).values_list("role", flat=True))
    assert roles.issuperset(ROLES_THE_PRODUCT_USES)
    assert any(role.startswith("sales_") for role in roles)
    assert any(role.startswith("expense_") for role in roles)
    assert ("cylinder_deposits" in roles) == (kind == BusinessKind.RETAIL_LPG)
    assert Books.objects.filter(business=business, last_number=0, lock_date=None).exists()
    # Group accounts total their children; the children share their type
    for child in Account.objects.filter(business=business, parent__isnull=False).select_related("parent"):
        parent = child.parent
        assert parent is not None and parent.type == child.type and parent.business_id == business.pk
    assert account_for_role(business=business, role="cash").type == AccountType.ASSET


def test_the_default_charts_are_consistent():
    for kind in BusinessKind.values:
        chart = default_chart(kind)
        codes, roles = [a.code for a in chart], [a.role for a in chart]
        assert len(codes) == len(set(codes)) and len(roles) == len(set(roles))
        for account in chart:
            if account.parent_role:
                parent = next(a for a in chart if a.role == account.parent_role)
                assert parent.type == account.type and parent.code < account.code
    assert COMMON and set(BusinessKind.values) == set(BY_KIND)


def test_setting_up_the_chart_twice_changes_nothing(water):
    before = list(Account.objects.filter(business=water).values_list("id", "code", "role").order_by("id"))
    Account.objects.filter(business=water, role="cash").update(name="Till drawer")
    chart_ensure_default(business=water)
    after = list(Account.objects.filter(business=water).values_list("id", "code", "role").order_by("id"))
    assert before == after
    assert account_for_role(business=water, role="cash").name == "Till drawer"


def test_missing_default_accounts_are_added_back(water):
    Account.objects.filter(business=water, role="expense_other").delete()
    chart_ensure_default(business=water)
    assert Account.objects.filter(business=water, role="expense_other", code="6090").exists()


def test_a_taken_code_is_reported(water):
    Account.objects.filter(business=water, role="expense_other").delete()
    Account.objects.create(business=water, code="6090", name="Fuel for the van", type=AccountType.EXPENSE)
    with pytest.raises(InvalidAccount, match="code 6090 is taken"):
        chart_ensure_default(business=water)


def test_an_unknown_role_is_an_invalid_account(water):
    with pytest.raises(InvalidAccount, match="no account with role"):
        account_for_role(business=water, role="goodwill")


def test_accounts_with_postings_cannot_be_deleted(water):
    sale(water)
    with pytest.raises(DatabaseError):
        Account.objects.filter(business=water, role="cash").delete()


@pytest.mark.django_db(transaction=True)
def test_flush_empties_a_database_holding_a_ledger(water):
    # Given posted entries, which TRUNCATE on its own refuses
    sale(water)
    # When Django's flush runs (through the owner role, DATABASE_OWNER_URL, as after each such test)
    call_command("flush", interactive=False, verbosity=0)
    # Then everything is gone and the triggers are back on for the session
    assert not JournalEntry.objects.exists() and not Business.objects.exists()
    with connection.cursor() as cursor:
        cursor.execute("SHOW session_replication_role")
        assert cursor.fetchone()[0] == "origin"
        cursor.execute(
            "SELECT count(*) FROM pg_trigger WHERE tgrelid IN ('accounts_journalline'::regclass,"
            " 'accounts_journalentry'::regclass, 'accounts_entryseal'::regclass) AND tgenabled <> 'O'"
        )
        assert cursor.fetchone()[0] == 0  # the owner's flush disabled them inside its transaction only

"""The ledger's admin pages through the test client: lists, the manual journal, reverse and period close
actions, the statement pages; and per-business access for a staff member."""

from __future__ import annotations

import datetime as dt
import re
from decimal import Decimal
from html import escape

import pytest
from django.urls import reverse

from accounts import admin as ledger_admin
from accounts.models import Account, Books, JournalEntry, PeriodClose
from accounts.services import books_close_period
from tests.factories.accounts import acct, sale
from tests.factories.tenancy import login, staff_with_perms

pytestmark = pytest.mark.django_db

LEDGER_VIEW = [
    "accounts.view_account",
    "accounts.view_books",
    "accounts.view_journalentry",
    "accounts.view_journalline",
    "accounts.view_reports",
]
REPORTS = ["trial_balance", "profit_and_loss", "balance_sheet", "cash_flow"]
ENTRY_LINK = re.compile(r'href="/admin/accounts/journalentry/\d+/change/"')


def url(name: str, *args: object) -> str:
    return reverse(f"admin:{name}", args=args)


def line_form(prefix_rows: list[tuple[Account | None, str, str]], total: int = 6) -> dict[str, str]:
    data = {
        "lines-TOTAL_FORMS": str(total),
        "lines-INITIAL_FORMS": "0",
        "lines-MIN_NUM_FORMS": "0",
        "lines-MAX_NUM_FORMS": "50",
    }
    for i, (account, debit, credit) in enumerate(prefix_rows):
        data[f"lines-{i}-account"] = str(account.pk) if account else ""
        data[f"lines-{i}-debit"] = debit
        data[f"lines-{i}-credit"] = credit
        data[f"lines-{i}-memo"] = ""
    return data


@pytest.mark.parametrize("model", ["account", "books", "journalentry", "journalline"])
def test_every_ledger_changelist_renders_for_the_owner(owner_client, water, laundry, model):
    sale(water, memo="sale of refills")
    sale(laundry, memo="sale of ironing")
    response = owner_client.get(url(f"accounts_{model}_changelist"))
    assert response.status_code == 200
    assert water.name in response.content.decode() or (
        model == "account" and "Cash on hand" in response.content.decode()
    )


def test_entry_page_shows_the_lines_read_only_with_the_seal(owner_client, water):
    entry = sale(water, "116.00", memo="refill sale")
    body = owner_client.get(url("accounts_journalentry_change", entry.pk)).content.decode()
    assert "refill sale" in body and "Cash on hand" in body and "116.00" in body
    assert "not sealed yet" in body  # this test's transaction never commits
    assert 'name="_save"' not in body
    assert owner_client.post(url("accounts_journalentry_change", entry.pk), {"memo": "x"}).status_code == 403
    assert owner_client.post(url("accounts_journalentry_delete", entry.pk), {"post": "yes"}).status_code == 403
    assert owner_client.get(url("accounts_journalline_change", entry.lines.earliest("id").pk)).status_code == 200
    assert JournalEntry.objects.get(pk=entry.pk).memo == "refill sale"


def test_lists_search_by_entry_number_and_text(owner_client, water):
    first, second = sale(water, memo="alpha"), sale(water, memo="beta")
    found = owner_client.get(url("accounts_journalentry_changelist"), {"q": f"#{second.number}"}).content.decode()
    assert url("accounts_journalentry_change", second.pk) in found
    assert url("accounts_journalentry_change", first.pk) not in found
    found = owner_client.get(url("accounts_journalentry_changelist"), {"q": "alpha"}).content.decode()
    assert url("accounts_journalentry_change", first.pk) in found
    lines = owner_client.get(url("accounts_journalline_changelist"), {"q": "1010"}).content.decode()
    assert len(ENTRY_LINK.findall(lines)) == 2


def test_the_line_list_never_counts_past_the_cap(owner_client, water, monkeypatch):
    monkeypatch.setattr(ledger_admin.CappedCountPaginator, "CAP", 4)
    for _ in range(3):
        sale(water)
    body = owner_client.get(url("accounts_journalline_changelist")).content.decode()
    assert "more than 4 journal lines" in body
    body = owner_client.get(url("accounts_journalline_changelist"), {"q": "#1"}).content.decode()
    assert "3 journal lines" in body


def test_the_manual_journal_form_posts_an_entry(owner_client, owner, water, today):
    form = owner_client.get(url("accounts_journalentry_add"))
    assert form.status_code == 200
    found = re.search(r'name="idempotency_key" value="([^"]+)"', form.content.decode())
    assert found is not None
    key = found.group(1)
    data = {
        "business": water.pk,
        "entry_date": today.isoformat(),
        "memo": "Owner's capital",
        "idempotency_key": key,
        **line_form([(acct(water, "bank"), "5000.00", ""), (acct(water, "owner_equity"), "", "5000.00")]),
    }
    response = owner_client.post(url("accounts_journalentry_add"), data)
    entry = JournalEntry.objects.get()
    assert response.status_code == 302 and response["Location"] == url("accounts_journalentry_change", entry.pk)
    assert (entry.source_type, entry.memo, entry.created_by_id) == ("manual", "Owner's capital", owner.pk)
    assert sorted(entry.lines.values_list("debit", "credit")) == [(0, Decimal("5000.00")), (Decimal("5000.00"), 0)]
    # Sent twice (a double click): one entry
    assert owner_client.post(url("accounts_journalentry_add"), data).status_code == 302
    assert JournalEntry.objects.count() == 1


@pytest.mark.parametrize(
    ("rows", "message"),
    [
        ([("bank", "100.00", ""), ("owner_equity", "", "99.99")], "differ by 0.01"),
        ([("bank", "100.00", "")], "at least two lines"),
        ([("bank", "100.00", "100.00"), ("owner_equity", "", "100.00")], "a debit or a credit"),
        ([("bank", "-5.00", ""), ("owner_equity", "", "-5.00")], "greater than or equal to 0"),
    ],
)
def test_the_manual_journal_shows_what_is_wrong(owner_client, water, today, rows, message):
    data = {
        "business": water.pk,
        "entry_date": today.isoformat(),
        "memo": "bad",
        "idempotency_key": "manual:x",
        **line_form([(acct(water, role), d, c) for role, d, c in rows]),
    }
    response = owner_client.post(url("accounts_journalentry_add"), data)
    assert response.status_code == 200
    assert message in response.content.decode()
    assert not JournalEntry.objects.exists()


def test_the_manual_journal_shows_ledger_refusals(owner_client, water, laundry, today):
    books_close_period(business=water, lock_date=today)
    data = {
        "business": water.pk,
        "entry_date": today.isoformat(),
        "memo": "late",
        "idempotency_key": "manual:y",
        **line_form([(acct(water, "bank"), "10.00", ""), (acct(water, "owner_equity"), "", "10.00")]),
    }
    body = owner_client.post(url("accounts_journalentry_add"), data).content.decode()
    assert "the period is closed" in body
    data.update(
        {
            "entry_date": (today + dt.timedelta(days=1)).isoformat(),
            "idempotency_key": "manual:z",
            **line_form([(acct(water, "bank"), "10.00", ""), (acct(laundry, "owner_equity"), "", "10.00")]),
        }
    )
    body = owner_client.post(url("accounts_journalentry_add"), data).content.decode()
    assert "belongs to another business" in escape(body) or "belongs to another business" in body
    assert not JournalEntry.objects.exists()


def test_the_reverse_action_posts_one_reversal(owner_client, water):
    entry = sale(water)
    changelist = url("accounts_journalentry_changelist")
    response = owner_client.post(
        changelist, {"action": "reverse_selected", "_selected_action": [entry.pk]}, follow=True
    )
    assert f"Entry #{entry.number} reversed by entry #2" in response.content.decode()
    response = owner_client.post(
        changelist, {"action": "reverse_selected", "_selected_action": [entry.pk]}, follow=True
    )
    assert "already reversed" in response.content.decode()
    assert JournalEntry.objects.filter(reverses=entry).count() == 1


def test_the_reverse_button_asks_then_reverses(owner_client, water):
    entry = sale(water)
    page = url("accounts_journalentry_reverse_entry", entry.pk)
    confirm = owner_client.get(page)
    assert confirm.status_code == 200 and f"Reverse entry #{entry.number}" in confirm.content.decode()
    assert not JournalEntry.objects.filter(reverses=entry).exists()
    response = owner_client.post(page)
    reversal = JournalEntry.objects.get(reverses=entry)
    assert response["Location"] == url("accounts_journalentry_change", reversal.pk)


def test_the_period_close_action_asks_for_the_date_then_closes(owner_client, owner, water, laundry, today):
    changelist = url("accounts_books_changelist")
    selected = {"action": "close_period", "_selected_action": [water.pk, laundry.pk]}
    ask = owner_client.post(changelist, selected)
    assert ask.status_code == 200 and "Close the books of" in ask.content.decode()
    yesterday = today - dt.timedelta(days=1)
    response = owner_client.post(
        changelist, {**selected, "apply": "1", "lock_date": yesterday.isoformat()}, follow=True
    )
    assert "closed up to" in response.content.decode()
    assert set(Books.objects.values_list("lock_date", flat=True)) == {yesterday}
    assert PeriodClose.objects.filter(closed_by=owner, lock_date=yesterday).count() == 2
    # Backwards is refused and said
    response = owner_client.post(
        changelist, {**selected, "apply": "1", "lock_date": (yesterday - dt.timedelta(days=5)).isoformat()}, follow=True
    )
    assert "only moves forward" in response.content.decode()
    assert set(Books.objects.values_list("lock_date", flat=True)) == {yesterday}


def test_the_default_chart_action_adds_missing_accounts(owner_client, water):
    Account.objects.filter(business=water, role="expense_other").delete()
    owner_client.post(
        url("accounts_books_changelist"), {"action": "ensure_default_chart", "_selected_action": [water.pk]}
    )
    assert Account.objects.filter(business=water, role="expense_other").exists()


@pytest.mark.parametrize("report", REPORTS)
def test_statement_pages_for_the_owner_one_business_or_all(owner_client, water, laundry, today, report):
    sale(water, "116.00")
    sale(laundry, "232.00")
    page = url(f"accounts_report_{report}")
    consolidated = owner_client.get(page)
    assert consolidated.status_code == 200
    body = consolidated.content.decode()
    assert "All businesses (consolidated)" in body and escape(laundry.name) in body
    one = owner_client.get(
        page,
        {"business": water.pk, "date_from": (today - dt.timedelta(days=31)).isoformat(), "date_to": today.isoformat()},
    )
    assert one.status_code == 200
    if report in ("trial_balance", "balance_sheet"):
        assert 'data-balanced="1"' in one.content.decode()


def test_statement_figures(owner_client, water, today):
    sale(water, "116.00")
    body = owner_client.get(url("accounts_report_trial_balance"), {"business": water.pk}).content.decode()
    assert re.search(r'data-total="debit">\s*116\.00', body) and re.search(r'data-total="credit">\s*116\.00', body)
    body = owner_client.get(url("accounts_report_profit_and_loss"), {"business": water.pk}).content.decode()
    assert re.search(r'data-total="net_income">\s*100\.00', body)
    body = owner_client.get(url("accounts_report_cash_flow"), {"business": water.pk}).content.decode()
    assert re.search(r'data-total="closing">\s*116\.00', body)


# --- per-business access -------------------------------------------------------------------------


@pytest.fixture
def staff_a(water, laundry):
    return staff_with_perms(
        water, [*LEDGER_VIEW, "accounts.add_journalentry", "accounts.reverse_journalentry", "accounts.close_period"]
    )


def test_staff_sees_only_his_business_in_every_list(staff_a, water, laundry):
    mine, theirs = sale(water, memo="water sale"), sale(laundry, memo="laundry sale")
    client = login(staff_a)
    for model, a, b in [
        ("journalentry", mine.pk, theirs.pk),
        ("journalline", mine.lines.earliest("id").pk, theirs.lines.earliest("id").pk),
        ("account", acct(water, "cash").pk, acct(laundry, "cash").pk),
        ("books", water.pk, laundry.pk),
    ]:
        body = client.get(url(f"accounts_{model}_changelist")).content.decode()
        assert url(f"accounts_{model}_change", a) in body and url(f"accounts_{model}_change", b) not in body
        found = client.get(url(f"accounts_{model}_changelist"), {"q": "laundry"}).content.decode()
        assert url(f"accounts_{model}_change", b) not in found
        assert client.get(url(f"accounts_{model}_change", b)).status_code == 302  # "does not exist"
    # His own entry no. 1 has the same number as theirs: its 3 lines show, none of theirs
    found = client.get(url("accounts_journalline_changelist"), {"q": f"#{theirs.number}"}).content.decode()
    assert ENTRY_LINK.findall(found) == [f'href="{url("accounts_journalentry_change", mine.pk)}"'] * 3


def test_staff_cannot_act_on_another_business(staff_a, water, laundry, today):
    theirs = sale(laundry)
    client = login(staff_a)
    client.post(
        url("accounts_journalentry_changelist"), {"action": "reverse_selected", "_selected_action": [theirs.pk]}
    )
    assert client.post(url("accounts_journalentry_reverse_entry", theirs.pk)).status_code == 404
    client.post(
        url("accounts_books_changelist"),
        {"action": "close_period", "_selected_action": [laundry.pk], "apply": "1", "lock_date": today.isoformat()},
    )
    assert not JournalEntry.objects.filter(reverses=theirs).exists()
    assert Books.objects.get(business=laundry).lock_date is None


def test_staff_manual_journal_offers_only_his_business(staff_a, water, laundry, today):
    client = login(staff_a)
    body = client.get(url("accounts_journalentry_add")).content.decode()
    assert escape(water.name) in body and escape(laundry.name) not in body
    data = {
        "business": laundry.pk,
        "entry_date": today.isoformat(),
        "memo": "sneaky",
        "idempotency_key": "m:1",
        **line_form([(acct(laundry, "cash"), "1.00", ""), (acct(laundry, "owner_equity"), "", "1.00")]),
    }
    response = client.post(url("accounts_journalentry_add"), data)
    assert response.status_code == 200 and "Select a valid choice" in response.content.decode()
    assert not JournalEntry.objects.exists()


@pytest.mark.parametrize("report", REPORTS)
def test_staff_statements_cover_only_his_business(staff_a, water, laundry, report):
    client = login(staff_a)
    page = url(f"accounts_report_{report}")
    mine = client.get(page)
    assert mine.status_code == 200
    assert escape(water.name) in mine.content.decode() and escape(laundry.name) not in mine.content.decode()
    assert client.get(page, {"business": laundry.pk}).status_code == 403
    assert client.get(page, {"business": "all"}).status_code == 403
    assert client.get(page, {"business": "nonsense"}).status_code == 403


def test_statements_need_the_reports_permission(water):
    clerk = staff_with_perms(water, ["accounts.view_journalentry"], username="clerk")
    assert login(clerk).get(url("accounts_report_trial_balance")).status_code == 403


def test_statement_dates_default_to_the_month_and_bad_dates_are_said(owner_client, water, today):
    sale(water, "116.00", day=today)
    page = url("accounts_report_profit_and_loss")
    body = owner_client.get(page, {"business": water.pk}).content.decode()
    assert f'value="{today.replace(day=1).isoformat()}"' in body and f'value="{today.isoformat()}"' in body
    response = owner_client.get(page, {"business": water.pk, "date_to": "not-a-date"})
    assert response.status_code == 200 and "Enter a valid date" in response.content.decode()


def test_the_sidebar_links_the_ledger_pages_by_permission(owner_client, water):
    body = owner_client.get(reverse("admin:index")).content.decode()
    for name in [
        "accounts_journalentry_changelist",
        "accounts_books_changelist",
        *(f"accounts_report_{r}" for r in REPORTS),
    ]:
        assert url(name) in body, name
    clerk = staff_with_perms(water, ["accounts.view_journalentry"], username="clerk2")
    body = login(clerk).get(reverse("admin:index")).content.decode()
    assert url("accounts_journalentry_changelist") in body
    assert url("accounts_report_trial_balance") not in body


@pytest.mark.parametrize("key", ["mpesa:QKA1B2C3D4", "MPESA-ALLOCATE:QKA1B2C3D4", " sale:12", "closing:1:2026-01-01"])
def test_the_manual_journal_refuses_a_key_reserved_for_the_system(owner_client, water, today, key):
    data = {
        "business": water.pk,
        "entry_date": today.isoformat(),
        "memo": "takes the receipt's key first",
        "idempotency_key": key,
        **line_form([(acct(water, "bank"), "10.00", ""), (acct(water, "owner_equity"), "", "10.00")]),
    }
    response = owner_client.post(url("accounts_journalentry_add"), data)
    assert response.status_code == 200
    assert "reserved for the system" in response.content.decode()
    assert not JournalEntry.objects.exists()


def test_the_manual_journal_service_refuses_reserved_keys_even_without_the_form(owner, water, today):
    from accounts.exceptions import ReservedIdempotencyKey
    from accounts.services import LineSpec, entry_post, entry_post_manual

    lines = [
        LineSpec(acct(water, "bank"), debit=Decimal(10)),
        LineSpec(acct(water, "owner_equity"), credit=Decimal(10)),
    ]
    with pytest.raises(ReservedIdempotencyKey, match="reserved for the system"):
        entry_post_manual(
            business=water, entry_date=today, lines=lines, memo="x", idempotency_key="mpesa:QKX", acting_user=owner
        )
    with pytest.raises(ReservedIdempotencyKey):
        entry_post(
            business=water,
            entry_date=today,
            lines=lines,
            memo="x",
            source_type="manual",
            idempotency_key="mpesa:QKX",
            acting_user=owner,
        )
    assert not JournalEntry.objects.exists()
    # The system's own postings keep their keys, and a person's other keys are fine.
    entry_post(
        business=water, entry_date=today, lines=lines, memo="x", source_type="mpesa", idempotency_key="mpesa:QKX"
    )
    entry_post_manual(
        business=water, entry_date=today, lines=lines, memo="y", idempotency_key="manual:QKX", acting_user=owner
    )
    assert JournalEntry.objects.count() == 2

"""Staff in a real browser, with the demo's three businesses seeded through the services.

- A staff member of Maji Safi Water (the demo's "maji": the "Business staff" group, one business)
  opens every page his sidebar offers, the first row of every list and every add form he is offered:
  no other business's name or rows appear anywhere in the HTML (hidden filter panels and dropdown
  options included).
- A view-only member of the same business (a group holding the view rights of "Business staff")
  is offered nothing that changes data on those pages: no add, save or delete buttons, no action in
  the action menu that needs more than reading, no form field he could type into.
"""

from __future__ import annotations

import re
from typing import Any
from urllib.parse import urlsplit

import pytest
from django.contrib.auth.models import Group, Permission, User
from django.urls import resolve

from operations.models import Customer, Item, Sale, Supplier
from tenancy.models import Business
from tenancy.services import STAFF_PERMISSIONS, membership_assign
from tests.browser.conftest import PASSWORD, Demo, Shots, log_in
from tests.browser.support import html_forms, requires_chromium

pytestmark = [requires_chromium, pytest.mark.django_db(transaction=True)]

# What an action offered to a view-only person may ask for (tests/backoffice/test_admin_walk.py).
READ_ONLY_ACTION_PERMISSIONS = {"view", "export", "reports", "consolidated_reports"}
CHANGELIST = re.compile(r"^/admin/(?P<app>\w+)/(?P<model>\w+)/$")


def other_business_strings(demo: Demo, mine: Business) -> set[str]:
    """What would betray another business on his pages: its name, its catalogue, customers, suppliers
    and sale numbers, leaving out short names and names his own business shares ("Kamau" buys from both)."""
    own = {str(name) for model in (Item, Customer, Supplier) for name in model.objects.filter(business=mine)}
    theirs: set[str] = set()
    for business in demo.businesses:
        if business == mine:
            continue
        theirs.add(business.name)
        for model in (Item, Customer, Supplier):
            theirs.update(str(row) for row in model.objects.filter(business=business))
        theirs.update(sale.number for sale in Sale.objects.filter(business=business))
    return {s for s in theirs if len(s) >= 6 and not any(s in o for o in own)}


def sidebar_links(page: Any) -> list[str]:
    """The admin pages the sidebar offers him (collapsed groups included), in order."""
    hrefs = page.eval_on_selector_all(
        "#nav-sidebar a[href], nav a[href]", "els => els.map(e => e.getAttribute('href'))"
    )
    links: list[str] = []
    for href in hrefs:
        path = urlsplit(href).path
        if path.startswith("/admin/") and "logout" not in path and path not in links:
            links.append(path)
    return links


def open_page(page: Any, path: str) -> str:
    response = page.goto(path, wait_until="domcontentloaded")
    assert response is not None and response.status == 200, (path, response and response.status)
    return str(page.content())


def first_row_link(page: Any) -> str | None:
    link = page.locator("#result_list tbody a[href*='/change/']").first
    return urlsplit(link.get_attribute("href")).path if link.count() else None


def leaks(html: str, forbidden: set[str]) -> list[str]:
    return sorted(s for s in forbidden if any(form in html for form in html_forms(s)))


def test_a_staff_member_sees_only_his_business_on_every_page(page: Any, demo: Demo, shots: Shots) -> None:
    forbidden = other_business_strings(demo, demo.water)
    assert "Duka & Gas" in forbidden and "Fresh Fold Laundry" in forbidden and len(forbidden) > 50
    log_in(page, "maji")
    links = sidebar_links(page)
    assert "/admin/operations/sale/" in links and "/admin/accounts/journalentry/" not in links

    seen: dict[str, list[str]] = {}
    for link in links:
        seen[link] = leaks(open_page(page, link), forbidden)
        if link == "/admin/operations/sale/":
            shots(page, "13-staff-sales")
        if not CHANGELIST.match(link):
            continue
        row, add = first_row_link(page), f"{link}add/"
        offers_add = page.locator(f"a[href='{add}']").count() > 0
        if row is not None:
            seen[row] = leaks(open_page(page, row), forbidden)
        if offers_add:
            seen[add] = leaks(open_page(page, add), forbidden)
            if link == "/admin/operations/sale/":
                shots(page, "14-staff-sale-add")
    assert {path: found for path, found in seen.items() if found} == {}
    assert len(seen) > 40, sorted(seen)  # lists, their rows and the add forms were all walked


def view_only_member(business: Business) -> User:
    """A member of `business` in a "View only" group: the view rights of the project's staff group."""
    group, _ = Group.objects.get_or_create(name="View only")
    for perm in STAFF_PERMISSIONS:
        app_label, codename = perm.split(".")
        if codename.startswith("view_"):
            group.permissions.add(Permission.objects.get(content_type__app_label=app_label, codename=codename))
    user = User.objects.create_user("wanjiru", password=PASSWORD, is_staff=True)
    user.groups.add(group)
    membership_assign(user=user, business=business)
    return user


def changing_actions(page: Any, changelist: str) -> list[str]:
    """Options of the action menu whose action needs more than reading (or declares nothing)."""
    model_admin = resolve(changelist).func.model_admin  # type: ignore[attr-defined]
    declared = {
        name: set(getattr(func, "allowed_permissions", ()) or ()) for func, name, _ in model_admin._get_base_actions()
    }
    options = page.eval_on_selector_all("select[name=action] option", "els => els.map(e => e.value)")
    return [o for o in options if o and not (declared.get(o) and declared[o] <= READ_ONLY_ACTION_PERMISSIONS)]


def editable_controls(page: Any) -> list[str]:
    """What a person could type into or submit on a change page (search boxes aside)."""
    selector = (
        "form[id$=_form] :is(input, select, textarea):not([type=hidden]):not([disabled]):not([readonly]),"
        " :is(button, input)[name=_save], :is(button, input)[name=_continue], :is(button, input)[name=_addanother],"
        " a[href$='/delete/']"
    )
    return page.eval_on_selector_all(selector, "els => els.map(e => e.outerHTML.slice(0, 120))")


def test_a_view_only_member_is_offered_nothing_that_changes_data(page: Any, demo: Demo, shots: Shots) -> None:
    viewer = view_only_member(demo.water)
    log_in(page, viewer.username)
    links = [link for link in sidebar_links(page) if CHANGELIST.match(link)]
    assert "/admin/operations/sale/" in links and len(links) >= 15

    offered: dict[str, list[str]] = {}
    rows = 0
    for link in links:
        open_page(page, link)
        found = changing_actions(page, link)
        found += page.eval_on_selector_all(f"a[href='{link}add/']", "els => els.map(e => e.outerHTML.slice(0, 120))")
        if link == "/admin/operations/sale/":
            shots(page, "15-view-only-sales")
        row = first_row_link(page)
        if row is not None:
            rows += 1
            open_page(page, row)
            found += editable_controls(page)
            if link == "/admin/operations/sale/":
                shots(page, "16-view-only-sale")
            # The add form is not his either, even typed into the address bar.
            assert page.goto(f"{link}add/").status == 403, link  # type: ignore[union-attr]
        offered[link] = found
    assert {link: found for link, found in offered.items() if found} == {}
    assert rows >= 10

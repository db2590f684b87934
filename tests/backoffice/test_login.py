"""Logging in at /admin/login/ lands on the dashboard (it went to /accounts/profile/, a 404)."""

from __future__ import annotations

from html.parser import HTMLParser

import pytest
from django.test import Client

from tests.factories.tenancy import PASSWORD, OwnerFactory, UserFactory

pytestmark = pytest.mark.django_db


class LoginForm(HTMLParser):
    """The fields a browser posts with form#login-form: its inputs, and inputs outside it that name it
    in their form attribute."""

    def __init__(self) -> None:
        super().__init__()
        self.action: str | None = None
        self.fields: dict[str, str] = {}
        self._inside = False

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        attr = {name: value or "" for name, value in attrs}
        if tag == "form" and attr.get("id") == "login-form":
            self.action, self._inside = attr.get("action", ""), True
        elif tag == "input" and attr.get("name") and (self._inside or attr.get("form") == "login-form"):
            self.fields[attr["name"]] = attr.get("value", "")

    def handle_endtag(self, tag: str) -> None:
        if tag == "form":
            self._inside = False


def log_in(client: Client, path: str, username: str) -> tuple[str, int]:
    """Fill in the login page as rendered and submit it; the final path and status after redirects."""
    page = client.get(path)
    assert page.status_code == 200
    form = LoginForm()
    form.feed(page.content.decode())
    assert form.action is not None, "no login form on the page"
    form.fields.update(username=username, password=PASSWORD)
    response = client.post(form.action or path, form.fields, follow=True)
    return response.request["PATH_INFO"], response.status_code


def test_logging_in_lands_on_the_dashboard() -> None:
    owner = OwnerFactory.create(username="owner")
    final, status = log_in(Client(), "/admin/login/", owner.username)
    assert (final, status) == ("/admin/", 200)


def test_a_staff_login_lands_on_the_dashboard_too() -> None:
    clerk = UserFactory.create(username="clerk", perms=["operations.view_sale"])
    final, status = log_in(Client(), "/admin/login/", clerk.username)
    assert (final, status) == ("/admin/", 200)


def test_next_is_still_followed() -> None:
    owner = OwnerFactory.create(username="owner")
    final, status = log_in(Client(), "/admin/login/?next=/admin/operations/sale/", owner.username)
    assert (final, status) == ("/admin/operations/sale/", 200)


def test_an_outside_next_is_not_followed() -> None:
    owner = OwnerFactory.create(username="owner")
    final, status = log_in(Client(), "/admin/login/?next=https://evil.example/", owner.username)
    assert (final, status) == ("/admin/", 200)

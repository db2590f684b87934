"""Fixtures of the real-browser tests: a system Chromium driven by Playwright against pytest-django's
live server (a thread of this process, on this xdist worker's own test database and a free port),
the demo businesses seeded through the services, and screenshots of each step."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from io import StringIO
from pathlib import Path
from typing import Any

import pytest
from django.contrib.auth.models import User
from django.core.management import call_command

from tenancy.models import Business
from tests.browser.support import chromium_path, screenshot_dir

PASSWORD = "browser-test-2026"
VIEWPORT = {"width": 1280, "height": 900}


@pytest.fixture(scope="module")
def browser() -> Iterator[Any]:
    """One headless Chromium per test module (the system's, never Playwright's download)."""
    from playwright.sync_api import sync_playwright

    path = chromium_path()
    if path is None:  # the modules' requires_chromium mark skips first; this is for a direct use
        pytest.skip("no Chromium found")
    with pytest.MonkeyPatch.context() as patch:
        # While Playwright's sync API is started, its asyncio loop counts as running on this thread
        # and Django would refuse the test's own (synchronous) ORM calls. Allowed for the browser's
        # lifetime only: the fixture ends before the next module's tests run in this process.
        patch.setenv("DJANGO_ALLOW_ASYNC_UNSAFE", "true")
        with sync_playwright() as playwright:
            # --no-sandbox: CI runs as root in a container, where Chromium's sandbox cannot start.
            chromium = playwright.chromium.launch(executable_path=path, args=["--no-sandbox"])
            yield chromium
            chromium.close()


@pytest.fixture
def page(browser: Any, live_server: Any) -> Iterator[Any]:
    context = browser.new_context(base_url=live_server.url, viewport=VIEWPORT, accept_downloads=True)
    context.set_default_timeout(15_000)
    tab = context.new_page()
    yield tab
    context.close()


class Shots:
    """page.screenshot() as browser-<step>.png; steps are named "NN-what" so the files sort in order."""

    def __init__(self, directory: Path) -> None:
        self.directory = directory

    def __call__(self, page: Any, step: str) -> Path:
        path = self.directory / f"browser-{step}.png"
        page.screenshot(path=str(path))
        return path


@pytest.fixture
def shots(tmp_path: Path) -> Shots:
    directory = screenshot_dir(tmp_path)
    directory.mkdir(parents=True, exist_ok=True)
    return Shots(directory)


@dataclass(frozen=True)
class Demo:
    water: Business
    laundry: Business
    retail: Business
    owner: User

    @property
    def businesses(self) -> list[Business]:
        return [self.water, self.laundry, self.retail]


@pytest.fixture
def demo(transactional_db: None) -> Demo:
    """`setup_demo` and a day of `seed_demo` (every kind of row, in all three businesses, through the
    services): the owner, the "Business staff" group and a staff member per business (maji, fold, duka)."""
    call_command("setup_demo", stdout=StringIO())
    # One process: this one runs the live server's threads and Playwright's event loop, and is not
    # forked (seed_demo's process per business is proven in tests/operations/test_seed_demo.py).
    call_command("seed_demo", "--days", "1", "--workers", "1", stdout=StringIO())
    for user in User.objects.filter(username__in=["owner", "maji", "fold", "duka"]):
        user.set_password(PASSWORD)
        user.save(update_fields=["password"])
    return Demo(
        water=Business.objects.get(name="Maji Safi Water"),
        laundry=Business.objects.get(name="Fresh Fold Laundry"),
        retail=Business.objects.get(name="Duka & Gas"),
        owner=User.objects.get(username="owner"),
    )


def log_in(page: Any, username: str, password: str = PASSWORD, shots: Shots | None = None) -> None:
    page.goto("/admin/login/")
    page.fill("input[name=username]", username)
    page.fill("input[name=password]", password)
    if shots is not None:
        shots(page, "01-login")
    page.click("#login-form [type=submit], button[type=submit][form=login-form]")
    page.wait_for_url("**/admin/")

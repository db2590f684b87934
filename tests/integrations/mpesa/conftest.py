"""Fixtures of the M-Pesa tests: businesses with their books and a till each."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from accounts.services import chart_ensure_default
from integrations.mpesa.models import Till
from tenancy.models import Business
from tests.factories.mpesa import TillFactory


@pytest.fixture
def books(water: Business) -> Business:
    chart_ensure_default(business=water)
    return water


@pytest.fixture
def till(books: Business) -> Till:
    return TillFactory.create(business=books, shortcode="600966", name="Water paybill")


@pytest.fixture(autouse=True)
def _fresh_till_cache() -> None:
    """The callback views cache tills for a few seconds and remember good tokens; each test starts without."""
    from integrations.mpesa import views

    views._till_cache.clear()
    views._known_tokens.clear()


@pytest.fixture(autouse=True)
def _publisher_not_paused() -> None:
    """A test that killed the broker must not make the next one skip its publishes."""
    from integrations.mpesa.publisher import publisher

    publisher._paused_until = 0.0


@pytest.fixture(autouse=True)
def _spool_dir(settings: Any, tmp_path: Path) -> Path:
    """Each test spools into its own directory, and starts as a process that never spooled."""
    from integrations.mpesa import spool

    spool._spooled_here = False
    settings.MPESA_SPOOL_DIR = tmp_path / "spool"
    return Path(settings.MPESA_SPOOL_DIR)

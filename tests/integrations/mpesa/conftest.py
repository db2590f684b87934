"""Fixtures of the M-Pesa tests: businesses with their books, a till, a till the fake Daraja accepts."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from accounts.services import chart_ensure_default
from integrations.mpesa.models import Till
from integrations.mpesa.secrets import encrypt
from tenancy.models import Business
from tests.factories.mpesa import TillFactory
from tests.integrations.mpesa.fake_daraja import (
    SANDBOX_PASSKEY,
    SANDBOX_SHORTCODE,
    FakeDaraja,
    fake_daraja_fixture,  # noqa: F401 - the fake_daraja fixture
)


@pytest.fixture
def books(water: Business) -> Business:
    chart_ensure_default(business=water)
    return water


@pytest.fixture
def till(books: Business) -> Till:
    return TillFactory.create(business=books, shortcode="600966", name="Water paybill")


@pytest.fixture
def daraja_till(books: Business, fake_daraja: FakeDaraja, settings: Any) -> Till:
    """A till whose credentials the fake Daraja accepts, with MPESA_BASE_URL pointing at the fake."""
    settings.MPESA_BASE_URL = fake_daraja.base_url
    return TillFactory.create(
        business=books,
        shortcode=SANDBOX_SHORTCODE,
        consumer_key_encrypted=encrypt(fake_daraja.consumer_key),
        consumer_secret_encrypted=encrypt(fake_daraja.consumer_secret),
        passkey_encrypted=encrypt(SANDBOX_PASSKEY),
        initiator_name=fake_daraja.initiator_name,
        security_credential_encrypted=encrypt(fake_daraja.security_credential),
    )


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

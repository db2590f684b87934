from __future__ import annotations

from collections.abc import Iterator

import pytest
import redis
from django.conf import settings
from django.test import Client

from operations.models import Business, BusinessKind
from tests.celery_support import WorkerProcess
from tests.factories import PASSWORD, BusinessFactory, MembershipFactory, OwnerFactory, UserFactory

# Tests create many users: a fast hasher instead of PBKDF2's deliberate slowness (test-only).
settings.PASSWORD_HASHERS = ["django.contrib.auth.hashers.MD5PasswordHasher"]


@pytest.fixture(autouse=True)
def _no_login_lockouts(settings: pytest.FixtureRequest) -> None:
    """Tests log in a lot from one address; only the throttling tests turn axes on."""
    settings.AXES_ENABLED = False  # type: ignore[attr-defined]


@pytest.fixture(autouse=True)
def _ledger_anchors_in_tmp(settings: pytest.FixtureRequest, tmp_path) -> None:  # type: ignore[no-untyped-def]
    """verify_ledger compares with LEDGER_ANCHOR_DIR's anchors: never a developer's var/ledger-anchors."""
    settings.LEDGER_ANCHOR_DIR = tmp_path / "ledger-anchors"  # type: ignore[attr-defined]


@pytest.fixture
def water(db: None) -> Business:
    return BusinessFactory.create(name="Maji Safi Water", kind=BusinessKind.WATER)


@pytest.fixture
def laundry(db: None) -> Business:
    return BusinessFactory.create(name="Fresh Fold Laundry", kind=BusinessKind.LAUNDRY)


@pytest.fixture
def retail(db: None) -> Business:
    return BusinessFactory.create(name="Duka & Gas", kind=BusinessKind.RETAIL_LPG)


@pytest.fixture
def owner(db: None):  # type: ignore[no-untyped-def]
    return OwnerFactory.create(username="owner")


@pytest.fixture
def owner_client(owner) -> Client:  # type: ignore[no-untyped-def]
    client = Client()
    client.force_login(owner)
    return client


def staff_with_perms(business: Business, perms: list[str], username: str = "staff_a"):  # type: ignore[no-untyped-def]
    user = UserFactory.create(username=username, perms=perms)
    MembershipFactory.create(user=user, business=business)
    return user


def login(user) -> Client:  # type: ignore[no-untyped-def]
    client = Client()
    assert client.login(username=user.username, password=PASSWORD)
    return client


@pytest.fixture
def redis_client() -> Iterator[redis.Redis]:
    client = redis.Redis.from_url(settings.REDIS_URL)
    yield client
    client.close()


@pytest.fixture
def clean_broker(redis_client: redis.Redis) -> redis.Redis:
    """An empty test Redis database: no messages or heartbeats left from an earlier test."""
    redis_client.flushdb()
    return redis_client


@pytest.fixture
def worker(transactional_db: None, clean_broker: redis.Redis) -> Iterator[WorkerProcess]:
    """A real Celery worker on every queue, against the test database and test Redis."""
    proc = WorkerProcess("test-worker").start()
    yield proc
    proc.stop()

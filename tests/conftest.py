from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from io import StringIO
from typing import Any

import pytest
import redis
from django.conf import settings
from django.core.management import call_command
from django.db import DEFAULT_DB_ALIAS, connection, connections, transaction
from django.test import Client

from accounts.db_roles import ensure_role
from tenancy.models import Business, BusinessKind
from tests.celery_support import WorkerProcess
from tests.factories.tenancy import BusinessFactory, OwnerFactory

# Tests create many users: a fast hasher instead of PBKDF2's deliberate slowness (test-only).
settings.PASSWORD_HASHERS = ["django.contrib.auth.hashers.MD5PasswordHasher"]

# The suite runs as production does (docs/deploy.md, "Database roles"): the test database is created and
# migrated by an owner role, `manage.py db_roles grant` gives the application role its privileges, and
# then every test query - and every worker the tests start - runs as the application role. DATABASE_URL
# names a superuser (CI's and the embedded `postgres`), which creates both roles; roles are cluster-wide,
# so these fixed names are shared by concurrent test processes, created under a lock and never dropped.
TEST_OWNER_ROLE = "backoffice_test_owner"
TEST_APP_ROLE = "backoffice_test_app"
TEST_ROLE_PASSWORD = "backoffice-test-only"


@dataclass(frozen=True)
class DbRoles:
    superuser: tuple[str, str]
    owner: tuple[str, str]
    app: tuple[str, str]


def use_role(user: str, password: str) -> None:
    """Every connection opened from now on (this thread's and others') logs in as `user`."""
    connection.close()
    connection.settings_dict["USER"] = user
    connection.settings_dict["PASSWORD"] = password


@pytest.fixture(scope="session")
def db_roles(django_db_modify_db_settings: None, django_db_blocker: Any) -> DbRoles:
    """Both roles exist and the test database will be created (and migrated) by the owner role."""
    s = connection.settings_dict
    roles = DbRoles(
        superuser=(s["USER"], s["PASSWORD"]),
        owner=(TEST_OWNER_ROLE, TEST_ROLE_PASSWORD),
        app=(TEST_APP_ROLE, TEST_ROLE_PASSWORD),
    )
    with django_db_blocker.unblock():
        with transaction.atomic(), connection.cursor() as cursor:
            cursor.execute("SELECT current_user, current_setting('is_superuser') = 'on'")
            user, superuser = cursor.fetchone()
            if not superuser:
                pytest.exit(f"the tests need a superuser in DATABASE_URL to create their roles ({user} is not)", 2)
            cursor.execute("SELECT pg_advisory_xact_lock(hashtext('backoffice.db_roles'))")
            ensure_role(cursor, TEST_OWNER_ROLE, password=TEST_ROLE_PASSWORD, createdb=True)
            ensure_role(cursor, TEST_APP_ROLE, password=TEST_ROLE_PASSWORD)
        # A test database left by a run before the roles (owned by the superuser) is dropped: the owner
        # role could neither migrate nor drop it.
        test_name = connection.creation._get_test_db_name()  # type: ignore[attr-defined]
        with connection.cursor() as cursor:
            cursor.execute("SELECT pg_get_userbyid(datdba) FROM pg_database WHERE datname = %s", [test_name])
            row = cursor.fetchone()
            if row is not None and row[0] != TEST_OWNER_ROLE:
                cursor.execute(f'DROP DATABASE "{test_name}" WITH (FORCE)')
    use_role(*roles.owner)
    return roles


@pytest.fixture(scope="session")
def django_db_setup(db_roles: DbRoles, django_db_setup: None, django_db_blocker: Any) -> Iterator[None]:
    """pytest-django's setup (as the owner role), then the grants; the tests then run as the app role."""
    with django_db_blocker.unblock():
        call_command("db_roles", "grant", app_role=TEST_APP_ROLE, stdout=StringIO())
    owner, password = db_roles.owner
    # `flush` after transactional tests empties the ledger through the owner role (accounts' flush command).
    settings.DATABASE_OWNER_URL = f"postgresql://{owner}:{password}@{connection.settings_dict['HOST']}/"
    use_role(*db_roles.app)
    yield
    # The owner drops the test database at the end.
    use_role(*db_roles.owner)


@pytest.fixture
def table_owner(db_roles: DbRoles, transactional_db: None) -> Iterator[None]:
    """This (transactional) test runs as the tables' owner: for the rules the triggers keep even against it."""
    use_role(*db_roles.owner)
    yield
    use_role(*db_roles.app)


@contextmanager
def cursor_as(user: str, password: str) -> Iterator[Any]:
    """A cursor (autocommit) on the test database as `user`, on its own connection, closed afterwards."""
    params = {**connection.settings_dict, "USER": user, "PASSWORD": password, "CONN_MAX_AGE": 0}
    other = type(connections[DEFAULT_DB_ALIAS])(params, user)
    try:
        with other.cursor() as cursor:
            yield cursor
    finally:
        other.close()


@pytest.fixture
def superuser_cursor(db_roles: DbRoles, transactional_db: None) -> Iterator[Any]:
    """A cursor (autocommit) on the test database as the superuser, for tests that tamper with the ledger."""
    with cursor_as(*db_roles.superuser) as cursor:
        yield cursor


@pytest.fixture
def owner_cursor(db_roles: DbRoles, transactional_db: None) -> Iterator[Any]:
    """A cursor (autocommit) as the tables' owner, beside the test's own (application role) connection:
    for the rules the triggers keep even against the role holding every privilege on the tables."""
    with cursor_as(*db_roles.owner) as cursor:
        yield cursor


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

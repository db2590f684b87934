"""/healthz reports database, broker, each queue's workers and beat; 503 when one is down.

Anyone sees only the status; the details are for the owner or a monitor with HEALTHZ_TOKEN.
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest
import redis
from django.db import connection
from django.test import Client

from tests.celery_support import BeatProcess, WorkerProcess
from tests.factories.tenancy import OwnerFactory, UserFactory

pytestmark = pytest.mark.django_db(transaction=True)

TOKEN = "healthz-test-token-4f1c"


@pytest.fixture(autouse=True)
def _healthz_token(settings: object) -> None:
    settings.HEALTHZ_TOKEN = TOKEN  # type: ignore[attr-defined]


def monitor() -> Client:
    """A client presenting HEALTHZ_TOKEN, as an uptime monitor would."""
    return Client(headers={"Authorization": f"Bearer {TOKEN}"})


@pytest.fixture
def all_up(transactional_db: None, clean_broker: redis.Redis) -> Iterator[None]:
    payments = WorkerProcess("payments", queues="payments").start()
    default = WorkerProcess("default", queues="default").start()
    reports = WorkerProcess("reports", queues="reports").start()
    beat = BeatProcess().start()
    yield
    beat.stop()
    payments.stop()
    default.stop()
    reports.stop()


@pytest.mark.worker
def test_everything_up_is_200(all_up: None) -> None:
    public = Client().get("/healthz")
    assert public.status_code == 200
    assert public.json() == {"status": "ok"}
    response = monitor().get("/healthz")
    body = response.json()
    assert response.status_code == 200, body
    assert body["status"] == "ok"
    assert body["database"]["ok"] and body["broker"]["ok"] and body["beat"]["ok"]
    assert body["queues"]["payments"]["workers"][0].startswith("payments@")
    assert body["queues"]["default"]["workers"][0].startswith("default@")
    assert body["queues"]["reports"]["workers"][0].startswith("reports@")


@pytest.mark.worker
def test_a_queue_without_workers_is_503(clean_broker: redis.Redis) -> None:
    default = WorkerProcess("default", queues="default,reports").start()
    beat = BeatProcess().start()
    try:
        response = monitor().get("/healthz")
    finally:
        beat.stop()
        default.stop()
    body = response.json()
    assert response.status_code == 503
    assert body["queues"]["payments"] == {"ok": False, "workers": []}
    assert body["queues"]["default"]["ok"] is True


def test_no_beat_and_no_workers_is_503(clean_broker: redis.Redis) -> None:
    body = monitor().get("/healthz").json()
    assert body["status"] == "down"
    assert body["beat"]["ok"] is False
    assert not any(q["ok"] for q in body["queues"].values())


def test_an_unreadable_beat_heartbeat_is_down_not_a_500(clean_broker: redis.Redis) -> None:
    from celeryconf.heartbeat import BEAT_KEY

    for raw in (b"not json", b"[1, 2]", b'{"at": "yesterday"}'):
        clean_broker.set(BEAT_KEY, raw, ex=20)
        response = monitor().get("/healthz")
        body = response.json()
        assert response.status_code == 503, raw
        assert body["beat"]["ok"] is False and body["beat"]["error"].startswith("unreadable heartbeat"), raw


def test_broker_down_is_503(settings: object, clean_broker: redis.Redis) -> None:
    settings.REDIS_URL = "redis://127.0.0.1:1/0"  # type: ignore[attr-defined]  # nothing listens there
    response = monitor().get("/healthz")
    assert response.status_code == 503
    body = response.json()
    assert body["broker"]["ok"] is False and body["database"]["ok"] is True


def test_database_down_is_503(clean_broker: redis.Redis) -> None:
    original = dict(connection.settings_dict)
    connection.close()
    connection.settings_dict["PORT"] = "1"  # nothing listens there
    try:
        response = monitor().get("/healthz")
        public = Client().get("/healthz")
    finally:
        connection.close()
        connection.settings_dict.clear()
        connection.settings_dict.update(original)
    assert response.status_code == 503
    assert response.json()["database"]["ok"] is False
    # Anyone else: the status, without the database's error text (host, port, user...).
    assert public.status_code == 503
    assert public.json() == {"status": "down"}


def test_the_public_sees_the_status_only(clean_broker: redis.Redis) -> None:
    response = Client().get("/healthz")
    assert response.status_code == 503
    assert response.json() == {"status": "down"}


@pytest.mark.parametrize(
    "headers",
    [{"Authorization": "Bearer wrong-token"}, {"Authorization": f"Basic {TOKEN}"}, {"Authorization": "Bearer "}],
)
def test_a_wrong_token_sees_the_status_only(clean_broker: redis.Redis, headers: dict[str, str]) -> None:
    assert Client(headers=headers).get("/healthz").json() == {"status": "down"}
    assert Client().get("/healthz", {"token": "wrong-token"}).json() == {"status": "down"}


def test_no_token_configured_means_no_token_opens_it(settings: object, clean_broker: redis.Redis) -> None:
    settings.HEALTHZ_TOKEN = ""  # type: ignore[attr-defined]
    assert Client(headers={"Authorization": "Bearer "}).get("/healthz").json() == {"status": "down"}
    assert Client().get("/healthz", {"token": ""}).json() == {"status": "down"}


def test_the_token_in_the_query_string_shows_the_details(clean_broker: redis.Redis) -> None:
    body = Client().get("/healthz", {"token": TOKEN}).json()
    assert body["status"] == "down" and body["database"]["ok"] is True


def test_the_owner_sees_the_details(clean_broker: redis.Redis) -> None:
    superuser = Client()
    superuser.force_login(OwnerFactory.create())
    assert "queues" in superuser.get("/healthz").json()
    all_businesses = Client()
    all_businesses.force_login(UserFactory.create(username="partner", perms=["tenancy.view_all_businesses"]))
    assert "queues" in all_businesses.get("/healthz").json()


def test_staff_without_the_owner_permission_sees_the_status_only(clean_broker: redis.Redis) -> None:
    staff = Client()
    staff.force_login(UserFactory.create(username="clerk", perms=["operations.view_sale"]))
    assert staff.get("/healthz").json() == {"status": "down"}

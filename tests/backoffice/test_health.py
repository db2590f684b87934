"""/healthz reports database, broker, each queue's workers and beat; 503 when one is down."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
import redis
from django.db import connection
from django.test import Client

from tests.celery_support import BeatProcess, WorkerProcess

pytestmark = pytest.mark.django_db(transaction=True)


@pytest.fixture
def all_up(transactional_db: None, clean_broker: redis.Redis) -> Iterator[None]:
    payments = WorkerProcess("payments", queues="payments").start()
    default = WorkerProcess("default", queues="default,reports").start()
    beat = BeatProcess().start()
    yield
    beat.stop()
    payments.stop()
    default.stop()


@pytest.mark.worker
def test_everything_up_is_200(all_up: None) -> None:
    response = Client().get("/healthz")
    body = response.json()
    assert response.status_code == 200, body
    assert body["status"] == "ok"
    assert body["database"]["ok"] and body["broker"]["ok"] and body["beat"]["ok"]
    assert body["queues"]["payments"]["workers"][0].startswith("payments@")
    assert body["queues"]["default"]["workers"][0].startswith("default@")
    assert body["queues"]["reports"]["workers"][0].startswith("default@")


@pytest.mark.worker
def test_a_queue_without_workers_is_503(clean_broker: redis.Redis) -> None:
    default = WorkerProcess("default", queues="default,reports").start()
    beat = BeatProcess().start()
    try:
        response = Client().get("/healthz")
    finally:
        beat.stop()
        default.stop()
    body = response.json()
    assert response.status_code == 503
    assert body["queues"]["payments"] == {"ok": False, "workers": []}
    assert body["queues"]["default"]["ok"] is True


def test_no_beat_and_no_workers_is_503(clean_broker: redis.Redis) -> None:
    body = Client().get("/healthz").json()
    assert body["status"] == "down"
    assert body["beat"]["ok"] is False
    assert not any(q["ok"] for q in body["queues"].values())


def test_broker_down_is_503(settings: object, clean_broker: redis.Redis) -> None:
    settings.REDIS_URL = "redis://127.0.0.1:1/0"  # type: ignore[attr-defined]  # nothing listens there
    response = Client().get("/healthz")
    assert response.status_code == 503
    body = response.json()
    assert body["broker"]["ok"] is False and body["database"]["ok"] is True


def test_database_down_is_503(clean_broker: redis.Redis) -> None:
    original = dict(connection.settings_dict)
    connection.close()
    connection.settings_dict["PORT"] = "1"  # nothing listens there
    try:
        response = Client().get("/healthz")
    finally:
        connection.close()
        connection.settings_dict.clear()
        connection.settings_dict.update(original)
    assert response.status_code == 503
    assert response.json()["database"]["ok"] is False

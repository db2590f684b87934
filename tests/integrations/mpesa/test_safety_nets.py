"""The sweeper, the STK recovery job, their beat schedules, and the daraja_* management commands."""

from __future__ import annotations

import datetime as dt
from io import StringIO
from typing import Any

import pytest
import redis
from django.core.management import call_command
from django.core.management.base import CommandError
from django.utils import timezone

from integrations.mpesa.inbox import inbox_store, inbox_sweep
from integrations.mpesa.models import InboxKind, InboxMessage, InboxState, PaymentRequest, PaymentRequestState, Till
from integrations.mpesa.stk import payment_requests_recover
from tests.integrations.mpesa.fake_daraja import (
    STK_QUERY,
    FakeDaraja,
    load_sample,
)
from tests.integrations.mpesa.redis_support import queued_inbox_ids

pytestmark = pytest.mark.django_db


def _row(till: Till, daraja_id: str, *, age: int, enqueued_age: int | None, state: str = InboxState.RECEIVED) -> int:
    inbox_id = inbox_store(
        till_id=till.pk,
        kind=InboxKind.C2B_CONFIRMATION,
        daraja_id=daraja_id,
        body=b"{}",
        headers={},
        remote_addr=None,
        state=state,
    )
    assert inbox_id is not None
    now = timezone.now()
    InboxMessage.objects.filter(pk=inbox_id).update(
        received_at=now - dt.timedelta(seconds=age),
        last_enqueued_at=None if enqueued_age is None else now - dt.timedelta(seconds=enqueued_age),
    )
    return inbox_id


def test_the_sweeper_re_enqueues_only_rows_left_behind(till: Till, clean_broker: redis.Redis) -> None:
    lost = _row(till, "LOST000001", age=120, enqueued_age=120)
    never_sent = _row(till, "LOST000002", age=120, enqueued_age=None)
    failed = _row(till, "LOST000003", age=300, enqueued_age=90, state=InboxState.FAILED)
    _row(till, "FRESH00001", age=5, enqueued_age=5)  # just arrived: its own message is on the way
    _row(till, "RECENT0001", age=300, enqueued_age=10)  # sent again a moment ago
    _row(till, "DONE000001", age=300, enqueued_age=300, state=InboxState.PROCESSED)
    _row(till, "HELD000001", age=300, enqueued_age=300, state=InboxState.NEEDS_ATTENTION)

    assert inbox_sweep(min_age_seconds=30) == 3

    assert clean_broker.llen("payments") == 1  # one message carries the batch
    assert sorted(queued_inbox_ids(clean_broker)) == sorted([lost, never_sent, failed])
    swept = InboxMessage.objects.filter(pk__in=[lost, never_sent, failed])
    assert all(
        row.last_enqueued_at and row.last_enqueued_at > timezone.now() - dt.timedelta(seconds=5) for row in swept
    )
    # Run again at once: those rows were just sent, nothing goes twice.
    assert inbox_sweep(min_age_seconds=30) == 0


def test_the_sweeper_stops_at_a_dead_broker(till: Till, settings: Any) -> None:
    settings.MPESA_BROKER_URL = "redis://127.0.0.1:1/0"
    _row(till, "LOST000004", age=120, enqueued_age=None)
    _row(till, "LOST000005", age=120, enqueued_age=None)
    assert inbox_sweep(min_age_seconds=30) == 0


def test_beat_runs_the_sweeper_and_the_recovery_job() -> None:
    """The data migration's schedules (created again here: transactional tests empty the tables)."""
    import importlib

    from django.apps import apps
    from django_celery_beat.models import PeriodicTask

    migration = importlib.import_module("integrations.migrations.0002_beat_schedules")
    migration.create(apps, None)
    migration.create(apps, None)  # idempotent
    assert PeriodicTask.objects.filter(task__startswith="payments.").count() == 2

    tasks = {t.task: t for t in PeriodicTask.objects.filter(task__startswith="payments.")}
    assert tasks["payments.sweep_inbox"].enabled and tasks["payments.sweep_inbox"].interval.every == 60
    assert tasks["payments.recover_requests"].enabled and tasks["payments.recover_requests"].interval.every == 120


def _sent(till: Till, checkout: str, minutes_ago: int) -> PaymentRequest:
    request = PaymentRequest.objects.create(
        till=till,
        business=till.business,
        phone="254712345678",
        amount=10,
        account_reference="R",
        description="D",
        checkout_request_id=checkout,
        state=PaymentRequestState.SENT,
    )
    PaymentRequest.objects.filter(pk=request.pk).update(created_at=timezone.now() - dt.timedelta(minutes=minutes_ago))
    return request


def test_recovery_asks_daraja_about_silent_requests(daraja_till: Till, fake_daraja: FakeDaraja) -> None:
    pending = _sent(daraja_till, "ws_CO_PENDING", 5)
    cancelled = _sent(daraja_till, "ws_CO_CANCELLED", 6)
    paid = _sent(daraja_till, "ws_CO_PAID", 7)
    young = _sent(daraja_till, "ws_CO_YOUNG", 1)
    # Oldest first: paid, cancelled, pending.
    fake_daraja.script(
        STK_QUERY, body={**load_sample("04_stk_query_response_success.json"), "CheckoutRequestID": "ws_CO_PAID"}
    )
    fake_daraja.script(
        STK_QUERY,
        body={
            **load_sample("04_stk_query_response_success.json"),
            "CheckoutRequestID": "ws_CO_CANCELLED",
            "ResultCode": "1032",
            "ResultDesc": "Request cancelled by user",
        },
    )
    fake_daraja.script(STK_QUERY, status=500, body=load_sample("04_stk_query_error_still_processing.json"))

    counts = payment_requests_recover(older_than_seconds=180)

    assert counts == {"paid": 1, "cancelled": 1, "pending": 1}
    states = {r.pk: r.state for r in PaymentRequest.objects.all()}
    assert states[pending.pk] == PaymentRequestState.SENT  # still at the prompt: asked again next time
    assert states[cancelled.pk] == PaymentRequestState.CANCELLED
    assert states[paid.pk] == PaymentRequestState.PAID_AWAITING_CALLBACK
    assert states[young.pk] == PaymentRequestState.SENT
    assert [r.json["CheckoutRequestID"] for r in fake_daraja.requests_to(STK_QUERY)] == [
        "ws_CO_PAID",
        "ws_CO_CANCELLED",
        "ws_CO_PENDING",
    ]
    # Asked a moment ago: not asked again on the next run.
    assert payment_requests_recover(older_than_seconds=180) == {}


def test_daraja_urls_prints_every_till(till: Till) -> None:
    out = StringIO()
    call_command("daraja_urls", stdout=out)
    text = out.getvalue()
    assert f"http://127.0.0.1:8000/daraja/{till.callback_token}/stk/" in text
    assert f"/daraja/{till.callback_token}/result/reversal/" in text
    for word in ("mpesa", "safaricom", "exe", "cmd", "sql", "query"):
        assert word not in till.callback_token.lower()


def test_daraja_register_urls(daraja_till: Till, fake_daraja: FakeDaraja) -> None:
    out = StringIO()
    call_command("daraja_register_urls", "--till", str(daraja_till.pk), stdout=out)
    assert "Registered" in out.getvalue()
    assert fake_daraja.requests_to("/mpesa/c2b/v1/registerurl")
    with pytest.raises(CommandError):
        call_command("daraja_register_urls", "--till", "999999")


def test_daraja_simulate_sends_to_a_running_server(live_server: Any, till: Till, transactional_db: None) -> None:
    out = StringIO()
    call_command(
        "daraja_simulate",
        "--till",
        str(till.pk),
        "--url",
        live_server.url,
        "--count",
        "30",
        "--rate",
        "200",
        "--seed",
        "7",
        stdout=out,
    )
    text = out.getvalue()
    assert "answers: {200:" in text and "ack latency" in text
    kinds = set(InboxMessage.objects.values_list("kind", flat=True))
    assert InboxKind.STK_CALLBACK in kinds and InboxKind.C2B_CONFIRMATION in kinds
    c2b = InboxMessage.objects.filter(kind=InboxKind.C2B_CONFIRMATION).first()
    assert c2b is not None and len(__import__("json").loads(c2b.body)["MSISDN"]) == 64

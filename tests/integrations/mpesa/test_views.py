"""The callback views: every sample is stored once and answered with Daraja's JSON, whatever it holds."""

from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest
import redis
from django.test import Client

from integrations.mpesa.inbox import inbox_store
from integrations.mpesa.models import InboxKind, InboxMessage, InboxState, Till
from integrations.mpesa.publisher import publisher
from tests.celery_support import ROOT, worker_env
from tests.factories.mpesa import (
    FIXTURES,
    TillFactory,
    c2b_confirmation,
    c2b_validation,
    sample_bytes,
    stk_success,
)
from tests.factories.operations import CustomerFactory
from tests.integrations.mpesa.redis_support import queued_inbox_ids

pytestmark = pytest.mark.django_db

ACK = {"ResultCode": 0, "ResultDesc": "Success"}
ACCEPTED = {"ResultCode": 0, "ResultDesc": "Accepted"}

# (sample, URL suffix, expected answer, inbox kind)
CALLBACK_SAMPLES = [
    ("03_stk_callback_success_doc.json", "stk/", ACK, InboxKind.STK_CALLBACK),
    ("03_stk_callback_cancelled_1032_doc.json", "stk/", ACK, InboxKind.STK_CALLBACK),
    ("03_stk_callback_wrong_pin_2001.json", "stk/", ACK, InboxKind.STK_CALLBACK),
    ("06_c2b_confirmation_v2_masked_msisdn_doc.json", "c2b/confirm/", ACK, InboxKind.C2B_CONFIRMATION),
    ("08_transaction_status_result_doc_b2c.json", "result/status/", ACCEPTED, InboxKind.STATUS_RESULT),
    ("09_reversal_result_success.json", "result/reversal/", ACCEPTED, InboxKind.REVERSAL_RESULT),
    ("09_reversal_result_failure_R000002.json", "result/reversal/", ACCEPTED, InboxKind.REVERSAL_RESULT),
    ("10_account_balance_result_doc.json", "result/balance/", ACCEPTED, InboxKind.BALANCE_RESULT),
    ("09_reversal_result_failure_R000002.json", "timeout/reversal/", ACCEPTED, InboxKind.REVERSAL_TIMEOUT),
]


def url(till: Till, suffix: str) -> str:
    return f"/daraja/{till.callback_token}/{suffix}"


def post(client: Client, till: Till, suffix: str, body: bytes, **extra: Any):  # type: ignore[no-untyped-def]
    response = client.post(url(till, suffix), data=body, content_type="application/json", **extra)
    assert publisher.flush(), "the enqueue backlog did not drain"
    return response


@pytest.mark.parametrize(("name", "suffix", "answer", "kind"), CALLBACK_SAMPLES)
def test_every_callback_sample_is_stored_once_and_acknowledged(
    till: Till, clean_broker: redis.Redis, name: str, suffix: str, answer: dict[str, object], kind: str
) -> None:
    client = Client()
    body = sample_bytes(name)

    first = post(client, till, suffix, body)
    again = post(client, till, suffix, body)

    assert first.status_code == again.status_code == 200
    assert first.json() == again.json() == answer
    rows = list(InboxMessage.objects.filter(till=till))
    assert len(rows) == 1
    assert rows[0].kind == kind
    assert rows[0].state == InboxState.RECEIVED
    assert rows[0].body == body.decode()
    assert rows[0].headers["Content-Type"] == "application/json"
    # One message for the payments queue: the duplicate is not enqueued again.
    assert clean_broker.llen("payments") == 1


def test_ids_submitted_together_go_in_one_message(till: Till, clean_broker: redis.Redis) -> None:
    """The publisher waits LINGER after an id for others and sends them as one batch, in order."""
    ids = []
    for n in range(5):
        receipt = f"RCPTB0000{n}"
        body = c2b_confirmation(trans_id=receipt, shortcode=till.shortcode)
        inbox_id = inbox_store(
            till_id=till.pk, kind=InboxKind.C2B_CONFIRMATION, daraja_id=receipt, body=body, headers={}, remote_addr=None
        )
        assert inbox_id is not None
        ids.append(inbox_id)
    for inbox_id in ids:  # well within LINGER of each other
        assert publisher.submit(inbox_id)
    assert publisher.flush()
    assert clean_broker.llen("payments") == 1
    assert queued_inbox_ids(clean_broker) == ids


def test_a_process_ending_normally_publishes_what_it_holds(clean_broker: redis.Redis) -> None:
    """Ids still lingering in the publisher when a web process exits (gunicorn recycling a worker)
    are published on the way out, not left to the sweeper."""
    code = (
        "import django; django.setup()\n"
        "from integrations.mpesa.publisher import publisher\n"
        "for inbox_id in (101, 102, 103):\n"
        "    publisher.submit(inbox_id)\n"
    )
    subprocess.run([sys.executable, "-c", code], env=worker_env(), cwd=ROOT, check=True, timeout=60)
    assert queued_inbox_ids(clean_broker) == [101, 102, 103]


def test_the_daraja_id_is_the_checkout_request_id_or_the_receipt(till: Till, clean_broker: redis.Redis) -> None:
    post(Client(), till, "stk/", stk_success(checkout_id="ws_CO_X1", receipt="RCPT000001"))
    post(Client(), till, "c2b/confirm/", c2b_confirmation(trans_id="RCPT000001", shortcode=till.shortcode))

    ids = dict(InboxMessage.objects.values_list("kind", "daraja_id"))
    assert ids == {InboxKind.STK_CALLBACK: "ws_CO_X1", InboxKind.C2B_CONFIRMATION: "RCPT000001"}


@pytest.mark.parametrize(
    "body",
    [b"", b"not json", b"{", b"[]", b'{"Body": {}}', b"\xff\xfe\x00garbage", json.dumps({"Body": None}).encode()],
)
def test_a_malformed_body_is_stored_flagged_and_answered(till: Till, clean_broker: redis.Redis, body: bytes) -> None:
    response = post(Client(), till, "stk/", body)
    again = post(Client(), till, "stk/", body)

    assert response.status_code == again.status_code == 200
    assert response.json() == ACK
    row = InboxMessage.objects.get()
    assert row.state == InboxState.NEEDS_ATTENTION
    assert row.daraja_id.startswith("malformed:")
    assert "malformed body" in row.error
    assert clean_broker.llen("payments") == 0


def test_unknown_or_inactive_tokens_are_not_found(till: Till) -> None:
    client = Client()
    assert client.post("/daraja/nope/stk/", data=b"{}", content_type="application/json").status_code == 404
    Till.objects.filter(pk=till.pk).update(is_active=False)
    assert post(client, till, "stk/", sample_bytes("03_stk_callback_success_doc.json")).status_code == 404
    assert InboxMessage.objects.count() == 0


def test_only_post_is_accepted(till: Till) -> None:
    assert Client().get(url(till, "stk/")).status_code == 405


def test_an_unknown_result_kind_is_not_found(till: Till) -> None:
    assert post(Client(), till, "result/other/", b"{}").status_code == 404


def test_a_callback_from_outside_the_allowlist_is_stored_but_never_processed(
    till: Till, clean_broker: redis.Redis, settings: pytest.FixtureRequest, caplog: pytest.LogCaptureFixture
) -> None:
    settings.MPESA_TRUST_X_FORWARDED_FOR = True  # type: ignore[attr-defined]
    till.allowed_ips = "196.201.214.0/24\n196.201.213.44"
    till.save()
    body = sample_bytes("03_stk_callback_success_doc.json")

    inside = post(Client(), till, "stk/", body, HTTP_X_FORWARDED_FOR="196.201.214.200, 10.0.0.1")
    outside = post(
        Client(),
        till,
        "c2b/confirm/",
        sample_bytes("06_c2b_confirmation_v2_masked_msisdn_doc.json"),
        HTTP_X_FORWARDED_FOR="203.0.113.9",
    )

    assert inside.status_code == outside.status_code == 200
    ok = InboxMessage.objects.get(kind=InboxKind.STK_CALLBACK)
    held = InboxMessage.objects.get(kind=InboxKind.C2B_CONFIRMATION)
    assert ok.state == InboxState.RECEIVED and ok.remote_addr == "196.201.214.200"
    assert held.state == InboxState.NEEDS_ATTENTION and "203.0.113.9" in held.error
    assert "unknown address 203.0.113.9" in caplog.text
    assert clean_broker.llen("payments") == 1


def test_forwarded_for_is_ignored_unless_the_proxy_is_trusted(
    till: Till, clean_broker: redis.Redis, settings: pytest.FixtureRequest
) -> None:
    settings.MPESA_TRUST_X_FORWARDED_FOR = False  # type: ignore[attr-defined]
    till.allowed_ips = "196.201.214.0/24"
    till.save()
    post(Client(), till, "stk/", sample_bytes("03_stk_callback_success_doc.json"), HTTP_X_FORWARDED_FOR="196.201.214.1")
    row = InboxMessage.objects.get()
    assert row.remote_addr == "127.0.0.1"
    assert row.state == InboxState.NEEDS_ATTENTION


def test_validation_accepts_within_the_till_limits(till: Till) -> None:
    response = post(Client(), till, "c2b/validate/", sample_bytes("06_c2b_validation_request_doc_masked_msisdn.json"))
    assert response.json() == {"ResultCode": "0", "ResultDesc": "Accepted"}
    row = InboxMessage.objects.get()
    assert row.kind == InboxKind.C2B_VALIDATION and row.state == InboxState.PROCESSED
    assert row.outcome == "accepted"


def test_validation_rejects_an_amount_outside_the_limits(till: Till) -> None:
    till.min_amount, till.max_amount = 50, 1000
    till.save()
    low = post(Client(), till, "c2b/validate/", c2b_validation(trans_id="VAL0000001", shortcode="600966", amount="10"))
    high = post(
        Client(), till, "c2b/validate/", c2b_validation(trans_id="VAL0000002", shortcode="600966", amount="1001")
    )
    ok = post(Client(), till, "c2b/validate/", c2b_validation(trans_id="VAL0000003", shortcode="600966", amount="1000"))
    assert low.json() == high.json() == {"ResultCode": "C2B00013", "ResultDesc": "Rejected"}
    assert ok.json()["ResultCode"] == "0"


def test_validation_rejects_an_unknown_account_when_the_till_asks(till: Till) -> None:
    CustomerFactory.create(business=till.business, name="Hotel Baraka", account_code="BARAKA")
    till.validate_account_reference = True
    till.save()
    unknown = post(
        Client(), till, "c2b/validate/", c2b_validation(trans_id="VAL0000004", shortcode="1", bill_ref="NOPE")
    )
    known = post(
        Client(), till, "c2b/validate/", c2b_validation(trans_id="VAL0000005", shortcode="1", bill_ref="baraka")
    )
    assert unknown.json() == {"ResultCode": "C2B00012", "ResultDesc": "Rejected"}
    assert known.json() == {"ResultCode": "0", "ResultDesc": "Accepted"}


def test_validation_of_an_unreadable_body_accepts_and_flags(till: Till) -> None:
    response = post(Client(), till, "c2b/validate/", b"<xml/>")
    assert response.status_code == 200 and response.json()["ResultCode"] == "0"
    assert InboxMessage.objects.get().state == InboxState.NEEDS_ATTENTION


def test_the_answer_does_not_wait_for_a_dead_broker(till: Till, settings: pytest.FixtureRequest) -> None:
    settings.MPESA_BROKER_URL = "redis://127.0.0.1:1/0"  # type: ignore[attr-defined]  # nothing listens there
    started = time.monotonic()
    response = Client().post(
        url(till, "stk/"), data=sample_bytes("03_stk_callback_success_doc.json"), content_type="application/json"
    )
    elapsed = time.monotonic() - started
    assert publisher.flush(timeout=30)

    assert response.status_code == 200 and response.json() == ACK
    assert elapsed < 1.0
    row = InboxMessage.objects.get()
    assert row.state == InboxState.RECEIVED  # the sweeper will send it


def test_every_fixture_callback_is_covered() -> None:
    """A new callback sample in tests/fixtures/daraja must be added to CALLBACK_SAMPLES."""
    callbacks = {p.name for p in Path(FIXTURES).glob("*.json") if p.name[:2] in {"03", "06", "08", "09", "10"}}
    callbacks -= {
        "06_c2b_validation_request_doc_masked_msisdn.json",
        "08_transaction_status_request.json",
        "08_transaction_status_sync_response.json",
        "09_reversal_request.json",
    }
    assert callbacks <= {name for name, *_ in CALLBACK_SAMPLES}


def test_two_tills_are_kept_apart(till: Till, clean_broker: redis.Redis) -> None:
    other = TillFactory.create(business=till.business, shortcode="600967")
    body = sample_bytes("03_stk_callback_success_doc.json")
    post(Client(), till, "stk/", body)
    post(Client(), other, "stk/", body)
    # Same Daraja id on two tills is the same callback misrouted: stored once.
    assert InboxMessage.objects.count() == 1


def test_a_broker_back_from_an_outage_gets_the_next_callback_at_once(
    till: Till, clean_broker: redis.Redis, settings: pytest.FixtureRequest
) -> None:
    settings.MPESA_BROKER_URL = "redis://127.0.0.1:1/0"  # type: ignore[attr-defined]
    post(Client(), till, "stk/", sample_bytes("03_stk_callback_success_doc.json"))
    assert publisher._paused_until > time.monotonic()  # the outage was noticed

    settings.MPESA_BROKER_URL = ""  # type: ignore[attr-defined]  # Redis is back
    post(Client(), till, "c2b/confirm/", sample_bytes("06_c2b_confirmation_v2_masked_msisdn_doc.json"))

    assert clean_broker.llen("payments") == 1  # sent at once, not left to the sweeper

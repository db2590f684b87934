"""DarajaClient against a local fake Daraja: shared token, retry policy, timeouts, checks before HTTP."""

from __future__ import annotations

import base64
import os
import socket
import subprocess
import sys
import threading
import time
from datetime import UTC, datetime
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest
import redis
import requests
from django.conf import settings

from integrations.mpesa.client import (
    PRODUCTION_BASE_URL,
    DarajaClient,
    daraja_timestamp,
    stk_password,
    token_cache_seconds,
    validate_callback_url,
)
from integrations.mpesa.exceptions import (
    DarajaAuthError,
    DarajaConfigError,
    DarajaRequestError,
    DarajaTransientError,
)
from tests.integrations.mpesa.fake_daraja import (
    ACCOUNT_BALANCE,
    C2B_REGISTER_V1,
    C2B_REGISTER_V2,
    INVALID_TOKEN_BODY,
    OAUTH,
    REQUEST_SAMPLES,
    REVERSAL,
    SANDBOX_PASSKEY,
    SANDBOX_SHORTCODE,
    STK_PUSH,
    STK_QUERY,
    TRANSACTION_STATUS,
    FakeDaraja,
    load_sample,
)

PROJECT_ROOT = Path(__file__).resolve().parents[3]
CALLBACK = "http://127.0.0.1:8000/daraja/t0k3n/stk/"
RESULT_URL = "https://office.example.co.ke/daraja/t0k3n/result/status/"
TIMEOUT_URL = "https://office.example.co.ke/daraja/t0k3n/timeout/status/"
STK_ARGS: dict[str, Any] = {
    "amount": Decimal("1"),
    "phone": "0722 111 111",
    "account_reference": "INV-1001",
    "transaction_desc": "Water refill",
    "callback_url": CALLBACK,
}


def status_args(**overrides: Any) -> dict[str, Any]:
    args: dict[str, Any] = {
        "transaction_id": "NEF61H8J60",
        "result_url": RESULT_URL,
        "timeout_url": TIMEOUT_URL,
        "remarks": "Missing callback",
    }
    args.update(overrides)
    return args


def closed_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


class RecordingSession(requests.Session):
    """A real session that remembers the keyword arguments of every request."""

    def __init__(self) -> None:
        super().__init__()
        self.calls: list[tuple[str, dict[str, Any]]] = []

    def request(self, method: str | bytes, url: str | bytes, *args: Any, **kwargs: Any) -> requests.Response:  # type: ignore[override]
        self.calls.append((str(url), kwargs))
        return super().request(method, url, *args, **kwargs)


class NoHttpSession(requests.Session):
    def request(self, *args: Any, **kwargs: Any) -> requests.Response:  # type: ignore[override]
        raise AssertionError("no HTTP request was expected")


# ------------------------------------------------------------------------------------- requests


def test_stk_password_reproduces_the_documented_sample() -> None:
    sample = load_sample("02_stk_push_request_paybill.json")
    assert stk_password(SANDBOX_SHORTCODE, SANDBOX_PASSKEY, sample["Timestamp"]) == sample["Password"]


def test_timestamp_is_nairobi_wall_time() -> None:
    assert daraja_timestamp(datetime(2024, 1, 1, 21, 30, 5, tzinfo=UTC)) == "20240102003005"


def test_stk_push_sends_what_daraja_checks(fake_daraja: FakeDaraja) -> None:
    answer = fake_daraja.client().stk_push(**STK_ARGS)

    assert answer.accepted
    assert answer.checkout_request_id.startswith("ws_CO_FAKE")
    assert fake_daraja.rejections == []
    sent = fake_daraja.requests_to(STK_PUSH)[0].json
    assert set(sent) == set(load_sample(REQUEST_SAMPLES[STK_PUSH]))
    assert sent["PartyA"] == sent["PhoneNumber"] == "254722111111"
    assert sent["Amount"] == "1"
    assert sent["BusinessShortCode"] == sent["PartyB"] == SANDBOX_SHORTCODE
    decoded = base64.b64decode(sent["Password"]).decode()
    assert decoded == f"{SANDBOX_SHORTCODE}{SANDBOX_PASSKEY}{sent['Timestamp']}"


def test_buy_goods_is_signed_by_the_store_and_paid_to_the_till(fake_daraja: FakeDaraja) -> None:
    fake_daraja.client().stk_push(**STK_ARGS, transaction_type="CustomerBuyGoodsOnline", party_b="600100")

    sent = fake_daraja.requests_to(STK_PUSH)[0].json
    assert (sent["TransactionType"], sent["BusinessShortCode"], sent["PartyB"]) == (
        "CustomerBuyGoodsOnline",
        SANDBOX_SHORTCODE,
        "600100",
    )


def test_fake_daraja_refuses_a_wrong_password(fake_daraja: FakeDaraja) -> None:
    """The fake's checks are real: the request tests above could fail."""
    client = fake_daraja.client(passkey="not-the-passkey")

    with pytest.raises(DarajaRequestError) as caught:
        client.stk_push(**STK_ARGS)

    assert caught.value.error_code == "400.002.02"
    assert "Password" in fake_daraja.rejections


@pytest.mark.parametrize(
    ("path", "call"),
    [
        (STK_QUERY, lambda c: c.stk_query(checkout_request_id="ws_CO_260520211133524545")),
        (C2B_REGISTER_V1, lambda c: c.c2b_register_urls(confirmation_url=RESULT_URL, validation_url=TIMEOUT_URL)),
        (
            C2B_REGISTER_V2,
            lambda c: c.c2b_register_urls(confirmation_url=RESULT_URL, validation_url=TIMEOUT_URL, version="v2"),
        ),
        (TRANSACTION_STATUS, lambda c: c.transaction_status(**status_args())),
        (
            REVERSAL,
            lambda c: c.reversal(
                transaction_id="PDU91HIVIT",
                amount=Decimal("200"),
                receiver_party="603021",
                result_url=RESULT_URL,
                timeout_url=TIMEOUT_URL,
                remarks="Payment reversal",
            ),
        ),
    ],
)
def test_request_fields_match_the_documented_samples(fake_daraja: FakeDaraja, path: str, call: Any) -> None:
    call(fake_daraja.client())

    assert fake_daraja.rejections == []
    (received,) = fake_daraja.requests_to(path)
    assert set(received.json) == set(load_sample(REQUEST_SAMPLES[path]))


def test_reversal_sends_whole_shillings_and_daraja_spelling(fake_daraja: FakeDaraja) -> None:
    answer = fake_daraja.client().reversal(
        transaction_id="PDU91HIVIT",
        amount=Decimal("200.00"),
        receiver_party="603021",
        result_url=RESULT_URL,
        timeout_url=TIMEOUT_URL,
        remarks="Payment reversal",
        occasion="Duplicate",
    )

    sent = fake_daraja.requests_to(REVERSAL)[0].json
    assert (sent["Amount"], sent["RecieverIdentifierType"], sent["Occasion"]) == ("200", "11", "Duplicate")
    assert answer.conversation_id.startswith("AG_FAKE_")


def test_account_balance_and_register_urls_answers(fake_daraja: FakeDaraja) -> None:
    client = fake_daraja.client()

    balance = client.account_balance(result_url=RESULT_URL, timeout_url=TIMEOUT_URL, remarks="Daily balance")
    registered = client.c2b_register_urls(confirmation_url=RESULT_URL, validation_url=TIMEOUT_URL)

    assert balance.accepted and balance.originator_conversation_id
    assert fake_daraja.requests_to(ACCOUNT_BALANCE)[0].json["CommandID"] == "AccountBalance"
    # Daraja's answer spells it "OriginatorCoversationID".
    assert registered.originator_conversation_id == "6e86-45dd-91ac-fd5d4178ab523408729"
    assert fake_daraja.rejections == []


# ------------------------------------------------------------------------------------- OAuth token


def test_twenty_threads_share_one_token(fake_daraja: FakeDaraja) -> None:
    fake_daraja.token_delay = 0.3  # every thread arrives while the first fetch is in flight
    clients = [fake_daraja.client() for _ in range(20)]
    barrier = threading.Barrier(len(clients))
    tokens: list[str | None] = [None] * len(clients)

    def fetch(index: int) -> None:
        barrier.wait()
        tokens[index] = clients[index].access_token()

    threads = [threading.Thread(target=fetch, args=(i,)) for i in range(len(clients))]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=30)

    assert fake_daraja.token_requests == 1
    assert set(tokens) == {fake_daraja.tokens_issued[0]}

    # A new instance reuses it for API calls.
    fake_daraja.client().transaction_status(**status_args())
    assert fake_daraja.token_requests == 1
    assert fake_daraja.requests_to(TRANSACTION_STATUS)[0].bearer == fake_daraja.tokens_issued[0]


def test_processes_share_one_token(fake_daraja: FakeDaraja) -> None:
    fake_daraja.token_delay = 0.5
    code = (
        "import sys\n"
        "from integrations.mpesa.client import DarajaClient\n"
        "c = DarajaClient(base_url=sys.argv[1], consumer_key=sys.argv[2], consumer_secret=sys.argv[3],\n"
        "                 shortcode='174379', redis_url=sys.argv[4])\n"
        "print(c.access_token())\n"
    )
    env = {**os.environ, "PYTHONPATH": str(PROJECT_ROOT)}
    args = [fake_daraja.base_url, fake_daraja.consumer_key, fake_daraja.consumer_secret, settings.REDIS_URL]
    fake_daraja.client()  # registers the Redis keys for cleanup
    procs = [
        subprocess.Popen(
            [sys.executable, "-c", code, *args], cwd=PROJECT_ROOT, env=env, stdout=subprocess.PIPE, text=True
        )
        for _ in range(4)
    ]
    outputs = [proc.communicate(timeout=60)[0].strip() for proc in procs]

    assert [proc.returncode for proc in procs] == [0, 0, 0, 0]
    assert set(outputs) == {fake_daraja.tokens_issued[0]}
    assert fake_daraja.token_requests == 1


@pytest.mark.parametrize(
    ("expires_in", "cached_for"),
    [(3599, 3539), (600, 540), (121, 61), (120, 60), (61, 30), (2, 1), (1, 1)],
)
def test_token_is_replaced_before_daraja_expires_it(expires_in: int, cached_for: int) -> None:
    assert token_cache_seconds(expires_in) == cached_for


@pytest.mark.parametrize("expires_in", ["3599", 3599])
def test_token_cache_ttl_follows_expires_in_as_string_or_number(fake_daraja: FakeDaraja, expires_in: object) -> None:
    fake_daraja.token_expires_in = expires_in
    client = fake_daraja.client()

    client.access_token()

    ttl = redis.Redis.from_url(settings.REDIS_URL).ttl(client.token_cache_key)
    assert 3530 <= ttl <= 3539


def test_an_expiring_token_is_refreshed(fake_daraja: FakeDaraja) -> None:
    fake_daraja.token_expires_in = "2"  # cached for 1 s
    client = fake_daraja.client()
    first = client.access_token()

    time.sleep(1.2)
    client.transaction_status(**status_args())

    assert fake_daraja.token_requests == 2
    assert fake_daraja.requests_to(TRANSACTION_STATUS)[0].bearer == fake_daraja.tokens_issued[1] != first


def test_a_refused_token_is_refreshed_once_and_the_call_succeeds(fake_daraja: FakeDaraja) -> None:
    client = fake_daraja.client()
    old = client.access_token()
    fake_daraja.invalidate_tokens()  # e.g. someone generated a new token with the same keys

    answer = client.transaction_status(**status_args())

    assert answer.accepted
    calls = fake_daraja.requests_to(TRANSACTION_STATUS)
    assert [call.bearer for call in calls] == [old, fake_daraja.tokens_issued[1]]
    assert fake_daraja.token_requests == 2


@pytest.mark.parametrize("status", [401, 404])
def test_a_token_refused_twice_is_an_auth_error(fake_daraja: FakeDaraja, status: int) -> None:
    fake_daraja.script(TRANSACTION_STATUS, status=status, body=INVALID_TOKEN_BODY, times=2)

    with pytest.raises(DarajaAuthError) as caught:
        fake_daraja.client().transaction_status(**status_args())

    assert caught.value.error_code == "404.001.03"
    assert len(fake_daraja.requests_to(TRANSACTION_STATUS)) == 2
    assert fake_daraja.token_requests == 2


def test_invalidate_only_drops_the_token_that_was_used(fake_daraja: FakeDaraja) -> None:
    client = fake_daraja.client()
    current = client.access_token()

    assert client.invalidate_token("a-token-another-process-already-replaced") is False
    assert client.access_token() == current
    assert client.invalidate_token(current) is True
    assert client.access_token() != current
    assert fake_daraja.token_requests == 2


def test_a_lock_left_by_a_dead_process_expires(fake_daraja: FakeDaraja) -> None:
    client = fake_daraja.client()
    redis.Redis.from_url(settings.REDIS_URL).set(client.token_lock_key, "crashed-worker", ex=1)
    started = time.monotonic()

    client.access_token()

    assert time.monotonic() - started >= 0.8
    assert fake_daraja.token_requests == 1


def test_wrong_credentials_are_an_auth_error_without_retry(fake_daraja: FakeDaraja) -> None:
    client = fake_daraja.client(consumer_secret="wrong")

    with pytest.raises(DarajaAuthError) as caught:
        client.access_token()

    assert (caught.value.http_status, caught.value.error_code) == (400, "400.008.01")
    assert fake_daraja.token_requests == 1


def test_token_cache_down_is_a_transient_error(fake_daraja: FakeDaraja) -> None:
    client = fake_daraja.client(redis_url=f"redis://127.0.0.1:{closed_port()}/0")

    with pytest.raises(DarajaTransientError) as caught:
        client.transaction_status(**status_args())

    assert caught.value.may_have_been_processed is False
    assert fake_daraja.received == []


# ------------------------------------------------------------------------------------- retries


def test_503_is_retried_with_exponential_backoff(fake_daraja: FakeDaraja) -> None:
    sleeps: list[float] = []
    client = fake_daraja.client(sleep=sleeps.append, backoff=0.5)
    fake_daraja.script(TRANSACTION_STATUS, status=503, body="<html>Service Unavailable</html>", times=2)

    answer = client.transaction_status(**status_args())

    assert answer.accepted
    assert len(fake_daraja.requests_to(TRANSACTION_STATUS)) == 3
    assert sleeps == [0.5, 1.0]


def test_retries_stop_after_max_retries(fake_daraja: FakeDaraja) -> None:
    sleeps: list[float] = []
    client = fake_daraja.client(sleep=sleeps.append, backoff=0.5, max_retries=3)
    fake_daraja.script(TRANSACTION_STATUS, status=504, body="", times=10)

    with pytest.raises(DarajaTransientError) as caught:
        client.transaction_status(**status_args())

    assert (caught.value.http_status, caught.value.attempts) == (504, 4)
    assert len(fake_daraja.requests_to(TRANSACTION_STATUS)) == 4
    assert sleeps == [0.5, 1.0, 2.0]


def test_retry_after_is_honoured(fake_daraja: FakeDaraja) -> None:
    sleeps: list[float] = []
    fake_daraja.script(TRANSACTION_STATUS, status=429, body="", headers={"Retry-After": "2"})

    fake_daraja.client(sleep=sleeps.append).transaction_status(**status_args())

    assert sleeps == [2.0]


def test_400_with_a_daraja_error_body_is_not_retried(fake_daraja: FakeDaraja) -> None:
    sleeps: list[float] = []
    body = {"requestId": "11728-2929992-1", "errorCode": "400.002.02", "errorMessage": "Bad Request - Invalid Remarks"}
    fake_daraja.script(TRANSACTION_STATUS, status=400, body=body)

    with pytest.raises(DarajaRequestError) as caught:
        fake_daraja.client(sleep=sleeps.append).transaction_status(**status_args())

    error = caught.value
    assert (error.http_status, error.error_code, error.error_message, error.request_id) == (
        400,
        "400.002.02",
        "Bad Request - Invalid Remarks",
        "11728-2929992-1",
    )
    assert "Invalid Remarks" in str(error)
    assert len(fake_daraja.requests_to(TRANSACTION_STATUS)) == 1
    assert sleeps == []


@pytest.mark.parametrize("path", [STK_PUSH, TRANSACTION_STATUS])
def test_500_with_a_daraja_error_body_is_not_retried(fake_daraja: FakeDaraja, path: str) -> None:
    body = {"requestId": "29115-34620561-1", "errorCode": "500.001.1001", "errorMessage": "Merchant does not exist"}
    fake_daraja.script(path, status=500, body=body)
    client = fake_daraja.client()

    def call() -> object:
        if path == STK_PUSH:
            return client.stk_push(**STK_ARGS)
        return client.transaction_status(**status_args())

    with pytest.raises(DarajaRequestError) as caught:
        call()

    assert caught.value.error_message == "Merchant does not exist"
    assert len(fake_daraja.requests_to(path)) == 1


def test_stk_push_read_timeout_is_not_retried(fake_daraja: FakeDaraja) -> None:
    sleeps: list[float] = []
    client = fake_daraja.client(timeout=(2, 0.3), sleep=sleeps.append)
    fake_daraja.script(STK_PUSH, body=load_sample("02_stk_push_sync_response_success.json"), delay=1.5)

    with pytest.raises(DarajaTransientError) as caught:
        client.stk_push(**STK_ARGS)

    assert caught.value.may_have_been_processed is True  # the customer may have the prompt already
    assert len(fake_daraja.requests_to(STK_PUSH)) == 1
    assert sleeps == []


def test_idempotent_read_timeout_is_retried(fake_daraja: FakeDaraja) -> None:
    client = fake_daraja.client(timeout=(2, 0.3))
    fake_daraja.script(TRANSACTION_STATUS, body={}, delay=1.5)

    assert client.transaction_status(**status_args()).accepted
    assert len(fake_daraja.requests_to(TRANSACTION_STATUS)) == 2


@pytest.mark.parametrize(
    "answer",
    [
        {"status": 503, "body": "<html>busy</html>"},
        {"status": 502, "body": ""},
        {"status": 504, "body": ""},
        {"drop": True},
        {"status": 500, "body": {"requestId": "x", "errorCode": "500.003.02", "errorMessage": "Spike arrest"}},
    ],
)
def test_money_moving_calls_are_not_resent_when_daraja_may_have_acted(
    fake_daraja: FakeDaraja, answer: dict[str, Any]
) -> None:
    fake_daraja.script(STK_PUSH, **answer)
    fake_daraja.script(REVERSAL, **answer)
    client = fake_daraja.client()

    with pytest.raises(DarajaTransientError) as push_error:
        client.stk_push(**STK_ARGS)
    with pytest.raises(DarajaTransientError) as reversal_error:
        client.reversal(
            transaction_id="PDU91HIVIT",
            amount=Decimal("200"),
            receiver_party="603021",
            result_url=RESULT_URL,
            timeout_url=TIMEOUT_URL,
            remarks="Payment reversal",
        )

    assert push_error.value.may_have_been_processed and reversal_error.value.may_have_been_processed
    assert len(fake_daraja.requests_to(STK_PUSH)) == len(fake_daraja.requests_to(REVERSAL)) == 1


def test_dropped_connection_and_spike_arrest_are_retried_for_queries(fake_daraja: FakeDaraja) -> None:
    fake_daraja.script(TRANSACTION_STATUS, drop=True)
    fake_daraja.script(
        TRANSACTION_STATUS,
        status=500,
        body={"requestId": "x", "errorCode": "500.003.02", "errorMessage": "Spike arrest violation"},
    )

    assert fake_daraja.client().transaction_status(**status_args()).accepted
    assert len(fake_daraja.requests_to(TRANSACTION_STATUS)) == 3


def test_stk_push_is_retried_after_429(fake_daraja: FakeDaraja) -> None:
    fake_daraja.script(STK_PUSH, status=429, body={"errorCode": "429", "errorMessage": "Too Many Requests"})

    answer = fake_daraja.client().stk_push(**STK_ARGS)

    assert answer.accepted
    assert len(fake_daraja.requests_to(STK_PUSH)) == 2


def test_stk_push_is_retried_when_no_connection_was_made() -> None:
    sleeps: list[float] = []
    client = DarajaClient(
        base_url=f"http://127.0.0.1:{closed_port()}",
        consumer_key="unreachable-key",
        consumer_secret="secret",
        shortcode=SANDBOX_SHORTCODE,
        passkey=SANDBOX_PASSKEY,
        redis_url=settings.REDIS_URL,
        max_retries=2,
        backoff=0.01,
        sleep=sleeps.append,
    )
    cache = redis.Redis.from_url(settings.REDIS_URL)
    cache.set(client.token_cache_key, "seeded-token", ex=60)
    try:
        with pytest.raises(DarajaTransientError) as caught:
            client.stk_push(**STK_ARGS)
    finally:
        cache.delete(client.token_cache_key)
        client.close()

    assert caught.value.may_have_been_processed is False
    assert caught.value.attempts == 3
    assert sleeps == [0.01, 0.02]


def test_a_2xx_with_an_unreadable_body_may_have_been_processed(fake_daraja: FakeDaraja) -> None:
    fake_daraja.script(STK_PUSH, body="<html>ok</html>")

    with pytest.raises(DarajaTransientError) as caught:
        fake_daraja.client().stk_push(**STK_ARGS)

    assert caught.value.may_have_been_processed is True


def test_a_response_code_other_than_0_is_a_request_error(fake_daraja: FakeDaraja) -> None:
    fake_daraja.script(
        TRANSACTION_STATUS,
        body={
            "ResponseCode": "1",
            "ResponseDescription": "Rejected",
            "ConversationID": "",
            "OriginatorConversationID": "",
        },
    )

    with pytest.raises(DarajaRequestError) as caught:
        fake_daraja.client().transaction_status(**status_args())

    assert caught.value.error_code == "1"


# ------------------------------------------------------------------------------------- STK Query


def test_stk_query_still_processing_is_pending_not_failed(fake_daraja: FakeDaraja) -> None:
    sleeps: list[float] = []
    fake_daraja.script(STK_QUERY, status=500, body=load_sample("04_stk_query_error_still_processing.json"))

    outcome = fake_daraja.client(sleep=sleeps.append).stk_query(checkout_request_id="ws_CO_20022018230142206")

    assert outcome.pending and outcome.status == "pending"
    assert outcome.checkout_request_id == "ws_CO_20022018230142206"
    assert outcome.error_code == "500.001.1001"
    assert len(fake_daraja.requests_to(STK_QUERY)) == 1
    assert sleeps == []


def test_stk_query_other_500_001_1001_is_an_error(fake_daraja: FakeDaraja) -> None:
    body = {"requestId": "ws_CO_1", "errorCode": "500.001.1001", "errorMessage": "Wrong credentials"}
    fake_daraja.script(STK_QUERY, status=500, body=body)

    with pytest.raises(DarajaRequestError, match="Wrong credentials"):
        fake_daraja.client().stk_query(checkout_request_id="ws_CO_1")


def test_stk_query_final_answers(fake_daraja: FakeDaraja) -> None:
    cancelled = load_sample("04_stk_query_response_success.json") | {
        "ResultCode": "1032",
        "ResultDesc": "Request cancelled by user",
    }
    fake_daraja.script(STK_QUERY, body=cancelled)
    client = fake_daraja.client()

    first = client.stk_query(checkout_request_id="ws_CO_13012021093521236557")
    second = client.stk_query(checkout_request_id="ws_CO_ABC")

    assert (first.status, first.result_code) == ("cancelled", 1032)
    assert (second.status, second.result_code, second.checkout_request_id) == ("success", 0, "ws_CO_ABC")
    assert fake_daraja.rejections == []


# ------------------------------------------------------------------------------------- refused before HTTP


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"account_reference": "ACCOUNT-REF-1"}, "at most 12"),
        ({"account_reference": ""}, "must not be empty"),
        ({"transaction_desc": "Fourteen chars"}, "at most 13"),
        ({"amount": Decimal("10.50")}, "whole shillings"),
        ({"amount": Decimal("0")}, "1..250000"),
        ({"amount": Decimal("250001")}, "1..250000"),
        ({"amount": Decimal("NaN")}, "not a number"),
        ({"amount": 10.0}, "must be a Decimal"),
        ({"phone": "12345"}, "not a Kenyan mobile number"),
        ({"callback_url": "https://pay.example.com/mpesa/stk/"}, "'mpesa'"),
        ({"callback_url": "https://pay.example.com/Query/stk/"}, "'query'"),
        ({"callback_url": "https://pay.example.com/EXE/stk/"}, "'exe'"),
        ({"callback_url": "https://Safaricom.example.com/stk/"}, "'safaricom'"),
        ({"callback_url": "https://pay.example.com/cmd/"}, "'cmd'"),
        ({"callback_url": "https://pay.example.com/?q=sql"}, "'sql'"),
        ({"callback_url": "http://pay.example.com/stk/"}, "https"),
        ({"callback_url": ""}, "empty"),
        ({"party_b": "12"}, "party_b"),
    ],
)
def test_stk_push_arguments_daraja_would_refuse_fail_before_any_request(
    fake_daraja: FakeDaraja, change: dict[str, Any], message: str
) -> None:
    client = fake_daraja.client()

    with pytest.raises(ValueError, match=message):
        client.stk_push(**(STK_ARGS | change))

    assert fake_daraja.received == []


def test_limits_are_inclusive(fake_daraja: FakeDaraja) -> None:
    client = fake_daraja.client()

    client.stk_push(**(STK_ARGS | {"account_reference": "A" * 12, "transaction_desc": "D" * 13}))
    client.stk_push(**(STK_ARGS | {"amount": Decimal("250000.00")}))

    assert fake_daraja.rejections == []


@pytest.mark.parametrize(
    "call",
    [
        lambda c: c.transaction_status(**status_args(result_url="https://office.example.co.ke/sql/result/")),
        lambda c: c.transaction_status(**status_args(timeout_url="https://office.example.co.ke/exec/")),
        lambda c: c.account_balance(result_url=RESULT_URL, timeout_url="ftp://office.example.co.ke/", remarks="r"),
        lambda c: c.c2b_register_urls(confirmation_url="https://mpesa.example.co.ke/c", validation_url=RESULT_URL),
    ],
)
def test_callback_urls_are_checked_on_every_call(fake_daraja: FakeDaraja, call: Any) -> None:
    with pytest.raises(DarajaConfigError):
        call(fake_daraja.client())

    assert fake_daraja.received == []


def test_production_refuses_plain_http_callbacks() -> None:
    client = DarajaClient(
        base_url=PRODUCTION_BASE_URL,
        consumer_key="k",
        consumer_secret="s",
        shortcode="600000",
        passkey="p",
        redis_url=settings.REDIS_URL,
        session=NoHttpSession(),
    )

    with pytest.raises(DarajaConfigError, match="only outside production"):
        client.stk_push(**STK_ARGS)
    client.close()


def test_missing_credentials_fail_before_any_request(fake_daraja: FakeDaraja) -> None:
    with pytest.raises(DarajaConfigError, match="passkey"):
        fake_daraja.client(passkey="").stk_push(**STK_ARGS)
    with pytest.raises(DarajaConfigError, match="initiator"):
        fake_daraja.client(security_credential="").transaction_status(**status_args())
    with pytest.raises(DarajaConfigError, match="shortcode"):
        fake_daraja.client(shortcode="17")

    assert fake_daraja.received == []


@pytest.mark.parametrize(
    ("url", "allowed"),
    [
        ("https://office.example.co.ke/daraja/abc/stk/", True),
        ("http://localhost:8000/daraja/abc/stk/", True),
        ("http://127.0.0.1/daraja/abc/stk/", True),
        ("http://10.0.0.5/daraja/abc/stk/", False),
        ("https://texel.example.com/daraja/", False),  # "exe" anywhere, as Daraja checks it
        ("https://office.example.co.ke/daraja/abc/result/balance/", True),
        ("https:///no-host", False),
    ],
)
def test_validate_callback_url(url: str, allowed: bool) -> None:
    if allowed:
        assert validate_callback_url(url, allow_local_http=True) == url
    else:
        with pytest.raises(DarajaConfigError):
            validate_callback_url(url, allow_local_http=True)


# ------------------------------------------------------------------------------------- timeouts


def test_every_request_carries_the_timeout(fake_daraja: FakeDaraja) -> None:
    session = RecordingSession()
    client = fake_daraja.client(session=session, timeout=(2.5, 9))

    client.stk_push(**STK_ARGS)
    client.stk_query(checkout_request_id="ws_CO_1")
    client.c2b_register_urls(confirmation_url=RESULT_URL, validation_url=TIMEOUT_URL)
    client.transaction_status(**status_args())
    client.reversal(
        transaction_id="PDU91HIVIT",
        amount=Decimal("200"),
        receiver_party="603021",
        result_url=RESULT_URL,
        timeout_url=TIMEOUT_URL,
        remarks="Payment reversal",
    )
    client.account_balance(result_url=RESULT_URL, timeout_url=TIMEOUT_URL, remarks="Daily balance")

    paths = {url.split("?")[0].removeprefix(fake_daraja.base_url) for url, _ in session.calls}
    assert paths == {OAUTH, STK_PUSH, STK_QUERY, C2B_REGISTER_V1, TRANSACTION_STATUS, REVERSAL, ACCOUNT_BALANCE}
    assert [kwargs["timeout"] for _, kwargs in session.calls] == [(2.5, 9.0)] * len(session.calls)

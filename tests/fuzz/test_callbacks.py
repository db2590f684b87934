"""Fuzzing Daraja's callback URLs (integrations/mpesa/views.py) and the processing of what they stored.

Whatever arrives - any bytes, any JSON shape, any content type, a valid envelope with one field of
the wrong type, a body at the size limit - the view answers without a server error, and either
stores the body in the inbox, exactly once and whole, or refuses it and stores nothing; no other
table moves. A stored callback is then processed or held for a person, never half-posted.
"""

from __future__ import annotations

import copy
import json
from collections.abc import Iterator
from decimal import Decimal
from typing import Any
from urllib.parse import quote

import pytest
import redis
from django.conf import settings
from django.test import Client
from hypothesis import event, given
from hypothesis import strategies as st

from integrations.mpesa import views
from integrations.mpesa.inbox import PAYLOAD_KIND, body_sha256, body_text, inbox_process, malformed_id
from integrations.mpesa.models import InboxKind, InboxMessage, InboxState, PaymentRequest, StatusQuery, Till
from integrations.mpesa.payloads import PayloadError, callback_unique_id
from integrations.mpesa.publisher import publisher
from operations.services.businesses import business_ensure
from tenancy.models import BusinessKind
from tests.factories.mpesa import PaymentRequestFactory, TillFactory, sample
from tests.fuzz.support import awkward_text, changed, fuzz, number_text, row_counts

INBOX = InboxMessage._meta.db_table
ACK = {"ResultCode": 0, "ResultDesc": "Success"}
ACCEPTED = {"ResultCode": 0, "ResultDesc": "Accepted"}
# (URL suffix, inbox kind, a real sample of what Daraja sends there)
CALLBACKS = [
    ("stk/", InboxKind.STK_CALLBACK, "03_stk_callback_success_doc.json"),
    ("stk/", InboxKind.STK_CALLBACK, "03_stk_callback_cancelled_1032_doc.json"),
    ("c2b/validate/", InboxKind.C2B_VALIDATION, "06_c2b_validation_request_doc_masked_msisdn.json"),
    ("c2b/confirm/", InboxKind.C2B_CONFIRMATION, "06_c2b_confirmation_v2_masked_msisdn_doc.json"),
    ("result/status/", InboxKind.STATUS_RESULT, "08_transaction_status_result_doc_b2c.json"),
    ("result/reversal/", InboxKind.REVERSAL_RESULT, "09_reversal_result_success.json"),
    ("result/balance/", InboxKind.BALANCE_RESULT, "10_account_balance_result_doc.json"),
    ("timeout/status/", InboxKind.STATUS_TIMEOUT, "08_transaction_status_result_doc_b2c.json"),
    ("timeout/reversal/", InboxKind.REVERSAL_TIMEOUT, "09_reversal_result_failure_R000002.json"),
    ("timeout/balance/", InboxKind.BALANCE_TIMEOUT, "10_account_balance_result_doc.json"),
]
CONTENT_TYPES = [
    "application/json",
    "application/json; charset=utf-8",
    "text/plain",
    "application/x-www-form-urlencoded",
    "multipart/form-data; boundary=xyz",
    "multipart/form-data",
    "application/octet-stream",
    "",
]

json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | awkward_text,
    lambda children: st.lists(children, max_size=4) | st.dictionaries(awkward_text, children, max_size=4),
    max_leaves=20,
)
scalars: st.SearchStrategy[Any] = (
    st.none()
    | st.booleans()
    | st.integers()
    | st.integers(min_value=10**15)
    | st.floats()
    | awkward_text
    | number_text
    | st.just([])
    | st.just({})
)


def _paths(value: object, prefix: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
    found = [prefix] if prefix else []
    if isinstance(value, dict):
        for key, child in value.items():
            found += _paths(child, (*prefix, key))
    elif isinstance(value, list):
        for index, child in enumerate(value):
            found += _paths(child, (*prefix, index))
    return found


@st.composite
def envelopes(draw: st.DrawFn, name: str, data: Any = None) -> bytes:
    """A real sample (or `data`) with one field replaced by an awkward scalar or any JSON, deleted, or left alone."""
    data = copy.deepcopy(sample(name)) if data is None else data
    path = draw(st.sampled_from(_paths(data)))
    parent = data
    for step in path[:-1]:
        parent = parent[step]
    how = draw(st.sampled_from(["scalar", "json", "delete", "keep"]))
    if how == "scalar":
        parent[path[-1]] = draw(scalars)
    elif how == "json":
        parent[path[-1]] = draw(json_values)
    elif how == "delete":
        del parent[path[-1]]
    return json.dumps(data, allow_nan=True).encode()


def bodies(name: str) -> st.SearchStrategy[bytes]:
    return (
        envelopes(name)
        | st.binary(max_size=300)
        | json_values.map(lambda v: json.dumps(v, allow_nan=True).encode())
        | st.integers(1, 20_000).map(lambda depth: b"[" * depth + b"]" * depth)
        | st.integers(1, 20_000).map(lambda depth: b'{"Body":' * depth + b"1" + b"}" * depth)
        | awkward_text.map(lambda t: t.encode("utf-8", "surrogatepass"))
    )


@pytest.fixture
def published(clean_broker: redis.Redis) -> Iterator[None]:
    """What the views hand to the background publisher reaches Redis before the next test starts
    (once per test: its linger would otherwise cost every example 50 ms)."""
    views._till_cache.clear()
    yield
    assert publisher.flush(), "the enqueue backlog did not drain"


@pytest.fixture
def till(db: None, published: None) -> Till:
    business = business_ensure(name="Maji Safi Water", kind=BusinessKind.WATER)
    return TillFactory.create(business=business, shortcode="600966")


def post(client: Client, till: Till, suffix: str, body: bytes, content_type: str) -> Any:
    return client.generic("POST", f"/daraja/{till.callback_token}/{suffix}", body, content_type=content_type)


def daraja_id_and_state(kind: str, body: bytes) -> tuple[str, str]:
    """The id and state the contract gives this body: Daraja's id and "received" (a validation is
    answered at once: "processed") when the id can be read, else malformed:<sha256> and held."""
    try:
        daraja_id = callback_unique_id(PAYLOAD_KIND[kind], body)[:120]
    except PayloadError:
        return malformed_id(body), InboxState.NEEDS_ATTENTION
    return daraja_id, InboxState.PROCESSED if kind == InboxKind.C2B_VALIDATION else InboxState.RECEIVED


@st.composite
def callbacks(draw: st.DrawFn) -> tuple[str, str, bytes, str]:
    suffix, kind, name = draw(st.sampled_from(CALLBACKS))
    return suffix, kind, draw(bodies(name)), draw(st.sampled_from(CONTENT_TYPES))


@fuzz(150)
@given(callback=callbacks())
def test_every_callback_is_stored_once_whole_or_refused(till: Till, callback: tuple[str, str, bytes, str]) -> None:
    suffix, kind, body, content_type = callback
    daraja_id, state = daraja_id_and_state(kind, body)
    stored = InboxMessage.objects.filter(kind=kind, daraja_id=daraja_id)
    already = stored.filter(body_sha256=body_sha256(body_text(body))).exists()  # a byte-identical duplicate
    before = row_counts()

    response = post(Client(), till, suffix, body, content_type)

    assert response.status_code == 200, response.content[:300]
    answer = response.json()
    if kind == InboxKind.C2B_VALIDATION:
        assert answer["ResultCode"] in ("0", "C2B00012", "C2B00013")
    else:
        assert answer == (ACK if suffix in ("stk/", "c2b/confirm/") else ACCEPTED)
    moved = changed(before, row_counts())
    assert moved == ({} if already else {INBOX: 1}), moved
    row = stored.get(body_sha256=body_sha256(body_text(body)))
    assert row.till_id == till.pk and row.body == body_text(body)
    if stored.count() > 1 and row.pk == stored.latest("pk").pk and not already:
        state = InboxState.NEEDS_ATTENTION  # another story for an id already stored: held, never dropped
    assert row.state == state or already, (row.state, row.error)


@fuzz(40)
@given(
    token=st.text(alphabet=st.characters(exclude_characters="/", codec="utf-8"), max_size=80),
    suffix=st.sampled_from([*{c[0] for c in CALLBACKS}, "result/other/", "timeout/x/"]),
)
def test_unknown_tokens_and_kinds_are_refused_and_store_nothing(till: Till, token: str, suffix: str) -> None:
    before = row_counts()
    response = Client().post(f"/daraja/{quote(token, safe='')}/{suffix}", b"{}", content_type="application/json")
    assert response.status_code == 404
    assert changed(before, row_counts()) == {}


@pytest.mark.parametrize("token", ["\x00", "abc\x00", "x" * 65])
def test_a_token_no_till_can_have_is_not_found(till: Till, token: str) -> None:
    """The minimal example the fuzzing found: /daraja/%00/stk/ was a 500 (PostgreSQL refuses a NUL
    in the till lookup's parameter)."""
    for suffix in ("stk/", "c2b/validate/", "result/status/"):
        response = Client().post(f"/daraja/{quote(token)}/{suffix}", b"{}", content_type="application/json")
        assert response.status_code == 404


@pytest.mark.parametrize(
    ("size", "status"),
    [
        (settings.DATA_UPLOAD_MAX_MEMORY_SIZE, 200),  # at the limit: stored (as malformed)
        (settings.DATA_UPLOAD_MAX_MEMORY_SIZE + 1, 400),  # over it: refused, nothing stored
    ],
)
def test_a_body_at_the_size_limit_is_stored_and_one_over_it_refused(till: Till, size: int, status: int) -> None:
    depth = size // 2
    body = b"[" * depth + b"]" * (size - depth)  # as deeply nested as the limit allows
    before = row_counts()
    response = post(Client(), till, "stk/", body, "application/json")
    assert response.status_code == status
    assert changed(before, row_counts()) == ({INBOX: 1} if status == 200 else {})
    if status == 200:
        assert InboxMessage.objects.get().state == InboxState.NEEDS_ATTENTION


def test_other_methods_are_refused(till: Till) -> None:
    client = Client()
    for method in ("GET", "PUT", "DELETE", "PATCH"):
        response = client.generic(method, f"/daraja/{till.callback_token}/stk/", b"{}")
        assert response.status_code == 405, method
    assert not InboxMessage.objects.exists()


# ---------------------------------------------------------------- processing what was stored

LEDGER_TABLES = {"accounts_journalentry", "accounts_journalline", "integrations_payment"}


# Where each sample carries the ids a callback is matched on: drawn afresh per example, so each
# one is a new payment or answer (not "another story" about an id already stored).
FRESH_IDS: dict[str, dict[tuple[Any, ...], str]] = {
    "03_stk_callback_success_doc.json": {
        ("Body", "stkCallback", "CheckoutRequestID"): "ws_CO_{}",
        ("Body", "stkCallback", "CallbackMetadata", "Item", 1, "Value"): "{}",
    },
    "06_c2b_confirmation_v2_masked_msisdn_doc.json": {("TransID",): "{}"},
    "08_transaction_status_result_doc_b2c.json": {("Result", "ConversationID"): "AG_{}"},
    "09_reversal_result_success.json": {("Result", "ConversationID"): "AG_{}"},
    "10_account_balance_result_doc.json": {("Result", "ConversationID"): "AG_{}"},
}
PROCESSABLE = [
    ("stk/", InboxKind.STK_CALLBACK, "03_stk_callback_success_doc.json"),
    ("c2b/confirm/", InboxKind.C2B_CONFIRMATION, "06_c2b_confirmation_v2_masked_msisdn_doc.json"),
    ("result/status/", InboxKind.STATUS_RESULT, "08_transaction_status_result_doc_b2c.json"),
    ("result/reversal/", InboxKind.REVERSAL_RESULT, "09_reversal_result_success.json"),
    ("result/balance/", InboxKind.BALANCE_RESULT, "10_account_balance_result_doc.json"),
]


@st.composite
def processable(draw: st.DrawFn) -> tuple[str, str, bytes, str]:
    """(URL suffix, kind, body, its fresh id): a sample with fresh ids and one field changed (or none)."""
    suffix, kind, name = draw(st.sampled_from(PROCESSABLE))
    fresh = draw(st.from_regex(r"[A-Z][A-Z0-9]{9}", fullmatch=True))
    data = copy.deepcopy(sample(name))
    for path, pattern in FRESH_IDS[name].items():
        _get(data, path[:-1])[path[-1]] = pattern.format(fresh)
    return suffix, kind, draw(envelopes(name, data)), fresh


def _get(data: Any, path: tuple[Any, ...]) -> Any:
    for step in path:
        data = data[step]
    return data


def waiting_till() -> Till:
    """A till of the C2B sample's shortcode, in a business with its books."""
    business = business_ensure(name="Maji Safi Water", kind=BusinessKind.WATER)
    return TillFactory.create(business=business, shortcode="600966")


@pytest.mark.django_db(transaction=True)
@fuzz(80)
@given(callback=processable())
def test_a_stored_callback_is_processed_or_held_never_half_posted(
    transactional_db: None, published: None, callback: tuple[str, str, bytes, str]
) -> None:
    """Processing commits (the ledger's deferred checks run): it posts whole or leaves nothing."""
    till = Till.objects.filter(shortcode="600966").first() or waiting_till()
    suffix, kind, body, fresh = callback
    # What the callback answers: the STK push it completes, the receipt check it reports on.
    # (Hypothesis draws an id again while it shrinks a failure: the rows may exist already.)
    if kind == InboxKind.STK_CALLBACK and not PaymentRequest.objects.filter(checkout_request_id=f"ws_CO_{fresh}"):
        PaymentRequestFactory.create(till=till, amount=Decimal("1.00"), checkout_request_id=f"ws_CO_{fresh}")
    elif kind == InboxKind.STATUS_RESULT:
        StatusQuery.objects.get_or_create(
            conversation_id=f"AG_{fresh}", defaults={"business": till.business, "till": till, "receipt": "MBN31H462N"}
        )
    post(Client(), till, suffix, body, "application/json")
    row = InboxMessage.objects.filter(kind=kind, body=body_text(body)).latest("pk")
    before = row_counts()

    inbox_process(inbox_id=row.pk)

    row.refresh_from_db()
    event(f"{kind}: {row.state} {row.outcome[:40]}")
    assert row.state in (InboxState.PROCESSED, InboxState.NEEDS_ATTENTION), (row.state, row.error, row.traceback)
    moved = changed(before, row_counts())
    if row.state == InboxState.NEEDS_ATTENTION:
        assert not set(moved) & LEDGER_TABLES, (moved, row.error)

"""Daraja payload parsing and phone numbers: every sample, the documented quirks, and fuzzing."""

from __future__ import annotations

import contextlib
import copy
import hashlib
import json
from collections.abc import Callable
from datetime import datetime
from decimal import Decimal
from functools import partial
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from integrations.mpesa.payloads import (
    C2B_VALIDATION_RESULT_CODES,
    NAIROBI,
    CallbackKind,
    PayloadError,
    c2b_validation_accept,
    c2b_validation_reject,
    callback_ack,
    callback_unique_id,
    clean_result_desc,
    parse_account_balance_result,
    parse_account_balances,
    parse_c2b_confirmation,
    parse_c2b_register_response,
    parse_c2b_validation,
    parse_callback,
    parse_error_body,
    parse_oauth_token,
    parse_request_accepted,
    parse_result_callback,
    parse_reversal_result,
    parse_stk_callback,
    parse_stk_push_response,
    parse_stk_query_error,
    parse_stk_query_response,
    parse_transaction_status_result,
    stk_result_category,
)
from operations.phones import (
    classify_msisdn,
    mask_matches,
    msisdn_matches,
    msisdn_sha256,
    normalise_msisdn,
)
from tests.integrations.mpesa.fake_daraja import FIXTURES, REQUEST_SAMPLES, load_sample

# Every sample of tests/fixtures/daraja/ is either parsed here...
SAMPLE_PARSERS: dict[str, Callable[[object], object]] = {
    "01_oauth_token_response_v2doc_expires_in_string.json": parse_oauth_token,
    "01_oauth_token_response_v3doc_expires_in_number.json": parse_oauth_token,
    "02_stk_push_sync_response_success.json": parse_stk_push_response,
    "03_stk_callback_cancelled_1032_doc.json": parse_stk_callback,
    "03_stk_callback_success_doc.json": parse_stk_callback,
    "03_stk_callback_wrong_pin_2001.json": parse_stk_callback,
    "04_stk_query_error_still_processing.json": parse_stk_query_error,
    "04_stk_query_response_success.json": parse_stk_query_response,
    "05_c2b_register_url_response.json": parse_c2b_register_response,
    "06_c2b_confirmation_v2_masked_msisdn_doc.json": parse_c2b_confirmation,
    "06_c2b_validation_request_doc_masked_msisdn.json": parse_c2b_validation,
    "08_transaction_status_result_doc_b2c.json": parse_transaction_status_result,
    "08_transaction_status_sync_response.json": parse_request_accepted,
    "09_reversal_result_failure_R000002.json": parse_reversal_result,
    "09_reversal_result_success.json": parse_reversal_result,
    "10_account_balance_result_doc.json": parse_account_balance_result,
}
# ...or is a request we send (the fake Daraja checks our field names against it) ...
REQUEST_SAMPLE_FILES = set(REQUEST_SAMPLES.values())
# ...or an answer our callback views give, produced by these functions.
ACK_SAMPLES: dict[str, Callable[[], object]] = {
    "07_c2b_confirmation_ack.json": callback_ack,
    "07_c2b_validation_response_accept.json": c2b_validation_accept,
    "07_c2b_validation_response_reject_doc.json": partial(c2b_validation_reject, "C2B00011"),
    "07_c2b_validation_result_codes.json": lambda: dict(C2B_VALIDATION_RESULT_CODES),
}
NOT_SAMPLES = {"README.md"}


def raw(name: str) -> bytes:
    return (FIXTURES / name).read_bytes()


# ------------------------------------------------------------------------------------- samples


def test_every_sample_is_covered() -> None:
    files = {path.name for path in FIXTURES.iterdir()}
    registered = SAMPLE_PARSERS.keys() | REQUEST_SAMPLE_FILES | ACK_SAMPLES.keys()

    assert files - registered - NOT_SAMPLES == set(), "a sample no parser, request or ack test covers"
    assert registered - files == set(), "a registered sample that is not in tests/fixtures/daraja/"


@pytest.mark.parametrize("name", sorted(SAMPLE_PARSERS))
def test_every_response_or_callback_sample_parses(name: str) -> None:
    from_bytes = SAMPLE_PARSERS[name](raw(name))
    from_text = SAMPLE_PARSERS[name](raw(name).decode())
    from_json = SAMPLE_PARSERS[name](json.loads(raw(name)))

    assert from_bytes == from_text == from_json


@pytest.mark.parametrize("name", sorted(ACK_SAMPLES))
def test_our_answers_are_the_documented_ones(name: str) -> None:
    assert ACK_SAMPLES[name]() == load_sample(name)


def test_c2b_reject_needs_a_documented_code() -> None:
    with pytest.raises(ValueError, match="not a C2B rejection code"):
        c2b_validation_reject("0")
    with pytest.raises(ValueError, match="not a C2B rejection code"):
        c2b_validation_reject("C2B99999")


# ------------------------------------------------------------------------------------- STK callback


def test_stk_success_callback() -> None:
    cb = parse_stk_callback(raw("03_stk_callback_success_doc.json"))

    assert cb.succeeded and cb.category == "success"
    assert cb.checkout_request_id == "ws_CO_191220191020363925"
    assert cb.amount == Decimal("1.00")
    assert cb.mpesa_receipt_number == "NLJ7RT61SV"
    assert cb.transaction_date == datetime(2019, 12, 19, 10, 21, 15, tzinfo=NAIROBI)
    assert cb.transaction_date.utcoffset().total_seconds() == 3 * 3600  # type: ignore[union-attr]
    assert cb.phone_number == "254708374149"
    assert cb.balance is None


def stk_success(**item_overrides: Any) -> dict[str, Any]:
    data = load_sample("03_stk_callback_success_doc.json")
    items = data["Body"]["stkCallback"]["CallbackMetadata"]["Item"]
    for name, value in item_overrides.items():
        items[:] = [item for item in items if item["Name"] != name]
        if value is not ...:
            items.append({"Name": name} if value is None else {"Name": name, "Value": value})
    return data


@pytest.mark.parametrize("amount", [1, 1.0, "1", "1.00", "1.0"])
def test_stk_amount_as_number_or_string(amount: object) -> None:
    assert parse_stk_callback(stk_success(Amount=amount)).amount == Decimal("1.00")


def test_stk_balance_item_without_value() -> None:
    assert parse_stk_callback(stk_success(Balance=None)).balance is None
    assert parse_stk_callback(stk_success(Balance="250.50")).balance == Decimal("250.50")


def test_stk_failure_has_no_metadata() -> None:
    cb = parse_stk_callback(raw("03_stk_callback_cancelled_1032_doc.json"))

    assert (cb.succeeded, cb.category, cb.result_code) == (False, "cancelled", 1032)
    assert cb.amount is None and cb.mpesa_receipt_number is None and cb.transaction_date is None


@pytest.mark.parametrize(
    ("raw_desc", "clean"),
    [
        ("[MpesaCB - ]The initiator information is invalid.", "The initiator information is invalid."),
        ("[STK_CB - ]Request cancelled by user", "Request cancelled by user"),
        ("Request cancelled by user", "Request cancelled by user"),
    ],
)
def test_result_desc_prefix_is_removed_and_raw_kept(raw_desc: str, clean: str) -> None:
    data = load_sample("03_stk_callback_wrong_pin_2001.json")
    data["Body"]["stkCallback"]["ResultDesc"] = raw_desc

    cb = parse_stk_callback(data)

    assert (cb.result_desc, cb.result_desc_raw, cb.category) == (clean, raw_desc, "wrong_pin")
    assert clean_result_desc(raw_desc) == clean


@pytest.mark.parametrize(
    ("code", "category"),
    [
        (0, "success"),
        (1032, "cancelled"),
        (2001, "wrong_pin"),
        (1037, "timeout"),
        (1019, "timeout"),
        (1, "insufficient_funds"),
        (1001, "failed"),
        (1025, "failed"),
        (9999, "failed"),
        (17, "failed"),
        (26, "failed"),
        (424242, "failed"),
    ],
)
def test_stk_result_category(code: int, category: str) -> None:
    assert stk_result_category(code) == category


@pytest.mark.parametrize(
    ("data", "message"),
    [
        (b"not json", "not JSON"),
        (b"\xff\xfe", "not UTF-8"),
        ([], "body must be a JSON object"),
        ({"Body": None}, "body.Body is missing"),
        ({"Body": {"stkCallback": []}}, "body.Body.stkCallback must be a JSON object"),
        (stk_success(Amount="1,000"), "Amount is not an amount"),
        (stk_success(Amount=0), "more than zero"),
        (stk_success(Amount=-5), "must not be negative"),
        (stk_success(Amount=1.005), "at most 2 decimals"),
        (stk_success(Amount=float("nan")), "at most 2 decimals"),
        (stk_success(Amount=10**40), "too large"),
        (stk_success(Amount=True), "got a boolean"),
        (stk_success(Amount=...), "has no Amount value"),
        (stk_success(MpesaReceiptNumber="NLJ 7RT"), "not an M-Pesa receipt"),
        (stk_success(TransactionDate=20191399102115), "not a valid date"),
        (stk_success(TransactionDate="2019-12-19"), "not a YYYYMMDDHHmmss timestamp"),
        (stk_success(PhoneNumber=[254708374149]), "Value must be a string or a number"),
        (stk_success(PhoneNumber=-254708374149), "not a plausible identifier"),
    ],
)
def test_malformed_stk_callbacks_are_payload_errors(data: object, message: str) -> None:
    with pytest.raises(PayloadError, match=message):
        parse_stk_callback(data)


def test_success_without_metadata_is_refused() -> None:
    data = load_sample("03_stk_callback_success_doc.json")
    del data["Body"]["stkCallback"]["CallbackMetadata"]

    with pytest.raises(PayloadError, match="must carry CallbackMetadata"):
        parse_stk_callback(data)


def test_result_code_as_boolean_is_refused() -> None:
    data = load_sample("03_stk_callback_cancelled_1032_doc.json")
    data["Body"]["stkCallback"]["ResultCode"] = False

    with pytest.raises(PayloadError, match="ResultCode must be an integer"):
        parse_stk_callback(data)


# ------------------------------------------------------------------------------------- C2B


def test_c2b_confirmation_v2_masked() -> None:
    c2b = parse_c2b_confirmation(raw("06_c2b_confirmation_v2_masked_msisdn_doc.json"))

    assert (c2b.trans_id, c2b.amount, c2b.business_short_code) == ("RKL51ZDR4F", Decimal("5.00"), "600966")
    assert c2b.trans_time == datetime(2023, 11, 21, 12, 13, 25, tzinfo=NAIROBI)
    assert c2b.org_account_balance == Decimal("25.00")
    assert (c2b.msisdn, c2b.msisdn_kind) == ("2547 ***** 126", "masked")
    assert c2b.bill_ref_number == "Sample Transaction"
    assert c2b.payer_name == "NICHOLAS"
    assert c2b.msisdn_matches("254712345126") and not c2b.msisdn_matches("254712345127")


def test_c2b_validation_has_no_balance_yet() -> None:
    c2b = parse_c2b_validation(raw("06_c2b_validation_request_doc_masked_msisdn.json"))

    assert c2b.org_account_balance is None
    assert c2b.amount == Decimal("10.00")
    assert c2b.msisdn_kind == "masked"
    assert c2b.msisdn_matches("254708374149")  # the sandbox test number fits "25470****149"
    assert c2b.payer_name == "John Doe"


def c2b(**changes: object) -> dict[str, Any]:
    data = load_sample("06_c2b_confirmation_v2_masked_msisdn_doc.json")
    for key, value in changes.items():
        if value is ...:
            del data[key]
        else:
            data[key] = value
    return data


@pytest.mark.parametrize(
    ("msisdn", "kind", "customer", "matches"),
    [
        (msisdn_sha256("254712345678"), "sha256", "254712345678", True),
        (msisdn_sha256("254712345678").upper(), "sha256", "254712345678", True),
        (msisdn_sha256("254712345678"), "sha256", "254712345679", False),
        ("254712345678", "plain", "254712345678", True),
        ("2547 ***** 678", "masked", "254712345678", True),
        ("", "empty", "254712345678", False),
        ("unknown-format", "unknown", "254712345678", False),
    ],
)
def test_c2b_msisdn_forms(msisdn: str, kind: str, customer: str, matches: bool) -> None:
    parsed = parse_c2b_confirmation(c2b(MSISDN=msisdn))

    assert parsed.msisdn_kind == kind
    assert parsed.msisdn_matches(customer) is matches


@pytest.mark.parametrize(("amount", "expected"), [("1.00", "1.00"), ("10", "10.00"), (5, "5.00"), (5.5, "5.50")])
def test_c2b_amounts(amount: object, expected: str) -> None:
    assert parse_c2b_confirmation(c2b(TransAmount=amount)).amount == Decimal(expected)


@pytest.mark.parametrize(
    ("changes", "message"),
    [
        ({"TransAmount": "0.00"}, "more than zero"),
        ({"TransAmount": "-5.00"}, "must not be negative"),
        ({"TransAmount": ""}, "not an amount"),
        ({"TransAmount": None}, "TransAmount is missing"),
        ({"TransAmount": "1e3"}, "not an amount"),
        ({"TransID": ...}, "TransID is missing"),
        ({"TransID": ""}, "TransID is empty"),
        ({"TransTime": "20231121"}, "TransTime is not a YYYYMMDDHHmmss"),
        ({"TransTime": "20230229121325"}, "not a valid date"),
        ({"BusinessShortCode": True}, "got a boolean"),
        ({"MSISDN": {"number": 1}}, "MSISDN must be a string"),
        ({"FirstName": 7}, "FirstName must be a string"),
        ({"OrgAccountBalance": "lots"}, "OrgAccountBalance is not an amount"),
    ],
)
def test_malformed_c2b_is_a_payload_error(changes: dict[str, object], message: str) -> None:
    with pytest.raises(PayloadError, match=message):
        parse_c2b_confirmation(c2b(**changes))


# ------------------------------------------------------------------------------------- result callbacks


def test_transaction_status_result() -> None:
    result = parse_transaction_status_result(raw("08_transaction_status_result_doc_b2c.json"))

    assert result.succeeded and result.result_code == "0"
    assert result.conversation_id == "AG_20180223_0000493344ae97d86f75"
    assert (result.receipt_no, result.amount, result.transaction_status) == (
        "MBN31H462N",
        Decimal("300.00"),
        "Completed",
    )
    assert result.initiated_time == datetime(2018, 2, 23, 5, 41, 12, tzinfo=NAIROBI)
    # The documented sample repeats DebitPartyName and has keys without Value.
    assert result.parameters.get_all("DebitPartyName") == ("600310 - Safaricom333", "254708374149 - John Doe")
    assert result.debit_party_name == "600310 - Safaricom333"
    assert "TransactionReason" in result.parameters and result.parameters.get("TransactionReason") is None
    # ReferenceItem is one bare object, not a list.
    assert result.reference_data.items == (("Occasion", None),)
    assert result.debit_party_charges == "Fee For B2C Payment|KES|22.40"


def test_reversal_success_and_failure() -> None:
    ok = parse_reversal_result(raw("09_reversal_result_success.json"))
    failed = parse_reversal_result(raw("09_reversal_result_failure_R000002.json"))

    assert ok.succeeded and (ok.amount, ok.charge) == (Decimal("1.00"), Decimal("0.00"))
    assert ok.original_transaction_id == "SKC82PACB8"
    assert ok.completed_time == datetime(2021, 11, 14, 13, 27, 11, tzinfo=NAIROBI)
    assert ok.debit_account_balance[0].name == "Utility Account"
    assert ok.debit_account_balance[0].available == Decimal("7722179.62")
    assert (failed.succeeded, failed.result_code) == (False, "R000002")
    assert failed.amount is None and failed.debit_account_balance == ()


def test_account_balance_result() -> None:
    result = parse_account_balance_result(raw("10_account_balance_result_doc.json"))

    balances = result.balances
    assert list(balances) == [
        "Working Account",
        "Float Account",
        "Utility Account",
        "Charges Paid Account",
        "Organization Settlement Account",
    ]
    assert balances["Working Account"].current == Decimal("700000.00")
    assert balances["Utility Account"].available == Decimal("228037.00")
    assert balances["Charges Paid Account"].current == Decimal("-1540.00")
    assert {account.currency for account in result.accounts} == {"KES"}
    assert result.completed_time == datetime(2020, 1, 9, 12, 57, 10, tzinfo=NAIROBI)
    assert result.succeeded  # ResultCode is the string "0" here


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("", "non-empty balance string"),
        ("Working Account|KES", "Name|Currency|current"),
        ("Working Account|KES|1|2|3|4|5", "Name|Currency|current"),
        ("|KES|1.00", "no account name"),
        ("Working Account|shillings|1.00", "no ISO currency"),
        ("Working Account|KES|1.00&", "Name|Currency|current"),
        ("Working Account|KES|lots", "not an amount"),
    ],
)
def test_malformed_balance_strings(text: str, message: str) -> None:
    with pytest.raises(PayloadError, match=message):
        parse_account_balances(text)


def test_short_balance_strings_are_read() -> None:
    (account,) = parse_account_balances("Working Account|KES|10.00")
    assert (account.current, account.available, account.uncleared) == (Decimal("10.00"), None, None)


def test_successful_balance_result_needs_balances() -> None:
    data = load_sample("10_account_balance_result_doc.json")
    data["Result"]["ResultParameters"]["ResultParameter"] = data["Result"]["ResultParameters"]["ResultParameter"][1:]

    with pytest.raises(PayloadError, match="must carry AccountBalance"):
        parse_account_balance_result(data)


def test_result_without_any_conversation_id_is_refused() -> None:
    data = load_sample("09_reversal_result_failure_R000002.json")
    del data["Result"]["ConversationID"], data["Result"]["OriginatorConversationID"]

    with pytest.raises(PayloadError, match="neither ConversationID nor OriginatorConversationID"):
        parse_result_callback(data)


# ------------------------------------------------------------------------------------- API answers


@pytest.mark.parametrize(
    "name",
    ["01_oauth_token_response_v2doc_expires_in_string.json", "01_oauth_token_response_v3doc_expires_in_number.json"],
)
def test_oauth_expires_in_string_or_number(name: str) -> None:
    token = parse_oauth_token(raw(name))
    assert (token.access_token, token.expires_in) == ("c9SQxWWhmdVRlyh0zh8gZDTkubVF", 3599)


@pytest.mark.parametrize(
    ("data", "message"),
    [
        ({"access_token": "abc", "expires_in": "0"}, "positive number of seconds"),
        ({"access_token": "abc", "expires_in": "soon"}, "must be an integer"),
        ({"access_token": "a b", "expires_in": 3599}, "printable token"),
        ({"expires_in": 3599}, "access_token is missing"),
    ],
)
def test_malformed_oauth_answers(data: object, message: str) -> None:
    with pytest.raises(PayloadError, match=message):
        parse_oauth_token(data)


def test_stk_query_answers() -> None:
    done = parse_stk_query_response(raw("04_stk_query_response_success.json"))
    pending = parse_stk_query_error(raw("04_stk_query_error_still_processing.json"))

    assert (done.status, done.result_code, done.pending) == ("success", 0, False)  # "0" was a string
    assert (pending.status, pending.pending, pending.checkout_request_id) == (
        "pending",
        True,
        "ws_CO_20022018230142206",
    )


def test_stk_query_still_processing_needs_the_message_too() -> None:
    """500.001.1001 is reused for real faults; only "being processed" means pending."""
    body = {"requestId": "ws_CO_1", "errorCode": "500.001.1001", "errorMessage": "Merchant does not exist"}

    with pytest.raises(PayloadError, match="not a 'still processing' answer"):
        parse_stk_query_error(body)
    assert not parse_error_body(body).is_still_processing
    assert parse_error_body(raw("04_stk_query_error_still_processing.json")).is_still_processing


def test_sync_answers() -> None:
    push = parse_stk_push_response(raw("02_stk_push_sync_response_success.json"))
    accepted = parse_request_accepted(raw("08_transaction_status_sync_response.json"))
    registered = parse_c2b_register_response(raw("05_c2b_register_url_response.json"))

    assert push.accepted and push.checkout_request_id == "ws_CO_1007202409152617172396192"
    assert accepted.accepted and accepted.conversation_id == "AG_20210709_1234409f86436c583e3f"
    # "OriginatorCoversationID" (sic) in Daraja's answer.
    assert registered.accepted and registered.originator_conversation_id == "6e86-45dd-91ac-fd5d4178ab523408729"


@pytest.mark.parametrize(
    ("body", "expected"),
    [
        (
            b'{"requestId": "1-2", "errorCode": "404.001.03", "errorMessage": "Invalid Access Token"}',
            ("1-2", "404.001.03", "Invalid Access Token"),
        ),
        (
            b'{"resultCode": "999991", "resultDesc": "Invalid client id passed"}',
            (None, "999991", "Invalid client id passed"),
        ),
        (
            b'{"fault": {"faultstring": "Rate limit", "detail": {"errorcode": "policies.ratelimit"}}}',
            (None, "policies.ratelimit", "Rate limit"),
        ),
        (b"<html>Bad Gateway</html>", (None, None, None)),
        (b"", (None, None, None)),
        (b"[1, 2]", (None, None, None)),
    ],
)
def test_error_bodies_are_read_best_effort(body: bytes, expected: tuple[str | None, ...]) -> None:
    error = parse_error_body(body)
    assert (error.request_id, error.error_code, error.error_message) == expected


# ------------------------------------------------------------------------------------- callback ids


@pytest.mark.parametrize(
    ("kind", "name", "expected"),
    [
        ("stk", "03_stk_callback_success_doc.json", "ws_CO_191220191020363925"),
        ("stk", "03_stk_callback_cancelled_1032_doc.json", "ws_CO_21072024125243250722943992"),
        ("c2b_validation", "06_c2b_validation_request_doc_masked_msisdn.json", "RKTQDM7W6S"),
        ("c2b_confirmation", "06_c2b_confirmation_v2_masked_msisdn_doc.json", "RKL51ZDR4F"),
        ("transaction_status", "08_transaction_status_result_doc_b2c.json", "AG_20180223_0000493344ae97d86f75"),
        ("reversal", "09_reversal_result_failure_R000002.json", "AG_20211114_2010573069aefb6b625a"),
        ("account_balance", "10_account_balance_result_doc.json", "AG_20200206_00005e091a8ec6b9eac5"),
        ("timeout", "09_reversal_result_success.json", "AG_20211114_201018edbbf9f1582eaa"),
    ],
)
def test_callback_unique_id(kind: Any, name: str, expected: str) -> None:
    assert callback_unique_id(kind, raw(name)) == expected
    assert parse_callback(kind, raw(name)) is not None


def test_callback_unique_id_falls_back_to_originator_conversation_id() -> None:
    data = load_sample("09_reversal_result_success.json")
    del data["Result"]["ConversationID"]

    assert callback_unique_id("reversal", data) == "dad6-4c34-8787-c8cb963a496d1268232"


def test_callback_unique_id_reads_only_the_id() -> None:
    """A body broken elsewhere is still stored once (then fails in processing, visibly)."""
    data = load_sample("03_stk_callback_success_doc.json")
    data["Body"]["stkCallback"]["ResultCode"] = "garbage"

    assert callback_unique_id("stk", data) == "ws_CO_191220191020363925"
    with pytest.raises(PayloadError):
        parse_stk_callback(data)


@pytest.mark.parametrize(
    ("kind", "data"),
    [
        ("stk", {"Body": {"stkCallback": {}}}),
        ("c2b_confirmation", {"TransID": None}),
        ("reversal", {"Result": {}}),
        ("nope", {}),
    ],
)
def test_callback_without_id_is_a_payload_error(kind: Any, data: object) -> None:
    with pytest.raises(PayloadError):
        callback_unique_id(kind, data)


# ------------------------------------------------------------------------------------- phones


@pytest.mark.parametrize(
    ("raw_number", "normalised"),
    [
        ("0712 345 678", "254712345678"),
        ("+254712345678", "254712345678"),
        ("254712345678", "254712345678"),
        ("712345678", "254712345678"),
        ("0712-345-678", "254712345678"),
        ("(0712) 345678", "254712345678"),
        ("00254712345678", "254712345678"),
        ("+254 0712 345 678", "254712345678"),
        ("0110 123 456", "254110123456"),
        ("0101123456", "254101123456"),
        ("+254110123456", "254110123456"),
        ("110123456", "254110123456"),
    ],
)
def test_normalise_msisdn(raw_number: str, normalised: str) -> None:
    assert normalise_msisdn(raw_number) == normalised


@pytest.mark.parametrize(
    "bad",
    [
        "",
        "   ",
        "0812345678",
        "071234567",
        "07123456789",
        "+1 202 555 0100",
        "+0712345678",
        "07l2345678",
        "٠٧١٢٣٤٥٦٧٨",
        "2547 ***** 126",
        "254212345678",
    ],
)
def test_normalise_msisdn_refuses_what_is_not_a_kenyan_mobile(bad: str) -> None:
    with pytest.raises(ValueError, match="0712 345 678"):
        normalise_msisdn(bad)


def test_normalise_msisdn_refuses_numbers() -> None:
    with pytest.raises(ValueError, match="must be text"):
        normalise_msisdn(254712345678)  # type: ignore[arg-type]


def test_msisdn_sha256_is_the_hash_of_the_normalised_number() -> None:
    assert msisdn_sha256("254708374149") == hashlib.sha256(b"254708374149").hexdigest()
    with pytest.raises(ValueError, match="not a normalised MSISDN"):
        msisdn_sha256("0708374149")


@pytest.mark.parametrize(
    ("masked", "number", "expected"),
    [
        ("2547 ***** 126", "254712345126", True),
        ("2547 ***** 126", "254712345127", False),
        ("2547 ***** 126", "254112345126", False),
        ("25470****149", "254708374149", True),
        ("25470****149", "254718374149", False),
        ("2547****126", "254712345126", True),  # the statement hides 5 digits behind 4 stars
        ("0712***678", "254712345678", True),
        ("***678", "254712345678", True),
    ],
)
def test_mask_matches(masked: str, number: str, expected: bool) -> None:
    assert mask_matches(masked, number) is expected


@pytest.mark.parametrize(
    ("masked", "number"), [("****", "254712345678"), ("abc", "254712345678"), ("2547***1", "0712")]
)
def test_mask_matches_refuses_nonsense(masked: str, number: str) -> None:
    with pytest.raises(ValueError):
        mask_matches(masked, number)


@pytest.mark.parametrize(
    ("value", "kind"),
    [
        ("", "empty"),
        ("  ", "empty"),
        ("254712345678", "plain"),
        ("0712345678", "plain"),
        ("2547 ***** 126", "masked"),
        ("25470****149", "masked"),
        (msisdn_sha256("254712345678"), "sha256"),
    ],
)
def test_classify_msisdn(value: str, kind: str) -> None:
    assert classify_msisdn(value) == kind


@pytest.mark.parametrize("value", ["hello", "12", "ab" * 31, "25470****14x"])
def test_classify_msisdn_refuses_unknown_forms(value: str) -> None:
    with pytest.raises(ValueError, match="MSISDN"):
        classify_msisdn(value)


def test_msisdn_matches_plain_numbers_in_any_format() -> None:
    assert msisdn_matches("0712 345 678", "254712345678")
    assert not msisdn_matches("0712 345 679", "254712345678")


# ------------------------------------------------------------------------------------- fuzzing

json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=30),
    lambda children: st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=12), children, max_size=4),
    max_leaves=25,
)
FUZZED_KINDS: tuple[CallbackKind, ...] = ("stk", "c2b_validation", "transaction_status", "account_balance", "timeout")
ALL_PARSERS: list[Callable[[object], object]] = [
    *SAMPLE_PARSERS.values(),
    parse_result_callback,
    parse_error_body,
    *(partial(callback_unique_id, kind) for kind in FUZZED_KINDS),
    *(partial(parse_callback, kind) for kind in FUZZED_KINDS),
]
FUZZ = settings(max_examples=150, deadline=None, database=None, suppress_health_check=[HealthCheck.too_slow])


def parse_or_payload_error(parser: Callable[[object], object], data: object) -> None:
    with contextlib.suppress(PayloadError):
        parser(data)


@FUZZ
@given(parser=st.sampled_from(ALL_PARSERS), data=json_values)
def test_arbitrary_json_parses_or_is_a_payload_error(parser: Callable[[object], object], data: object) -> None:
    parse_or_payload_error(parser, data)


@FUZZ
@given(parser=st.sampled_from(ALL_PARSERS), data=st.binary(max_size=200) | st.text(max_size=200))
def test_arbitrary_bytes_parse_or_are_a_payload_error(parser: Callable[[object], object], data: object) -> None:
    parse_or_payload_error(parser, data)


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
def mutated_samples(draw: st.DrawFn) -> tuple[str, object]:
    """A real sample with one field replaced by arbitrary JSON, or deleted."""
    name = draw(st.sampled_from(sorted(SAMPLE_PARSERS)))
    data = copy.deepcopy(load_sample(name))
    path = draw(st.sampled_from(_paths(data)))
    parent = data
    for step in path[:-1]:
        parent = parent[step]
    if draw(st.booleans()):
        parent[path[-1]] = draw(json_values)
    elif isinstance(parent, dict):
        del parent[path[-1]]
    else:
        parent.pop(path[-1])
    return name, data


@settings(max_examples=400, deadline=None, database=None)
@given(sample=mutated_samples())
def test_mutated_samples_parse_or_are_a_payload_error(sample: tuple[str, object]) -> None:
    name, data = sample
    parse_or_payload_error(SAMPLE_PARSERS[name], data)


scalars = (
    st.none()
    | st.booleans()
    | st.integers()
    | st.integers(min_value=10**15)
    | st.floats()
    | st.text(max_size=30)
    | st.from_regex(r"-?[0-9]{1,20}(\.[0-9]{0,5})?", fullmatch=True)
    | st.sampled_from(["", " ", "NaN", "Infinity", "1e5", "1,000.00", "20230229121325", "99999999999999", "[]"])
)


@st.composite
def samples_with_one_scalar_changed(draw: st.DrawFn) -> tuple[str, object]:
    """A real sample with one leaf (amount, code, timestamp, MSISDN...) replaced by an awkward scalar."""
    name = draw(st.sampled_from(sorted(SAMPLE_PARSERS)))
    data = copy.deepcopy(load_sample(name))
    leaves = [path for path in _paths(data) if not isinstance(_get(data, path), dict | list)]
    path = draw(st.sampled_from(leaves))
    _get(data, path[:-1])[path[-1]] = draw(scalars)
    return name, data


def _get(data: Any, path: tuple[Any, ...]) -> Any:
    for step in path:
        data = data[step]
    return data


@settings(max_examples=500, deadline=None, database=None)
@given(sample=samples_with_one_scalar_changed())
def test_awkward_scalars_parse_or_are_a_payload_error(sample: tuple[str, object]) -> None:
    name, data = sample
    parse_or_payload_error(SAMPLE_PARSERS[name], data)


@pytest.mark.parametrize(
    "body",
    [
        b"1" * 5000,  # beyond Python's int-string limit
        b"[" * 100_000,  # deeper than the recursion limit
        b'{"Body": {"stkCallback": {"ResultCode": 1e999, "CheckoutRequestID": "x", "MerchantRequestID": "y"}}}',
        b'{"TransAmount": NaN, "TransID": "X"}',
    ],
)
def test_pathological_bodies_are_payload_errors(body: bytes) -> None:
    for parser in ALL_PARSERS:
        parse_or_payload_error(parser, body)


def test_huge_integers_in_decoded_json_are_payload_errors() -> None:
    huge = 10**5000
    with pytest.raises(PayloadError):
        parse_c2b_confirmation(c2b(TransAmount=huge))
    with pytest.raises(PayloadError):
        parse_c2b_confirmation(c2b(BusinessShortCode=huge))
    with pytest.raises(PayloadError):
        parse_stk_callback(stk_success(PhoneNumber=huge))
    with pytest.raises(PayloadError):
        parse_oauth_token({"access_token": "abc", "expires_in": huge})
    assert parse_error_body({"errorCode": huge}).error_code is None

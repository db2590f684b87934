"""Typed, strict parsing of Daraja bodies: callbacks Daraja POSTs to us and answers to our calls.

Every parser takes the raw body (bytes / str) or already-decoded JSON and returns a frozen
dataclass, or raises `PayloadError` (a ValueError) saying what is wrong - never KeyError,
TypeError or decimal errors, whatever arrives. Rules that hold everywhere:

- Amounts are `Decimal(str(value))` with at most 2 decimals, whether Daraja sent a number
  (STK: `"Amount": 1.0`) or a string (C2B: `"TransAmount": "1.00"`); never floats.
- Timestamps ("TransTime", "TransactionDate", ...: YYYYMMDDHHmmss, as text or number) are
  Africa/Nairobi wall time without a zone; they become aware datetimes in that zone.
- Result codes differ in type by API: the STK callback's ResultCode is a number, STK Query's a
  string, result callbacks use numbers, digit strings or codes such as "R000002".
- Daraja's {"Key"/"Name": ..., "Value": ...} lists may be one bare object instead of a list,
  repeat a key, or omit "Value" (`{"Name": "Balance"}`); `NamedValues` keeps all of that.

Daraja docs: https://developer.safaricom.co.ke/APIs (M-Pesa Express, C2B, Transaction Status,
Reversals, Account Balance, Authorization).
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime
from decimal import Decimal
from typing import Literal, TypeAlias, TypedDict
from zoneinfo import ZoneInfo

from operations.phones import MsisdnKind, classify_msisdn, msisdn_matches

NAIROBI = ZoneInfo("Africa/Nairobi")
CENT = Decimal("0.01")
# Far above any M-Pesa balance: a bigger number means a broken payload, not money.
MAX_AMOUNT = Decimal("999999999999.99")
# The longest receipt / TransID we accept, and the width of every column that holds one (models.py).
# M-Pesa receipts are 10 characters today; the margin is for a longer format, not for garbage.
RECEIPT_MAX_LENGTH = 20

StkCategory: TypeAlias = Literal["success", "cancelled", "wrong_pin", "timeout", "insufficient_funds", "failed"]
StkQueryStatus: TypeAlias = Literal[
    "pending", "success", "cancelled", "wrong_pin", "timeout", "insufficient_funds", "failed"
]
CallbackKind: TypeAlias = Literal[
    "stk", "c2b_validation", "c2b_confirmation", "transaction_status", "reversal", "account_balance", "timeout"
]
ParamValue: TypeAlias = str | int | float | None

# Daraja error codes the client acts on (https://developer.safaricom.co.ke/Documentation, "Error codes").
# "Invalid Access Token": expired, or replaced by a newer token.
INVALID_TOKEN_CODE = "404.001.03"  # noqa: S105 - an error code, not a secret
# "The transaction is being processed" (STK Query while the customer is at the prompt). Daraja reuses
# this code for unrelated faults ("Merchant does not exist", "Unable to lock subscriber"), so the
# message is checked too.
STILL_PROCESSING_CODE = "500.001.1001"
SPIKE_ARREST_CODE = "500.003.02"  # rate limit at Daraja's gateway: refused before processing
_PENDING_TEXT = re.compile(r"being processed|under processing|still processing|in progress", re.IGNORECASE)


class PayloadError(ValueError):
    """A Daraja body that is not what the API documents; the message names the field and the fault."""


# ---------------------------------------------------------------------------------------------
# Low-level readers


def load_json(data: object) -> object:
    """Decode a raw body (bytes or str); anything else is taken as already-decoded JSON."""
    if isinstance(data, bytes | bytearray | memoryview):
        try:
            text = bytes(data).decode("utf-8-sig")
        except UnicodeDecodeError as exc:
            raise PayloadError(f"body is not UTF-8 text: {exc}") from None
    elif isinstance(data, str):
        text = data
    else:
        return data
    try:
        return json.loads(text)
    except (ValueError, RecursionError) as exc:
        raise PayloadError(f"body is not JSON: {str(exc)[:200]}") from None


def _typename(value: object) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "a boolean"
    if isinstance(value, int | float):
        return "a number"
    if isinstance(value, str):
        return "a string"
    if isinstance(value, list | tuple):
        return "an array"
    if isinstance(value, Mapping):
        return "an object"
    return type(value).__name__


def _short(value: object) -> str:
    """A value for an error message, cut short (repr of a 5000-digit int would itself raise)."""
    if isinstance(value, int) and not isinstance(value, bool) and abs(value) >= 10**30:
        return "<a huge number>"
    text = repr(value)
    return text if len(text) <= 60 else text[:57] + "..."


class _Obj:
    """A JSON object being read, with its path for error messages ("body.Result.ResultCode")."""

    __slots__ = ("_data", "path")

    def __init__(self, value: object, path: str) -> None:
        if not isinstance(value, Mapping):
            raise PayloadError(f"{path} must be a JSON object, got {_typename(value)}")
        self._data: Mapping[object, object] = value
        self.path = path

    def where(self, key: str) -> str:
        return f"{self.path}.{key}"

    def get(self, key: str) -> object:
        return self._data.get(key)

    def require(self, key: str) -> object:
        value = self._data.get(key)
        if value is None:
            raise PayloadError(f"{self.where(key)} is missing")
        return value

    def obj(self, key: str) -> _Obj:
        return _Obj(self.require(key), self.where(key))

    def opt_obj(self, key: str) -> _Obj | None:
        value = self._data.get(key)
        return None if value is None else _Obj(value, self.where(key))

    def ident(self, key: str) -> str:
        return _to_ident(self.require(key), self.where(key))

    def opt_ident(self, key: str) -> str:
        value = self._data.get(key)
        if value is None or value == "":
            return ""
        return _to_ident(value, self.where(key))

    def text(self, key: str) -> str:
        """Free text, may be empty; missing or null is ""."""
        value = self._data.get(key)
        if value is None:
            return ""
        if not isinstance(value, str):
            raise PayloadError(f"{self.where(key)} must be a string, got {_typename(value)}")
        return value


def _to_ident(value: object, where: str) -> str:
    """An identifier or code: non-empty text, or a whole number sent as a JSON number (shortcodes)."""
    if isinstance(value, bool):
        raise PayloadError(f"{where} must be an identifier, got a boolean")
    if isinstance(value, int):
        if not 0 <= value < 10**30:
            raise PayloadError(f"{where} is not a plausible identifier: {_short(value)}")
        return str(value)
    if isinstance(value, str):
        stripped = value.strip()
        if not stripped:
            raise PayloadError(f"{where} is empty")
        if len(stripped) > 200:
            raise PayloadError(f"{where} is too long ({len(stripped)} characters) for an identifier")
        return stripped
    raise PayloadError(f"{where} must be an identifier (string), got {_typename(value)}")


_RECEIPT = re.compile(r"[A-Za-z0-9]+")


def _to_receipt(value: object, where: str) -> str:
    """An M-Pesa receipt / TransID ("NLJ7RT61SV"): the ledger's idempotency key, so letters and digits
    only, and at most RECEIPT_MAX_LENGTH of them (a longer one would not fit the columns that hold it)."""
    text = _to_ident(value, where)
    if not _RECEIPT.fullmatch(text):
        raise PayloadError(f"{where} is not an M-Pesa receipt number: {_short(text)}")
    if len(text) > RECEIPT_MAX_LENGTH:
        raise PayloadError(
            f"{where} is too long for an M-Pesa receipt ({len(text)} characters, at most {RECEIPT_MAX_LENGTH})"
        )
    return text


def _to_int(value: object, where: str) -> int:
    if isinstance(value, bool):
        raise PayloadError(f"{where} must be an integer, got a boolean")
    if isinstance(value, int):
        if abs(value) >= 10**18:
            raise PayloadError(f"{where} is out of range: {_short(value)}")
        return value
    if isinstance(value, float) and value.is_integer() and abs(value) < 1e18:
        return int(value)
    if isinstance(value, str) and re.fullmatch(r"-?[0-9]{1,18}", value.strip()):
        return int(value.strip())
    raise PayloadError(f"{where} must be an integer, got {_short(value)}")


_AMOUNT = re.compile(r"-?[0-9]{1,15}(?:\.[0-9]{1,2})?")


def _to_amount(value: object, where: str, *, allow_zero: bool = False, allow_negative: bool = False) -> Decimal:
    """Shillings as Decimal(str(value)), 2 places; refuses floats' noise, NaN, exponents and >2 decimals."""
    if isinstance(value, bool) or not isinstance(value, int | float | str):
        raise PayloadError(f"{where} must be an amount (string or number), got {_typename(value)}")
    if isinstance(value, int) and abs(value) > MAX_AMOUNT:
        raise PayloadError(f"{where} is too large to be an amount")
    text = str(value).strip()
    if not _AMOUNT.fullmatch(text):
        raise PayloadError(f"{where} is not an amount with at most 2 decimals: {_short(value)}")
    amount = Decimal(text)
    if abs(amount) > MAX_AMOUNT:
        raise PayloadError(f"{where} is too large to be an amount: {text}")
    if amount < 0 and not allow_negative:
        raise PayloadError(f"{where} must not be negative: {text}")
    if amount == 0 and not allow_zero:
        raise PayloadError(f"{where} must be more than zero: {text}")
    return amount.quantize(CENT)


def _opt_amount(value: object, where: str, *, allow_zero: bool = False, allow_negative: bool = False) -> Decimal | None:
    if value is None or value == "":
        return None
    return _to_amount(value, where, allow_zero=allow_zero, allow_negative=allow_negative)


def _to_datetime(value: object, where: str) -> datetime:
    """YYYYMMDDHHmmss (text or number) in Nairobi wall time -> aware datetime in Africa/Nairobi."""
    if isinstance(value, bool) or not isinstance(value, int | str):
        raise PayloadError(f"{where} must be a YYYYMMDDHHmmss timestamp, got {_typename(value)}")
    if isinstance(value, int) and not 0 <= value < 10**14:
        raise PayloadError(f"{where} is not a YYYYMMDDHHmmss timestamp: {_short(value)}")
    text = str(value).strip()
    if not re.fullmatch(r"[0-9]{14}", text):
        raise PayloadError(f"{where} is not a YYYYMMDDHHmmss timestamp: {_short(value)}")
    try:
        return datetime(
            int(text[0:4]),
            int(text[4:6]),
            int(text[6:8]),
            int(text[8:10]),
            int(text[10:12]),
            int(text[12:14]),
            tzinfo=NAIROBI,
        )
    except ValueError:
        raise PayloadError(f"{where} is not a valid date and time: {text}") from None


def _opt_datetime(value: object, where: str) -> datetime | None:
    if value is None or value == "":
        return None
    return _to_datetime(value, where)


def _opt_text(value: object, where: str) -> str | None:
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, str | int | float):
        raise PayloadError(f"{where} must be text, got {_typename(value)}")
    if isinstance(value, int) and abs(value) >= 10**30:
        raise PayloadError(f"{where} must be text, got {_short(value)}")
    return str(value)


_DESC_PREFIX = re.compile(r"^\s*\[[^\]]*\]\s*")


def clean_result_desc(raw: str) -> str:
    """ResultDesc without the channel prefix Daraja sometimes adds ("[STK_CB - ]", "[MpesaCB - ]")."""
    return _DESC_PREFIX.sub("", raw).strip()


# ---------------------------------------------------------------------------------------------
# Key/value lists


@dataclass(frozen=True)
class NamedValues:
    """Daraja's [{"Name"|"Key": k, "Value": v}, ...] in order; keys may repeat, values may be absent."""

    items: tuple[tuple[str, ParamValue], ...] = ()

    def get(self, key: str) -> ParamValue:
        """The first value for `key`, or None when the key is absent or has no Value."""
        for name, value in self.items:
            if name == key:
                return value
        return None

    def get_all(self, key: str) -> tuple[ParamValue, ...]:
        return tuple(value for name, value in self.items if name == key)

    def __contains__(self, key: object) -> bool:
        return any(name == key for name, _ in self.items)

    def as_dict(self) -> dict[str, ParamValue]:
        """First value per key, for display and logging."""
        result: dict[str, ParamValue] = {}
        for name, value in self.items:
            result.setdefault(name, value)
        return result


def _named_values(container: object, path: str, *, key_field: str) -> NamedValues:
    items = [container] if isinstance(container, Mapping) else container
    if not isinstance(items, list):
        raise PayloadError(f"{path} must be an array of {{{key_field}, Value}} objects, got {_typename(container)}")
    pairs: list[tuple[str, ParamValue]] = []
    for index, raw_item in enumerate(items):
        item = _Obj(raw_item, f"{path}[{index}]")
        name = item.require(key_field)
        if not isinstance(name, str) or not name.strip():
            raise PayloadError(f"{item.where(key_field)} must be a non-empty string, got {_short(name)}")
        value = item.get("Value")
        if isinstance(value, bool) or not (value is None or isinstance(value, str | int | float)):
            raise PayloadError(f"{item.where('Value')} must be a string or a number, got {_typename(value)}")
        pairs.append((name.strip(), value))
    return NamedValues(tuple(pairs))


def _opt_named_values(parent: _Obj, key: str, inner: str, *, key_field: str) -> NamedValues:
    container = parent.opt_obj(key)
    if container is None:
        return NamedValues()
    raw = container.get(inner)
    if raw is None:
        return NamedValues()
    return _named_values(raw, container.where(inner), key_field=key_field)


# ---------------------------------------------------------------------------------------------
# STK (M-Pesa Express) callback - https://developer.safaricom.co.ke/APIs/MpesaExpressSimulate

_STK_CATEGORIES: dict[int, StkCategory] = {
    0: "success",
    1: "insufficient_funds",  # "The balance is insufficient for the transaction"
    1032: "cancelled",  # "Request cancelled by user"
    1037: "timeout",  # "DS timeout user cannot be reached" / no response from the phone
    1019: "timeout",  # "Transaction has expired": the prompt was not answered in time
    2001: "wrong_pin",  # "The initiator information is invalid" (wrong M-Pesa PIN)
    # Known failures kept as "failed": 1001 subscriber locked (another session in progress),
    # 1025 / 9999 error sending the push, 17 internal failure, 26 system busy, 2028 not permitted.
}


def stk_result_category(code: int) -> StkCategory:
    """What an STK ResultCode means for the customer; any code not known for sure is "failed"."""
    return _STK_CATEGORIES.get(code, "failed")


@dataclass(frozen=True)
class StkCallback:
    """The STK callback: a success carries CallbackMetadata, a failure does not."""

    merchant_request_id: str
    checkout_request_id: str
    result_code: int
    result_desc: str  # without a "[STK_CB - ]"-style prefix
    result_desc_raw: str
    amount: Decimal | None
    mpesa_receipt_number: str | None
    transaction_date: datetime | None
    phone_number: str | None  # digits as sent ("254708374149"), not normalised or trusted
    balance: Decimal | None  # the {"Name": "Balance"} item usually has no Value
    metadata: NamedValues

    @property
    def succeeded(self) -> bool:
        return self.result_code == 0

    @property
    def category(self) -> StkCategory:
        return stk_result_category(self.result_code)


def parse_stk_callback(data: object) -> StkCallback:
    cb = _Obj(load_json(data), "body").obj("Body").obj("stkCallback")
    code = _to_int(cb.require("ResultCode"), cb.where("ResultCode"))
    raw_desc = cb.text("ResultDesc")
    meta = cb.opt_obj("CallbackMetadata")
    items = NamedValues()
    if meta is not None:
        items = _named_values(meta.require("Item"), meta.where("Item"), key_field="Name")
    amount: Decimal | None = None
    receipt: str | None = None
    when: datetime | None = None
    phone: str | None = None
    balance: Decimal | None = None
    if code == 0:
        if meta is None:
            raise PayloadError(f"{cb.path}: a successful callback (ResultCode 0) must carry CallbackMetadata")
        where = f"{cb.path}.CallbackMetadata"
        amount = _to_amount(_required_item(items, "Amount", where), f"{where}.Amount")
        receipt = _to_receipt(_required_item(items, "MpesaReceiptNumber", where), f"{where}.MpesaReceiptNumber")
        when = _to_datetime(_required_item(items, "TransactionDate", where), f"{where}.TransactionDate")
        raw_phone = items.get("PhoneNumber")
        phone = None if raw_phone in (None, "") else _to_ident(raw_phone, f"{where}.PhoneNumber")
        balance = _opt_amount(items.get("Balance"), f"{where}.Balance", allow_zero=True, allow_negative=True)
    return StkCallback(
        merchant_request_id=cb.ident("MerchantRequestID"),
        checkout_request_id=cb.ident("CheckoutRequestID"),
        result_code=code,
        result_desc=clean_result_desc(raw_desc),
        result_desc_raw=raw_desc,
        amount=amount,
        mpesa_receipt_number=receipt,
        transaction_date=when,
        phone_number=phone,
        balance=balance,
        metadata=items,
    )


def _required_item(items: NamedValues, name: str, where: str) -> ParamValue:
    value = items.get(name)
    if value is None:
        raise PayloadError(f"{where} has no {name} value")
    return value


# ---------------------------------------------------------------------------------------------
# C2B validation and confirmation - https://developer.safaricom.co.ke/APIs/CustomerToBusinessRegisterURL


@dataclass(frozen=True)
class C2BTransaction:
    """A C2B payment as Daraja sends it to the validation URL (before) or confirmation URL (after).

    `msisdn` is kept as sent: plain digits, a SHA-256 hex (v1 URLs) or a mask (v2 URLs);
    `msisdn_kind` says which ("unknown" if none: the payment is still recorded, just unmatched).
    """

    transaction_type: str
    trans_id: str
    trans_time: datetime
    amount: Decimal
    business_short_code: str
    bill_ref_number: str
    invoice_number: str
    org_account_balance: Decimal | None  # "" in validation requests
    third_party_trans_id: str
    msisdn: str
    msisdn_kind: MsisdnKind | Literal["unknown"]
    first_name: str
    middle_name: str
    last_name: str

    @property
    def payer_name(self) -> str:
        return " ".join(part for part in (self.first_name, self.middle_name, self.last_name) if part)

    def msisdn_matches(self, normalised: str) -> bool:
        """Whether a stored (normalised) customer number can be this payer; a mask gives candidates only."""
        return msisdn_matches(self.msisdn, normalised)


def _parse_c2b(data: object) -> C2BTransaction:
    body = _Obj(load_json(data), "body")
    raw_msisdn = body.get("MSISDN")
    if raw_msisdn is None:
        msisdn = ""
    elif isinstance(raw_msisdn, str):
        msisdn = raw_msisdn.strip()
    elif isinstance(raw_msisdn, int) and not isinstance(raw_msisdn, bool) and 0 <= raw_msisdn < 10**15:
        msisdn = str(raw_msisdn)  # an old-style numeric MSISDN, kept as its digits
    else:
        raise PayloadError(f"body.MSISDN must be a string, got {_typename(raw_msisdn)}")
    kind: MsisdnKind | Literal["unknown"]
    try:
        kind = classify_msisdn(msisdn)
    except ValueError:
        kind = "unknown"
    return C2BTransaction(
        transaction_type=body.text("TransactionType"),
        trans_id=_to_receipt(body.require("TransID"), "body.TransID"),
        trans_time=_to_datetime(body.require("TransTime"), "body.TransTime"),
        amount=_to_amount(body.require("TransAmount"), "body.TransAmount"),
        business_short_code=body.ident("BusinessShortCode"),
        bill_ref_number=_opt_text(body.get("BillRefNumber"), "body.BillRefNumber") or "",
        invoice_number=_opt_text(body.get("InvoiceNumber"), "body.InvoiceNumber") or "",
        org_account_balance=_opt_amount(
            body.get("OrgAccountBalance"), "body.OrgAccountBalance", allow_zero=True, allow_negative=True
        ),
        third_party_trans_id=body.opt_ident("ThirdPartyTransID"),
        msisdn=msisdn,
        msisdn_kind=kind,
        first_name=body.text("FirstName"),
        middle_name=body.text("MiddleName"),
        last_name=body.text("LastName"),
    )


def parse_c2b_validation(data: object) -> C2BTransaction:
    """The validation request (only sent when external validation is enabled on the shortcode)."""
    return _parse_c2b(data)


def parse_c2b_confirmation(data: object) -> C2BTransaction:
    """The confirmation: the payment is complete; TransID is the M-Pesa receipt."""
    return _parse_c2b(data)


# Answers our views give Daraja (https://developer.safaricom.co.ke/APIs/CustomerToBusinessRegisterURL).
C2B_VALIDATION_RESULT_CODES: Mapping[str, str] = {
    "0": "Accepted",
    "C2B00011": "Invalid MSISDN",
    "C2B00012": "Invalid Account Number",
    "C2B00013": "Invalid Amount",
    "C2B00014": "Invalid KYC Details",
    "C2B00015": "Invalid Shortcode",
    "C2B00016": "Other Error",
}


def c2b_validation_accept() -> dict[str, str]:
    """Validation answer that lets the payment go through (ResultCode is the string "0")."""
    return {"ResultCode": "0", "ResultDesc": "Accepted"}


def c2b_validation_reject(code: str) -> dict[str, str]:
    """Validation answer refusing the payment with one of the documented C2B0001x codes."""
    if code == "0" or code not in C2B_VALIDATION_RESULT_CODES:
        raise ValueError(f"{code!r} is not a C2B rejection code; use one of {sorted(C2B_VALIDATION_RESULT_CODES)[1:]}")
    return {"ResultCode": code, "ResultDesc": "Rejected"}


def callback_ack() -> dict[str, int | str]:
    """The acknowledgement for confirmations, STK and result callbacks (ResultCode is the number 0)."""
    return {"ResultCode": 0, "ResultDesc": "Success"}


# ---------------------------------------------------------------------------------------------
# Result callbacks: Transaction Status, Reversal, Account Balance (and queue timeouts)


@dataclass(frozen=True)
class ResultCallback:
    """What every ResultURL / QueueTimeOutURL callback carries under "Result"."""

    result_type: str
    result_code: str  # "0", "R000002", ... as text whatever type Daraja used
    result_desc: str
    originator_conversation_id: str
    conversation_id: str
    transaction_id: str
    parameters: NamedValues
    reference_data: NamedValues

    @property
    def succeeded(self) -> bool:
        return self.result_code == "0"


def _result_common(data: object) -> tuple[ResultCallback, _Obj]:
    result = _Obj(load_json(data), "body").obj("Result")
    originator = result.opt_ident("OriginatorConversationID")
    conversation = result.opt_ident("ConversationID")
    if not originator and not conversation:
        raise PayloadError(f"{result.path} has neither ConversationID nor OriginatorConversationID")
    common = ResultCallback(
        result_type=result.opt_ident("ResultType"),
        result_code=result.ident("ResultCode"),
        result_desc=result.text("ResultDesc"),
        originator_conversation_id=originator,
        conversation_id=conversation,
        transaction_id=result.opt_ident("TransactionID"),
        parameters=_opt_named_values(result, "ResultParameters", "ResultParameter", key_field="Key"),
        reference_data=_opt_named_values(result, "ReferenceData", "ReferenceItem", key_field="Key"),
    )
    return common, result


class _CommonFields(TypedDict):
    result_type: str
    result_code: str
    result_desc: str
    originator_conversation_id: str
    conversation_id: str
    transaction_id: str
    parameters: NamedValues
    reference_data: NamedValues


def _common_kwargs(common: ResultCallback) -> _CommonFields:
    return {
        "result_type": common.result_type,
        "result_code": common.result_code,
        "result_desc": common.result_desc,
        "originator_conversation_id": common.originator_conversation_id,
        "conversation_id": common.conversation_id,
        "transaction_id": common.transaction_id,
        "parameters": common.parameters,
        "reference_data": common.reference_data,
    }


def parse_result_callback(data: object) -> ResultCallback:
    """Any result or queue-timeout callback, without the API-specific fields."""
    return _result_common(data)[0]


@dataclass(frozen=True)
class AccountBalance:
    """One account of "Working Account|KES|700000.00|700000.00|0.00|0.00".

    The fields after the currency are current, available, reserved and uncleared balances; older
    answers stop early, so all but the first may be None. Balances can be negative (Charges Paid).
    """

    name: str
    currency: str
    current: Decimal
    available: Decimal | None
    reserved: Decimal | None
    uncleared: Decimal | None


def parse_account_balances(value: object, where: str = "balance") -> tuple[AccountBalance, ...]:
    """Daraja's "&"-separated, "|"-delimited balance string, one AccountBalance per account."""
    if not isinstance(value, str) or not value.strip():
        raise PayloadError(f"{where} must be a non-empty balance string, got {_short(value)}")
    accounts: list[AccountBalance] = []
    for index, entry in enumerate(value.split("&")):
        fields = [field.strip() for field in entry.split("|")]
        at = f"{where}[{index}]"
        if not 3 <= len(fields) <= 6:
            raise PayloadError(f"{at} must be 'Name|Currency|current[|available|reserved|uncleared]': {_short(entry)}")
        name, currency = fields[0], fields[1]
        if not name:
            raise PayloadError(f"{at} has no account name")
        if not re.fullmatch(r"[A-Z]{3}", currency):
            raise PayloadError(f"{at} has no ISO currency: {_short(currency)}")
        current = _to_amount(fields[2], f"{at}.{name}", allow_zero=True, allow_negative=True)
        rest: list[Decimal | None] = [
            _to_amount(field, f"{at}.{name}", allow_zero=True, allow_negative=True) for field in fields[3:]
        ]
        rest += [None] * (3 - len(rest))
        accounts.append(AccountBalance(name, currency, current, rest[0], rest[1], rest[2]))
    return tuple(accounts)


@dataclass(frozen=True)
class TransactionStatusResult(ResultCallback):
    """Transaction Status result: https://developer.safaricom.co.ke/APIs/TransactionStatus"""

    receipt_no: str | None
    amount: Decimal | None
    transaction_status: str | None  # "Completed", ...
    initiated_time: datetime | None
    finalised_time: datetime | None
    debit_party_name: str | None  # the first one: the sample repeats DebitPartyName
    credit_party_name: str | None
    reason_type: str | None
    debit_party_charges: str | None  # e.g. "Fee For B2C Payment|KES|22.40", kept as sent


def parse_transaction_status_result(data: object) -> TransactionStatusResult:
    common, result = _result_common(data)
    params = common.parameters
    at = f"{result.path}.ResultParameters"
    receipt = params.get("ReceiptNo")
    return TransactionStatusResult(
        **_common_kwargs(common),
        receipt_no=None if receipt in (None, "") else _to_receipt(receipt, f"{at}.ReceiptNo"),
        amount=_opt_amount(params.get("Amount"), f"{at}.Amount"),
        transaction_status=_opt_text(params.get("TransactionStatus"), f"{at}.TransactionStatus"),
        initiated_time=_opt_datetime(params.get("InitiatedTime"), f"{at}.InitiatedTime"),
        finalised_time=_opt_datetime(params.get("FinalisedTime"), f"{at}.FinalisedTime"),
        debit_party_name=_opt_text(params.get("DebitPartyName"), f"{at}.DebitPartyName"),
        credit_party_name=_opt_text(params.get("CreditPartyName"), f"{at}.CreditPartyName"),
        reason_type=_opt_text(params.get("ReasonType"), f"{at}.ReasonType"),
        debit_party_charges=_opt_text(params.get("DebitPartyCharges"), f"{at}.DebitPartyCharges"),
    )


@dataclass(frozen=True)
class ReversalResult(ResultCallback):
    """Reversal result: https://developer.safaricom.co.ke/APIs/Reversal (failures carry no parameters)."""

    amount: Decimal | None
    original_transaction_id: str | None
    completed_time: datetime | None
    charge: Decimal | None
    credit_party_public_name: str | None
    debit_party_public_name: str | None
    debit_account_balance: tuple[AccountBalance, ...]


def parse_reversal_result(data: object) -> ReversalResult:
    common, result = _result_common(data)
    params = common.parameters
    at = f"{result.path}.ResultParameters"
    raw_original = params.get("OriginalTransactionID")
    original = None if raw_original in (None, "") else _to_receipt(raw_original, f"{at}.OriginalTransactionID")
    balance = params.get("DebitAccountBalance")
    return ReversalResult(
        **_common_kwargs(common),
        amount=_opt_amount(params.get("Amount"), f"{at}.Amount"),
        original_transaction_id=original,
        completed_time=_opt_datetime(params.get("TransCompletedTime"), f"{at}.TransCompletedTime"),
        charge=_opt_amount(params.get("Charge"), f"{at}.Charge", allow_zero=True),
        credit_party_public_name=_opt_text(params.get("CreditPartyPublicName"), f"{at}.CreditPartyPublicName"),
        debit_party_public_name=_opt_text(params.get("DebitPartyPublicName"), f"{at}.DebitPartyPublicName"),
        debit_account_balance=()
        if balance in (None, "")
        else parse_account_balances(balance, f"{at}.DebitAccountBalance"),
    )


@dataclass(frozen=True)
class AccountBalanceResult(ResultCallback):
    """Account Balance result: https://developer.safaricom.co.ke/APIs/AccountBalance"""

    accounts: tuple[AccountBalance, ...]
    completed_time: datetime | None

    @property
    def balances(self) -> dict[str, AccountBalance]:
        """Accounts by name ("Working Account", "Utility Account", ...)."""
        return {account.name: account for account in self.accounts}


def parse_account_balance_result(data: object) -> AccountBalanceResult:
    common, result = _result_common(data)
    params = common.parameters
    at = f"{result.path}.ResultParameters"
    raw = params.get("AccountBalance")
    if raw in (None, "") and common.succeeded:
        raise PayloadError(f"{at}: a successful account balance result must carry AccountBalance")
    return AccountBalanceResult(
        **_common_kwargs(common),
        accounts=() if raw in (None, "") else parse_account_balances(raw, f"{at}.AccountBalance"),
        completed_time=_opt_datetime(params.get("BOCompletedTime"), f"{at}.BOCompletedTime"),
    )


# ---------------------------------------------------------------------------------------------
# Answers to our API calls


@dataclass(frozen=True)
class OAuthToken:
    """https://developer.safaricom.co.ke/APIs/Authorization; expires_in is "3599" or 3599 by doc version."""

    access_token: str
    expires_in: int


def parse_oauth_token(data: object) -> OAuthToken:
    body = _Obj(load_json(data), "body")
    token = body.require("access_token")
    if not isinstance(token, str) or not re.fullmatch(r"[\x21-\x7e]{1,2048}", token):
        raise PayloadError(f"body.access_token must be a printable token without spaces, got {_short(token)}")
    expires_in = _to_int(body.require("expires_in"), "body.expires_in")
    if not 0 < expires_in <= 10**7:
        raise PayloadError(f"body.expires_in must be a positive number of seconds, got {expires_in}")
    return OAuthToken(access_token=token, expires_in=expires_in)


@dataclass(frozen=True)
class DarajaErrorBody:
    """Daraja's error body {"requestId", "errorCode", "errorMessage"}; every field may be missing."""

    request_id: str | None = None
    error_code: str | None = None
    error_message: str | None = None

    @property
    def is_invalid_token(self) -> bool:
        return self.error_code == INVALID_TOKEN_CODE

    @property
    def is_still_processing(self) -> bool:
        """STK Query's "The transaction is being processed": the customer has not answered yet."""
        return self.error_code == STILL_PROCESSING_CODE and bool(_PENDING_TEXT.search(self.error_message or ""))

    @property
    def is_spike_arrest(self) -> bool:
        return self.error_code == SPIKE_ARREST_CODE


def parse_error_body(data: object) -> DarajaErrorBody:
    """Best effort, never raises: error answers may be JSON, an OAuth-style body, an HTML page or empty."""
    try:
        value = load_json(data)
    except PayloadError:
        return DarajaErrorBody()
    if not isinstance(value, Mapping):
        return DarajaErrorBody()
    fault = value.get("fault")
    fault_map: Mapping[object, object] = fault if isinstance(fault, Mapping) else {}
    detail = fault_map.get("detail")
    detail_map: Mapping[object, object] = detail if isinstance(detail, Mapping) else {}

    def pick(source: Mapping[object, object], *keys: str) -> str | None:
        for key in keys:
            item = source.get(key)
            if isinstance(item, int) and not isinstance(item, bool) and abs(item) < 10**30:
                return str(item)
            if isinstance(item, str) and item.strip():
                return item.strip()[:500]
        return None

    return DarajaErrorBody(
        request_id=pick(value, "requestId", "RequestId"),
        error_code=pick(value, "errorCode", "resultCode") or pick(detail_map, "errorcode"),
        error_message=pick(value, "errorMessage", "resultDesc") or pick(fault_map, "faultstring"),
    )


@dataclass(frozen=True)
class StkPushResponse:
    """STK Push accepted: CheckoutRequestID is what the callback and STK Query will carry."""

    merchant_request_id: str
    checkout_request_id: str
    response_code: str
    response_description: str
    customer_message: str

    @property
    def accepted(self) -> bool:
        return self.response_code == "0"


def parse_stk_push_response(data: object) -> StkPushResponse:
    body = _Obj(load_json(data), "body")
    code = body.ident("ResponseCode")
    accepted = code == "0"
    return StkPushResponse(
        merchant_request_id=body.ident("MerchantRequestID") if accepted else body.opt_ident("MerchantRequestID"),
        checkout_request_id=body.ident("CheckoutRequestID") if accepted else body.opt_ident("CheckoutRequestID"),
        response_code=code,
        response_description=body.text("ResponseDescription"),
        customer_message=body.text("CustomerMessage"),
    )


@dataclass(frozen=True)
class RequestAccepted:
    """Synchronous answer of the asynchronous APIs (Transaction Status, Reversal, Account Balance).

    The result arrives later on ResultURL carrying the same ConversationID / OriginatorConversationID.
    """

    conversation_id: str
    originator_conversation_id: str
    response_code: str
    response_description: str

    @property
    def accepted(self) -> bool:
        return self.response_code == "0"


def parse_request_accepted(data: object) -> RequestAccepted:
    body = _Obj(load_json(data), "body")
    code = body.ident("ResponseCode")
    accepted = code == "0"
    return RequestAccepted(
        conversation_id=body.ident("ConversationID") if accepted else body.opt_ident("ConversationID"),
        originator_conversation_id=(
            body.ident("OriginatorConversationID") if accepted else body.opt_ident("OriginatorConversationID")
        ),
        response_code=code,
        response_description=body.text("ResponseDescription"),
    )


@dataclass(frozen=True)
class C2BRegisterResponse:
    """Register URL answer; Daraja spells the id "OriginatorCoversationID" (sic) - both are read."""

    originator_conversation_id: str
    response_code: str
    response_description: str

    @property
    def accepted(self) -> bool:
        return self.response_code == "0"


def parse_c2b_register_response(data: object) -> C2BRegisterResponse:
    body = _Obj(load_json(data), "body")
    originator = body.opt_ident("OriginatorConversationID") or body.opt_ident("OriginatorCoversationID")
    return C2BRegisterResponse(
        originator_conversation_id=originator,
        response_code=body.ident("ResponseCode"),
        response_description=body.text("ResponseDescription"),
    )


@dataclass(frozen=True)
class StkQueryResult:
    """STK Query outcome. `pending` means ask again later; it is never a failure."""

    status: StkQueryStatus
    checkout_request_id: str
    merchant_request_id: str
    response_code: str
    response_description: str
    result_code: int | None
    result_desc: str
    error_code: str | None = None
    error_message: str | None = None

    @property
    def pending(self) -> bool:
        return self.status == "pending"

    @property
    def succeeded(self) -> bool:
        return self.status == "success"


def parse_stk_query_response(data: object) -> StkQueryResult:
    """The HTTP 200 answer. ResultCode is a string here ("0", "1032"), unlike in the callback."""
    body = _Obj(load_json(data), "body")
    code = _to_int(body.require("ResultCode"), "body.ResultCode")
    desc = clean_result_desc(body.text("ResultDesc"))
    # A final answer never says "being processed"; some gateways answer that in a 200 body.
    status: StkQueryStatus = "pending" if _PENDING_TEXT.search(desc) else stk_result_category(code)
    return StkQueryResult(
        status=status,
        checkout_request_id=body.ident("CheckoutRequestID"),
        merchant_request_id=body.opt_ident("MerchantRequestID"),
        response_code=body.ident("ResponseCode"),
        response_description=body.text("ResponseDescription"),
        result_code=code,
        result_desc=desc,
    )


def parse_stk_query_error(data: object, *, checkout_request_id: str | None = None) -> StkQueryResult:
    """The HTTP 500 "still processing" body (errorCode 500.001.1001) as a pending outcome.

    Its requestId is the CheckoutRequestID asked about; PayloadError for any other error body.
    """
    body = _Obj(load_json(data), "body")
    error = DarajaErrorBody(
        request_id=body.opt_ident("requestId") or None,
        error_code=body.ident("errorCode"),
        error_message=body.text("errorMessage"),
    )
    if not error.is_still_processing:
        raise PayloadError(f"not a 'still processing' answer: {error.error_code} {_short(error.error_message)}")
    checkout = checkout_request_id or error.request_id
    if not checkout:
        raise PayloadError("body.requestId is missing and no CheckoutRequestID was given")
    return StkQueryResult(
        status="pending",
        checkout_request_id=checkout,
        merchant_request_id="",
        response_code="",
        response_description="",
        result_code=None,
        result_desc=error.error_message or "",
        error_code=error.error_code,
        error_message=error.error_message,
    )


# ---------------------------------------------------------------------------------------------
# Any callback: de-duplication id and dispatch

CallbackPayload: TypeAlias = StkCallback | C2BTransaction | ResultCallback


def callback_unique_id(kind: CallbackKind, data: object) -> str:
    """Daraja's own id of a callback, for the inbox's unique constraint on (kind, id).

    - stk: Body.stkCallback.CheckoutRequestID. Failed callbacks have no receipt, and it is the id
      stk_push returned, so a callback, its duplicate and STK Query all meet on it.
    - c2b_validation / c2b_confirmation: TransID, the M-Pesa receipt. Validation and confirmation of
      one payment share it, hence the kind in the key; an STK payment that also arrives as a C2B
      confirmation is caught by the ledger's receipt idempotency key, not here.
    - transaction_status / reversal / account_balance / timeout: Result.ConversationID (else
      OriginatorConversationID): unique per API request and returned by its synchronous answer, so
      the request row and its result meet. A result and a queue timeout share it: kind again.

    Only the id is read, so a body that is otherwise malformed is still stored once, then fails in
    processing where someone can see it.
    """
    body = _Obj(load_json(data), "body")
    if kind == "stk":
        return body.obj("Body").obj("stkCallback").ident("CheckoutRequestID")
    if kind in ("c2b_validation", "c2b_confirmation"):
        return _to_receipt(body.require("TransID"), "body.TransID")
    if kind in ("transaction_status", "reversal", "account_balance", "timeout"):
        result = body.obj("Result")
        found = result.opt_ident("ConversationID") or result.opt_ident("OriginatorConversationID")
        if not found:
            raise PayloadError(f"{result.path} has neither ConversationID nor OriginatorConversationID")
        return found
    raise PayloadError(f"unknown callback kind {kind!r}")


def parse_callback(kind: CallbackKind, data: object) -> CallbackPayload:
    """Parse a stored callback body by the kind of URL it arrived on."""
    if kind == "stk":
        return parse_stk_callback(data)
    if kind == "c2b_validation":
        return parse_c2b_validation(data)
    if kind == "c2b_confirmation":
        return parse_c2b_confirmation(data)
    if kind == "transaction_status":
        return parse_transaction_status_result(data)
    if kind == "reversal":
        return parse_reversal_result(data)
    if kind == "account_balance":
        return parse_account_balance_result(data)
    if kind == "timeout":
        return parse_result_callback(data)
    raise PayloadError(f"unknown callback kind {kind!r}")

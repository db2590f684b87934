"""Realistic Daraja callbacks for demos, load tests and the benchmark (daraja_simulate, bench/mpesa.py).

Bodies follow the documented samples (tests/fixtures/daraja/): STK callbacks carry numbers, C2B
confirmations carry strings and a SHA-256 MSISDN (v1 URLs), failures carry no CallbackMetadata.
No Django here: the builders only need a shortcode.
"""

from __future__ import annotations

import json
import random
import string
from dataclasses import dataclass
from datetime import datetime
from decimal import Decimal

from integrations.mpesa.payloads import NAIROBI
from operations.phones import msisdn_sha256

# (ResultCode, ResultDesc) of failed STK results seen in real traffic.
STK_FAILURES = [
    (1032, "Request cancelled by user"),
    (2001, "[STK_CB - ]The initiator information is invalid."),
    (1037, "DS timeout user cannot be reached"),
    (1, "The balance is insufficient for the transaction."),
    (1019, "Transaction has expired"),
]


@dataclass(frozen=True)
class Callback:
    path: str  # relative to /daraja/<token>/
    body: bytes
    receipt: str | None  # the M-Pesa receipt it pays, if it is a payment


def _now() -> str:
    return datetime.now(tz=NAIROBI).strftime("%Y%m%d%H%M%S")


def new_receipt(rng: random.Random) -> str:
    return "T" + "".join(rng.choices(string.ascii_uppercase + string.digits, k=9))


def random_phone(rng: random.Random) -> str:
    return f"2547{rng.randrange(10**8):08d}"


def stk_success(*, receipt: str, amount: Decimal, phone: str, checkout_id: str) -> Callback:
    body = {
        "Body": {
            "stkCallback": {
                "MerchantRequestID": f"{checkout_id[-8:]}-merchant",
                "CheckoutRequestID": checkout_id,
                "ResultCode": 0,
                "ResultDesc": "The service request is processed successfully.",
                "CallbackMetadata": {
                    "Item": [
                        {"Name": "Amount", "Value": float(amount)},
                        {"Name": "MpesaReceiptNumber", "Value": receipt},
                        {"Name": "Balance"},
                        {"Name": "TransactionDate", "Value": int(_now())},
                        {"Name": "PhoneNumber", "Value": int(phone)},
                    ]
                },
            }
        }
    }
    return Callback("stk/", json.dumps(body).encode(), receipt)


def stk_failure(*, checkout_id: str, code: int, desc: str) -> Callback:
    body = {
        "Body": {
            "stkCallback": {
                "MerchantRequestID": f"{checkout_id[-8:]}-merchant",
                "CheckoutRequestID": checkout_id,
                "ResultCode": code,
                "ResultDesc": desc,
            }
        }
    }
    return Callback("stk/", json.dumps(body).encode(), None)


def c2b_confirmation(
    *, receipt: str, amount: Decimal, shortcode: str, phone: str, bill_ref: str = "", name: str = "JOHN"
) -> Callback:
    body = {
        "TransactionType": "Pay Bill",
        "TransID": receipt,
        "TransTime": _now(),
        "TransAmount": f"{amount:.2f}",
        "BusinessShortCode": shortcode,
        "BillRefNumber": bill_ref,
        "InvoiceNumber": "",
        "OrgAccountBalance": "",
        "ThirdPartyTransID": "",
        "MSISDN": msisdn_sha256(phone),
        "FirstName": name,
        "MiddleName": "",
        "LastName": "",
    }
    return Callback("c2b/confirm/", json.dumps(body).encode(), receipt)


def scenario(
    rng: random.Random, shortcode: str, *, failure_share: float = 0.1, c2b_share: float = 0.4
) -> list[Callback]:
    """One customer interaction: a C2B payment, an STK payment (sometimes also confirmed by C2B with
    the same receipt) or a failed STK prompt."""
    amount = Decimal(rng.randrange(10, 5000))
    phone = random_phone(rng)
    checkout = f"ws_CO_SIM{rng.randrange(10**15):015d}"
    draw = rng.random()
    if draw < failure_share:
        code, desc = rng.choice(STK_FAILURES)
        return [stk_failure(checkout_id=checkout, code=code, desc=desc)]
    receipt = new_receipt(rng)
    if draw < failure_share + c2b_share:
        return [c2b_confirmation(receipt=receipt, amount=amount, shortcode=shortcode, phone=phone)]
    calls = [stk_success(receipt=receipt, amount=amount, phone=phone, checkout_id=checkout)]
    if rng.random() < 0.3:  # the same payment also announced as a C2B confirmation
        calls.append(c2b_confirmation(receipt=receipt, amount=amount, shortcode=shortcode, phone=phone))
    return calls

"""Kenyan mobile numbers (MSISDNs) as customers' phones are stored and as Daraja sends them.

We store one form, the normalised international one without "+": "2547XXXXXXXX" or "2541XXXXXXXX"
(01xx numbers: Safaricom 011x, Airtel 010x). Daraja no longer sends C2B payers' numbers in clear:
v1 C2B URLs send the SHA-256 hex of the normalised number, v2 URLs a masked form such as
"2547 ***** 126" (and the org-portal statement "2547****126", where the stars do not count the
hidden digits). So a customer is matched by hashing or mask-testing their stored number, and the
MSISDN field is never int()-ed: it is no longer a number, and int() fails on the other forms.
"""

from __future__ import annotations

import hashlib
import re
from typing import Literal

MsisdnKind = Literal["plain", "sha256", "masked", "empty"]

_NORMALISED = re.compile(r"254[17][0-9]{8}")
_SEPARATORS = re.compile(r"[\s\-().]")
_SHA256_HEX = re.compile(r"[0-9a-fA-F]{64}")
_MASK = re.compile(r"\+?[0-9 ]*\*[0-9 *]*")
_EXAMPLES = "expected a Kenyan mobile number such as 0712 345 678, +254712345678 or 0110 123 456"


def normalise_msisdn(raw: str) -> str:
    """The "2547XXXXXXXX" / "2541XXXXXXXX" form of a Kenyan mobile number, or ValueError.

    Accepts spaces, dashes, dots and brackets, a "+254" / "00254" / "254" prefix, a leading 0
    ("0712...", "0110..."), the bare 9 digits ("712345678") and the common "+254 0712..." slip.
    """
    if not isinstance(raw, str):
        raise ValueError(f"phone number must be text, got {type(raw).__name__}")
    digits = _SEPARATORS.sub("", raw)
    international = False
    if digits.startswith("+"):
        digits, international = digits[1:], True
    elif digits.startswith("00254"):
        digits, international = digits[2:], True
    if not digits or not (digits.isascii() and digits.isdigit()):
        raise ValueError(f"{raw!r} is not a phone number: {_EXAMPLES}")
    if international and not digits.startswith("254"):
        raise ValueError(f"{raw!r} is not a Kenyan number (+254): {_EXAMPLES}")
    if len(digits) == 13 and digits.startswith("2540"):
        digits = "254" + digits[4:]
    elif len(digits) == 10 and digits.startswith("0") and not international:
        digits = "254" + digits[1:]
    elif len(digits) == 9 and not international:
        digits = "254" + digits
    if not _NORMALISED.fullmatch(digits):
        raise ValueError(f"{raw!r} is not a Kenyan mobile number (07xx or 01xx): {_EXAMPLES}")
    return digits


def _require_normalised(normalised: str) -> str:
    if not isinstance(normalised, str) or not _NORMALISED.fullmatch(normalised):
        raise ValueError(f"{normalised!r} is not a normalised MSISDN (2547XXXXXXXX or 2541XXXXXXXX)")
    return normalised


def msisdn_sha256(normalised: str) -> str:
    """Lower-case hex SHA-256 of a normalised number: what Daraja's v1 C2B callbacks send as MSISDN."""
    return hashlib.sha256(_require_normalised(normalised).encode("ascii")).hexdigest()


def _mask_pattern(masked: str) -> re.Pattern[str]:
    """A regex for the numbers a mask can stand for; each run of stars hides one or more digits."""
    if not isinstance(masked, str) or not _MASK.fullmatch(masked.strip()):
        raise ValueError(f"{masked!r} is not a masked MSISDN such as '2547 ***** 126'")
    compact = masked.strip().replace(" ", "").lstrip("+")
    if compact.startswith("0"):
        compact = "254" + compact[1:]
    if not any(ch.isdigit() for ch in compact):
        raise ValueError(f"{masked!r} shows no digits: it cannot be matched to anyone")
    parts = [re.escape(part) for part in re.split(r"\*+", compact)]
    return re.compile("[0-9]+".join(parts))


def mask_matches(masked: str, normalised: str) -> bool:
    """Whether a normalised number fits a mask ("2547 ***** 126", "25470****149", "2547****126").

    The digits shown before and after the stars must match; a run of stars stands for one or more
    hidden digits because the statement masks 5 digits with 4 stars. Several customers can fit one
    mask, so a match is a candidate, not an identification.
    """
    return _mask_pattern(masked).fullmatch(_require_normalised(normalised)) is not None


def classify_msisdn(raw: str) -> MsisdnKind:
    """Which form a Daraja MSISDN field has; ValueError when it is none of them."""
    if not isinstance(raw, str):
        raise ValueError(f"MSISDN must be text, got {type(raw).__name__}")
    value = raw.strip()
    if not value:
        return "empty"
    if _SHA256_HEX.fullmatch(value):
        return "sha256"
    if "*" in value:
        _mask_pattern(value)
        return "masked"
    try:
        normalise_msisdn(value)
    except ValueError:
        raise ValueError(f"unrecognised MSISDN {raw!r}: neither a number, a SHA-256 hex nor a mask") from None
    return "plain"


def msisdn_matches(raw: str, normalised: str) -> bool:
    """Whether a Daraja MSISDN field (plain, hashed or masked) can be this customer's number.

    Plain and hashed forms identify the number; a mask only makes it a candidate (see mask_matches).
    An empty or unrecognised field matches nobody.
    """
    number = _require_normalised(normalised)
    try:
        kind = classify_msisdn(raw)
    except ValueError:
        return False
    if kind == "plain":
        return normalise_msisdn(raw.strip()) == number
    if kind == "sha256":
        return raw.strip().lower() == msisdn_sha256(number)
    if kind == "masked":
        return mask_matches(raw, number)
    return False

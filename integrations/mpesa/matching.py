"""Who paid for what.

A received payment is matched in this order (payment_record):
1. the till -> the business (from the callback URL's token);
2. the account reference (C2B BillRefNumber, or the AccountReference of our own STK Push):
   operations says what it is (operations.payments.reference_resolve: a sale number, a laundry
   tag, a customer's account code, case-insensitive);
3. the phone number: plain -> Customer.phone, SHA-256 -> Customer.phone_sha256, masked -> the
   one customer whose number fits the mask (several fit: unmatched).
Unmatched money goes to suspense and waits in the "unallocated payments" queue for a person.

Before the money is placed, operations says (under lock) what the matched reference still owes
and whose it is (operations.payments.claim_resolve): only that much is applied to it; what is
over it goes to the customer's credit, or, with no customer, stays in suspense for a person.
Inside the posting transaction, each placing on receivables is recorded in operations' books
(operations.payments.payment_placed; payment_placing_reversed undoes one). An exception there
rolls the whole posting back (and the inbox row is retried or flagged).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping

from django.db.models import Q

from integrations.mpesa.models import PaymentRequest
from operations.models import Customer
from operations.payments import Claim, Match, Placed
from operations.payments import claim_resolve as claim_for
from operations.payments import reference_resolve as resolve_reference
from operations.phones import classify_msisdn, mask_matches, normalise_msisdn
from tenancy.models import Business

__all__ = ["Claim", "Match", "PhoneKey", "Placed", "claim_for", "customers_by_phone", "resolve_reference"]

# How a plain or hashed phone number is looked up: ("plain", "2547...") or ("sha256", "<hex>").
PhoneKey = tuple[str, str]


def msisdn_kind(msisdn: str) -> str:
    try:
        return classify_msisdn(msisdn)
    except ValueError:
        return "unknown"


def phone_key(msisdn: str) -> PhoneKey | None:
    """The key a plain or hashed number is looked up by; None for a masked or unreadable one."""
    kind = msisdn_kind(msisdn)
    if kind == "plain":
        return kind, normalise_msisdn(msisdn.strip())
    if kind == "sha256":
        return kind, msisdn.strip().lower()
    return None


def match_payment(
    *,
    business: Business,
    account_reference: str,
    request: PaymentRequest | None,
    msisdn: str,
    customers: Mapping[tuple[int, PhoneKey], Customer | None] | None = None,
) -> tuple[Match | None, str]:
    """(match, how) by reference, then our STK request's reference, then the phone; (None, "") if none.
    `customers`: what customers_by_phone already found for (business id, phone key), if anything."""
    found = resolve_reference(business, account_reference)
    if found is not None:
        return found, "account reference"
    if request is not None and request.account_reference.strip() != account_reference.strip():
        found = resolve_reference(business, request.account_reference)
        if found is not None:
            return found, "STK request reference"
    customer = _customer_by_phone(business, msisdn, customers)
    if customer is None and request is not None:
        customer = _customer_by_phone(business, request.phone, customers)
    if customer is not None:
        return Match(customer.pk, "customer", customer.pk, f"phone of {customer.name}"), "phone"
    return None, ""


def customers_by_phone(business: Business, msisdns: Iterable[str]) -> dict[PhoneKey, Customer | None]:
    """The active customer of `business` each plain or hashed number points to (the first by id, as
    match_payment picks), or None; with one query for them all. Masked numbers are left out."""
    keys = {key for key in map(phone_key, msisdns) if key is not None}
    found: dict[PhoneKey, Customer | None] = dict.fromkeys(keys)
    plain = [value for kind, value in keys if kind == "plain"]
    hashed = [value for kind, value in keys if kind == "sha256"]
    if not keys:
        return found
    rows = (
        Customer.objects.filter(business=business, is_active=True)
        .filter(Q(phone__in=plain) | Q(phone_sha256__in=hashed))
        .only("id", "name", "phone", "phone_sha256")
        .order_by("id")
    )
    for customer in rows:
        for key in (("plain", customer.phone), ("sha256", customer.phone_sha256)):
            if key in found and found[key] is None:
                found[key] = customer
    return found


def _customer_by_phone(
    business: Business, msisdn: str, known: Mapping[tuple[int, PhoneKey], Customer | None] | None = None
) -> Customer | None:
    if known is not None:
        key = phone_key(msisdn)
        if key is not None and (business.pk, key) in known:
            return known[(business.pk, key)]
    kind = msisdn_kind(msisdn)
    customers = Customer.objects.filter(business=business, is_active=True).only("id", "name", "phone")
    if kind == "plain":
        number = normalise_msisdn(msisdn.strip())
        return customers.filter(phone=number).order_by("id").first()
    if kind == "sha256":
        return customers.filter(phone_sha256=msisdn.strip().lower()).order_by("id").first()
    if kind == "masked":
        candidates = [c for c in customers.exclude(phone="") if _fits(msisdn, c.phone)]
        return candidates[0] if len(candidates) == 1 else None
    return None


def _fits(masked: str, phone: str) -> bool:
    try:
        return mask_matches(masked, phone)
    except ValueError:
        return False

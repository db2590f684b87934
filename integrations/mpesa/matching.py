"""Who paid for what: the reference resolvers and payment listeners other apps register.

A received payment is matched in this order (services.payment_record):
1. the till -> the business (from the callback URL's token);
2. the account reference (C2B BillRefNumber, or the AccountReference of our own STK Push) through
   the registered resolvers (operations registers sale numbers, laundry tags...), then the
   built-in one for Customer.account_code (case-insensitive);
3. the phone number: plain -> Customer.phone, SHA-256 -> Customer.phone_sha256, masked -> the
   one customer whose number fits the mask (several fit: unmatched).
Unmatched money goes to suspense and waits in the "unallocated payments" queue for a person.

Listeners run inside the posting transaction, after the Payment row and its ledger entry exist,
only for matched payments; an exception in a listener rolls the whole posting back (and the inbox
row is retried or flagged), so a listener must be idempotent and must not call out over the network.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING

from operations.models import Business, Customer

if TYPE_CHECKING:
    from integrations.mpesa.models import Payment


@dataclass(frozen=True)
class Match:
    customer_id: int | None
    reference_kind: str
    reference_id: int | None
    description: str


ReferenceResolver = Callable[[Business, str], "Match | None"]
PaymentListener = Callable[["Payment", Match], None]

_resolvers: list[ReferenceResolver] = []
_listeners: list[PaymentListener] = []


def register_reference_resolver(fn: ReferenceResolver) -> ReferenceResolver:
    """Add a resolver (usable as a decorator); registering the same function twice is a no-op."""
    if fn not in _resolvers:
        _resolvers.append(fn)
    return fn


def register_payment_listener(fn: PaymentListener) -> PaymentListener:
    """Add a listener called as fn(payment, match) when a new payment is matched (inside the transaction)."""
    if fn not in _listeners:
        _listeners.append(fn)
    return fn


def customer_account_code_resolver(business: Business, reference: str) -> Match | None:
    """The built-in resolver: a customer's account code, case-insensitive."""
    customer = (
        Customer.objects.filter(business=business, is_active=True, account_code__iexact=reference.strip())
        .only("id", "name")
        .first()
    )
    if customer is None:
        return None
    return Match(customer.pk, "customer", customer.pk, f"account code {reference.strip()} of {customer.name}")


def resolve_reference(business: Business, reference: str) -> Match | None:
    """The first resolver that recognises `reference` (registered ones first, then the built-in)."""
    text = (reference or "").strip()
    if not text:
        return None
    for resolver in [*_resolvers, customer_account_code_resolver]:
        found = resolver(business, text)
        if found is not None:
            return found
    return None


def notify_listeners(payment: Payment, match: Match) -> None:
    for listener in list(_listeners):
        listener(payment, match)

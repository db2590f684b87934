"""Who paid for what: the reference resolvers and payment listeners other apps register.

A received payment is matched in this order (services.payment_record):
1. the till -> the business (from the callback URL's token);
2. the account reference (C2B BillRefNumber, or the AccountReference of our own STK Push) through
   the registered resolvers (operations registers sale numbers, laundry tags...), then the
   built-in one for Customer.account_code (case-insensitive);
3. the phone number: plain -> Customer.phone, SHA-256 -> Customer.phone_sha256, masked -> the
   one customer whose number fits the mask (several fit: unmatched).
Unmatched money goes to suspense and waits in the "unallocated payments" queue for a person.

Before the money is placed, the registered claim resolvers say (under lock) what the matched
reference still owes and whose it is: only that much is applied to it; what is over it goes to the
customer's credit, or, with no customer, stays in suspense for a person (services._payment_place).

Listeners run inside the posting transaction, after the Payment row and its ledger entry exist,
for each placing that credited receivables (fn(payment, placed)); reversal listeners undo one
(fn(payment, application, reversal_entry)). An exception in a listener rolls the whole posting
back (and the inbox row is retried or flagged), so a listener must be idempotent and must not
call out over the network.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Callable
from dataclasses import dataclass
from decimal import Decimal
from typing import TYPE_CHECKING

from operations.models import Customer
from tenancy.models import Business

if TYPE_CHECKING:
    from accounts.models import JournalEntry
    from integrations.mpesa.models import Payment, PaymentApplication


@dataclass(frozen=True)
class Match:
    customer_id: int | None
    reference_kind: str
    reference_id: int | None
    description: str


@dataclass(frozen=True)
class Claim:
    """What a matched reference can take, read under lock just before the money is placed.

    `owed`: what it still owes (None: no limit, e.g. a customer's account); `customer_id`: whose
    credit takes what is paid over `owed` (the reference's own customer, if any); `description`
    says why in words (e.g. "sale S0000012 owes KES 0.00").
    """

    owed: Decimal | None
    customer_id: int | None
    description: str = ""


@dataclass(frozen=True)
class Placed:
    """One placing of (part of) a payment, as the listeners see it: `applied` settles the matched
    reference, `credit` (over what it owed) goes to customer `match.customer_id`'s credit; both
    are credited to receivables by `entry`."""

    match: Match
    applied: Decimal
    credit: Decimal
    entry: JournalEntry
    paid_date: dt.date


ReferenceResolver = Callable[[Business, str], "Match | None"]
ClaimResolver = Callable[[Business, Match], "Claim | None"]
PaymentListener = Callable[["Payment", Placed], None]
ReversalListener = Callable[["Payment", "PaymentApplication", "JournalEntry"], None]

_resolvers: list[ReferenceResolver] = []
_claims: list[ClaimResolver] = []
_listeners: list[PaymentListener] = []
_reversal_listeners: list[ReversalListener] = []


def register_reference_resolver(fn: ReferenceResolver) -> ReferenceResolver:
    """Add a resolver (usable as a decorator); registering the same function twice is a no-op."""
    if fn not in _resolvers:
        _resolvers.append(fn)
    return fn


def register_claim_resolver(fn: ClaimResolver) -> ClaimResolver:
    """Add a resolver of what a matched reference owes (fn(business, match) -> Claim | None)."""
    if fn not in _claims:
        _claims.append(fn)
    return fn


def register_payment_listener(fn: PaymentListener) -> PaymentListener:
    """Add a listener called as fn(payment, placed) when money is placed on receivables (inside the transaction)."""
    if fn not in _listeners:
        _listeners.append(fn)
    return fn


def register_reversal_listener(fn: ReversalListener) -> ReversalListener:
    """Add a listener called as fn(payment, application, reversal_entry) when a placing is reversed."""
    if fn not in _reversal_listeners:
        _reversal_listeners.append(fn)
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


def claim_for(business: Business, match: Match) -> Claim:
    """What `match` can take: the first registered resolver that knows it, else no limit."""
    for resolver in list(_claims):
        found = resolver(business, match)
        if found is not None:
            return found
    return Claim(None, match.customer_id)


def notify_listeners(payment: Payment, placed: Placed) -> None:
    for listener in list(_listeners):
        listener(payment, placed)


def notify_reversal_listeners(payment: Payment, application: PaymentApplication, reversal_entry: JournalEntry) -> None:
    for listener in list(_reversal_listeners):
        listener(payment, application, reversal_entry)

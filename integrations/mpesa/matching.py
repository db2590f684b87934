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

from operations.payments import Claim, Match, Placed
from operations.payments import claim_resolve as claim_for
from operations.payments import reference_resolve as resolve_reference

__all__ = ["Claim", "Match", "Placed", "claim_for", "resolve_reference"]

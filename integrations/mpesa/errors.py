"""Domain errors of the M-Pesa services (the Daraja client's own errors are in exceptions.py).

Services raise these; the admin shows their message to the person who acted.
"""

from __future__ import annotations


class MpesaError(Exception):
    """Base class: the M-Pesa service refused to act; nothing was changed."""


class NeedsAttention(MpesaError):  # noqa: N818 - reads as the state it puts a row in
    """A callback that processing cannot settle by itself: a person must look (never retried)."""


class TransientProcessingError(MpesaError):
    """Something that may succeed a little later (e.g. the ledger's period moved under us)."""


class NotUnallocated(MpesaError):  # noqa: N818
    """Only a payment in suspense (unallocated) can be allocated."""


class InvalidRequest(MpesaError):  # noqa: N818
    """The asked operation cannot be done with these arguments (phone, amount, till state...)."""


class DarajaUnavailable(MpesaError):  # noqa: N818
    """Daraja could not be asked (network, credentials); the message says why."""

"""Domain errors of the day-to-day operations, worded for the person at the counter.

Services raise these (or a ledger error from accounts.exceptions, which they let through);
the admin shows the message as it is.
"""

from __future__ import annotations


class OperationError(Exception):
    """Base class: the operation was refused and nothing was recorded."""


class DayClosed(OperationError):  # noqa: N818 - named for what the person sees
    """The business day is closed: nothing more can be dated on it."""


class CreditLimitExceeded(OperationError):  # noqa: N818 - named for what the person sees
    """A sale on account would take the customer over the credit limit."""


class InsufficientStock(OperationError):  # noqa: N818 - named for what the person sees
    """Less stock on hand than the operation takes out."""


class InvalidState(OperationError):  # noqa: N818 - named for what the person sees
    """The document is not in a state that allows this (already posted, already refunded...)."""


class InvalidInput(OperationError):  # noqa: N818 - named for what the person sees
    """Something entered is missing or wrong (no lines, a customer of another business...)."""


class ClosingsFailed(OperationError):  # noqa: N818 - named for what the person sees
    """The end-of-day schedule could not close some businesses (the others were closed); the message
    names each one with its error."""

"""Domain errors of the ledger. Services raise these; the admin shows their messages to people."""

from __future__ import annotations

# The subclasses are named for what went wrong, as callers read them (`except PeriodLocked`), not
# with an "Error" suffix.


class LedgerError(Exception):
    """Base class: the ledger refused a write; nothing was posted."""


class UnbalancedEntry(LedgerError):  # noqa: N818
    """Debits and credits differ, or the entry has fewer than two lines."""


class InvalidLine(LedgerError):  # noqa: N818
    """A line is not one positive debit or one positive credit with at most two decimals."""


class InvalidAccount(LedgerError):  # noqa: N818
    """The account does not exist, belongs to another business, is inactive or is a group account."""


class PeriodLocked(LedgerError):  # noqa: N818
    """The entry date is on or before the business's lock date (the period is closed)."""


class InvalidLockDate(LedgerError):  # noqa: N818
    """The lock date asked for cannot be set (it is in the future, or earlier than the current one)."""


class LockDateBackwards(InvalidLockDate):
    """A lock date may only move forward."""


class IdempotencyConflict(LedgerError):  # noqa: N818
    """The idempotency key was already used for an entry with different content."""


class ReservedIdempotencyKey(LedgerError):  # noqa: N818
    """A person's entry used an idempotency key of the form the system's postings use ("mpesa:...")."""


class AlreadyReversed(LedgerError):  # noqa: N818
    """The entry already has its (single) reversal."""


class InvalidReversal(LedgerError):  # noqa: N818
    """The entry cannot be reversed as asked (a reversal of a reversal, a date before the original)."""


class ImmutableLedger(LedgerError):  # noqa: N818
    """Posted entries and lines cannot be changed or deleted; correct them with a reversal."""


# SQLSTATEs raised by the ledger's triggers (migrations/0002_ledger_rules.py, 0004_ledger_holes.py): class 23, integrity
# constraint violation, so psycopg and Django raise them as IntegrityError.
_SQLSTATE_ERRORS: dict[str, type[LedgerError]] = {
    "23L01": UnbalancedEntry,
    "23L02": ImmutableLedger,
    "23L03": PeriodLocked,
    "23L04": LockDateBackwards,
    "23L05": InvalidAccount,
    "23L06": LedgerError,
    "23L07": InvalidReversal,
    "23L08": InvalidLockDate,
}


def _driver_error(exc: BaseException) -> BaseException:
    # Django wraps psycopg's errors and keeps the original as the cause.
    return exc if hasattr(exc, "sqlstate") or exc.__cause__ is None else exc.__cause__


def database_error_sqlstate(exc: BaseException) -> tuple[str | None, str | None]:
    """(SQLSTATE, constraint name) of a database error, raised by psycopg or wrapped by Django."""
    cause = _driver_error(exc)
    diag = getattr(cause, "diag", None)
    return getattr(cause, "sqlstate", None), getattr(diag, "constraint_name", None)


def ledger_error_from(exc: BaseException) -> LedgerError | None:
    """The domain error for a database error raised by a ledger rule, or None if it is not one."""
    sqlstate, constraint = database_error_sqlstate(exc)
    cause = _driver_error(exc)
    diag = getattr(cause, "diag", None)
    message = getattr(diag, "message_primary", None) or str(exc)
    if sqlstate in _SQLSTATE_ERRORS:
        return _SQLSTATE_ERRORS[sqlstate](message)
    if sqlstate == "23514" and constraint == "line_one_positive_side":
        return InvalidLine("each line must be a positive debit or a positive credit, never both, never zero")
    if sqlstate == "23514" and constraint == "line_amount_cents":
        return InvalidLine("amounts have at most two decimal places and stay below 1,000,000,000,000")
    if sqlstate == "23503" and constraint and "account_id" in constraint:
        return InvalidAccount("the account does not exist")
    if sqlstate == "23505" and constraint == "accounts_journalentry_reverses_id_key":
        return AlreadyReversed("the entry is already reversed")
    return None

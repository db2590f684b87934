"""The M-Pesa module's errors: the Daraja client's, then what the M-Pesa services refuse.

Daraja client errors - callers decide what to do from the class alone:

- `DarajaConfigError`: our side is wrong (missing passkey, a callback URL Daraja would refuse);
  retrying cannot help. It is also a `ValueError`, and it is raised before any HTTP call.
- `DarajaAuthError`: Daraja refused our credentials or a freshly generated token.
- `DarajaRequestError`: Daraja answered and refused the request (HTTP 4xx, or 5xx with a Daraja
  error body such as `500.001.1001 Merchant does not exist`); nothing was done, retrying the same
  request gives the same answer.
- `DarajaTransientError`: no usable answer (network, timeout, 429/502/503/504, the token cache
  down). `may_have_been_processed` says whether Daraja may nevertheless have acted on it: after
  an stk_push read timeout the customer may already have the prompt, so the caller must wait for
  the callback (or the C2B confirmation) instead of sending a second prompt.

Parsing errors of Daraja payloads are `payloads.PayloadError`, a `ValueError`, not a `DarajaError`.
"""

from __future__ import annotations


class DarajaError(Exception):
    """Base of every error the client raises; carries what Daraja said, when it said anything.

    `error_code`, `error_message` and `request_id` come from Daraja's error body
    (`{"requestId": ..., "errorCode": "400.002.02", "errorMessage": "Bad Request - Invalid ..."}`).
    """

    def __init__(
        self,
        message: str,
        *,
        http_status: int | None = None,
        error_code: str | None = None,
        error_message: str | None = None,
        request_id: str | None = None,
    ) -> None:
        super().__init__(message)
        self.http_status = http_status
        self.error_code = error_code
        self.error_message = error_message
        self.request_id = request_id


class DarajaConfigError(DarajaError, ValueError):
    """Configuration or arguments that Daraja would refuse; raised before any HTTP call."""


class DarajaRequestError(DarajaError):
    """Daraja answered and refused the request; sending it again gives the same answer."""


class DarajaAuthError(DarajaRequestError):
    """Daraja refused the consumer key/secret, or refused a token it had just issued."""


class DarajaTransientError(DarajaError):
    """No usable answer from Daraja, after the retries the call's policy allows.

    `may_have_been_processed` is False only when Daraja certainly did not act on the request
    (the connection was never made, or it answered 429 / refused the token at its gateway).
    """

    def __init__(
        self,
        message: str,
        *,
        may_have_been_processed: bool,
        attempts: int = 1,
        http_status: int | None = None,
        error_code: str | None = None,
        error_message: str | None = None,
        request_id: str | None = None,
    ) -> None:
        super().__init__(
            message,
            http_status=http_status,
            error_code=error_code,
            error_message=error_message,
            request_id=request_id,
        )
        self.may_have_been_processed = may_have_been_processed
        self.attempts = attempts


# What the M-Pesa services refuse; the admin shows their message to the person who acted.


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

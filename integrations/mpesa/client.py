"""HTTP client for Safaricom's Daraja API. HTTP only: no ORM, no Django, usable from any process.

OAuth token (https://developer.safaricom.co.ke/APIs/Authorization): generating a token invalidates
the previous one, so every process shares one token through Redis. The first process that finds no
token takes a Redis lock (SET NX EX) and fetches it; the others wait and re-read. The token is
cached until 60 s before it expires. When an API call answers "Invalid Access Token" (401 or
errorCode 404.001.03), the token is dropped - only if it is still the one that was used, so a
fresher token from another process survives - and the call is sent once more with a new token.

Retries (exponential backoff: backoff * 2**attempt, at most `max_retries` extra attempts, a
Retry-After header is honoured) happen only on transient failures, and only where resending is
safe:

- idempotent calls (OAuth, STK Query, C2B Register URL, Transaction Status, Account Balance):
  connection errors, timeouts, a dropped connection, HTTP 429 / 502 / 503 / 504 and Daraja's
  spike-arrest error 500.003.02. A resent status/balance query costs at most a second result
  callback, which the inbox stores under its own ConversationID.
- money-moving calls (STK Push, Reversal): only when Daraja cannot have acted: the connection was
  never made (refused, DNS, connect timeout) or HTTP 429. Never after a read timeout, a dropped
  connection or 502/503/504: the customer may already have the PIN prompt (a second push would ask
  them to pay twice) or the reversal may be done. Those raise DarajaTransientError with
  `may_have_been_processed=True`; the caller waits for the callback / C2B confirmation, or asks
  Transaction Status, instead of sending again.
- never on 4xx or on a 500 carrying a Daraja error body (e.g. 500.001.1001 "Merchant does not
  exist"): the same request gets the same answer. STK Query's 500.001.1001 "The transaction is
  being processed" is not an error at all: it is returned as a pending outcome.

Every request carries `timeout` (connect, read). Arguments Daraja would refuse (AccountReference
over 12 characters, fractional amounts, callback URLs with forbidden words...) raise ValueError /
DarajaConfigError before any HTTP call.
"""

from __future__ import annotations

import base64
import hashlib
import logging
import math
import re
import time
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from datetime import datetime
from decimal import Decimal
from typing import TYPE_CHECKING, Literal, Protocol, TypeVar
from urllib.parse import urlsplit

import redis

from integrations.mpesa.exceptions import (
    DarajaAuthError,
    DarajaConfigError,
    DarajaRequestError,
    DarajaTransientError,
)
from integrations.mpesa.payloads import (
    NAIROBI,
    C2BRegisterResponse,
    PayloadError,
    RequestAccepted,
    StkPushResponse,
    StkQueryResult,
    parse_c2b_register_response,
    parse_error_body,
    parse_oauth_token,
    parse_request_accepted,
    parse_stk_push_response,
    parse_stk_query_error,
    parse_stk_query_response,
)
from operations.phones import normalise_msisdn

if TYPE_CHECKING:
    import requests

logger = logging.getLogger(__name__)

PRODUCTION_BASE_URL = "https://api.safaricom.co.ke"
SANDBOX_BASE_URL = "https://sandbox.safaricom.co.ke"

OAUTH_PATH = "/oauth/v1/generate"
STK_PUSH_PATH = "/mpesa/stkpush/v1/processrequest"
STK_QUERY_PATH = "/mpesa/stkpushquery/v1/query"
C2B_REGISTER_PATHS = {"v1": "/mpesa/c2b/v1/registerurl", "v2": "/mpesa/c2b/v2/registerurl"}
TRANSACTION_STATUS_PATH = "/mpesa/transactionstatus/v1/query"
REVERSAL_PATH = "/mpesa/reversal/v1/request"
ACCOUNT_BALANCE_PATH = "/mpesa/accountbalance/v1/query"

# Daraja refuses callback URLs containing these words (case-insensitive, anywhere in the URL).
FORBIDDEN_URL_WORDS = ("mpesa", "safaricom", "exe", "exec", "cmd", "sql", "query")
LOCAL_HOSTS = frozenset({"127.0.0.1", "localhost", "::1"})
# M-Pesa Express limits (https://developer.safaricom.co.ke/APIs/MpesaExpressSimulate).
STK_MIN_AMOUNT = 1
STK_MAX_AMOUNT = 250_000
ACCOUNT_REFERENCE_MAX = 12
TRANSACTION_DESC_MAX = 13
REMARKS_MAX = 100
OCCASION_MAX = 100

TOKEN_REFRESH_MARGIN = 60  # seconds before Daraja's expiry that the shared token is replaced
TOKEN_POLL_INTERVAL = 0.05  # how often a waiting process re-reads the token while another fetches it
MAX_BACKOFF = 30.0
RETRYABLE_STATUSES = frozenset({429, 502, 503, 504})

StkTransactionType = Literal["CustomerPayBillOnline", "CustomerBuyGoodsOnline"]
T = TypeVar("T")


class _Answer(Protocol):
    """What every synchronous "request received" answer of Daraja carries."""

    @property
    def accepted(self) -> bool: ...

    @property
    def response_code(self) -> str: ...

    @property
    def response_description(self) -> str: ...


A = TypeVar("A", bound=_Answer)

# Compare-and-delete: drop a key only if it still holds the value we know (our lock, the stale token).
_DELETE_IF_EQUAL = """
if redis.call('GET', KEYS[1]) == ARGV[1] then
    return redis.call('DEL', KEYS[1])
end
return 0
"""


def daraja_timestamp(now: datetime | None = None) -> str:
    """YYYYMMDDHHmmss in Nairobi time, as Daraja expects in STK requests."""
    moment = now.astimezone(NAIROBI) if now is not None else datetime.now(tz=NAIROBI)
    return moment.strftime("%Y%m%d%H%M%S")


def token_cache_seconds(expires_in: int) -> int:
    """How long the shared token is used: until 60 s before Daraja expires it (half its life if shorter)."""
    if expires_in > 2 * TOKEN_REFRESH_MARGIN:
        return expires_in - TOKEN_REFRESH_MARGIN
    return max(1, expires_in // 2)


def stk_password(shortcode: str, passkey: str, timestamp: str) -> str:
    """base64(shortcode + passkey + timestamp): the STK Push / Query "Password"."""
    return base64.b64encode(f"{shortcode}{passkey}{timestamp}".encode()).decode("ascii")


def validate_callback_url(url: str, *, allow_local_http: bool = False) -> str:
    """A callback URL Daraja will accept, or DarajaConfigError saying why not.

    HTTPS only (plain http only to 127.0.0.1 / localhost, outside production), and none of the words
    Daraja refuses anywhere in it: note "exe" also rules out hosts or paths such as "texel" or "/executive".
    """
    if not isinstance(url, str) or not url.strip():
        raise DarajaConfigError("callback URL is empty")
    lowered = url.lower()
    for word in FORBIDDEN_URL_WORDS:
        if word in lowered:
            raise DarajaConfigError(f"callback URL {url!r} contains {word!r}, which Daraja refuses in callback URLs")
    if any(ch.isspace() for ch in url):
        raise DarajaConfigError(f"callback URL {url!r} contains whitespace")
    try:
        parts = urlsplit(url)
        host = parts.hostname
    except ValueError as exc:
        raise DarajaConfigError(f"callback URL {url!r} is not a valid URL: {exc}") from None
    if not host:
        raise DarajaConfigError(f"callback URL {url!r} has no host")
    if parts.scheme == "https":
        return url
    if parts.scheme == "http" and allow_local_http and host in LOCAL_HOSTS:
        return url
    if parts.scheme == "http" and host in LOCAL_HOSTS:
        raise DarajaConfigError(f"callback URL {url!r}: plain http to a local host is allowed only outside production")
    raise DarajaConfigError(f"callback URL {url!r} must use https (Daraja requires it)")


def _bounded_text(value: object, name: str, *, max_length: int, required: bool = True) -> str:
    if not isinstance(value, str):
        raise ValueError(f"{name} must be text, got {type(value).__name__}")
    if required and not value.strip():
        raise ValueError(f"{name} must not be empty")
    if len(value) > max_length:
        raise ValueError(f"{name} {value!r} is {len(value)} characters; Daraja allows at most {max_length}")
    if any(not ch.isprintable() for ch in value):
        raise ValueError(f"{name} {value!r} contains control characters")
    return value


def _whole_shillings(amount: Decimal, name: str, *, minimum: int, maximum: int | None) -> int:
    """Daraja takes whole shillings only: a fractional amount is refused, never rounded."""
    if isinstance(amount, bool) or not isinstance(amount, Decimal | int):
        raise ValueError(f"{name} must be a Decimal, got {type(amount).__name__}")
    value = Decimal(amount)
    if not value.is_finite():
        raise ValueError(f"{name} {amount} is not a number")
    if value != value.to_integral_value():
        raise ValueError(f"{name} {amount} has cents; M-Pesa takes whole shillings only")
    if value < minimum or (maximum is not None and value > maximum):
        limit = f"{minimum}..{maximum}" if maximum is not None else f"at least {minimum}"
        raise ValueError(f"{name} {amount} is outside what M-Pesa accepts ({limit} shillings)")
    return int(value)


def _never_sent(exc: requests.RequestException) -> bool:
    """True when the connection itself failed, so Daraja cannot have received anything."""
    import requests
    from urllib3.exceptions import MaxRetryError, NewConnectionError

    if isinstance(exc, requests.exceptions.ConnectTimeout):
        return True
    if isinstance(exc, requests.exceptions.ConnectionError) and exc.args:
        reason = exc.args[0]
        if isinstance(reason, MaxRetryError):
            reason = reason.reason
        # NewConnectionError covers refused connections and DNS failures (NameResolutionError).
        return isinstance(reason, NewConnectionError)
    return False


def _retry_after(response: requests.Response) -> float | None:
    value = response.headers.get("Retry-After", "")
    return float(value) if re.fullmatch(r"[0-9]{1,4}(\.[0-9]+)?", value.strip()) else None


class DarajaClient:
    """One Daraja app (consumer key/secret) and one shortcode.

    Cheap to create; the OAuth token lives in Redis, shared by every instance and process using the
    same base_url and consumer key. Not meant to be shared between threads (requests.Session):
    create one per thread or task.
    """

    def __init__(
        self,
        *,
        base_url: str,
        consumer_key: str,
        consumer_secret: str,
        shortcode: str,
        passkey: str = "",
        initiator_name: str = "",
        security_credential: str = "",
        redis_url: str,
        timeout: tuple[float, float] = (3.05, 15),
        max_retries: int = 3,
        backoff: float = 0.5,
        session: requests.Session | None = None,
        sleep: Callable[[float], None] = time.sleep,
    ) -> None:
        parts = urlsplit(base_url or "")
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise DarajaConfigError(f"base_url {base_url!r} must be an http(s) URL such as {SANDBOX_BASE_URL}")
        for name, value in (("consumer_key", consumer_key), ("consumer_secret", consumer_secret)):
            if not value:
                raise DarajaConfigError(f"{name} is required")
        if not re.fullmatch(r"[0-9]{5,7}", str(shortcode or "")):
            raise DarajaConfigError(f"shortcode {shortcode!r} must be the 5-7 digit paybill, till or store number")
        if not redis_url:
            raise DarajaConfigError("redis_url is required: the OAuth token is shared through Redis")
        if len(timeout) != 2 or min(timeout) <= 0:
            raise DarajaConfigError(f"timeout {timeout!r} must be (connect seconds, read seconds), both positive")
        if max_retries < 0 or backoff < 0:
            raise DarajaConfigError("max_retries and backoff must not be negative")
        self.base_url = base_url.rstrip("/")
        self.production = self.base_url == PRODUCTION_BASE_URL
        self.shortcode = str(shortcode)
        self.timeout = (float(timeout[0]), float(timeout[1]))
        self.max_retries = max_retries
        self.backoff = backoff
        if session is None:
            # requests (with urllib3, charset_normalizer, idna: ~10 MiB) is imported here, not at module
            # level: every Celery worker imports this module at start (through the services), and only the
            # tasks that call Daraja need it (docs/worker-memory.md).
            import requests

            session = requests.Session()
        self.session = session
        self._consumer_key = consumer_key
        self._consumer_secret = consumer_secret
        self._passkey = passkey
        self._initiator_name = initiator_name
        self._security_credential = security_credential
        self._sleep = sleep
        self._redis = redis.Redis.from_url(redis_url, socket_timeout=5, socket_connect_timeout=5)
        self._delete_if_equal = self._redis.register_script(_DELETE_IF_EQUAL)
        app = hashlib.sha256(f"{self.base_url}\0{consumer_key}".encode()).hexdigest()[:32]
        self.token_cache_key = f"daraja:oauth-token:{app}"
        self.token_lock_key = f"daraja:oauth-token-lock:{app}"
        # Long enough for one fetch with all its retries; a crashed holder frees it when it expires.
        worst_fetch = sum(self.timeout) * (max_retries + 1) + sum(
            min(backoff * 2**attempt, MAX_BACKOFF) for attempt in range(max_retries)
        )
        self._lock_ttl = max(5, math.ceil(worst_fetch) + 1)

    def close(self) -> None:
        self.session.close()
        self._redis.close()

    # ------------------------------------------------------------------------------ OAuth token

    def access_token(self) -> str:
        """The shared token: from Redis, or fetched by exactly one process at a time."""
        with self._redis_errors():
            cached = self._cached_token()
            if cached:
                return cached
            lock_id = uuid.uuid4().hex
            deadline = time.monotonic() + self._lock_ttl + 5
            while True:
                if self._redis.set(self.token_lock_key, lock_id, nx=True, ex=self._lock_ttl):
                    try:
                        # Another process may have stored a token between our read and our lock.
                        return self._cached_token() or self._fetch_and_store_token()
                    finally:
                        self._delete_if_equal(keys=[self.token_lock_key], args=[lock_id])
                time.sleep(TOKEN_POLL_INTERVAL)
                cached = self._cached_token()
                if cached:
                    return cached
                if time.monotonic() > deadline:
                    raise DarajaTransientError(
                        "timed out waiting for another process to fetch the Daraja token",
                        may_have_been_processed=False,
                    )

    def invalidate_token(self, token: str) -> bool:
        """Drop the shared token if it is still `token`; False if another process already replaced it."""
        with self._redis_errors():
            return bool(self._delete_if_equal(keys=[self.token_cache_key], args=[token]))

    def _cached_token(self) -> str | None:
        value = self._redis.get(self.token_cache_key)
        if isinstance(value, bytes):
            return value.decode("utf-8")
        return None

    def _fetch_and_store_token(self) -> str:
        response = self._send(
            "GET",
            OAUTH_PATH,
            params={"grant_type": "client_credentials"},
            auth=(self._consumer_key, self._consumer_secret),
            idempotent=True,
        )
        if response.status_code != 200:
            error = parse_error_body(response.content)
            cls = DarajaAuthError if response.status_code in (400, 401, 403) else DarajaRequestError
            raise cls(
                f"Daraja refused the OAuth request: HTTP {response.status_code} "
                f"{error.error_code or ''} {error.error_message or ''}".rstrip(),
                http_status=response.status_code,
                error_code=error.error_code,
                error_message=error.error_message,
                request_id=error.request_id,
            )
        try:
            token = parse_oauth_token(response.content)
        except PayloadError as exc:
            raise DarajaAuthError(f"unreadable OAuth answer from Daraja: {exc}", http_status=200) from exc
        ttl = token_cache_seconds(token.expires_in)
        self._redis.set(self.token_cache_key, token.access_token, ex=ttl)
        logger.info("daraja: new OAuth token for %s, cached for %ss", self.base_url, ttl)
        return token.access_token

    @contextmanager
    def _redis_errors(self) -> Iterator[None]:
        try:
            yield
        except redis.RedisError as exc:
            raise DarajaTransientError(
                f"the Daraja token cache (Redis) is unavailable: {exc}", may_have_been_processed=False
            ) from exc

    # ------------------------------------------------------------------------------ HTTP

    def _send(
        self,
        method: str,
        path: str,
        *,
        idempotent: bool,
        json_body: dict[str, object] | None = None,
        params: dict[str, str] | None = None,
        auth: tuple[str, str] | None = None,
        token: str | None = None,
    ) -> requests.Response:
        """One logical request with the retries its policy allows (see the module docstring)."""
        import requests  # imported by __init__ already; see there

        url = self.base_url + path
        headers = {"Accept": "application/json"}
        if token is not None:
            headers["Authorization"] = f"Bearer {token}"
        attempt = 0
        while True:
            attempts = attempt + 1
            try:
                response = self.session.request(
                    method,
                    url,
                    params=params,
                    json=json_body,
                    headers=headers,
                    auth=auth,
                    timeout=self.timeout,
                    allow_redirects=False,
                )
            except (requests.exceptions.InvalidURL, requests.exceptions.MissingSchema) as exc:
                raise DarajaConfigError(f"bad Daraja URL {url!r}: {exc}") from exc
            except requests.RequestException as exc:
                never_sent = _never_sent(exc)
                error = DarajaTransientError(
                    f"{path}: no answer from Daraja after {attempts} attempt(s): {type(exc).__name__}: {exc}",
                    may_have_been_processed=not never_sent,
                    attempts=attempts,
                )
                if (never_sent or idempotent) and attempt < self.max_retries:
                    self._wait(attempt, None, path, error)
                    attempt += 1
                    continue
                raise error from exc
            if not self._is_transient(response):
                return response
            body = parse_error_body(response.content)
            rate_limited = response.status_code == 429
            error = DarajaTransientError(
                f"{path}: Daraja answered HTTP {response.status_code} {body.error_code or ''} "
                f"{body.error_message or ''}".rstrip()
                + f" after {attempts} attempt(s)",
                may_have_been_processed=not rate_limited,
                attempts=attempts,
                http_status=response.status_code,
                error_code=body.error_code,
                error_message=body.error_message,
                request_id=body.request_id,
            )
            if (rate_limited or idempotent) and attempt < self.max_retries:
                self._wait(attempt, _retry_after(response), path, error)
                attempt += 1
                continue
            raise error

    @staticmethod
    def _is_transient(response: requests.Response) -> bool:
        if response.status_code in RETRYABLE_STATUSES:
            return True
        return response.status_code >= 500 and parse_error_body(response.content).is_spike_arrest

    def _wait(self, attempt: int, retry_after: float | None, path: str, error: Exception) -> None:
        delay = min(self.backoff * 2**attempt, MAX_BACKOFF)
        if retry_after is not None:
            delay = max(delay, min(retry_after, MAX_BACKOFF))
        logger.warning("daraja: %s failed (%s); retrying in %.2fs", path, error, delay)
        self._sleep(delay)

    def _post(self, path: str, body: dict[str, object], *, idempotent: bool) -> requests.Response:
        """POST with the shared token; on "Invalid Access Token" refresh it and send once more.

        Resending is safe even for STK Push: a refused token is rejected at Daraja's gateway.
        """
        token = self.access_token()
        response = self._send("POST", path, json_body=body, token=token, idempotent=idempotent)
        if not self._is_invalid_token(response):
            return response
        logger.info("daraja: token refused on %s; fetching a new one", path)
        self.invalidate_token(token)
        token = self.access_token()
        response = self._send("POST", path, json_body=body, token=token, idempotent=idempotent)
        if self._is_invalid_token(response):
            error = parse_error_body(response.content)
            raise DarajaAuthError(
                f"{path}: Daraja refused a fresh token ({error.error_code} {error.error_message}); "
                "check that the app has this API product",
                http_status=response.status_code,
                error_code=error.error_code,
                error_message=error.error_message,
                request_id=error.request_id,
            )
        return response

    @staticmethod
    def _is_invalid_token(response: requests.Response) -> bool:
        return response.status_code == 401 or (
            response.status_code >= 400 and parse_error_body(response.content).is_invalid_token
        )

    @staticmethod
    def _request_error(response: requests.Response, path: str) -> DarajaRequestError:
        error = parse_error_body(response.content)
        return DarajaRequestError(
            f"{path}: Daraja refused the request: HTTP {response.status_code} "
            f"{error.error_code or ''} {error.error_message or ''}".rstrip()
            + (f" (requestId {error.request_id})" if error.request_id else ""),
            http_status=response.status_code,
            error_code=error.error_code,
            error_message=error.error_message,
            request_id=error.request_id,
        )

    @staticmethod
    def _parse_ok(response: requests.Response, path: str, parser: Callable[[object], T]) -> T:
        try:
            return parser(response.content)
        except PayloadError as exc:
            # Daraja said 2xx but the body is unreadable: it may well have acted on the request.
            raise DarajaTransientError(
                f"{path}: unreadable answer from Daraja (HTTP {response.status_code}): {exc}",
                may_have_been_processed=True,
                http_status=response.status_code,
            ) from exc

    def _callback(self, url: str) -> str:
        return validate_callback_url(url, allow_local_http=not self.production)

    def _require_initiator(self) -> tuple[str, str]:
        if not self._initiator_name or not self._security_credential:
            raise DarajaConfigError("initiator_name and security_credential are required for this API")
        return self._initiator_name, self._security_credential

    def _require_passkey(self) -> str:
        if not self._passkey:
            raise DarajaConfigError("passkey is required for M-Pesa Express (STK Push / Query)")
        return self._passkey

    def _accepted_call(
        self, path: str, body: dict[str, object], *, idempotent: bool, parse: Callable[[object], A], refused: str
    ) -> A:
        """POST, then insist on a 2xx and a ResponseCode "0"; `refused` starts the error otherwise."""
        response = self._post(path, body, idempotent=idempotent)
        if not 200 <= response.status_code < 300:
            raise self._request_error(response, path)
        answer = self._parse_ok(response, path, parse)
        if not answer.accepted:
            raise DarajaRequestError(
                f"{refused}: {answer.response_code} {answer.response_description}",
                http_status=response.status_code,
                error_code=answer.response_code,
                error_message=answer.response_description,
            )
        return answer

    def _async_call(self, path: str, body: dict[str, object], *, idempotent: bool) -> RequestAccepted:
        return self._accepted_call(
            path,
            body,
            idempotent=idempotent,
            parse=parse_request_accepted,
            refused=f"{path}: Daraja did not accept the request",
        )

    # ------------------------------------------------------------------------------ APIs

    def stk_push(
        self,
        *,
        amount: Decimal,
        phone: str,
        account_reference: str,
        transaction_desc: str,
        callback_url: str,
        transaction_type: StkTransactionType = "CustomerPayBillOnline",
        party_b: str | None = None,
    ) -> StkPushResponse:
        """Send the PIN prompt to the customer's phone. Not idempotent: see the retry policy.

        For Buy Goods, the client's shortcode is the store (head office) number that signs the
        request and `party_b` the till that receives the money.
        https://developer.safaricom.co.ke/APIs/MpesaExpressSimulate
        """
        whole = _whole_shillings(amount, "amount", minimum=STK_MIN_AMOUNT, maximum=STK_MAX_AMOUNT)
        msisdn = normalise_msisdn(phone)
        _bounded_text(account_reference, "account_reference", max_length=ACCOUNT_REFERENCE_MAX)
        _bounded_text(transaction_desc, "transaction_desc", max_length=TRANSACTION_DESC_MAX)
        if transaction_type not in ("CustomerPayBillOnline", "CustomerBuyGoodsOnline"):
            raise ValueError(
                f"transaction_type {transaction_type!r} must be CustomerPayBillOnline or CustomerBuyGoodsOnline"
            )
        receiver = self.shortcode if party_b is None else str(party_b)
        if not re.fullmatch(r"[0-9]{5,7}", receiver):
            raise ValueError(f"party_b {party_b!r} must be a 5-7 digit till or paybill number")
        callback = self._callback(callback_url)
        passkey = self._require_passkey()
        timestamp = daraja_timestamp()
        body: dict[str, object] = {
            "BusinessShortCode": self.shortcode,
            "Password": stk_password(self.shortcode, passkey, timestamp),
            "Timestamp": timestamp,
            "TransactionType": transaction_type,
            "Amount": str(whole),
            "PartyA": msisdn,
            "PartyB": receiver,
            "PhoneNumber": msisdn,
            "CallBackURL": callback,
            "AccountReference": account_reference,
            "TransactionDesc": transaction_desc,
        }
        return self._accepted_call(
            STK_PUSH_PATH, body, idempotent=False, parse=parse_stk_push_response, refused="STK push not accepted"
        )

    def stk_query(self, *, checkout_request_id: str) -> StkQueryResult:
        """Ask how an STK Push ended; "pending" while the customer is still at the prompt.

        https://developer.safaricom.co.ke/APIs/MpesaExpressQuery
        """
        _bounded_text(checkout_request_id, "checkout_request_id", max_length=100)
        passkey = self._require_passkey()
        timestamp = daraja_timestamp()
        body: dict[str, object] = {
            "BusinessShortCode": self.shortcode,
            "Password": stk_password(self.shortcode, passkey, timestamp),
            "Timestamp": timestamp,
            "CheckoutRequestID": checkout_request_id,
        }
        response = self._post(STK_QUERY_PATH, body, idempotent=True)
        if 200 <= response.status_code < 300:
            return self._parse_ok(response, STK_QUERY_PATH, parse_stk_query_response)
        if parse_error_body(response.content).is_still_processing:
            return parse_stk_query_error(response.content, checkout_request_id=checkout_request_id)
        raise self._request_error(response, STK_QUERY_PATH)

    def c2b_register_urls(
        self,
        *,
        confirmation_url: str,
        validation_url: str,
        response_type: Literal["Completed", "Cancelled"] = "Completed",
        version: Literal["v1", "v2"] = "v1",
    ) -> C2BRegisterResponse:
        """Register where Daraja sends C2B validation and confirmation requests.

        `response_type` is what M-Pesa does when our validation URL cannot be reached. `version`
        decides the MSISDN format of the callbacks: v1 sends a SHA-256 of the number (exact customer
        match), v2 a mask (candidates only), hence v1 by default.
        https://developer.safaricom.co.ke/APIs/CustomerToBusinessRegisterURL
        """
        if response_type not in ("Completed", "Cancelled"):
            raise ValueError(f"response_type {response_type!r} must be 'Completed' or 'Cancelled'")
        if version not in C2B_REGISTER_PATHS:
            raise ValueError(f"version {version!r} must be 'v1' or 'v2'")
        path = C2B_REGISTER_PATHS[version]
        body: dict[str, object] = {
            "ShortCode": self.shortcode,
            "ResponseType": response_type,
            "ConfirmationURL": self._callback(confirmation_url),
            "ValidationURL": self._callback(validation_url),
        }
        return self._accepted_call(
            path, body, idempotent=True, parse=parse_c2b_register_response, refused=f"{path}: URLs not registered"
        )

    def transaction_status(
        self,
        *,
        transaction_id: str,
        result_url: str,
        timeout_url: str,
        remarks: str,
        occasion: str = "",
        original_conversation_id: str = "",
        identifier_type: Literal["1", "2", "4"] = "4",
    ) -> RequestAccepted:
        """Ask for the status of an M-Pesa transaction; the answer comes to `result_url`.

        `identifier_type`: 4 = shortcode (paybill), 2 = till, 1 = MSISDN.
        https://developer.safaricom.co.ke/APIs/TransactionStatus
        """
        _bounded_text(transaction_id, "transaction_id", max_length=32)
        _bounded_text(remarks, "remarks", max_length=REMARKS_MAX)
        _bounded_text(occasion, "occasion", max_length=OCCASION_MAX, required=False)
        _bounded_text(original_conversation_id, "original_conversation_id", max_length=100, required=False)
        initiator, credential = self._require_initiator()
        body: dict[str, object] = {
            "Initiator": initiator,
            "SecurityCredential": credential,
            "CommandID": "TransactionStatusQuery",
            "TransactionID": transaction_id,
            "OriginalConversationID": original_conversation_id,
            "PartyA": self.shortcode,
            "IdentifierType": identifier_type,
            "ResultURL": self._callback(result_url),
            "QueueTimeOutURL": self._callback(timeout_url),
            "Remarks": remarks,
            "Occasion": occasion,
        }
        return self._async_call(TRANSACTION_STATUS_PATH, body, idempotent=True)

    def reversal(
        self,
        *,
        transaction_id: str,
        amount: Decimal,
        receiver_party: str,
        result_url: str,
        timeout_url: str,
        remarks: str,
        occasion: str = "",
    ) -> RequestAccepted:
        """Reverse a C2B payment back to the customer. Moves money: never resent when it may have arrived.

        https://developer.safaricom.co.ke/APIs/Reversal
        """
        _bounded_text(transaction_id, "transaction_id", max_length=32)
        whole = _whole_shillings(amount, "amount", minimum=1, maximum=None)
        if not re.fullmatch(r"[0-9]{5,7}", str(receiver_party)):
            raise ValueError(
                f"receiver_party {receiver_party!r} must be the 5-7 digit shortcode that received the payment"
            )
        _bounded_text(remarks, "remarks", max_length=REMARKS_MAX)
        _bounded_text(occasion, "occasion", max_length=OCCASION_MAX, required=False)
        initiator, credential = self._require_initiator()
        body: dict[str, object] = {
            "Initiator": initiator,
            "SecurityCredential": credential,
            "CommandID": "TransactionReversal",
            "TransactionID": transaction_id,
            "Amount": str(whole),
            "ReceiverParty": str(receiver_party),
            "RecieverIdentifierType": "11",  # sic: Daraja's spelling; 11 = organisation
            "ResultURL": self._callback(result_url),
            "QueueTimeOutURL": self._callback(timeout_url),
            "Remarks": remarks,
        }
        if occasion:
            body["Occasion"] = occasion
        return self._async_call(REVERSAL_PATH, body, idempotent=False)

    def account_balance(
        self,
        *,
        result_url: str,
        timeout_url: str,
        remarks: str,
        identifier_type: Literal["2", "4"] = "4",
    ) -> RequestAccepted:
        """Ask for the shortcode's balances; they come to `result_url`.

        https://developer.safaricom.co.ke/APIs/AccountBalance
        """
        _bounded_text(remarks, "remarks", max_length=REMARKS_MAX)
        initiator, credential = self._require_initiator()
        body: dict[str, object] = {
            "Initiator": initiator,
            "SecurityCredential": credential,
            "CommandID": "AccountBalance",
            "PartyA": self.shortcode,
            "IdentifierType": identifier_type,
            "Remarks": remarks,
            "QueueTimeOutURL": self._callback(timeout_url),
            "ResultURL": self._callback(result_url),
        }
        return self._async_call(ACCOUNT_BALANCE_PATH, body, idempotent=True)

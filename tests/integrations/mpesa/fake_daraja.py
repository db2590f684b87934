"""A local fake of Safaricom's Daraja for the client tests: a real HTTP server on 127.0.0.1.

It answers the endpoints DarajaClient calls with the sample payloads of tests/fixtures/daraja/,
and checks requests the way Daraja does (independently of the client's own code): OAuth basic
auth, the bearer token (issuing a token invalidates the previous one, as on Daraja), the STK
password and Nairobi-time timestamp, field names against the sample requests, field limits and
callback URLs. A refused request gets Daraja's 400 error body and is listed in `rejections`.

Per test: `script(path, status=, body=, delay=, drop=)` queues answers that take precedence over
the default behaviour; `received` records every request (headers, JSON); `tokens_issued` counts
tokens. Use the `fake_daraja` fixture (import `fake_daraja_fixture` explicitly) or the class as a
context manager; the server is always shut down.
"""

from __future__ import annotations

import base64
import itertools
import json
import re
import threading
from collections import defaultdict, deque
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlsplit
from uuid import uuid4
from zoneinfo import ZoneInfo

import pytest
import redis
from django.conf import settings

from integrations.mpesa.client import DarajaClient

FIXTURES = Path(__file__).resolve().parents[2] / "fixtures" / "daraja"
NAIROBI = ZoneInfo("Africa/Nairobi")

# Daraja's public sandbox values (Lipa Na M-Pesa Online test shortcode and passkey).
SANDBOX_SHORTCODE = "174379"
SANDBOX_PASSKEY = "bfb279f9aa9bdbcf158e97dd71a467cd2e0c893059b10f78e6b72ada1ed2c919"

# Endpoint paths, written out here rather than imported, so a typo in the client shows.
OAUTH = "/oauth/v1/generate"
STK_PUSH = "/mpesa/stkpush/v1/processrequest"
STK_QUERY = "/mpesa/stkpushquery/v1/query"
C2B_REGISTER_V1 = "/mpesa/c2b/v1/registerurl"
C2B_REGISTER_V2 = "/mpesa/c2b/v2/registerurl"
TRANSACTION_STATUS = "/mpesa/transactionstatus/v1/query"
REVERSAL = "/mpesa/reversal/v1/request"
ACCOUNT_BALANCE = "/mpesa/accountbalance/v1/query"

# The sample request of each endpoint: the fake checks incoming field names against it.
REQUEST_SAMPLES = {
    STK_PUSH: "02_stk_push_request_paybill.json",
    STK_QUERY: "04_stk_query_request.json",
    C2B_REGISTER_V1: "05_c2b_register_url_request_v2doc.json",
    C2B_REGISTER_V2: "05_c2b_register_url_request_v2doc.json",
    TRANSACTION_STATUS: "08_transaction_status_request.json",
    REVERSAL: "09_reversal_request.json",
}
ACCOUNT_BALANCE_FIELDS = frozenset(
    {
        "Initiator",
        "SecurityCredential",
        "CommandID",
        "PartyA",
        "IdentifierType",
        "Remarks",
        "QueueTimeOutURL",
        "ResultURL",
    }
)
CALLBACK_WORDS = ("mpesa", "safaricom", "exe", "exec", "cmd", "sql", "query")
INVALID_TOKEN_BODY = {"requestId": "", "errorCode": "404.001.03", "errorMessage": "Invalid Access Token"}


def load_sample(name: str) -> Any:
    return json.loads((FIXTURES / name).read_text())


@dataclass
class Scripted:
    """One answer: `body` dict/list is sent as JSON, str/bytes as is; `drop` closes without answering."""

    status: int = 200
    body: object = None
    delay: float = 0.0
    drop: bool = False
    headers: dict[str, str] = field(default_factory=dict)


@dataclass(frozen=True)
class Received:
    method: str
    path: str
    query: dict[str, list[str]]
    headers: dict[str, str]
    body: bytes
    json: Any
    at: datetime

    @property
    def bearer(self) -> str | None:
        value = self.headers.get("authorization", "")
        return value[len("Bearer ") :] if value.startswith("Bearer ") else None


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    fake: FakeDaraja

    def handle_error(self, request: Any, client_address: Any) -> None:
        """Clients that time out and hang up are part of the tests; stay quiet about them."""


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"  # keep-alive, like Daraja, so the client's connection pool is exercised
    server: _Server

    def log_message(self, format: str, *args: Any) -> None:
        pass

    def do_GET(self) -> None:
        self._handle()

    def do_POST(self) -> None:
        self._handle()

    def _handle(self) -> None:
        fake = self.server.fake
        length = int(self.headers.get("Content-Length") or 0)
        raw = self.rfile.read(length) if length else b""
        try:
            parsed = json.loads(raw) if raw else None
        except ValueError:
            parsed = None
        url = urlsplit(self.path)
        received = Received(
            method=self.command,
            path=url.path,
            query=parse_qs(url.query),
            headers={key.lower(): value for key, value in self.headers.items()},
            body=raw,
            json=parsed,
            at=datetime.now(tz=NAIROBI),
        )
        answer = fake._answer(received)
        if answer.delay:
            fake._stopping.wait(answer.delay)
        if answer.drop:
            self.close_connection = True
            return
        if isinstance(answer.body, bytes):
            payload = answer.body
        elif isinstance(answer.body, str):
            payload = answer.body.encode()
        elif answer.body is None:
            payload = b""
        else:
            payload = json.dumps(answer.body).encode()
        self.send_response(answer.status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(payload)))
        for key, value in answer.headers.items():
            self.send_header(key, value)
        self.end_headers()
        self.wfile.write(payload)


class FakeDaraja:
    """The fake server and its programmable state; thread-safe."""

    def __init__(
        self,
        *,
        consumer_key: str | None = None,
        consumer_secret: str = "fake-consumer-secret",
        shortcode: str = SANDBOX_SHORTCODE,
        passkey: str = SANDBOX_PASSKEY,
        initiator_name: str = "testapi",
        security_credential: str = "fake-security-credential",
    ) -> None:
        # A key per fake keeps each test's token cache key apart in the shared test Redis.
        self.consumer_key = consumer_key or f"fake-key-{uuid4().hex[:12]}"
        self.consumer_secret = consumer_secret
        self.shortcode = shortcode
        self.passkey = passkey
        self.initiator_name = initiator_name
        self.security_credential = security_credential
        self.token_expires_in: object = "3599"
        self.token_delay = 0.0
        self.received: list[Received] = []
        self.rejections: list[str] = []
        self.tokens_issued: list[str] = []
        self._valid_tokens: set[str] = set()
        self._scripts: dict[str, deque[Scripted]] = defaultdict(deque)
        self._lock = threading.Lock()
        self._ids = itertools.count(1)
        self._stopping = threading.Event()
        self._server: _Server | None = None
        self._thread: threading.Thread | None = None
        self._clients: list[DarajaClient] = []

    # ---- lifecycle

    def start(self) -> FakeDaraja:
        server = _Server(("127.0.0.1", 0), _Handler)
        server.fake = self
        self._server = server
        self._thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stopping.set()
        keys: list[str] = []
        for client in self._clients:
            keys += [client.token_cache_key, client.token_lock_key]
            client.close()
        if keys:
            cache = redis.Redis.from_url(settings.REDIS_URL)
            cache.delete(*keys)
            cache.close()
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
        if self._thread is not None:
            self._thread.join(timeout=5)

    def __enter__(self) -> FakeDaraja:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    @property
    def base_url(self) -> str:
        assert self._server is not None, "start the fake first"
        return f"http://127.0.0.1:{self._server.server_address[1]}"

    def client(self, **overrides: Any) -> DarajaClient:
        """A DarajaClient for this fake (fast backoff), closed and its Redis keys removed at stop()."""
        options: dict[str, Any] = {
            "base_url": self.base_url,
            "consumer_key": self.consumer_key,
            "consumer_secret": self.consumer_secret,
            "shortcode": self.shortcode,
            "passkey": self.passkey,
            "initiator_name": self.initiator_name,
            "security_credential": self.security_credential,
            "redis_url": settings.REDIS_URL,
            "backoff": 0.01,
        }
        options.update(overrides)
        client = DarajaClient(**options)
        self._clients.append(client)
        return client

    # ---- programming and inspecting

    def script(
        self,
        path: str,
        *,
        status: int = 200,
        body: object = None,
        delay: float = 0.0,
        drop: bool = False,
        headers: dict[str, str] | None = None,
        times: int = 1,
    ) -> None:
        """Queue `times` answers for `path`, used before the default behaviour (no token check)."""
        with self._lock:
            for _ in range(times):
                self._scripts[path].append(Scripted(status, body, delay, drop, dict(headers or {})))

    def requests_to(self, path: str) -> list[Received]:
        with self._lock:
            return [r for r in self.received if r.path == path]

    @property
    def token_requests(self) -> int:
        return len(self.requests_to(OAUTH))

    def invalidate_tokens(self) -> None:
        """As if the token expired early, or another holder of the app's keys generated a new one."""
        with self._lock:
            self._valid_tokens.clear()

    # ---- answering

    def _answer(self, received: Received) -> Scripted:
        with self._lock:
            self.received.append(received)
            queue = self._scripts.get(received.path)
            if queue:
                return queue.popleft()
            return self._default(received)

    def _new_id(self) -> int:
        return next(self._ids)

    def _refuse(self, problems: list[str]) -> Scripted:
        self.rejections.extend(problems)
        return Scripted(
            400,
            {
                "requestId": f"{self._new_id()}-fake",
                "errorCode": "400.002.02",
                "errorMessage": f"Bad Request - Invalid {problems[0]}",
            },
        )

    def _default(self, received: Received) -> Scripted:
        if received.path == OAUTH:
            return self._oauth(received)
        checks: dict[str, Callable[[dict[str, Any]], list[str]]] = {
            STK_PUSH: self._check_stk_push,
            STK_QUERY: self._check_stk_query,
            C2B_REGISTER_V1: self._check_c2b_register,
            C2B_REGISTER_V2: self._check_c2b_register,
            TRANSACTION_STATUS: self._check_initiator_call,
            REVERSAL: self._check_initiator_call,
            ACCOUNT_BALANCE: self._check_initiator_call,
        }
        if received.path not in checks:
            return Scripted(404, {"requestId": "", "errorCode": "404.001.01", "errorMessage": "Resource not found"})
        if received.method != "POST":
            return Scripted(405, {"requestId": "", "errorCode": "405.001", "errorMessage": "Method not allowed"})
        if received.bearer is None or received.bearer not in self._valid_tokens:
            return Scripted(401, dict(INVALID_TOKEN_BODY))
        body = received.json
        if not isinstance(body, dict):
            return self._refuse(["body"])
        problems = self._check_fields(received.path, body) + checks[received.path](body)
        if problems:
            return self._refuse(problems)
        return Scripted(200, self._success(received.path, body))

    def _oauth(self, received: Received) -> Scripted:
        expected = base64.b64encode(f"{self.consumer_key}:{self.consumer_secret}".encode()).decode()
        if received.method != "GET" or received.query.get("grant_type") != ["client_credentials"]:
            return Scripted(
                400, {"requestId": "", "errorCode": "400.008.02", "errorMessage": "Invalid grant type passed"}
            )
        if received.headers.get("authorization") != f"Basic {expected}":
            return Scripted(
                400, {"requestId": "", "errorCode": "400.008.01", "errorMessage": "Invalid Authentication passed"}
            )
        token = f"fake-token-{self._new_id()}-{uuid4().hex[:8]}"
        self.tokens_issued.append(token)
        self._valid_tokens = {token}  # a new token invalidates the previous one, as on Daraja
        body = load_sample("01_oauth_token_response_v2doc_expires_in_string.json")
        body["access_token"] = token
        body["expires_in"] = self.token_expires_in
        return Scripted(200, body, delay=self.token_delay)

    def _success(self, path: str, body: dict[str, Any]) -> object:
        n = self._new_id()
        if path == STK_PUSH:
            answer = load_sample("02_stk_push_sync_response_success.json")
            answer["MerchantRequestID"] = f"{n}-fake-merchant"
            answer["CheckoutRequestID"] = f"ws_CO_FAKE{n:010d}"
            return answer
        if path == STK_QUERY:
            answer = load_sample("04_stk_query_response_success.json")
            answer["CheckoutRequestID"] = body["CheckoutRequestID"]
            return answer
        if path in (C2B_REGISTER_V1, C2B_REGISTER_V2):
            return load_sample("05_c2b_register_url_response.json")
        answer = load_sample("08_transaction_status_sync_response.json")
        answer["ConversationID"] = f"AG_FAKE_{n:08d}"
        answer["OriginatorConversationID"] = f"{n}-fake-originator"
        return answer

    # ---- Daraja's checks

    def _check_fields(self, path: str, body: dict[str, Any]) -> list[str]:
        sample = REQUEST_SAMPLES.get(path)
        expected = set(load_sample(sample)) if sample else set(ACCOUNT_BALANCE_FIELDS)
        optional = {"Occasion"} if path == REVERSAL else set()
        missing = expected - set(body)
        unknown = set(body) - expected - optional
        return [f"fields: missing {sorted(missing)} unknown {sorted(unknown)}"] if missing or unknown else []

    def _check_password(self, body: dict[str, Any]) -> list[str]:
        timestamp = body.get("Timestamp")
        if not isinstance(timestamp, str) or not re.fullmatch(r"[0-9]{14}", timestamp):
            return ["Timestamp"]
        try:
            sent = datetime.strptime(timestamp, "%Y%m%d%H%M%S").replace(tzinfo=NAIROBI)
        except ValueError:
            return ["Timestamp"]
        if abs(datetime.now(tz=NAIROBI) - sent) > timedelta(minutes=5):
            return ["Timestamp (not Nairobi time now)"]
        shortcode = str(body.get("BusinessShortCode"))
        password = base64.b64encode(f"{shortcode}{self.passkey}{timestamp}".encode()).decode()
        problems = [] if body.get("Password") == password else ["Password"]
        if shortcode != self.shortcode:
            problems.append("BusinessShortCode")
        return problems

    @staticmethod
    def _check_url(value: object, name: str) -> list[str]:
        if not isinstance(value, str):
            return [name]
        url = urlsplit(value)
        local_http = url.scheme == "http" and url.hostname in ("127.0.0.1", "localhost")
        if url.scheme != "https" and not local_http:
            return [f"{name} (https required)"]
        if any(word in value.lower() for word in CALLBACK_WORDS):
            return [f"{name} (forbidden word)"]
        return []

    @staticmethod
    def _check_text(value: object, name: str, max_length: int) -> list[str]:
        ok = isinstance(value, str) and 0 < len(value) <= max_length
        return [] if ok else [name]

    def _check_stk_push(self, body: dict[str, Any]) -> list[str]:
        problems = self._check_password(body)
        if body.get("TransactionType") not in ("CustomerPayBillOnline", "CustomerBuyGoodsOnline"):
            problems.append("TransactionType")
        amount = str(body.get("Amount"))
        if not re.fullmatch(r"[0-9]{1,6}", amount) or not 1 <= int(amount) <= 250_000:
            problems.append("Amount")
        for name in ("PartyA", "PhoneNumber"):
            if not re.fullmatch(r"254[17][0-9]{8}", str(body.get(name))):
                problems.append(name)
        if not re.fullmatch(r"[0-9]{5,7}", str(body.get("PartyB"))):
            problems.append("PartyB")
        problems += self._check_url(body.get("CallBackURL"), "CallBackURL")
        problems += self._check_text(body.get("AccountReference"), "AccountReference", 12)
        problems += self._check_text(body.get("TransactionDesc"), "TransactionDesc", 13)
        return problems

    def _check_stk_query(self, body: dict[str, Any]) -> list[str]:
        return self._check_password(body) + self._check_text(body.get("CheckoutRequestID"), "CheckoutRequestID", 100)

    def _check_c2b_register(self, body: dict[str, Any]) -> list[str]:
        problems = [] if body.get("ShortCode") == self.shortcode else ["ShortCode"]
        if body.get("ResponseType") not in ("Completed", "Cancelled"):
            problems.append("ResponseType")
        problems += self._check_url(body.get("ConfirmationURL"), "ConfirmationURL")
        problems += self._check_url(body.get("ValidationURL"), "ValidationURL")
        return problems

    def _check_initiator_call(self, body: dict[str, Any]) -> list[str]:
        problems = []
        if body.get("Initiator") != self.initiator_name:
            problems.append("Initiator")
        if body.get("SecurityCredential") != self.security_credential:
            problems.append("SecurityCredential")
        if body.get("CommandID") not in ("TransactionStatusQuery", "TransactionReversal", "AccountBalance"):
            problems.append("CommandID")
        if "PartyA" in body and body["PartyA"] != self.shortcode:
            problems.append("PartyA")
        if "Amount" in body and not re.fullmatch(r"[1-9][0-9]*", str(body["Amount"])):
            problems.append("Amount")
        if "RecieverIdentifierType" in body and body["RecieverIdentifierType"] != "11":
            problems.append("RecieverIdentifierType")
        problems += self._check_url(body.get("ResultURL"), "ResultURL")
        problems += self._check_url(body.get("QueueTimeOutURL"), "QueueTimeOutURL")
        problems += self._check_text(body.get("Remarks"), "Remarks", 100)
        return problems


@pytest.fixture(name="fake_daraja")
def fake_daraja_fixture() -> Iterator[FakeDaraja]:
    """A started FakeDaraja, shut down (and its clients' Redis keys removed) after the test."""
    with FakeDaraja() as fake:
        yield fake

"""Daraja's callbacks: authenticate by the till's token, store the raw body, enqueue, answer at once.

Nothing else happens in the request (docs/mpesa.md, "The path of one callback"): one query finds the till, one
INSERT ... ON CONFLICT DO NOTHING stores the body (a duplicate is a no-op), and a new row's id is
handed to a background publisher for the payments queue (publisher._Publisher): the answer never
waits for Redis, and whatever Redis does not get, the sweeper sends later. Parsing goes
no further than the Daraja id, except for C2B validation, whose answer depends on the payment.
When PostgreSQL refuses the till lookup or the INSERT, the raw request is written to the local
spool (spool.py) and Daraja gets its usual answer: it never resends a callback answered with an error.
"""

from __future__ import annotations

import ipaddress
import json
import logging
import time
from collections.abc import Mapping
from decimal import Decimal
from typing import Any

from django.http import Http404, HttpRequest, HttpResponse
from django.views.decorators.csrf import csrf_exempt
from django.views.decorators.http import require_POST

from integrations.mpesa import conf
from integrations.mpesa.inbox import PAYLOAD_KIND, inbox_store, malformed_id
from integrations.mpesa.matching import resolve_reference
from integrations.mpesa.models import InboxKind, InboxState, Till
from integrations.mpesa.payloads import (
    PayloadError,
    c2b_validation_accept,
    c2b_validation_reject,
    callback_ack,
    callback_unique_id,
    parse_c2b_validation,
)
from integrations.mpesa.publisher import inbox_enqueue_soon
from integrations.mpesa.spool import DB_DOWN, SpoolError, import_after_recovery, spool_write, token_known

logger = logging.getLogger(__name__)

ACK = json.dumps(callback_ack()).encode()
ACCEPTED = json.dumps({"ResultCode": 0, "ResultDesc": "Accepted"}).encode()
VALIDATION_ACCEPT = json.dumps(c2b_validation_accept()).encode()
RESULT_KINDS = {"status": "status", "reversal": "reversal", "balance": "balance"}
# Headers worth keeping with the body (no cookies or credentials are expected from Daraja).
_SKIP_HEADERS = {"cookie", "authorization"}
TOKEN_MAX_LENGTH = Till._meta.get_field("callback_token").max_length or 64


def _json(body: bytes) -> HttpResponse:
    return HttpResponse(body, content_type="application/json")


# token -> (expires at, till): saves a query per callback. A till deactivated or whose allowlist
# or limits change is seen within TILL_CACHE_SECONDS by every web process.
TILL_CACHE_SECONDS = 30.0
_till_cache: dict[str, tuple[float, Till | None]] = {}
# Tokens this process found to be an active till's, until a lookup says otherwise: with the database
# down, a callback is spooled only for these or those in the spool's KNOWN_TILLS list (spool.py).
# Only real tills' tokens get in, so it holds at most as many tokens as there are tills.
_known_tokens: set[str] = set()


def _till(token: str) -> Till:
    if len(token) > TOKEN_MAX_LENGTH or "\x00" in token:
        # No till has such a token, and PostgreSQL refuses a NUL in a query parameter (a 500, not a 404).
        raise Http404("unknown callback URL")
    now = time.monotonic()
    cached = _till_cache.get(token)
    if cached is not None and cached[0] > now:
        till = cached[1]
    else:
        till = (
            Till.objects.filter(callback_token=token, is_active=True)
            .only("id", "business_id", "allowed_ips", "min_amount", "max_amount", "validate_account_reference")
            .first()
        )
        if len(_till_cache) > 1000:  # unknown tokens must not grow it without bound
            _till_cache.clear()
        _till_cache[token] = (now + TILL_CACHE_SECONDS, till)
        if till is None:
            _known_tokens.discard(token)
        else:
            _known_tokens.add(token)
    if till is None:
        raise Http404("unknown callback URL")
    return till


def source_ip(request: HttpRequest) -> str | None:
    """REMOTE_ADDR, or the first X-Forwarded-For hop when the proxy in front is trusted."""
    if conf.trust_x_forwarded_for():
        forwarded = request.META.get("HTTP_X_FORWARDED_FOR", "")
        first = forwarded.split(",")[0].strip()
        if first:
            try:
                return str(ipaddress.ip_address(first))
            except ValueError:
                pass
    remote = request.META.get("REMOTE_ADDR") or None
    try:
        return str(ipaddress.ip_address(remote)) if remote else None
    except ValueError:
        return None


def ip_allowed(allowed: str, ip: str | None) -> bool:
    """Whether `ip` is in the till's allowlist (empty list: every address)."""
    entries = [item.strip() for item in allowed.replace("\n", ",").split(",") if item.strip()]
    if not entries:
        return True
    if ip is None:
        return False
    address = ipaddress.ip_address(ip)
    for entry in entries:
        try:
            if address in ipaddress.ip_network(entry, strict=False):
                return True
        except ValueError:
            logger.warning("ignoring invalid allowlist entry %r", entry)
    return False


def _headers(request: HttpRequest) -> dict[str, str]:
    return {k: v for k, v in request.headers.items() if k.lower() not in _SKIP_HEADERS}


def callback_store(
    *, till: Till, kind: str, body: bytes, headers: Mapping[str, str], remote_addr: str | None, outcome: str = ""
) -> tuple[int | None, str]:
    """Store one callback of `till`; (new row id or None for a duplicate, state it was stored in).

    The view's rules, shared with the spool import: Daraja's id (or `malformed:<sha256>` and "needs a
    person"), the allowlist, and C2B validations stored already processed with their decision.
    """
    validation = kind == InboxKind.C2B_VALIDATION
    state, error = (InboxState.PROCESSED if validation else InboxState.RECEIVED), ""
    try:
        daraja_id = callback_unique_id(PAYLOAD_KIND[kind], body)
    except PayloadError as exc:
        daraja_id = malformed_id(body)
        state, error = InboxState.NEEDS_ATTENTION, f"malformed body: {exc}"
        logger.warning("malformed %s callback on till %s stored as %s: %s", kind, till.pk, daraja_id, exc)
    if not ip_allowed(till.allowed_ips, remote_addr):
        state, error = InboxState.NEEDS_ATTENTION, f"source address {remote_addr} is not in the till's allowlist"
        logger.warning(
            "%s callback for till %s from unknown address %s: stored, not processed", kind, till.pk, remote_addr
        )
    inbox_id = inbox_store(
        till_id=till.pk,
        kind=kind,
        daraja_id=daraja_id,
        body=body,
        headers=headers,
        remote_addr=remote_addr,
        state=state,
        error=error,
        outcome=outcome,
    )
    return inbox_id, state


def _spool(request: HttpRequest, token: str, kind: str, failure: Exception, outcome: str = "") -> None:
    """Keep a callback the database refused in the local spool (spool.py); re-raise if even that fails."""
    if len(token) > TOKEN_MAX_LENGTH:
        raise Http404("unknown callback URL")  # no till has such a token: not worth a file
    if token not in _known_tokens and not token_known(token):
        # What the view answers such a token with the database up; junk cannot fill the disk.
        logger.warning(
            "database unavailable (%r): %s callback for a token not known to be a till's, not kept", failure, kind
        )
        raise Http404("unknown callback URL")
    try:
        path = spool_write(
            token=token,
            kind=kind,
            body=request.body,
            headers=_headers(request),
            remote_addr=source_ip(request),
            outcome=outcome,
        )
    except SpoolError as exc:
        logger.error("%s callback lost: the database refused it (%r) and the spool too (%s)", kind, failure, exc)
        raise failure from exc
    logger.warning("database unavailable (%r): %s callback spooled as %s", failure, kind, path.name)


def _receive(request: HttpRequest, token: str, kind: str) -> None:
    """Store the callback and enqueue it; spool it if the database is down."""
    try:
        till = _till(token)
        inbox_id, state = callback_store(
            till=till,
            kind=kind,
            body=request.body,
            headers=_headers(request),
            remote_addr=source_ip(request),
        )
    except DB_DOWN as exc:
        _spool(request, token, kind, exc)
        return
    if inbox_id is not None and state == InboxState.RECEIVED:
        inbox_enqueue_soon(inbox_id)
    import_after_recovery()


@csrf_exempt
@require_POST
def stk_callback(request: HttpRequest, token: str) -> HttpResponse:
    _receive(request, token, InboxKind.STK_CALLBACK)
    return _json(ACK)


@csrf_exempt
@require_POST
def c2b_confirmation(request: HttpRequest, token: str) -> HttpResponse:
    _receive(request, token, InboxKind.C2B_CONFIRMATION)
    return _json(ACK)


@csrf_exempt
@require_POST
def result_callback(request: HttpRequest, token: str, kind: str) -> HttpResponse:
    if kind not in RESULT_KINDS:
        raise Http404("unknown result kind")
    _receive(request, token, f"result_{kind}")
    return _json(ACCEPTED)


@csrf_exempt
@require_POST
def timeout_callback(request: HttpRequest, token: str, kind: str) -> HttpResponse:
    if kind not in RESULT_KINDS:
        raise Http404("unknown timeout kind")
    _receive(request, token, f"timeout_{kind}")
    return _json(ACCEPTED)


def validation_decision(till: Till, body: bytes) -> tuple[dict[str, Any], str]:
    """(answer, why) for a C2B validation request, by the till's rules.

    C2B00013 when the amount is outside the till's limits; C2B00012 when the till asks for a known
    account reference and none matches. A body we cannot read is accepted (and flagged): refusing
    would block customers' payments because of our parser.
    """
    try:
        tx = parse_c2b_validation(body)
    except PayloadError as exc:
        return c2b_validation_accept(), f"accepted unread: {exc}"
    amount: Decimal = tx.amount
    if not till.min_amount <= amount <= till.max_amount:
        return c2b_validation_reject(
            "C2B00013"
        ), f"rejected C2B00013: {amount} outside {till.min_amount}-{till.max_amount}"
    if till.validate_account_reference and resolve_reference(till.business, tx.bill_ref_number) is None:
        return c2b_validation_reject("C2B00012"), f"rejected C2B00012: unknown account {tx.bill_ref_number!r}"
    return c2b_validation_accept(), "accepted"


@csrf_exempt
@require_POST
def c2b_validation(request: HttpRequest, token: str) -> HttpResponse:
    """Answer with the decision; the row is stored already processed (there is nothing to post).

    With the database down the till's rules cannot be read, and the payment is accepted: the
    confirmation that follows is spooled too and reaches the books once the database is back
    (an amount outside the limits or an unknown account then lands in suspense for a person, and
    can be reversed), whereas a refusal or no answer would turn a customer's payment away.
    """
    answer, why = c2b_validation_accept(), "accepted unchecked: the database was unavailable"
    try:
        till = _till(token)
        answer, why = validation_decision(till, request.body)
        callback_store(
            till=till,
            kind=InboxKind.C2B_VALIDATION,
            body=request.body,
            headers=_headers(request),
            remote_addr=source_ip(request),
            outcome=why,
        )
    except DB_DOWN as exc:
        _spool(request, token, InboxKind.C2B_VALIDATION, exc, outcome=why)
    else:
        import_after_recovery()
    return _json(json.dumps(answer).encode())

"""Tills: their callback URLs, their Daraja client, URL registration and stored credentials."""

from __future__ import annotations

import logging
from typing import Any

from django.db import transaction

from integrations.mpesa import conf
from integrations.mpesa.client import PRODUCTION_BASE_URL, SANDBOX_BASE_URL, DarajaClient
from integrations.mpesa.exceptions import DarajaError, DarajaUnavailable, InvalidRequest
from integrations.mpesa.models import DarajaEnvironment, Till, TillKind
from integrations.mpesa.payloads import C2BRegisterResponse
from integrations.mpesa.secrets import SecretUnreadable, encrypt, reencrypt, till_credentials

logger = logging.getLogger(__name__)


def till_callback_urls(till: Till, *, base_url: str = "") -> dict[str, str]:
    """The full callback URLs of a till (what the owner registers with Safaricom), by name."""
    base = (base_url or till.callback_base_url or conf.callback_base_url()).rstrip("/")
    if not base:
        raise InvalidRequest(f"till {till} has no callback base URL (set it on the till or MPESA_CALLBACK_BASE_URL)")
    root = f"{base}/daraja/{till.callback_token}"
    urls = {
        "stk": f"{root}/stk/",
        "c2b_validation": f"{root}/c2b/validate/",
        "c2b_confirmation": f"{root}/c2b/confirm/",
    }
    for kind in ("status", "reversal", "balance"):
        urls[f"result_{kind}"] = f"{root}/result/{kind}/"
        urls[f"timeout_{kind}"] = f"{root}/timeout/{kind}/"
    return urls


def daraja_client_for(till: Till) -> DarajaClient:
    """A client with the till's credentials; base URL by its environment unless MPESA_BASE_URL overrides."""
    from django.conf import settings

    creds = till_credentials(till)
    base = conf.base_url_override() or (
        PRODUCTION_BASE_URL if till.environment == DarajaEnvironment.PRODUCTION else SANDBOX_BASE_URL
    )
    signing = till.store_number if till.kind == TillKind.TILL and till.store_number else till.shortcode
    try:
        return DarajaClient(
            base_url=base,
            consumer_key=creds.consumer_key,
            consumer_secret=creds.consumer_secret,
            shortcode=signing,
            passkey=creds.passkey,
            initiator_name=creds.initiator_name,
            security_credential=creds.security_credential,
            redis_url=settings.REDIS_URL,
        )
    except DarajaError as exc:
        raise DarajaUnavailable(f"till {till}: {exc}") from exc


def till_register_urls(*, till: Till, acting_user: Any, version: str = "v1") -> C2BRegisterResponse:
    """Register the till's C2B validation and confirmation URLs with Daraja (v1: hashed MSISDN).

    Idempotent at Daraja (registering again replaces). Raises DarajaUnavailable with Daraja's message.
    """
    urls = till_callback_urls(till)
    client = daraja_client_for(till)
    try:
        answer = client.c2b_register_urls(
            confirmation_url=urls["c2b_confirmation"],
            validation_url=urls["c2b_validation"],
            version="v2" if version == "v2" else "v1",
        )
    except (DarajaError, ValueError) as exc:
        raise DarajaUnavailable(f"registering the URLs of {till} failed: {exc}") from exc
    finally:
        client.close()
    logger.info("C2B URLs of till %s registered by %s: %s", till.pk, acting_user, answer.response_description)
    return answer


def till_set_credentials(
    *,
    till: Till,
    consumer_key: str = "",
    consumer_secret: str = "",
    passkey: str = "",
    security_credential: str = "",
) -> list[str]:
    """Encrypt and store the credentials given (blank = keep the stored one). Returns the fields changed.

    Does not save the till: the caller (the admin form) saves it with its other fields.
    """
    changed = []
    for name, value in (
        ("consumer_key", consumer_key),
        ("consumer_secret", consumer_secret),
        ("passkey", passkey),
        ("security_credential", security_credential),
    ):
        if value:
            setattr(till, f"{name}_encrypted", encrypt(value.strip()))
            changed.append(f"{name}_encrypted")
    return changed


ENCRYPTED_CREDENTIAL_FIELDS = (
    "consumer_key_encrypted",
    "consumer_secret_encrypted",
    "passkey_encrypted",
    "security_credential_encrypted",
)


def till_credentials_reencrypt() -> tuple[int, list[tuple[int, str]]]:
    """Encrypt every stored till credential with the first MPESA_ENCRYPTION_KEY (key rotation).

    Returns (credentials rewritten, [(till id, field) that no key can read]). One transaction with the
    tills locked, so a crash leaves every credential as it was (still readable: the old keys stay
    configured until this has run). Idempotent: a credential already under the first key is not
    rewritten, so a second run reports 0. An unreadable credential is left as it is and reported
    (enter it again in the till's form); the others are still moved.
    """
    rewritten = 0
    unreadable: list[tuple[int, str]] = []
    with transaction.atomic():
        for till in Till.objects.select_for_update().order_by("pk"):
            changed = []
            for field in ENCRYPTED_CREDENTIAL_FIELDS:
                try:
                    fresh = reencrypt(getattr(till, field))
                except SecretUnreadable:
                    unreadable.append((till.pk, field))
                    continue
                if fresh is not None:
                    setattr(till, field, fresh)
                    changed.append(field)
            if changed:
                till.save(update_fields=changed)
                rewritten += len(changed)
    if rewritten or unreadable:
        logger.info("till credentials re-encrypted: %s rewritten, %s unreadable", rewritten, len(unreadable))
    return rewritten, unreadable

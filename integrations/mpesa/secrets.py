"""Till credentials at rest: Fernet encryption (AES-128-CBC + HMAC-SHA256, from `cryptography`).

The keys are settings.MPESA_ENCRYPTION_KEYS, from MPESA_ENCRYPTION_KEY in the environment: Fernet
keys (`Fernet.generate_key()`), comma-separated. The first encrypts; every one decrypts (MultiFernet),
so a key is rotated by putting a new one first, running `manage.py mpesa_reencrypt`, then dropping the
old one (docs/deploy.md). Production refuses to start without a key (settings.py); they are
independent of SECRET_KEY, which can be rotated freely.

Development without a key (and the test run) uses a key derived from SECRET_KEY with HKDF-SHA256 -
the only key before MPESA_ENCRYPTION_KEY was read. `mpesa_reencrypt` also reads ciphertext made with
that derived key, so an install that had none moves to its new key with one command.

Alternatively a till reads its credentials from environment variables (Till.credentials_env_prefix)
and nothing secret is stored in the database at all.
"""

from __future__ import annotations

import base64
import os
from dataclasses import dataclass
from typing import TYPE_CHECKING

from django.conf import settings

if TYPE_CHECKING:
    from cryptography.fernet import Fernet, MultiFernet

    from integrations.mpesa.models import Till

_HKDF_INFO = b"backoffice mpesa till credentials v1"


class SecretUnreadable(Exception):  # noqa: N818 - reads as the condition it reports
    """A stored credential cannot be decrypted (the key changed): enter it again."""


def configured_keys() -> list[str]:
    """settings.MPESA_ENCRYPTION_KEYS (a list, or a comma-separated string where a test sets one)."""
    keys = getattr(settings, "MPESA_ENCRYPTION_KEYS", None) or []
    if isinstance(keys, str):
        keys = keys.split(",")
    return [key.strip() for key in keys if key and key.strip()]


def derived_key() -> bytes:
    """The Fernet key derived from SECRET_KEY: development's key, and the one installs used before."""
    # cryptography (its Rust bindings: ~8 MiB) is imported on first use, not at module level: every
    # Celery worker imports this module at start (through the services), and only the tasks that call
    # Daraja read a credential (docs/worker-memory.md).
    from cryptography.hazmat.primitives import hashes
    from cryptography.hazmat.primitives.kdf.hkdf import HKDF

    derived = HKDF(algorithm=hashes.SHA256(), length=32, salt=None, info=_HKDF_INFO).derive(
        settings.SECRET_KEY.encode()
    )
    return base64.urlsafe_b64encode(derived)


def _keys(*, with_derived: bool = False) -> list[Fernet]:
    from cryptography.fernet import Fernet  # see derived_key

    keys = [Fernet(key.encode()) for key in configured_keys()]
    if not keys or with_derived:
        keys.append(Fernet(derived_key()))
    return keys


def _fernet() -> MultiFernet:
    from cryptography.fernet import MultiFernet  # see derived_key

    return MultiFernet(_keys())


def encrypt(plaintext: str) -> str:
    """Ciphertext (text) of a credential; "" stays "" (not set)."""
    if not plaintext:
        return ""
    return _fernet().encrypt(plaintext.encode()).decode()


def decrypt(ciphertext: str) -> str:
    if not ciphertext:
        return ""
    from cryptography.fernet import InvalidToken  # see _fernet

    try:
        return _fernet().decrypt(ciphertext.encode()).decode()
    except InvalidToken as exc:
        raise SecretUnreadable(
            "a stored M-Pesa credential cannot be decrypted with any MPESA_ENCRYPTION_KEY (was its key removed "
            "before `manage.py mpesa_reencrypt` ran?); enter the till's credentials again"
        ) from exc


def reencrypt(ciphertext: str) -> str | None:
    """`ciphertext` encrypted with the first key, or None when it already is (nothing to write).

    Reads ciphertext made with any configured key or with the key derived from SECRET_KEY (installs
    from before MPESA_ENCRYPTION_KEY was read). Raises SecretUnreadable when none decrypts it.
    """
    if not ciphertext:
        return None
    from cryptography.fernet import InvalidToken, MultiFernet  # see derived_key

    keys = _keys(with_derived=True)
    try:
        keys[0].decrypt(ciphertext.encode())
        return None
    except InvalidToken:
        pass
    try:
        # rotate(): decrypt with any key, encrypt with the first (keeps the original timestamp).
        return MultiFernet(keys).rotate(ciphertext.encode()).decode()
    except InvalidToken as exc:
        raise SecretUnreadable("a stored M-Pesa credential cannot be decrypted with any key") from exc


@dataclass(frozen=True)
class TillCredentials:
    consumer_key: str
    consumer_secret: str
    passkey: str
    initiator_name: str
    security_credential: str

    def __repr__(self) -> str:  # never print secrets in logs or tracebacks
        return f"TillCredentials(consumer_key={'set' if self.consumer_key else 'unset'}, ...)"


ENV_SUFFIXES = ("CONSUMER_KEY", "CONSUMER_SECRET", "PASSKEY", "INITIATOR_NAME", "SECURITY_CREDENTIAL")


def till_credentials(till: Till) -> TillCredentials:
    """The till's credentials, from its environment variables when it has a prefix, else decrypted."""
    prefix = till.credentials_env_prefix
    if prefix:
        return TillCredentials(
            consumer_key=os.environ.get(f"{prefix}CONSUMER_KEY", ""),
            consumer_secret=os.environ.get(f"{prefix}CONSUMER_SECRET", ""),
            passkey=os.environ.get(f"{prefix}PASSKEY", ""),
            initiator_name=os.environ.get(f"{prefix}INITIATOR_NAME", "") or till.initiator_name,
            security_credential=os.environ.get(f"{prefix}SECURITY_CREDENTIAL", ""),
        )
    return TillCredentials(
        consumer_key=decrypt(till.consumer_key_encrypted),
        consumer_secret=decrypt(till.consumer_secret_encrypted),
        passkey=decrypt(till.passkey_encrypted),
        initiator_name=till.initiator_name,
        security_credential=decrypt(till.security_credential_encrypted),
    )

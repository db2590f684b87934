"""Till credentials at rest: Fernet encryption (AES-128-CBC + HMAC-SHA256, from `cryptography`).

The key is settings.MPESA_ENCRYPTION_KEY (a Fernet key: `Fernet.generate_key()`, from the
environment). When it is not set, a key is derived from SECRET_KEY with HKDF-SHA256. That keeps a
fresh install working with no extra variable, at a cost: rotating SECRET_KEY makes the stored
credentials unreadable, and they must be entered again in the till form. Production should set
MPESA_ENCRYPTION_KEY (and may then rotate SECRET_KEY freely).

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
    from cryptography.fernet import Fernet

    from integrations.mpesa.models import Till

_HKDF_INFO = b"backoffice mpesa till credentials v1"


class SecretUnreadable(Exception):  # noqa: N818 - reads as the condition it reports
    """A stored credential cannot be decrypted (the key changed): enter it again."""


def _fernet() -> Fernet:
    # cryptography (its Rust bindings: ~8 MiB) is imported on first use, not at module level: every
    # Celery worker imports this module at start (through services), and only the tasks that call
    # Daraja read a credential (docs/worker-memory.md).
    from cryptography.fernet import Fernet
    from cryptography.hazmat.primitives import hashes
    from cryptography.hazmat.primitives.kdf.hkdf import HKDF

    configured = getattr(settings, "MPESA_ENCRYPTION_KEY", "") or ""
    if configured:
        return Fernet(configured.encode() if isinstance(configured, str) else configured)
    derived = HKDF(algorithm=hashes.SHA256(), length=32, salt=None, info=_HKDF_INFO).derive(
        settings.SECRET_KEY.encode()
    )
    return Fernet(base64.urlsafe_b64encode(derived))


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
            "a stored M-Pesa credential cannot be decrypted (MPESA_ENCRYPTION_KEY or SECRET_KEY changed); "
            "enter the till's credentials again"
        ) from exc


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

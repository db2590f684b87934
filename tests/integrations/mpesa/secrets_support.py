"""Till credentials that the fake Daraja accepts."""

from __future__ import annotations

from typing import Any

from integrations.mpesa.secrets import encrypt
from tests.integrations.mpesa.fake_daraja import SANDBOX_PASSKEY, FakeDaraja


def daraja_credentials(fake: FakeDaraja) -> dict[str, Any]:
    return {
        "consumer_key_encrypted": encrypt(fake.consumer_key),
        "consumer_secret_encrypted": encrypt(fake.consumer_secret),
        "passkey_encrypted": encrypt(SANDBOX_PASSKEY),
        "initiator_name": fake.initiator_name,
        "security_credential_encrypted": encrypt(fake.security_credential),
    }

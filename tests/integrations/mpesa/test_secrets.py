"""Till credentials at rest: MPESA_ENCRYPTION_KEY from the environment, several keys, rotation, mpesa_reencrypt."""

from __future__ import annotations

import os
import subprocess
import sys
from io import StringIO
from pathlib import Path
from typing import Any

import pytest
from cryptography.fernet import Fernet, InvalidToken
from django.core.management import CommandError, call_command

from integrations.mpesa import secrets
from integrations.mpesa.models import Till
from integrations.mpesa.secrets import SecretUnreadable, decrypt, encrypt
from tests.factories.mpesa import TillFactory

ROOT = Path(__file__).resolve().parents[3]
ENCRYPTED_CREDENTIAL_FIELDS = (
    "consumer_key_encrypted",
    "consumer_secret_encrypted",
    "passkey_encrypted",
    "security_credential_encrypted",
)


def new_key() -> str:
    return Fernet.generate_key().decode()


def readable_with(key: str, ciphertext: str) -> str:
    return Fernet(key.encode()).decrypt(ciphertext.encode()).decode()


def run_python(code: str, **env: str) -> subprocess.CompletedProcess[str]:
    """`code` in a new interpreter with Django set up on the given environment (no .env file read)."""
    environ = {key: value for key, value in os.environ.items() if key != "MPESA_ENCRYPTION_KEY"}
    environ.update({"DJANGO_SETTINGS_MODULE": "backoffice.settings", "DJANGO_ENV_FILE": ""})
    environ.update(env)
    return subprocess.run(
        [sys.executable, "-c", "import django; django.setup()\n" + code],
        cwd=ROOT,
        env=environ,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


# ----------------------------------------------------------------------------------- settings


def test_the_key_in_the_environment_encrypts() -> None:
    key = new_key()
    result = run_python(
        "from integrations.mpesa.secrets import encrypt; print(encrypt('the-consumer-secret'))",
        DJANGO_DEBUG="0",
        DJANGO_SECRET_KEY="a-production-secret-key-for-this-test",
        MPESA_ENCRYPTION_KEY=key,
        LEDGER_ANCHOR_KEY="a-ledger-anchor-key-for-this-test-0123456789",
    )
    assert result.returncode == 0, result.stderr
    assert readable_with(key, result.stdout.strip()) == "the-consumer-secret"


def test_production_refuses_to_start_without_a_key() -> None:
    result = run_python("", DJANGO_DEBUG="0", DJANGO_SECRET_KEY="a-production-secret-key-for-this-test")
    assert result.returncode != 0
    assert "ImproperlyConfigured" in result.stderr
    assert "MPESA_ENCRYPTION_KEY must be set" in result.stderr


def test_a_malformed_key_stops_the_start_without_showing_it() -> None:
    result = run_python("", DJANGO_DEBUG="1", MPESA_ENCRYPTION_KEY=f"{new_key()},not-a-fernet-key")
    assert result.returncode != 0
    assert "MPESA_ENCRYPTION_KEY: key 2 is not a Fernet key" in result.stderr
    assert "not-a-fernet-key" not in result.stderr


def test_development_starts_without_a_key() -> None:
    result = run_python("from integrations.mpesa.secrets import encrypt, decrypt; print(decrypt(encrypt('x')))")
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "x"


def test_several_keys_are_read_comma_separated() -> None:
    first, second = new_key(), new_key()
    result = run_python(
        "from django.conf import settings; print(settings.MPESA_ENCRYPTION_KEYS)",
        MPESA_ENCRYPTION_KEY=f" {first} , {second} ",
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == str([first, second])


# ------------------------------------------------------------------------------------ keys


def test_old_ciphertext_stays_readable_after_a_new_first_key(settings: Any) -> None:
    old, new = new_key(), new_key()
    settings.MPESA_ENCRYPTION_KEYS = [old]
    stored = encrypt("passkey-1")
    settings.MPESA_ENCRYPTION_KEYS = [new, old]
    assert decrypt(stored) == "passkey-1"
    fresh = encrypt("passkey-2")
    assert readable_with(new, fresh) == "passkey-2"
    with pytest.raises(InvalidToken):
        readable_with(old, fresh)
    settings.MPESA_ENCRYPTION_KEYS = [new]  # the old key dropped before re-encrypting: unreadable
    with pytest.raises(SecretUnreadable):
        decrypt(stored)


def test_rotating_the_secret_key_no_longer_breaks_decryption(settings: Any) -> None:
    settings.MPESA_ENCRYPTION_KEYS = [new_key()]
    stored = encrypt("consumer-secret")
    settings.SECRET_KEY = "a-brand-new-secret-key-after-rotation"
    assert decrypt(stored) == "consumer-secret"


def test_without_a_key_development_derives_one_from_the_secret_key(settings: Any) -> None:
    from integrations.mpesa.secrets import derived_key

    settings.MPESA_ENCRYPTION_KEYS = []
    assert readable_with(derived_key().decode(), encrypt("dev")) == "dev"


# ---------------------------------------------------------------------------------- mpesa_reencrypt


def _ciphertexts(till: Till) -> dict[str, str]:
    till.refresh_from_db()
    return {field: getattr(till, field) for field in ENCRYPTED_CREDENTIAL_FIELDS}


def _reencrypt(*args: str) -> tuple[str, str]:
    out, err = StringIO(), StringIO()
    call_command("mpesa_reencrypt", *args, stdout=out, stderr=err)
    return out.getvalue(), err.getvalue()


@pytest.mark.django_db
def test_reencrypt_moves_every_credential_to_the_first_key(settings: Any) -> None:
    old, new = new_key(), new_key()
    settings.MPESA_ENCRYPTION_KEYS = [old]
    under_old = TillFactory.create()
    settings.MPESA_ENCRYPTION_KEYS = []  # an install from before MPESA_ENCRYPTION_KEY was read
    legacy = TillFactory.create(passkey_encrypted="")
    settings.MPESA_ENCRYPTION_KEYS = [new, old]
    already_new = TillFactory.create()
    untouched = _ciphertexts(already_new)

    out, err = _reencrypt()

    assert "7 till credential(s) re-encrypted" in out and err == ""
    for till in (under_old, legacy):
        stored = _ciphertexts(till)
        assert readable_with(new, stored["consumer_key_encrypted"]) == "test-consumer-key"
        assert readable_with(new, stored["consumer_secret_encrypted"]) == "test-consumer-secret"
        assert readable_with(new, stored["security_credential_encrypted"]) == "test-credential"
    assert readable_with(new, _ciphertexts(under_old)["passkey_encrypted"]) == "test-passkey"
    assert _ciphertexts(legacy)["passkey_encrypted"] == ""  # not set stays not set
    assert _ciphertexts(already_new) == untouched

    # The old key can go now; a second run has nothing to do.
    settings.MPESA_ENCRYPTION_KEYS = [new]
    before = {till.pk: _ciphertexts(till) for till in (under_old, legacy, already_new)}
    out, _ = _reencrypt()
    assert "0 till credential(s) re-encrypted" in out
    assert {till.pk: _ciphertexts(till) for till in (under_old, legacy, already_new)} == before
    assert secrets.till_credentials(under_old).passkey == "test-passkey"


@pytest.mark.django_db
def test_reencrypt_reports_what_no_key_reads_and_moves_the_rest(settings: Any) -> None:
    lost, new = new_key(), new_key()
    settings.MPESA_ENCRYPTION_KEYS = [new_key()]
    till = TillFactory.create(passkey_encrypted=Fernet(lost.encode()).encrypt(b"lost").decode())
    unreadable = till.passkey_encrypted
    settings.MPESA_ENCRYPTION_KEYS = [new, *settings.MPESA_ENCRYPTION_KEYS]

    out, err = _reencrypt()
    assert "3 till credential(s) re-encrypted" in out
    assert f"till {till.pk}: passkey_encrypted cannot be decrypted" in err
    stored = _ciphertexts(till)
    assert stored["passkey_encrypted"] == unreadable
    assert readable_with(new, stored["consumer_key_encrypted"]) == "test-consumer-key"

    with pytest.raises(CommandError, match="1 credential"):
        _reencrypt("--strict")


@pytest.mark.django_db
def test_reencrypt_is_all_or_nothing(settings: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    old = new_key()
    settings.MPESA_ENCRYPTION_KEYS = [old]
    tills = [TillFactory.create(), TillFactory.create()]
    before = [_ciphertexts(till) for till in tills]
    settings.MPESA_ENCRYPTION_KEYS = [new_key(), old]

    from integrations.mpesa import tills as services

    calls = {"n": 0}
    real = services.reencrypt

    def crash_on_the_second_till(ciphertext: str) -> str | None:
        calls["n"] += 1
        if calls["n"] > len(ENCRYPTED_CREDENTIAL_FIELDS):
            raise RuntimeError("killed mid-way")
        return real(ciphertext)

    monkeypatch.setattr(services, "reencrypt", crash_on_the_second_till)
    with pytest.raises(RuntimeError):
        _reencrypt()
    assert [_ciphertexts(till) for till in tills] == before

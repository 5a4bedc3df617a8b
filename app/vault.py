"""Encryption at rest for credentials, keyed by IMAGEJOBS_SECRET_KEY (MultiFernet: rotate by prepending)."""

from __future__ import annotations

import base64
import json
from functools import cache
from typing import Any

from cryptography.fernet import Fernet, InvalidToken, MultiFernet
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

from app.config import ConfigError, get_settings


class UnreadableSecrets(Exception):
    """Stored credentials none of the configured keys decrypts."""

    def __init__(self) -> None:
        super().__init__(
            "The stored credentials cannot be decrypted with this server's IMAGEJOBS_SECRET_KEY: "
            "they were sealed with a key it does not have. Every API and worker process needs the "
            "same keys (while rotating, the old key after the new one).")


def _fernet_key(secret: str) -> bytes:
    # Operators may give any passphrase; derive a proper 32-byte key from it.
    hkdf = HKDF(algorithm=hashes.SHA256(), length=32, salt=None, info=b"imagejobs credentials")
    return base64.urlsafe_b64encode(hkdf.derive(secret.encode()))


@cache
def _cipher() -> MultiFernet:
    if not get_settings().secret_keys:
        raise ConfigError("IMAGEJOBS_SECRET_KEY is not set (nor IMAGEJOBS_SECRET_KEY_FILE)")
    return MultiFernet([Fernet(_fernet_key(k)) for k in get_settings().secret_keys])


def seal(values: dict[str, Any]) -> bytes | None:
    """Encrypt a small JSON document of secrets; nothing to seal gives None."""
    if not values:
        return None
    return _cipher().encrypt(json.dumps(values, sort_keys=True).encode())


def unseal(token: bytes | None) -> dict[str, Any]:
    if not token:
        return {}
    try:
        return json.loads(_cipher().decrypt(bytes(token)))
    except InvalidToken:
        raise UnreadableSecrets() from None


def reseal(token: bytes) -> bytes:
    """The same secrets sealed with the first key: after it, older keys can be dropped."""
    try:
        return _cipher().rotate(bytes(token))
    except InvalidToken:
        raise UnreadableSecrets() from None

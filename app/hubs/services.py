"""Creating hubs and keys, and finding the key a bearer secret belongs to."""

from __future__ import annotations

import hashlib
import hmac
import secrets
from collections.abc import Iterable

from sqlalchemy import select
from sqlalchemy.orm import Session

from app.db import is_id
from app.hubs.models import ApiKey, Capability, Hub

_SECRET_PREFIX = "ij_"


def create_hub(session: Session, name: str) -> Hub:
    hub = Hub(name=name)
    session.add(hub)
    session.flush()
    return hub


def create_key(session: Session, hub_id: str, name: str,
               capabilities: Iterable[str] = ()) -> tuple[ApiKey, str]:
    """A new key and its secret, which is returned here once and never stored in the clear.

    No capability named means every capability.
    """
    if session.get(Hub, hub_id) is None:
        raise LookupError(f"no hub {hub_id}")
    wanted = sorted({Capability(c).value for c in capabilities})
    key = ApiKey(hub_id=hub_id, name=name, capabilities_all=not wanted, capabilities=wanted,
                 secret_hash="")
    session.add(key)
    session.flush()
    # The key id inside the secret finds the row; the random part is what proves possession.
    secret = f"{_SECRET_PREFIX}{key.id}_{secrets.token_urlsafe(32)}"
    key.secret_hash = _hash(secret)
    return key, secret


def key_for_secret(session: Session, secret: str) -> ApiKey | None:
    if not secret.startswith(_SECRET_PREFIX) or len(secret) > 200:
        return None
    key_id = secret[len(_SECRET_PREFIX):].split("_", 1)[0]
    if not is_id(key_id):
        return None
    key = session.scalar(select(ApiKey).where(ApiKey.id == key_id, ApiKey.revoked.is_(None)))
    if key is None or not hmac.compare_digest(key.secret_hash, _hash(secret)):
        return None
    return key


def _hash(secret: str) -> str:
    # The secret has 256 bits of randomness, so a fast hash is enough: nothing to brute-force.
    return hashlib.sha256(secret.encode()).hexdigest()

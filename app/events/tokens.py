"""Notification tokens: short-lived, for a WebSocket (which sends no headers of its own) to open
a hub's notification stream.

A token names its API key and when it expires, signed with what the server keeps of the key's
secret (its hash, never shown). Nothing is stored: a token of a key revoked, or no longer allowed
to listen, opens nothing.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import time

from sqlalchemy import select
from sqlalchemy.orm import Session

from app import errors
from app.db import is_id
from app.hubs.auth import Principal, allowed
from app.hubs.models import ApiKey, Capability

TOKEN_SECONDS = 300


def issue(session: Session, principal: Principal) -> str:
    key = session.get(ApiKey, principal.key_id)
    assert key is not None  # it has just authenticated the request
    body = f"{key.id}.{int(time.time()) + TOKEN_SECONDS}"
    return f"{body}.{_signature(key, body)}"


def holder(session: Session, token: str) -> Principal:
    """Whose a token is; a token that is not one, or has expired, is refused."""
    key_id, _, rest = token.partition(".")
    expires, _, signature = rest.partition(".")
    key = session.scalar(select(ApiKey).where(ApiKey.id == key_id, ApiKey.revoked.is_(None))
                         ) if is_id(key_id) and expires.isdigit() and len(expires) < 12 else None
    if key is None or not hmac.compare_digest(_signature(key, f"{key_id}.{expires}"), signature):
        raise errors.AuthInvalid("The notification token is not valid.")
    if int(expires) < time.time():
        raise errors.Expired("The notification token has expired: ask for a new one with "
                             "`GET /v1/hubs/current/notifications`.")
    return allowed(key, Capability.NOTIFICATIONS_LISTEN)


def _signature(key: ApiKey, body: str) -> str:
    digest = hmac.new(key.secret_hash.encode(), f"notifications:{body}".encode(),
                      hashlib.sha256).digest()
    return base64.urlsafe_b64encode(digest).decode().rstrip("=")

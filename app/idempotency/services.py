"""Claiming an Idempotency-Key, reading the first answer given to it, and keeping that answer.

A key is claimed by inserting its row in the transaction that does the request's work: the
unique key makes a second request with the same key wait, inside Postgres, until the first one's
transaction ends. If that work is rolled back, the claim goes with it and the next request with
the key does the work; if it is committed, the others find the row and wait for its answer.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from datetime import timedelta
from typing import Any

from sqlalchemy import delete, select, update
from sqlalchemy.dialects.postgresql import insert as pg_insert
from sqlalchemy.orm import Session

from app import vault
from app.db import utcnow
from app.idempotency.models import IdempotencyKey

# How long a key holds its first answer; after that the key is free again.
TTL = timedelta(hours=24)
MAX_KEY_LENGTH = 255


@dataclass(frozen=True)
class FirstRequest:
    request_hash: str
    status: int | None  # None: still being served
    body: dict[str, Any] | None


def request_hash(method: str, path: str, body: bytes) -> str:
    """What makes two requests the same request: method, path with its query, and body."""
    digest = hashlib.sha256()
    for part in (method.encode(), path.encode(), body):
        digest.update(len(part).to_bytes(8, "big"))
        digest.update(part)
    return digest.hexdigest()


def claim(session: Session, hub_id: str, key: str, digest: str) -> bool:
    """True if this request now holds the key (its transaction commits the claim with the work);
    False if another request holds it. Waits while another transaction is claiming it."""
    return _insert_unless_held(session, hub_id, key, digest, None, None)


def _insert_unless_held(session: Session, hub_id: str, key: str, digest: str,
                        status: int | None, body: dict[str, Any] | None) -> bool:
    """Insert the key's row, or take over its expired one; False if it is held."""
    now = utcnow()
    values = {"request_hash": digest, "status": status,
              "sealed_body": vault.seal(body) if body is not None else None, "created": now}
    inserted = pg_insert(IdempotencyKey).values(hub_id=hub_id, key=key, **values)
    held = session.execute(inserted.on_conflict_do_update(
        index_elements=["hub_id", "key"], set_=values,
        # An expired key is free: the request takes it over.
        where=IdempotencyKey.created < now - TTL,
    ).returning(IdempotencyKey.key)).first()
    return held is not None


def first_request(session: Session, hub_id: str, key: str) -> FirstRequest | None:
    row = session.scalar(select(IdempotencyKey).where(
        IdempotencyKey.hub_id == hub_id, IdempotencyKey.key == key,
        IdempotencyKey.created >= utcnow() - TTL))
    if row is None:
        return None
    return FirstRequest(row.request_hash, row.status,
                        vault.unseal(row.sealed_body) if row.sealed_body else None)


def keep_answer(session: Session, hub_id: str, key: str, status: int, body: dict[str, Any]
                ) -> None:
    """Keep the answer to give again, and forget the keys that expired (the caller commits)."""
    session.execute(update(IdempotencyKey).where(
        IdempotencyKey.hub_id == hub_id, IdempotencyKey.key == key
    ).values(status=status, sealed_body=vault.seal(body)))
    session.execute(delete(IdempotencyKey).where(IdempotencyKey.created < utcnow() - TTL))


def keep_first_answer(session: Session, hub_id: str, key: str, digest: str, status: int,
                      body: dict[str, Any]) -> None:
    """Keep an answer given without claiming the key first, unless another was kept meanwhile
    (the caller commits)."""
    _insert_unless_held(session, hub_id, key, digest, status, body)


def release(session: Session, hub_id: str, key: str, digest: str) -> None:
    """Free a key whose request committed work but gave no answer (it failed after the commit),
    so that it is not in progress for a day (the caller commits)."""
    session.execute(delete(IdempotencyKey).where(
        IdempotencyKey.hub_id == hub_id, IdempotencyKey.key == key,
        IdempotencyKey.request_hash == digest, IdempotencyKey.status.is_(None)))

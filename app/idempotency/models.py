"""A hub's Idempotency-Keys: each the request it was first sent with and, once given, its answer."""

from __future__ import annotations

from datetime import datetime

from sqlalchemy import Index, LargeBinary, String
from sqlalchemy.orm import Mapped, mapped_column

from app.db import Base, utcnow


class IdempotencyKey(Base):
    __tablename__ = "idempotency_keys"
    __table_args__ = (Index("ix_idempotency_keys_created", "created"),)

    # Keys are per hub: the same string sent by two hubs is two keys.
    hub_id: Mapped[str] = mapped_column(String(24), primary_key=True)
    key: Mapped[str] = mapped_column(String(255), primary_key=True)
    # sha256 of the method, the path with its query and the body.
    request_hash: Mapped[str] = mapped_column(String(64))
    # The first answer; None while the first request is still being served. The body is sealed
    # (app/vault.py) as credentials are: an answer may hold a secret shown once (an upload token).
    status: Mapped[int | None]
    sealed_body: Mapped[bytes | None] = mapped_column(LargeBinary)
    created: Mapped[datetime] = mapped_column(default=utcnow)

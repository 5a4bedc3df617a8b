"""A hub's events: what happened to its jobs, images and sources, in the order they are told."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from sqlalchemy import BigInteger, Identity, String
from sqlalchemy.orm import Mapped, mapped_column

from app.db import Base


class HubEvent(Base):
    """Written only by the triggers of migration 0008, in the transaction of the change."""

    __tablename__ = "hub_events"

    id: Mapped[int] = mapped_column(BigInteger, Identity(), primary_key=True)
    # The event's number among its hub's, given once it committed (`stream.sequence`).
    seq: Mapped[int | None] = mapped_column(BigInteger)
    hub_id: Mapped[str] = mapped_column(String(24))
    topic: Mapped[str] = mapped_column(String(64))
    object: Mapped[dict[str, Any]]
    created: Mapped[datetime]


class HubEventCounter(Base):
    """The last number given to one of a hub's events: numbers go on across the retention."""

    __tablename__ = "hub_event_counters"

    hub_id: Mapped[str] = mapped_column(String(24), primary_key=True)
    last: Mapped[int] = mapped_column(BigInteger)

"""The image source record and its states."""

from __future__ import annotations

from datetime import datetime
from enum import StrEnum
from typing import Any

from sqlalchemy import ForeignKey, LargeBinary, String
from sqlalchemy.orm import Mapped, mapped_column

from app.db import Base, new_id, utcnow
from app.statemachine import StateMachine


class SourceState(StrEnum):
    LIVE = "live"
    DELETING = "deleting"
    DELETED = "deleted"


SOURCE_STATES = StateMachine("image source", {
    SourceState.LIVE: {SourceState.DELETING},
    SourceState.DELETING: {SourceState.DELETED, SourceState.LIVE},
}, final={SourceState.DELETED})


class ImageSource(Base):
    __tablename__ = "image_sources"

    id: Mapped[str] = mapped_column(String(24), primary_key=True, default=new_id)
    hub_id: Mapped[str] = mapped_column(ForeignKey("hubs.id"), index=True)
    name: Mapped[str] = mapped_column(String(256))
    identifier: Mapped[str] = mapped_column(String(256))
    type: Mapped[str] = mapped_column(String(32), default="direct")
    about_description: Mapped[str | None]
    # The origin as shown to clients (secrets blanked) and its secrets, sealed.
    origin: Mapped[dict[str, Any]]
    origin_secrets: Mapped[bytes | None] = mapped_column(LargeBinary)
    builder: Mapped[dict[str, Any] | None]
    acl: Mapped[dict[str, Any] | None]
    creator_type: Mapped[str] = mapped_column(String(32))
    creator_id: Mapped[str] = mapped_column(String(24))
    state: Mapped[str] = mapped_column(String(16), default=SourceState.LIVE)
    state_changed: Mapped[datetime] = mapped_column(default=utcnow)
    state_error: Mapped[str | None]
    created: Mapped[datetime] = mapped_column(default=utcnow)
    updated: Mapped[datetime] = mapped_column(default=utcnow, onupdate=utcnow)
    deleted: Mapped[datetime | None]

    @property
    def origin_type(self) -> str:
        return self.origin["type"]

    def move_to(self, state: SourceState, error: str | None = None) -> None:
        self.state = SOURCE_STATES.check(self.state, state)
        self.state_changed = utcnow()
        self.state_error = error
        if state == SourceState.DELETED:
            self.deleted = self.state_changed

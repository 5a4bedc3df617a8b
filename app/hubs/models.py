"""Hubs and API keys. A key's secret is kept only as a SHA-256 hash."""

from __future__ import annotations

from datetime import datetime
from enum import StrEnum

from sqlalchemy import ForeignKey, String
from sqlalchemy.dialects.postgresql import ARRAY
from sqlalchemy.orm import Mapped, mapped_column

from app.db import Base, new_id, utcnow


class Capability(StrEnum):
    IMAGES_VIEW = "images-view"
    IMAGES_MANAGE = "images-manage"
    IMAGES_IMPORT = "images-import"
    IMAGES_SOURCES_VIEW = "images-sources-view"
    IMAGES_SOURCES_MANAGE = "images-sources-manage"
    JOBS_VIEW = "apionly-jobs-view"
    NOTIFICATIONS_LISTEN = "apionly-notifications-listen"


class Hub(Base):
    __tablename__ = "hubs"

    id: Mapped[str] = mapped_column(String(24), primary_key=True, default=new_id)
    name: Mapped[str] = mapped_column(String(200))
    created: Mapped[datetime] = mapped_column(default=utcnow)


class ApiKey(Base):
    __tablename__ = "api_keys"

    id: Mapped[str] = mapped_column(String(24), primary_key=True, default=new_id)
    hub_id: Mapped[str] = mapped_column(ForeignKey("hubs.id"), index=True)
    name: Mapped[str] = mapped_column(String(200))
    secret_hash: Mapped[str] = mapped_column(String(64))
    capabilities_all: Mapped[bool] = mapped_column(default=False)
    capabilities: Mapped[list[str]] = mapped_column(ARRAY(String(64)), default=list)
    created: Mapped[datetime] = mapped_column(default=utcnow)
    revoked: Mapped[datetime | None] = mapped_column(default=None)

    def allows(self, capability: Capability) -> bool:
        return self.capabilities_all or capability.value in self.capabilities

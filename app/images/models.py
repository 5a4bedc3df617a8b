"""The image record, its build log, and the image state machine."""

from __future__ import annotations

from datetime import datetime
from enum import StrEnum
from typing import Any

from sqlalchemy import BigInteger, ForeignKey, LargeBinary, String, Text
from sqlalchemy.orm import Mapped, mapped_column

from app.db import Base, new_id, utcnow
from app.statemachine import StateMachine


class ImageState(StrEnum):
    NEW = "new"
    UPLOADING = "uploading"
    DOWNLOADING = "downloading"
    BUILDING = "building"
    VERIFYING = "verifying"
    SAVING = "saving"
    LIVE = "live"
    DELETING = "deleting"
    DELETED = "deleted"


S = ImageState
# A failed import goes back to where it started (`new`, or `live` for a re-import) with the
# error recorded; a failed delete goes back to `live`. Nothing stays in between.
IMAGE_STATES = StateMachine("image", {
    S.NEW: {S.DOWNLOADING, S.BUILDING, S.UPLOADING, S.DELETING},
    S.LIVE: {S.DOWNLOADING, S.BUILDING, S.UPLOADING, S.DELETING},
    S.DOWNLOADING: {S.VERIFYING, S.NEW, S.LIVE},
    S.BUILDING: {S.VERIFYING, S.NEW, S.LIVE},
    S.UPLOADING: {S.VERIFYING, S.NEW, S.LIVE},
    S.VERIFYING: {S.SAVING, S.NEW, S.LIVE},
    S.SAVING: {S.LIVE, S.NEW},
    S.DELETING: {S.DELETED, S.LIVE, S.NEW},
}, final={S.DELETED})
IMPORTING = frozenset({S.UPLOADING, S.DOWNLOADING, S.BUILDING, S.VERIFYING, S.SAVING})
TRANSITIONAL = IMPORTING | {S.DELETING}

# The engine knows an image only by a name in this namespace. `.invalid` never resolves
# (RFC 6761), so no pull, an import's or a build's `FROM`, can write a name in it, and no build
# can read one: only the worker's own tag, given after the image was checked, puts a name here.
ENGINE_NAMESPACE = "imagejobs.invalid"


def engine_tag(image_id: str) -> tuple[str, str]:
    """The repository and tag under which the engine of its node holds an image."""
    return f"{ENGINE_NAMESPACE}/{image_id}", "latest"


EMPTY_CONFIG: dict[str, Any] = {
    "user": "", "ports": [], "env": {}, "labels": {}, "command": [], "entrypoint": [],
    "volumes": [], "workdir": "", "signal_stop": "",
}


class Image(Base):
    __tablename__ = "images"

    id: Mapped[str] = mapped_column(String(24), primary_key=True, default=new_id)
    hub_id: Mapped[str] = mapped_column(ForeignKey("hubs.id"), index=True)
    source_id: Mapped[str] = mapped_column(ForeignKey("image_sources.id"), index=True)
    name: Mapped[str] = mapped_column(String(256))
    about_description: Mapped[str | None]
    # The source's origin when the image was made (secrets blanked, and sealed apart): an image
    # is a point in time, so a later change of its source does not change what it imports.
    origin: Mapped[dict[str, Any]]
    origin_secrets: Mapped[bytes | None] = mapped_column(LargeBinary)
    override: Mapped[dict[str, Any] | None]
    build: Mapped[dict[str, Any] | None]
    config: Mapped[dict[str, Any]] = mapped_column(default=lambda: dict(EMPTY_CONFIG))
    size: Mapped[int] = mapped_column(BigInteger, default=0)
    backend_provider: Mapped[str] = mapped_column(String(64), default="")
    backend_file_name: Mapped[str] = mapped_column(String(512), default="")
    backend_file_id: Mapped[str] = mapped_column(String(128), default="")
    factory_node_id: Mapped[str | None] = mapped_column(String(256))
    factory_acknowledged: Mapped[datetime | None]
    factory_cached: Mapped[datetime | None]
    # cycle-upload images: the upload token's hash (the token is shown once), when it expires,
    # and when an upload was taken (a token works once).
    upload_token_hash: Mapped[str | None] = mapped_column(String(64))
    upload_expires: Mapped[datetime | None]
    upload_received: Mapped[datetime | None]
    creator_type: Mapped[str] = mapped_column(String(32))
    creator_id: Mapped[str] = mapped_column(String(24))
    state: Mapped[str] = mapped_column(String(16), default=ImageState.NEW, index=True)
    state_changed: Mapped[datetime] = mapped_column(default=utcnow)
    state_error: Mapped[str | None]
    state_error_time: Mapped[datetime | None]
    created: Mapped[datetime] = mapped_column(default=utcnow)
    updated: Mapped[datetime] = mapped_column(default=utcnow, onupdate=utcnow)
    deleted: Mapped[datetime | None]

    @property
    def origin_type(self) -> str:
        return self.origin["type"]

    @property
    def resting_state(self) -> ImageState:
        """Where a failed job leaves the image: `live` if the engine still holds an earlier one."""
        return ImageState.LIVE if self.backend_file_id else ImageState.NEW

    def move_to(self, state: ImageState) -> None:
        self.state = IMAGE_STATES.check(self.state, state)
        self.state_changed = utcnow()
        if state == ImageState.DELETED:
            self.deleted = self.state_changed

    def fail(self, message: str) -> None:
        """End a job's work on this image: back to its resting state, with the error shown."""
        if self.state in TRANSITIONAL:
            self.move_to(self.resting_state)
        self.state_error = message
        self.state_error_time = utcnow()


class BuildLog(Base):
    """An image's build log: what the last import's attempts printed, bounded, in chunks."""

    __tablename__ = "image_build_logs"

    id: Mapped[str] = mapped_column(String(24), primary_key=True, default=new_id)
    hub_id: Mapped[str] = mapped_column(ForeignKey("hubs.id"), index=True)
    image_id: Mapped[str] = mapped_column(ForeignKey("images.id"), unique=True)
    # Characters the log holds: its text is the chunks below, which only grow at this end.
    length: Mapped[int] = mapped_column(BigInteger, default=0)
    truncated: Mapped[bool] = mapped_column(default=False)
    created: Mapped[datetime] = mapped_column(default=utcnow)
    updated: Mapped[datetime] = mapped_column(default=utcnow, onupdate=utcnow)
    deleted: Mapped[datetime | None]


class BuildLogChunk(Base):
    """One flush of a build log, at the character offset it starts at: a flush inserts only its
    new text, so Postgres writes a log's bytes once however long the build prints."""

    __tablename__ = "image_build_log_chunks"

    image_id: Mapped[str] = mapped_column(ForeignKey("images.id"), primary_key=True)
    start: Mapped[int] = mapped_column(BigInteger, primary_key=True)
    text: Mapped[str] = mapped_column(Text)

"""The documents the API answers with, described once for its OpenAPI document (`app.openapi`).

The views build these documents as plain dicts (`source_document`, `image_document`,
`job_document`, ...); the models here only describe them, field for field, and validate nothing
at run time. Parts a client also sends (an origin, an override, build args, an ACL) are the
request models themselves. Every model forbids unknown fields, so a field a view starts to emit
without being described here breaks the fuzzer's response checks (tests/test_fuzz.py).
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from app.hubs.models import Capability
from app.images.models import ImageState
from app.images.schemas import Build, Override
from app.jobs.models import JobState
from app.sources.models import SourceState
from app.sources.origins import Origin
from app.sources.schemas import About, Acl, Builder

Id = Annotated[str, Field(pattern=r"^[0-9a-f]{24}$", description="24 hex characters, time first.")]
Time = Annotated[str, Field(json_schema_extra={"format": "date-time"},
                            description="RFC 3339, UTC; `0001-01-01T00:00:00Z` for an event "
                                        "that has not happened.")]


def optional(description: str | None = None) -> Any:
    """A field the document carries only sometimes (absent, never null, otherwise)."""
    return Field(default=None, description=description, json_schema_extra=_no_default)


def _no_default(schema: dict[str, Any]) -> None:
    schema.pop("default", None)  # `null` would not be a value of the field's type


class Document(BaseModel):
    model_config = ConfigDict(extra="forbid")


class Creator(Document):
    id: str
    type: str


class StateError(Document):
    message: str


class Events(Document):
    created: Time
    updated: Time
    deleted: Time


# --- API keys (the `creators` include) ------------------------------------------------------


class KeyPermissions(Document):
    all_environments: bool
    environments: list[str]


class KeyCapabilities(Document):
    all: bool
    specific: list[Capability]


class KeyState(Document):
    current: Literal["live", "deleted"]
    changed: Time


class KeyEvents(Document):
    created: Time


class ApiKey(Document):
    id: Id
    name: str
    creator: Creator
    hub_id: Id
    permissions: KeyPermissions
    capabilities: KeyCapabilities
    ips: None
    state: KeyState
    events: KeyEvents


class CreatorsInclude(Document):
    api_keys: dict[str, ApiKey]


# --- Image sources --------------------------------------------------------------------------


class SourceStatus(Document):
    current: SourceState
    changed: Time
    error: StateError = optional("Present only when there is one.")


class ImagesCount(Document):
    total: int
    state: dict[str, int]


class SourceMeta(Document):
    images_count: ImagesCount


class ImageSource(Document):
    id: Id
    identifier: str
    type: Literal["direct"]
    hub_id: Id
    name: str
    about: About
    origin: Origin = Field(description="Secrets (tokens, passwords, keys) show as empty strings.")
    builder: Builder | None
    creator: Creator
    acl: Acl | None
    state: SourceStatus
    events: Events
    meta: SourceMeta = optional("Only with `meta=images_count`.")


class SourceIncludes(Document):
    creators: CreatorsInclude


class SourceDocument(Document):
    data: ImageSource
    includes: SourceIncludes = optional("Only with `include=...`.")


class SourceListDocument(Document):
    data: list[ImageSource]
    includes: SourceIncludes = optional()


# --- Images ---------------------------------------------------------------------------------


class ImageStateError(Document):
    message: str
    time: Time


class ImageStatus(Document):
    current: ImageState
    changed: Time
    error: ImageStateError = optional("Present only when there is one.")


class Backend(Document):
    provider: str = Field(description="`docker` once imported, empty before.")
    size: int
    file_name: str = Field(description="The image's tag in the engine of the node holding it.")
    file_id: str = Field(description="The engine's image id.")


class Requires(Document):
    nvidia_gpu: bool


class Port(Document):
    host: int
    container: int
    type: str


class Volume(Document):
    path: str
    mode: str


class ImageConfig(Document):
    user: str
    ports: list[Port]
    env: dict[str, str]
    labels: dict[str, str]
    command: list[str]
    entrypoint: list[str]
    volumes: list[Volume]
    workdir: str
    signal_stop: str


class ImageSourceDetails(Document):
    id: Id
    origin: Origin = Field(description="The source's origin when the image was made; for a "
                                        "cycle-upload image its upload token, shown only in the "
                                        "answer that created the image.")


class ImageSourceRef(Document):
    type: Literal["direct"]
    details: ImageSourceDetails
    override: Override = optional("Only when the image has one.")


class Factory(Document):
    node_id: str
    cached: Time
    acknowledged: Time


class Image(Document):
    id: Id
    hub_id: Id
    name: str
    size: int
    about: About
    backend: Backend
    requires: Requires
    build: Build | None
    builder: None
    config: ImageConfig
    source: ImageSourceRef
    creator: Creator
    factory: Factory | None
    state: ImageStatus
    events: Events


class ImageIncludes(Document):
    creators: CreatorsInclude = optional()
    sources: dict[str, ImageSource] = optional()


class ImageDocument(Document):
    data: Image
    includes: ImageIncludes = optional("Only with `include=...`.")


class ImageListDocument(Document):
    data: list[Image]
    includes: ImageIncludes = optional()


class BuildLogMeta(Document):
    offset: int = Field(description="The offset asked for.")
    next_offset: int = Field(description="Where to ask from next time.")
    truncated: bool


class ImageBuildLog(Document):
    id: Id
    hub_id: Id
    image_id: Id
    log: str = Field(description="The log past `offset`.")
    events: Events
    meta: BuildLogMeta


class BuildLogDocument(Document):
    data: ImageBuildLog


# --- Jobs -----------------------------------------------------------------------------------


class JobEvents(Document):
    queued: Time
    started: Time
    completed: Time


class JobStep(Document):
    caption: str
    description: str
    started: Time
    completed: Time


class TaskState(Document):
    current: Literal["pending", "running", "completed", "error"]
    changed: Time


class JobTask(Document):
    id: Id
    caption: str
    header: str
    events: JobEvents
    steps: list[JobStep]
    state: TaskState
    input: dict[str, Any]
    output: dict[str, Any] | None
    error: StateError | None


class JobStatus(Document):
    current: JobState
    changed: Time
    error: StateError | None


class Job(Document):
    id: Id
    hub_id: Id
    queue: str
    caption: str
    events: JobEvents
    schedule: Time
    expires: Time
    tasks: list[JobTask]
    hash: str
    limit_duplicates: bool
    creator: Creator
    state: JobStatus


class JobIncludes(Document):
    creators: CreatorsInclude


class JobDocument(Document):
    data: Job


class JobListDocument(Document):
    data: list[Job]
    includes: JobIncludes = optional("Only with `include=creators`.")


class Parallel(Document):
    sub_queue: None
    tasks: bool


class DescribedTask(Document):
    caption: str
    header: str
    input: dict[str, Any]
    steps: list[JobStep]


class QueuedJob(Document):
    id: Id
    accepted: bool
    queue: str
    schedule: Time
    parallel: Parallel
    tasks: list[DescribedTask]


class JobDescriptor(Document):
    action: str
    job: QueuedJob


class JobDescriptorDocument(Document):
    data: JobDescriptor


# --- Errors and the rest --------------------------------------------------------------------


class ErrorDetail(Document):
    status: int
    code: str
    title: str
    detail: str = optional()
    source: str = optional("A JSON pointer into the body, or the query parameter at fault.")
    extra: dict[str, Any] = optional("`capability` on 403.permissions.")


class ErrorEnvelope(Document):
    error: ErrorDetail
    data: None


class Health(Document):
    status: Literal["ok"]


class HealthDocument(Document):
    data: Health


class Ready(Document):
    postgres: Literal["ok"]
    redis: Literal["ok"]


class ReadyDocument(Document):
    data: Ready


RESPONSE_DOCUMENTS: tuple[type[BaseModel], ...] = (
    SourceDocument, SourceListDocument, ImageDocument, ImageListDocument, BuildLogDocument,
    JobDocument, JobListDocument, JobDescriptorDocument, ErrorEnvelope, HealthDocument,
    ReadyDocument,
)

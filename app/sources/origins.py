"""The origin types of an image source, validated, and the split of their secrets from the rest.

Each type is one model (an `OriginKind`) that also says how the API queues its images' imports;
`stored_origin` reads a stored origin back into it.

Secrets (tokens, passwords, keys) are write-only: they are sealed apart from the origin and every
response shows them as empty strings.
"""

from __future__ import annotations

import ipaddress
import re
from collections.abc import Callable
from typing import Annotated, Any, ClassVar, Literal
from urllib.parse import urlsplit

from pydantic import (
    AfterValidator,
    BaseModel,
    Field,
    StringConstraints,
    TypeAdapter,
    ValidationError,
    ValidationInfo,
    field_validator,
    model_validator,
)

from app.db import ZERO_TIME
from app.images import steps
from app.images.models import ENGINE_NAMESPACE
from app.jobs.queueing import BUILD_QUEUE, PULL_QUEUE
from app.jobs.steps import Step
from app.validation import Strict

SECRET_FIELDS = frozenset({"token", "password", "passphrase", "private_key", "api_key", "secret",
                           "config"})

# A Docker image reference: optional registry host, path components, optional tag and digest.
_REFERENCE = re.compile(
    r"^(?:(?P<host>[a-zA-Z0-9.-]+(?::\d+)?)/)?"
    r"(?P<path>[a-z0-9]+(?:(?:[._]|__|-+)[a-z0-9]+)*(?:/[a-z0-9]+(?:(?:[._]|__|-+)[a-z0-9]+)*)*)"
    r"(?::(?P<tag>[\w][\w.-]{0,127}))?"
    r"(?:@(?P<digest>sha256:[a-f0-9]{64}))?$")


# Set in the context of a validation that reads an origin back from storage (`stored_origin`).
_STORED = "stored"


def _reading_stored(info: ValidationInfo) -> bool:
    return bool(info.context and info.context.get(_STORED))


def _on_request(check: Callable[[str], str]) -> Callable[[str, ValidationInfo], str]:
    """A check of what a client sends, skipped on reading a stored origin: it was checked when
    saved, and a check added since must not make the rows saved before it unreadable."""
    def checked(value: str, info: ValidationInfo) -> str:
        return value if _reading_stored(info) else check(value)
    return checked


def _check_target(value: str) -> str:
    match = _REFERENCE.match(value)
    if not match or len(value) > 512:
        raise ValueError(f"`{value[:100]}` is not an image reference such as `busybox:1.36` or "
                         "`team/app:v2`")
    _not_our_namespace(registry_of(value))
    return value


DOCKER_HUB = "docker.io"
# The names under which the engine reaches Docker Hub; its credentials may go to these alone.
DOCKER_HUB_NAMES = frozenset({DOCKER_HUB, "index.docker.io", "registry-1.docker.io"})


def registry_of(reference: str) -> str:
    """The registry a reference pulls from, as the engine reads it: its first component when
    that names a host, else Docker Hub."""
    first, slash, _ = reference.partition("/")
    if slash and ("." in first or ":" in first or first == "localhost"):
        return first.lower()
    return DOCKER_HUB


def _not_our_namespace(host: str) -> None:
    if host.split(":", 1)[0].rstrip(".").lower() == ENGINE_NAMESPACE:
        raise ValueError(f"`{ENGINE_NAMESPACE}` is where this service keeps images in its engines; "
                         "no source can name it")


def _check_registry_url(value: str) -> str:
    parts = urlsplit(value if "://" in value else f"https://{value}")
    try:
        port = parts.port
    except ValueError:
        port = -1
    if (parts.scheme not in ("http", "https") or not parts.hostname or port == -1
            or parts.path not in ("", "/") or parts.query or parts.fragment
            or parts.username or parts.password):
        raise ValueError(f"`{value[:100]}` is not a registry address such as "
                         "`registry.example.com` or `https://registry.example.com:5000`")
    _not_our_namespace(parts.hostname)
    if registry_of(f"{registry_host(value)}/image") != registry_host(value).lower():
        # The engine would pull `host/image` from Docker Hub, and send it the credentials.
        raise ValueError(f"`{value[:100]}` names a host the Docker engine reads as a Docker Hub "
                         "account, not a registry: give the registry's full domain name or its "
                         "port")
    return value


def _check_http_url(value: str) -> str:
    parts = urlsplit(value)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise ValueError("must be an http:// or https:// URL")
    if parts.username is not None or parts.password is not None:
        raise ValueError("must not hold a user name or password: a URL is shown wherever its "
                         "source is, and credentials must not be")
    return value


def _check_repo_url(value: str) -> str:
    """A repository URL, with its credentials in `auth`: `git@host:repo` and ssh users are fine."""
    parts = urlsplit(value)
    if parts.password is not None or (parts.scheme in ("http", "https")
                                      and parts.username is not None):
        raise ValueError("must not hold credentials: give them in `repo.auth`, which is never "
                         "shown (the URL is shown wherever its source is)")
    return value


Text = Annotated[str, StringConstraints(max_length=1024)]
ImageTarget = Annotated[str, StringConstraints(min_length=1),
                        AfterValidator(_on_request(_check_target))]
RegistryUrl = Annotated[str, StringConstraints(min_length=1),
                        AfterValidator(_on_request(_check_registry_url))]
HttpUrl = Annotated[str, StringConstraints(min_length=1, max_length=2048),
                    AfterValidator(_on_request(_check_http_url))]
Secret = Annotated[str, StringConstraints(max_length=16384)]


ObjectId = Annotated[str, StringConstraints(pattern=r"^[0-9a-f]{24}$")]


class ExistingSource(Strict):
    source_id: ObjectId | None = None


class OriginKind(Strict):
    """One kind of origin, and what the API knows of importing the images of its sources."""

    type: str
    # The queue an import task of such an image goes to.
    import_queue: ClassVar[str] = PULL_QUEUE
    # The steps its import takes, planned when the import is queued; none for a kind that is
    # not imported.
    import_steps: ClassVar[tuple[Step, ...]] = ()

    def nothing_to_import(self, override: dict[str, Any]) -> str | None:
        """Why an import task of an image of this origin would have nothing to import (the
        client's fault, word for word as the API refuses it); None when it has something."""
        return None


class DockerHubDetails(Strict):
    existing: ExistingSource | None = None
    target: ImageTarget
    username: Text | None = None
    token: Secret | None = None

    @model_validator(mode="after")
    def _credentials_for_docker_hub(self, info: ValidationInfo) -> DockerHubDetails:
        # Stored, the import refuses it in its own words (a row saved before this check).
        if _reading_stored(info):
            return self
        if (self.username or self.token) and registry_of(self.target) not in DOCKER_HUB_NAMES:
            raise ValueError(docker_hub_only(self.target))
        return self


def docker_hub_only(target: str) -> str:
    return (f"the credentials of a docker-hub source go to Docker Hub alone, and "
            f"`{target[:100]}` names the registry {registry_of(target)}: use a docker-registry "
            "source for it")


class DockerHubOrigin(OriginKind):
    type: Literal["docker-hub"]
    details: DockerHubDetails
    import_steps: ClassVar[tuple[Step, ...]] = steps.PULL_STEPS


class DockerRegistryDetails(Strict):
    existing: ExistingSource | None = None
    target: ImageTarget
    url: RegistryUrl
    username: Text | None = None
    token: Secret | None = None
    password: Secret | None = None


class DockerRegistryOrigin(OriginKind):
    type: Literal["docker-registry"]
    details: DockerRegistryDetails
    import_steps: ClassVar[tuple[Step, ...]] = steps.PULL_STEPS


class RegistryUserDetails(Strict):
    username: Text | None = None
    token: Secret | None = None


class RegistryAuthUser(Strict):
    type: Literal["user"]
    details: RegistryUserDetails


class ProviderCredentials(Strict):
    region: Text | None = None
    namespace: Text | None = None
    api_key: Secret | None = None
    secret: Secret | None = None
    subscription_id: Text | None = None
    client_id: Text | None = None
    config: Secret | None = None


class ProviderDetails(Strict):
    flavor: Literal["ecr"]
    credentials: ProviderCredentials


class RegistryAuthProvider(Strict):
    type: Literal["provider"]
    details: ProviderDetails


class WebhookDetails(Strict):
    url: HttpUrl


class RegistryAuthWebhook(Strict):
    type: Literal["webhook"]
    details: WebhookDetails


RegistryAuth = Annotated[RegistryAuthUser | RegistryAuthProvider | RegistryAuthWebhook,
                         Field(discriminator="type")]


class OciRegistryDetails(Strict):
    existing: ExistingSource | None = None
    target: ImageTarget
    url: RegistryUrl
    auth: RegistryAuth | None = None


class OciRegistryOrigin(OriginKind):
    type: Literal["oci-registry"]
    details: OciRegistryDetails
    import_steps: ClassVar[tuple[Step, ...]] = steps.PULL_STEPS


class HttpCredentialValues(Strict):
    username: Text
    password: Secret


class HttpCredentials(Strict):
    type: Literal["http"]
    credentials: HttpCredentialValues


class SshCredentialValues(Strict):
    username: Text
    passphrase: Secret
    private_key: Secret


class SshCredentials(Strict):
    type: Literal["ssh"]
    credentials: SshCredentialValues


class RepoRef(Strict):
    type: Literal["tag", "hash"]
    value: Annotated[str, StringConstraints(min_length=1, max_length=256)]


class Repo(Strict):
    url: Annotated[str, StringConstraints(min_length=1, max_length=2048),
                   AfterValidator(_on_request(_check_repo_url))]
    branch: Annotated[str, StringConstraints(min_length=1, max_length=256)] | None = None
    auth: Annotated[HttpCredentials | SshCredentials, Field(discriminator="type")] | None = None
    ref: RepoRef | None = None


class DockerfileCredential(Strict):
    url: Text | None = None
    username: Text | None = None
    token: Secret | None = None


class DockerFileDetails(Strict):
    existing: ExistingSource | None = None
    repo: Repo | None = None
    targz_url: HttpUrl | None = None
    context_dir: Text | None = None
    build_file: Text | None = None
    credentials: list[DockerfileCredential] | None = Field(default=None, max_length=20)

    @model_validator(mode="after")
    def _one_context(self, info: ValidationInfo) -> DockerFileDetails:
        if self.repo and self.targz_url and not _reading_stored(info):
            raise ValueError("give either `repo` or `targz_url`, not both")
        return self

    @field_validator("context_dir", "build_file")
    @classmethod
    def _inside_the_context(cls, value: str | None, info: ValidationInfo) -> str | None:
        # Refused rather than re-rooted: `../x` is not `x`, whatever it was meant to reach.
        # Stored, the build refuses it in its own words (a row saved before this check).
        if value is not None and ".." in value.strip().split("/") and not _reading_stored(info):
            raise ValueError(f"`{value[:100]}` climbs out of the build context with `..`; give a "
                             "path inside it")
        return value


class DockerFileOrigin(OriginKind):
    type: Literal["docker-file"]
    details: DockerFileDetails
    import_queue: ClassVar[str] = BUILD_QUEUE
    import_steps: ClassVar[tuple[Step, ...]] = steps.BUILD_STEPS

    def nothing_to_import(self, override: dict[str, Any]) -> str | None:
        if self.details.repo or self.details.targz_url or override.get("targz_url"):
            return None
        return ("The image's `docker-file` source has neither a `repo` nor a `targz_url`, and "
                "the image no `override.targz_url`: there is nothing to build.")


class CycleUploadDetails(Strict):
    # Both are made by the server for each image; anything a client sends here is ignored.
    expires: Text | None = None
    token: Secret | None = None


class CycleUploadOrigin(OriginKind):
    type: Literal["cycle-upload"]
    details: CycleUploadDetails | None = None
    import_steps: ClassVar[tuple[Step, ...]] = steps.LOAD_STEPS

    def nothing_to_import(self, override: dict[str, Any]) -> str | None:
        return ("Images of `cycle-upload` sources are imported by uploading their tar, not by an "
                "import task.")


class CycleSourceDetails(Strict):
    source_id: Text


class CycleSourceOrigin(OriginKind):
    type: Literal["cycle-source"]
    details: CycleSourceDetails

    @model_validator(mode="after")
    def _not_in_a_source(self, info: ValidationInfo) -> CycleSourceOrigin:
        if _reading_stored(info):
            return self  # no source holds one; an import says it cannot import it
        raise ValueError("a `cycle-source` origin refers to another source and cannot be the "
                         "origin of an image source")


class NoneOrigin(OriginKind):
    type: Literal["none"]

    def nothing_to_import(self, override: dict[str, Any]) -> str | None:
        return "The image's source has origin `none`: there is nothing to import."


Origin = Annotated[
    DockerHubOrigin | DockerRegistryOrigin | OciRegistryOrigin | DockerFileOrigin
    | CycleUploadOrigin | CycleSourceOrigin | NoneOrigin,
    Field(discriminator="type"),
]

PULL_TYPES = frozenset({"docker-hub", "docker-registry", "oci-registry"})

_ORIGINS: TypeAdapter[OriginKind] = TypeAdapter(Origin)


class UnreadableOrigin(ValueError):
    """A stored origin that reads as no origin model: a person's words for what is wrong."""


def stored_origin(document: Any) -> OriginKind:
    """An origin as this service stored it, read back into its model.

    Only its shape is checked: what a request alone is checked for (policies, refusals added
    since it was saved, a secret left blank) does not make it unreadable.
    """
    try:
        return _ORIGINS.validate_python(document, context={_STORED: True})
    except ValidationError as exc:
        # Where and what, never the value: it may be a secret.
        first = exc.errors(include_url=False, include_input=False)[0]
        # The first part of a place inside an origin is its type, the union's tag.
        where = "".join(f"/{part}" for part in first["loc"][1:])
        raise UnreadableOrigin("The origin stored with the image cannot be read ("
                               + (f"`{where}`: " if where else "") + f"{first['msg']}); save "
                               "the source's origin again and make a new image of it.") from None


def origin_document(origin: BaseModel) -> dict[str, Any]:
    """The origin as stored and shown: fields the client left out are left out."""
    if isinstance(origin, CycleUploadOrigin):
        # A source of uploads holds no token: each image gets its own, shown once when made.
        return {"type": "cycle-upload", "details": {"expires": ZERO_TIME, "token": ""}}
    return origin.model_dump(mode="json", exclude_none=True)


def split_secrets(document: Any, path: str = "") -> tuple[Any, dict[str, str]]:
    """Return the document with each secret blanked, and the secrets by JSON pointer."""
    if isinstance(document, dict):
        public: dict[str, Any] = {}
        secrets: dict[str, str] = {}
        for key, value in document.items():
            where = f"{path}/{key}"
            if key in SECRET_FIELDS and isinstance(value, str):
                public[key] = ""
                if value:
                    secrets[where] = value
            else:
                public[key], inner = split_secrets(value, where)
                secrets.update(inner)
        return public, secrets
    if isinstance(document, list):
        items, secrets = [], {}
        for index, value in enumerate(document):
            item, inner = split_secrets(value, f"{path}/{index}")
            items.append(item)
            secrets.update(inner)
        return items, secrets
    return document, {}


def merge_secrets(public: Any, secrets: dict[str, str], path: str = "") -> Any:
    """The inverse of `split_secrets`: the origin with its secrets back in place."""
    if isinstance(public, dict):
        return {k: secrets.get(f"{path}/{k}", v) if k in SECRET_FIELDS and isinstance(v, str)
                else merge_secrets(v, secrets, f"{path}/{k}") for k, v in public.items()}
    if isinstance(public, list):
        return [merge_secrets(v, secrets, f"{path}/{i}") for i, v in enumerate(public)]
    return public


def keep_unchanged_secrets(new: dict[str, str], blanked: dict[str, Any],
                           old: dict[str, str]) -> dict[str, str]:
    """On update, a secret sent back blank (as every response shows it) keeps its stored value."""
    kept = dict(new)
    for where in old:
        if where not in new and _blank_at(blanked, where):
            kept[where] = old[where]
    return kept


def destinations(origin: dict[str, Any]) -> dict[str, Any]:
    """Where an origin's secrets are sent: every `url` by JSON pointer, and the registry a
    docker-hub target names (its credentials go there)."""
    found = urls(origin)
    if origin.get("type") == "docker-hub":
        found["/details/target"] = registry_of((origin.get("details") or {}).get("target", ""))
    return found


def urls(document: Any, path: str = "") -> dict[str, Any]:
    """Every `url` in an origin by JSON pointer: the places its secrets are sent to."""
    if isinstance(document, dict):
        found: dict[str, Any] = {}
        for key, value in document.items():
            where = f"{path}/{key}"
            if key == "url":
                found[where] = value
            else:
                found.update(urls(value, where))
        return found
    if isinstance(document, list):
        return {k: v for i, item in enumerate(document) for k, v in urls(item, f"{path}/{i}").items()}
    return {}


def _blank_at(document: Any, where: str) -> bool:
    node = document
    for part in where.strip("/").split("/"):
        if isinstance(node, dict) and part in node:
            node = node[part]
        elif isinstance(node, list) and part.isdigit() and int(part) < len(node):
            node = node[int(part)]
        else:
            return False
    return node == ""


def registry_host(url: str) -> str:
    """`https://registry.example.com:5000/` → `registry.example.com:5000`, as the engine names it."""
    parts = urlsplit(url if "://" in url else f"https://{url}")
    host = parts.hostname or ""
    if ":" in host:  # IPv6 literal
        host = f"[{ipaddress.ip_address(host)}]"
    return f"{host}:{parts.port}" if parts.port else host

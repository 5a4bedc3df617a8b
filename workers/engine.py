"""The Docker engine, behind one adapter: the only module that imports `docker`.

Engine and registry faults become `EngineError`s with a message a person understands and a flag
saying whether trying again later may help.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import docker
import docker.errors
import requests.exceptions
from docker.utils import parse_repository_tag

from app.config import get_settings


class EngineError(Exception):
    def __init__(self, message: str, *, transient: bool = False):
        super().__init__(message)
        self.message = message
        self.transient = transient


@dataclass(frozen=True)
class RegistryAuth:
    username: str
    password: str
    server: str

    def config(self) -> dict[str, str]:
        return {"username": self.username, "password": self.password,
                "serveraddress": self.server}


class Engine:
    """One connection to a Docker engine (`DOCKER_HOST`), API version negotiated."""

    def __init__(self, base_url: str | None = None):
        settings = get_settings()
        self.base_url = base_url or settings.docker_host
        try:
            self.client = docker.DockerClient(base_url=self.base_url, version="auto",
                                              timeout=settings.engine_timeout_seconds)
        except docker.errors.DockerException as exc:
            raise _unavailable(self.base_url, exc) from None

    def __enter__(self) -> Engine:
        return self

    def __exit__(self, *exc: object) -> None:
        self.client.close()

    def pull(self, reference: str, auth: RegistryAuth | None) -> str:
        """Pull `reference` and return the image id the engine holds for it."""
        repository, tag = parse_repository_tag(reference)
        if not tag:
            tag = "latest"
        try:
            for event in self.client.api.pull(repository, tag=tag, stream=True, decode=True,
                                              auth_config=auth.config() if auth else None):
                if "error" in event:
                    raise pull_error(reference, event["error"], auth)
            separator = "@" if tag.startswith("sha256:") else ":"
            return self.client.api.inspect_image(f"{repository}{separator}{tag}")["Id"]
        except docker.errors.APIError as exc:
            raise pull_error(reference, exc.explanation or str(exc), auth) from None
        except (requests.exceptions.ConnectionError, requests.exceptions.Timeout,
                docker.errors.DockerException) as exc:
            raise _unavailable(self.base_url, exc) from None

    def inspect(self, image_id: str) -> dict[str, Any]:
        try:
            return self.client.api.inspect_image(image_id)
        except docker.errors.ImageNotFound:
            raise EngineError(f"The engine no longer holds image {image_id}.") from None
        except (requests.exceptions.RequestException, docker.errors.DockerException) as exc:
            raise _unavailable(self.base_url, exc) from None

    def tag(self, image_id: str, repository: str, tag: str) -> None:
        try:
            self.client.api.tag(image_id, repository, tag, force=True)
        except (requests.exceptions.RequestException, docker.errors.DockerException) as exc:
            raise _unavailable(self.base_url, exc) from None


def pull_error(reference: str, detail: str, auth: RegistryAuth | None) -> EngineError:
    """The engine's words for a failed pull, turned into the cause a person can act on."""
    text = detail.lower()
    if any(s in text for s in ("unauthorized", "authentication required", "no basic auth",
                               "denied", "incorrect username or password")):
        if auth is None:
            return EngineError(f"The registry requires credentials to pull `{reference}`, and "
                               f"the image source has none (registry said: {detail}).")
        return EngineError(f"The registry refused the credentials of the image source for "
                           f"`{reference}` (registry said: {detail}).")
    if any(s in text for s in ("manifest unknown", "not found", "does not exist",
                               "name unknown", "repository name not known")):
        return EngineError(f"The image `{reference}` does not exist in its registry, or that "
                           f"tag does not (registry said: {detail}).")
    if any(s in text for s in ("connection refused", "no such host", "timeout", "i/o timeout",
                               "dial tcp", "connection reset", "eof", "tls", "server gave http",
                               "service unavailable", "bad gateway", "500 internal")):
        return EngineError(f"The registry of `{reference}` could not be reached or did not "
                           f"answer properly: {detail}", transient=True)
    if "invalid reference format" in text:
        return EngineError(f"`{reference}` is not a valid image reference: {detail}")
    return EngineError(f"Pulling `{reference}` failed: {detail}")


def _unavailable(base_url: str, exc: Exception) -> EngineError:
    return EngineError(f"The Docker engine at {base_url} is not reachable "
                       f"({type(exc).__name__}).", transient=True)

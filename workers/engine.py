"""The Docker engine, behind one adapter: the only module that imports `docker`.

Engine and registry faults become `EngineError`s with a message a person understands and a flag
saying whether trying again later may help.
"""

from __future__ import annotations

import functools
import os
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import IO, Any

import docker
import docker.errors
import requests.exceptions
import urllib3.exceptions
from docker.utils import parse_repository_tag

from app.config import get_settings
from workers import cancellation
from workers.deadline import Deadline
from workers.faults import JobFailed


class EngineError(JobFailed):
    """An engine or registry fault. It is a `JobFailed`, so one that escapes a task (the engine
    away before any call) still ends the attempt with its message, retried when transient."""


@dataclass(frozen=True)
class RegistryAuth:
    username: str
    password: str
    server: str

    def config(self) -> dict[str, str]:
        return {"username": self.username, "password": self.password,
                "serveraddress": self.server}


PULL_ATTEMPTS = 3


@dataclass(frozen=True)
class Pulled:
    """What a pull left in the engine."""

    image_id: str
    name: str  # the engine's name for what was pulled: `repository:tag` or `repository@sha256:...`
    created: bool  # the pull made `name`: the engine did not hold it before


class PullProgress:
    """The bytes a pull downloaded, summed over its layers, from the engine's pull events.

    A layer counts once its size is known (its first `Downloading` event); one the engine holds
    already ("Already exists") counts as done and adds nothing, its size unknown; a layer whose
    download completed counts whole. So the total grows as layers are announced.
    """

    def __init__(self) -> None:
        self._layers: dict[str, tuple[int, int]] = {}  # layer id: (downloaded, size)

    @property
    def done(self) -> int:
        return sum(done for done, _ in self._layers.values())

    @property
    def total(self) -> int:
        return sum(size for _, size in self._layers.values())

    def feed(self, event: dict[str, Any]) -> bool:
        """Read one pull event; True when the count changed."""
        layer, status = event.get("id"), str(event.get("status", ""))
        if not layer or status.startswith("Pulling from"):
            return False
        before = self._layers.get(layer)
        detail = event.get("progressDetail") or {}
        if status == "Downloading" and detail.get("total"):
            self._layers[layer] = (int(detail.get("current") or 0), int(detail["total"]))
        elif status in ("Download complete", "Pull complete", "Already exists"):
            size = before[1] if before else 0
            self._layers[layer] = (size, size)
        return self._layers.get(layer) != before


def engine_name(reference: str) -> tuple[str, str, str]:
    """The repository, tag (or digest) and whole name under which the engine keeps a pull.

    A tag without a digest means `latest`; a reference with both is pulled, and named, by digest.
    """
    repository, tag = parse_repository_tag(reference)
    if tag and tag.startswith("sha256:"):
        named, _ = parse_repository_tag(repository)
        return named, tag, f"{named}@{tag}"
    tag = tag or "latest"
    return repository, tag, f"{repository}:{tag}"


# One client per engine and process: its API version is negotiated once and its connections are
# kept, instead of a version call and a new connection for every job.
_clients: dict[tuple[int, str, float], docker.DockerClient] = {}


def _connect(base_url: str, timeout: float) -> docker.DockerClient:
    return docker.DockerClient(base_url=base_url, version="auto", timeout=timeout)


def _client(base_url: str, timeout: float) -> docker.DockerClient:
    key = (os.getpid(), base_url, timeout)  # a forked child must not share its parent's sockets
    if key not in _clients:
        _clients[key] = _connect(base_url, timeout)
    return _clients[key]


def _stopped_when_cancelled(what: str) -> Callable[[Callable], Callable]:
    """An engine call that the attempt's cancellation cuts (its connections watched as a build's
    are): the engine gives up a pull whose client went away, and the call fails at once,
    saying that `what` was stopped.

    The process's shared client serves it, as every pull did before cancels: a connection cut
    leaves its pool, which opens a new one for the next call (urllib3 drops a pooled connection
    that its peer ended), so no job pays for a client of its own."""
    def decorate(method: Callable) -> Callable:
        @functools.wraps(method)
        def call(self: Engine, *args: Any, **kwargs: Any) -> Any:
            with Deadline(None) as deadline, _watched(self.client.api, deadline):
                try:
                    return method(self, *args, **kwargs)
                except Exception:
                    if deadline.cancelled:
                        raise cancellation.stopped(what) from None
                    raise
        return call
    return decorate


class Engine:
    """A Docker engine (`DOCKER_HOST`), through this process's client for it."""

    def __init__(self, base_url: str | None = None):
        settings = get_settings()
        self.base_url = base_url or settings.docker_host
        self.timeout = settings.engine_timeout_seconds
        try:
            self.client = _client(self.base_url, self.timeout)
        except docker.errors.DockerException as exc:
            raise _unavailable(self.base_url, exc) from None
        self._private = False
        self._inspected: dict[str, dict[str, Any]] = {}

    def __enter__(self) -> Engine:
        return self

    def __exit__(self, *exc: object) -> None:
        self._inspected.clear()
        if self._private:
            self.client.close()

    @_stopped_when_cancelled("The pull")
    def pull(self, reference: str, auth: RegistryAuth | None,
             on_progress: Callable[[int, int], None] | None = None) -> Pulled:
        """Pull `reference`: the image the engine holds for it, and whether the pull made its name.

        Another import on this node may remove the name between the pull and the inspect after
        it; the pull is then made again, up to `PULL_ATTEMPTS` times. `on_progress(done, total)`
        hears the bytes of the layers downloaded so far, as they change (`PullProgress`).
        """
        repository, tag, name = engine_name(reference)
        try:
            for _ in range(PULL_ATTEMPTS):
                before = self._id_of(name)
                status = ""
                progress = PullProgress()
                for event in self.client.api.pull(repository, tag=tag, stream=True, decode=True,
                                                  auth_config=auth.config() if auth else None):
                    if "error" in event:
                        raise pull_error(reference, event["error"], auth)
                    if progress.feed(event) and on_progress is not None:
                        on_progress(progress.done, progress.total)
                    if str(event.get("status", "")).startswith("Status:"):
                        status = event["status"]
                after = self._id_of(name)
                if after is None:
                    continue
                # The engine says whether this pull set the name ("Downloaded newer image") or
                # found it set ("Image is up to date"). The name is the pull's own when it was
                # absent before, or gone since `before` was read and set again by this pull; a
                # name that held another image (moved by the pull) was someone else's.
                set_by_pull = not status.startswith("Status: Image is up to date")
                return Pulled(after, name, set_by_pull and before in (None, after))
        except docker.errors.APIError as exc:
            raise pull_error(reference, exc.explanation or str(exc), auth) from None
        except (requests.exceptions.ConnectionError, requests.exceptions.Timeout,
                docker.errors.DockerException) as exc:
            raise _unavailable(self.base_url, exc) from None
        raise EngineError(f"`{reference}` was pulled but left the engine before it could be read, "
                          f"{PULL_ATTEMPTS} times: other work on this node removes it meanwhile.",
                          transient=True)

    def _id_of(self, name: str) -> str | None:
        try:
            attrs = self.client.api.inspect_image(name)
        except docker.errors.ImageNotFound:
            return None
        self._inspected[attrs["Id"]] = attrs  # what `inspect` answers next, without asking again
        return attrs["Id"]

    def login(self, auth: RegistryAuth) -> None:
        """Check credentials with their registry and keep them for this client's builds.

        A client that logs in is this job's alone: the process's shared one never holds a
        hub's credentials, so no later job can pull with them.
        """
        try:
            self._own_client()
            self.client.login(username=auth.username, password=auth.password,
                              registry=auth.server, reauth=True)
        except docker.errors.APIError as exc:
            raise EngineError(f"The registry {auth.server} refused the credentials of the image "
                              f"source ({exc.explanation or exc}).",
                              transient=_looks_unreachable(str(exc.explanation))) from None
        except (requests.exceptions.RequestException, docker.errors.DockerException) as exc:
            raise _unavailable(self.base_url, exc) from None

    def _own_client(self) -> None:
        """From here on, a client of this job's alone, closed with it: one that logs in, or whose
        connections a deadline (a build's, a cancel's) may cut."""
        if not self._private:
            try:
                self.client = _connect(self.base_url, self.timeout)
            except docker.errors.DockerException as exc:
                raise _unavailable(self.base_url, exc) from None
            self._private = True

    def build(self, context: IO[bytes], *, dockerfile: str, buildargs: dict[str, str],
              tag: str, cache_from: str, on_output: Callable[[str], None]) -> str:
        """Build a packed context; every line the engine prints goes to `on_output`.

        Every `FROM` (and `COPY --from`) image is pulled, with this client's logins only, so a
        build can use no image its hub could not pull itself, however the engine came to hold
        it. Cached steps come only from `cache_from`'s own history (the image's previous build):
        another hub's layers are not reused. The build is stopped after IMAGEJOBS_BUILD_TIMEOUT.
        Returns the id of the image, tagged `tag`; a failing step raises `BuildFailed` with the
        engine's words.
        """
        seconds = get_settings().build_timeout_seconds
        image_id = None
        try:
            self._own_client()
            with Deadline(seconds) as deadline, _watched(self.client.api, deadline):
                try:
                    for event in self.client.api.build(
                            fileobj=context, custom_context=True, dockerfile=dockerfile,
                            buildargs=buildargs, tag=tag, rm=True, forcerm=True, decode=True,
                            pull=True, cache_from=[cache_from]):
                        if "stream" in event:
                            on_output(event["stream"])
                        elif "status" in event and "progressDetail" not in event:
                            on_output(f"{event['status']} {event.get('id', '')}".rstrip() + "\n")
                        elif "error" in event:
                            on_output(f"ERROR: {event['error']}\n")
                            raise build_failed(event["error"].strip())
                        elif "ID" in (event.get("aux") or {}):
                            image_id = event["aux"]["ID"]
                except Exception:
                    if not deadline.cut_short:
                        raise
                if deadline.cancelled:
                    raise cancellation.stopped("The build")
                if deadline.passed:
                    message = (f"The build took longer than {seconds} seconds "
                               "(IMAGEJOBS_BUILD_TIMEOUT) and was stopped.")
                    on_output(f"ERROR: {message}\n")
                    raise BuildFailed(message)
            if image_id is None:
                raise BuildFailed("The engine ended the build without naming the image it made.",
                                  transient=True)
            return image_id
        except docker.errors.APIError as exc:
            raise build_failed((exc.explanation or str(exc)).strip()) from None
        except (requests.exceptions.ConnectionError, requests.exceptions.Timeout,
                urllib3.exceptions.HTTPError, docker.errors.DockerException) as exc:
            raise _unavailable(self.base_url, exc) from None

    def inspect(self, image_id: str) -> dict[str, Any]:
        if image_id in self._inspected:
            return self._inspected.pop(image_id)
        try:
            return self.client.api.inspect_image(image_id)
        except docker.errors.ImageNotFound:
            # Only other work on this node removes an image an import has just made; the next
            # attempt makes it again.
            raise EngineError(f"The engine no longer holds image {image_id}: it was removed "
                              "while this job ran.", transient=True) from None
        except (requests.exceptions.RequestException, docker.errors.DockerException) as exc:
            raise _unavailable(self.base_url, exc) from None

    def containers_using(self, image_id: str, tag: str) -> list[str]:
        """Names of the containers (running or not) that hold the image known by `tag`.

        A container holds it when it was made from that tag, or from the same image while `tag`
        is its last name (removing the tag would then remove the image under the container).
        """
        try:
            containers = self.client.api.containers(all=True)
            tags = self.client.api.inspect_image(image_id).get("RepoTags") or []
        except docker.errors.ImageNotFound:
            return []
        except (requests.exceptions.RequestException, docker.errors.DockerException) as exc:
            raise _unavailable(self.base_url, exc) from None
        last_name = not [t for t in tags if t != tag]
        names = {tag, tag.removesuffix(":latest")}
        return sorted(c["Names"][0].lstrip("/") if c.get("Names") else c["Id"][:12]
                      for c in containers
                      if c.get("ImageID") == image_id and (c.get("Image") in names or last_name))

    def untag(self, reference: str) -> None:
        """Remove one tag; the engine frees the image once no tag or container holds it.

        A reference already gone is fine: removing twice has the effect of once.
        """
        try:
            self.client.api.remove_image(reference, force=False, noprune=False)
        except docker.errors.ImageNotFound:
            return
        except docker.errors.APIError as exc:
            raise EngineError(f"The engine would not remove `{reference}`: "
                              f"{exc.explanation or exc}") from None
        except (requests.exceptions.RequestException, docker.errors.DockerException) as exc:
            raise _unavailable(self.base_url, exc) from None

    @_stopped_when_cancelled("The load of the uploaded image")
    def load(self, archive: IO[bytes]) -> str:
        """Load a `docker save` tar and return the id of the image it holds."""
        loaded: list[str] = []
        try:
            for event in self.client.api.load_image(archive):
                if "error" in event:
                    raise EngineError(f"The engine could not load the uploaded image: "
                                      f"{event['error']}")
                loaded.append(event.get("stream", ""))
        except docker.errors.APIError as exc:
            raise EngineError(f"The engine could not load the uploaded image: "
                              f"{exc.explanation or exc}") from None
        except (requests.exceptions.ConnectionError, requests.exceptions.Timeout,
                docker.errors.DockerException) as exc:
            raise _unavailable(self.base_url, exc) from None
        for line in loaded:
            line = line.strip()
            if line.startswith("Loaded image ID:"):
                return line.split(":", 1)[1].strip()
            if line.startswith("Loaded image:"):
                return self.inspect(line.split(":", 1)[1].strip())["Id"]
        raise EngineError("The uploaded tar holds no image the engine could load.")

    def tag(self, image_id: str, repository: str, tag: str) -> None:
        try:
            self.client.api.tag(image_id, repository, tag, force=True)
        except docker.errors.ImageNotFound:
            # Removed since it was pulled, by other work on this node: the next attempt pulls it
            # again.
            raise EngineError(f"The engine no longer holds image {image_id}: it was removed "
                              "before it could be tagged.", transient=True) from None
        except docker.errors.APIError as exc:
            raise EngineError(f"The engine would not tag image {image_id} as `{repository}:{tag}`: "
                              f"{exc.explanation or exc}") from None
        except (requests.exceptions.RequestException, docker.errors.DockerException) as exc:
            raise _unavailable(self.base_url, exc) from None


@contextmanager
def _watched(api: docker.APIClient, deadline: Deadline) -> Iterator[None]:
    """Have `deadline` watch the connection of every engine call made inside it.

    The engine cancels a build whose client went away (it kills the running step's container),
    and the read blocked on the build's output returns at once: a per-read timeout could not
    bound a step that prints a line now and then. The socket is found where the docker SDK
    itself finds it for attached streams.
    """
    def watch(response: requests.Response, *args: Any, **kwargs: Any) -> requests.Response:
        try:
            raw = response.raw._fp.fp.raw
        except AttributeError:  # a response already read whole: nothing left to cut
            return response
        deadline.watch(getattr(raw, "_sock", raw))
        return response

    api.hooks["response"].append(watch)
    try:
        yield
    finally:
        api.hooks["response"].remove(watch)


class BuildFailed(EngineError):
    """The build itself failed (a step, the Dockerfile, a base image): mostly not worth retrying."""


def build_failed(detail: str) -> BuildFailed:
    # The classic builder reads every child of a step's image while looking for a cached one;
    # when other work on the engine deletes one of those meanwhile, the build fails with this,
    # and building again works.
    return BuildFailed(detail, transient='unable to find image "sha256:' in detail)


def _looks_unreachable(text: str) -> bool:
    return any(s in text.lower() for s in _UNREACHABLE)


_UNREACHABLE = ("connection refused", "no such host", "timeout", "i/o timeout", "dial tcp",
                "connection reset", "eof", "tls", "server gave http", "service unavailable",
                "bad gateway", "500 internal")


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
    if _looks_unreachable(text):
        return EngineError(f"The registry of `{reference}` could not be reached or did not "
                           f"answer properly: {detail}", transient=True)
    if "invalid reference format" in text:
        return EngineError(f"`{reference}` is not a valid image reference: {detail}")
    return EngineError(f"Pulling `{reference}` failed: {detail}")


def _unavailable(base_url: str, exc: Exception) -> EngineError:
    return EngineError(f"The Docker engine at {base_url} is not reachable "
                       f"({type(exc).__name__}).", transient=True)

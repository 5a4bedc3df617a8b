"""The API's endpoints, called over HTTP with one hub's key; its errors as exceptions that say
what happened in the API's own words."""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import IO, Any

import requests

from app.client import sse
from app.client.settings import ClientSettings

# A long poll is answered after at most this many seconds; the read timeout allows for more.
WAIT_SECONDS = 30
# Seconds without a byte on a followed build log before the connection is thought lost: the API
# sends a keep-alive well within it.
STREAM_TIMEOUT = 60
CALL_TIMEOUT = 30


class ClientError(Exception):
    """Something a person is told in one line: the command exits non-zero."""


class ApiError(ClientError):
    """An answer in the API's error envelope."""

    def __init__(self, status: int, code: str, title: str, detail: str | None):
        self.status, self.code, self.title, self.detail = status, code, title, detail
        super().__init__(f"{code}: {detail or title}")


class Unreachable(ClientError):
    """The API could not be reached, or did not answer in time."""


class Api:
    """Calls to the API as the hub and key of `settings`."""

    def __init__(self, settings: ClientSettings):
        self.base = settings.api
        self.http = requests.Session()
        self.http.headers.update({"Authorization": f"Bearer {settings.key}",
                                  "X-Hub-Id": settings.hub, "Accept": "application/json"})

    def request(self, method: str, path: str, *, timeout: float = CALL_TIMEOUT,
                **kwargs: Any) -> requests.Response:
        """The answer; an ApiError for an error answer, Unreachable when none came."""
        url = self.base + path
        try:
            response = self.http.request(method, url, timeout=timeout, **kwargs)
        except requests.ConnectionError as exc:
            raise Unreachable(f"could not reach the API at {self.base}: {_reason(exc)}") from None
        except requests.Timeout:
            raise Unreachable(f"the API at {self.base} did not answer within {timeout:g} s"
                              ) from None
        except requests.RequestException as exc:
            raise Unreachable(f"could not call the API at {self.base}: {exc}") from None
        if response.status_code >= 400:
            raise _error(response)
        return response

    def data(self, method: str, path: str, **kwargs: Any) -> Any:
        return self.document(method, path, **kwargs)["data"]

    def document(self, method: str, path: str, **kwargs: Any) -> dict[str, Any]:
        """The whole JSON document of an answer."""
        response = self.request(method, path, **kwargs)
        try:
            return response.json()
        except ValueError:
            raise ClientError(f"the API at {self.base} answered {method.upper()} {path} with "
                              "something that is not JSON") from None

    # --- sources and images ------------------------------------------------------------------

    def create_source(self, name: str | None, origin: dict[str, Any]) -> dict[str, Any]:
        body: dict[str, Any] = {"type": "direct", "origin": origin}
        if name:
            body["name"] = name
        return self.document("post", "/v1/images/sources", json=body)

    def create_image(self, source_id: str, name: str | None = None,
                     build_args: dict[str, str] | None = None) -> dict[str, Any]:
        body: dict[str, Any] = {"source_id": source_id}
        if name:
            body["name"] = name
        if build_args:
            body["build"] = {"args": build_args}
        return self.document("post", "/v1/images", json=body)

    def import_image(self, image_id: str) -> dict[str, Any]:
        """The Job Descriptor document of the import."""
        return self.document("post", f"/v1/images/{image_id}/tasks", json={"action": "import"})

    def delete_image(self, image_id: str) -> dict[str, Any]:
        return self.document("delete", f"/v1/images/{image_id}")

    def prune(self, source_ids: list[str], dry_run: bool) -> dict[str, Any]:
        return self.document("post", "/v1/images/tasks", json={
            "action": "prune", "contents": {"source_ids": source_ids, "dry_run": dry_run}})

    def upload(self, image_id: str, token: str, path: Path,
               sent: Callable[[int, int], None]) -> dict[str, Any]:
        """Send the image tar at `path` as the upload's raw body; `sent(bytes, total)` is told
        as it goes. The Job Descriptor document of the import it starts."""
        with open(path, "rb") as tar:
            body = _Counted(tar, path.stat().st_size, sent)
            return self.document(
                "post", f"/v1/images/{image_id}/upload", params={"token": token}, data=body,
                headers={"Content-Type": "application/octet-stream"},
                # The API checks the whole tar before it answers: seconds for a large one.
                timeout=(CALL_TIMEOUT, 600))

    # --- jobs --------------------------------------------------------------------------------

    def job(self, job_id: str, seen: str | None = None, wait: float = WAIT_SECONDS
            ) -> tuple[dict[str, Any], str | None]:
        """The job document once it differs from the version `seen` (an ETag), or after
        `wait` seconds as it is then; and its ETag."""
        headers = {"If-None-Match": seen} if seen else {}
        response = self.request("get", f"/v1/jobs/{job_id}", params={"wait": f"{wait:g}"},
                                headers=headers, timeout=(CALL_TIMEOUT, wait + CALL_TIMEOUT))
        return response.json(), response.headers.get("ETag")

    def cancel_job(self, job_id: str) -> dict[str, Any]:
        return self.document("post", f"/v1/jobs/{job_id}/tasks", json={"action": "cancel"})

    # --- build logs --------------------------------------------------------------------------

    def build_log_events(self, image_id: str, offset: int = 0) -> Iterator[sse.Event]:
        """The build log past `offset` as it grows (`{"offset", "text"}` events), then its `end`
        event; the stream is closed when the caller stops reading."""
        response = self.request(
            "get", f"/v1/images/{image_id}/build-log", params={"follow": "true"},
            headers={"Accept": "text/event-stream", "Last-Event-ID": str(offset)}, stream=True,
            timeout=(CALL_TIMEOUT, STREAM_TIMEOUT))
        try:
            # chunk_size=None: each piece as it arrives, not once a buffer fills.
            lines = response.iter_lines(chunk_size=None, decode_unicode=True)
            yield from sse.events(_unbroken(lines, self.base))
        finally:
            response.close()


def parse_event(event: sse.Event) -> dict[str, Any]:
    try:
        return json.loads(event.data)
    except ValueError:
        raise ClientError(f"the API sent a {event.event} event that is not JSON") from None


class _Counted:
    """A file read for a request body, telling how much of it was read."""

    def __init__(self, file: IO[bytes], size: int, sent: Callable[[int, int], None]):
        self.file, self.size, self.sent, self.done = file, size, sent, 0

    def __len__(self) -> int:  # requests sends it with a Content-Length, not chunked
        return self.size

    def read(self, amount: int = -1) -> bytes:
        block = self.file.read(amount)
        self.done += len(block)
        self.sent(self.done, self.size)
        return block


def _unbroken(lines: Iterator[str], base: str) -> Iterator[str]:
    """The lines of a stream; a connection lost midway is Unreachable, not a traceback."""
    try:
        yield from lines
    except requests.RequestException as exc:
        raise Unreachable(f"lost the connection to the API at {base}: {_reason(exc)}") from None


def _reason(exc: requests.RequestException) -> str:
    text = str(exc)
    for known in ("Connection refused", "Name or service not known", "timed out",
                  "No route to host", "Connection reset by peer"):
        if known in text:
            return known.lower()
    return type(exc).__name__


def _error(response: requests.Response) -> ClientError:
    """The envelope `{"error": {"status", "code", "title", "detail"}}` as an ApiError; an
    answer without one (a proxy's page) by its status."""
    try:
        error = response.json()["error"]
        return ApiError(int(error.get("status") or response.status_code), str(error["code"]),
                        str(error.get("title") or ""), error.get("detail"))
    except (ValueError, KeyError, TypeError):
        return ClientError(f"the API at {response.url.split('?', 1)[0]} answered "
                           f"{response.status_code} {response.reason}")

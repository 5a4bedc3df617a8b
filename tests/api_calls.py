"""Calls to the API the tests share: a tenant (a hub with a key) and the test client authenticated
as it, then making sources and images, importing them and reading errors."""

from __future__ import annotations

import time
import uuid
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import requests

from app.db import transaction
from app.hubs.services import create_hub, create_key
from app.images.models import Image, engine_tag
from app.sources.models import ImageSource
from tests.services import AUTH_REGISTRY, REGISTRY

ZERO_TIME = "0001-01-01T00:00:00Z"
ENDED = ("completed", "error", "expired")


@dataclass
class Tenant:
    """A hub with a key; `headers` authenticate as it."""

    hub_id: str
    key_id: str
    secret: str

    @property
    def headers(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.secret}", "X-Hub-Id": self.hub_id}


def make_tenant(*capabilities: str) -> Tenant:
    with transaction() as session:
        hub = create_hub(session, f"hub-{uuid.uuid4().hex[:8]}")
        key, secret = create_key(session, hub.id, "test key", capabilities)
        return Tenant(hub.id, key.id, secret)


class Api:
    """The Flask test client, authenticated as one tenant."""

    def __init__(self, client, tenant: Tenant):
        self.client = client
        self.tenant = tenant

    def __getattr__(self, method: str):
        def call(path: str, **kwargs):
            headers = {**self.tenant.headers, **kwargs.pop("headers", {})}
            return getattr(self.client, method)(path, headers=headers, **kwargs)
        return call

    def wait_for_job(self, job_id: str, timeout: float = 120) -> dict:
        deadline = time.monotonic() + timeout
        while True:
            job = self.get(f"/v1/jobs/{job_id}").get_json()["data"]
            if job["state"]["current"] in ENDED:
                return job
            if time.monotonic() > deadline:
                raise AssertionError(f"job {job_id} still {job['state']['current']}: {job}")
            time.sleep(0.2)


class Http:
    """Calls to a real API (a process the test started, at `base`) as one tenant."""

    def __init__(self, base: str, tenant: Tenant):
        self.base = base
        self.tenant = tenant

    def call(self, method: str, path: str, **kwargs: Any) -> requests.Response:
        headers = {**self.tenant.headers, **kwargs.pop("headers", {})}
        return requests.request(method, self.base + path, headers=headers, timeout=70, **kwargs)

    def created(self, method: str, path: str, body: dict[str, Any]) -> dict[str, Any]:
        response = self.call(method, path, json=body)
        assert response.status_code in (200, 201, 202), response.text
        return response.json()["data"]

    def source(self, origin: dict[str, Any], name: str = "followed") -> str:
        return self.created("post", "/v1/images/sources",
                            {"type": "direct", "name": name, "origin": origin})["id"]

    def image(self, source_id: str) -> str:
        return self.created("post", "/v1/images", {"source_id": source_id})["id"]

    def job_of(self, method: str, path: str, body: dict[str, Any] | None = None) -> str:
        response = self.call(method, path, json=body)
        assert response.status_code == 202, response.text
        return response.json()["data"]["job"]["id"]

    def wait_for_job(self, job_id: str, timeout: float = 120) -> dict[str, Any]:
        """The job once it ended, followed by long polls rather than polled."""
        deadline = time.monotonic() + timeout
        tag = None
        while time.monotonic() < deadline:
            response = self.call("get", f"/v1/jobs/{job_id}?wait=10",
                                 headers={"If-None-Match": tag} if tag else {})
            assert response.status_code == 200, response.text
            job, tag = response.json()["data"], response.headers["ETag"]
            if job["state"]["current"] in ENDED:
                return job
        raise AssertionError(f"job {job_id} did not end within {timeout} s")

    def token(self) -> str:
        response = self.call("get", "/v1/hubs/current/notifications")
        assert response.status_code == 200, response.text
        return response.json()["data"]["token"]


def registry_origin(target: str, url: str = REGISTRY, **credentials: str) -> dict[str, Any]:
    """A `docker-registry` origin; `credentials` are `username`, `password` or `token`."""
    return {"type": "docker-registry",
            "details": {"url": f"http://{url}", "target": target, **credentials}}


def oci_origin(target: str, url: str = AUTH_REGISTRY, **user: str) -> dict[str, Any]:
    """An `oci-registry` origin with `user` auth (`username`, `token`) when given."""
    details: dict[str, Any] = {"url": f"http://{url}", "target": target}
    if user:
        details["auth"] = {"type": "user", "details": user}
    return {"type": "oci-registry", "details": details}


def repository_path(reference: str) -> str:
    """`127.0.0.1:5000/tests/app:v1` → `tests/app:v1`: the target as a registry source names it."""
    return reference.partition("/")[2]


def create_source(api, origin: dict[str, Any], **fields: Any) -> dict[str, Any]:
    response = api.post("/v1/images/sources", json={"type": "direct", "origin": origin, **fields})
    assert response.status_code == 201, response.get_json()
    return response.get_json()["data"]


def create_image(api, source_id: str, **fields: Any) -> dict[str, Any]:
    response = api.post("/v1/images", json={"source_id": source_id, **fields})
    assert response.status_code == 201, response.get_json()
    return response.get_json()["data"]


def image_from(api, origin: dict[str, Any], **fields: Any) -> dict[str, Any]:
    """A new image of a new source with `origin`."""
    return create_image(api, create_source(api, origin)["id"], **fields)


def import_image(api, image_id: str) -> dict[str, Any]:
    """Queue the import; returns the Job Descriptor."""
    response = api.post(f"/v1/images/{image_id}/tasks", json={"action": "import"})
    assert response.status_code == 202, response.get_json()
    return response.get_json()["data"]


def import_and_wait(api, image_id: str) -> dict[str, Any]:
    """Import the image and wait for its job to end; returns the job document."""
    return api.wait_for_job(import_image(api, image_id)["job"]["id"])


def get_image(api, image_id: str) -> dict[str, Any]:
    response = api.get(f"/v1/images/{image_id}")
    assert response.status_code == 200, response.get_json()
    return response.get_json()["data"]


def listed_ids(response) -> list[str]:
    assert response.status_code == 200, response.get_json()
    return [item["id"] for item in response.get_json()["data"]]


def assert_error(response, status: int, code: str, source: str | None = None) -> dict[str, Any]:
    """The response is the spec's error envelope with this status and code (never HTML or a 500).

    Returns its `error`; `source`, when given, is the JSON pointer it must name.
    """
    assert response.status_code == status, response.get_data(as_text=True)
    assert response.is_json, response.get_data(as_text=True)
    document = response.get_json()
    assert set(document) == {"error", "data"} and document["data"] is None
    error = document["error"]
    assert error["status"] == status and error["code"] == code and error["title"]
    if source is not None:
        assert error["source"] == source
    return error


def parse_time(value: str) -> datetime:
    assert value != ZERO_TIME, "an event that happened has a real time"
    return datetime.fromisoformat(value)


def assert_live_in_engine(image: dict, docker_client) -> None:
    """Live, with no error, and held as `assert_held_by_engine` says."""
    assert image["state"]["current"] == "live"
    assert "error" not in image["state"]
    assert_held_by_engine(image, docker_client)


def assert_held_by_engine(image: dict, docker_client) -> None:
    """This node's engine holds the image under `imagejobs/<id>:latest`; size and ids are its own."""
    held = docker_client.images.get(image["backend"]["file_name"])
    assert image["backend"] == {"provider": "docker", "size": held.attrs["Size"],
                                "file_name": ":".join(engine_tag(image["id"])),
                                "file_id": held.id}
    assert image["size"] == held.attrs["Size"]
    assert image["factory"]["node_id"] == "test-node"


def assert_failed(job: dict, image: dict, *words: str) -> None:
    """The job ended in error saying `words`, and the image rests in `new` showing the same."""
    assert job["state"]["current"] == "error"
    message = job["state"]["error"]["message"]
    assert all(word in message for word in words), message
    assert job["tasks"][0]["error"]["message"] == message
    assert image["state"]["current"] == "new"
    assert image["state"]["error"]["message"] == message
    assert image["backend"]["file_name"] == ""


def stored_image(tenant: Tenant) -> str:
    """An image (and its source) put straight into the database, for tests that drive jobs
    themselves; returns its id."""
    with transaction() as session:
        source = ImageSource(hub_id=tenant.hub_id, name="s", identifier="s",
                             origin={"type": "none"}, creator_type="api-key",
                             creator_id=tenant.key_id)
        session.add(source)
        session.flush()
        image = Image(hub_id=tenant.hub_id, source_id=source.id, name="i",
                      origin=source.origin, creator_type="api-key", creator_id=tenant.key_id)
        session.add(image)
        session.flush()
        return image.id

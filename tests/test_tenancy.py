"""Tenancy and capabilities, over every endpoint the API serves.

The routes come from Flask's url_map, so a new endpoint cannot be forgotten: every test below is
parametrized by them, and one fails while a /v1 route is missing from `MATRIX`.

Two hubs hold the same kinds of resources (a registry source with a live image, a Dockerfile
source with a built image and its build log, an upload image with its token, their jobs). With a
key of hub A, every probe aimed at one of hub B's resources must be answered exactly as the same
probe aimed at a well-formed value that exists nowhere, must name nothing of hub B, and must
leave hub B's rows in Postgres as they were.
"""

from __future__ import annotations

import contextlib
import json
import re
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

import docker.errors
import pytest
from sqlalchemy import select

from app import create_app
from app.db import new_id, transaction
from app.hubs.models import Capability
from app.hubs.services import create_key
from app.images.models import BuildLogChunk, engine_tag
from app.models import BuildLog, Image, ImageSource, Job
from tests.api_calls import (
    Api,
    Tenant,
    assert_error,
    create_image,
    create_source,
    import_image,
    make_tenant,
    registry_origin,
)
from tests.image_builds import dockerfile_context
from tests.servers import FileServer
from tests.services import BASE_IMAGE

SOURCES, IMAGES, JOBS = "/v1/images/sources", "/v1/images", "/v1/jobs"
NOTIFICATIONS = "/v1/hubs/current/notifications"
EVERY_SOURCE_STATE = "filter[state]=live,deleting,deleted"
EVERY_IMAGE_STATE = ("filter[state]=new,uploading,downloading,building,verifying,saving,live,"
                     "deleting,deleted")


# --- the matrix ----------------------------------------------------------------------------------


@dataclass(frozen=True)
class Call:
    """One request; `{v}` in the path or the body is replaced by a probe's value."""

    method: str
    path: str
    json: Any = None
    data: bytes | None = None
    headers: dict[str, str] = field(default_factory=dict)

    def send(self, client, headers: dict[str, str], value: str = "", token: str = ""):
        kwargs: dict[str, Any] = {"headers": {**headers, **self.headers}}
        if self.json is not None:
            kwargs["json"] = _fill(self.json, value, token)
        if self.data is not None:
            kwargs["data"] = self.data
        return getattr(client, self.method)(_fill(self.path, value, token), **kwargs)


def _fill(template: Any, value: str, token: str) -> Any:
    if isinstance(template, str):
        return template.replace("{v}", value).replace("{token}", token)
    if isinstance(template, dict):
        return {k: _fill(v, value, token) for k, v in template.items()}
    if isinstance(template, list):
        return [_fill(v, value, token) for v in template]
    return template


@dataclass(frozen=True)
class Probe:
    """A request aimed at one of hub B's values (`aims_at`, an attribute of `Hub.values`)."""

    call: Call
    aims_at: str

    @property
    def name(self) -> str:
        return f"{self.call.method.upper()} {self.call.path} <- {self.aims_at}"


@dataclass(frozen=True)
class Endpoint:
    """How an endpoint authenticates, and what proves its gates.

    `auth` is `key` (a hub's API key holding `capability`), `upload-token` (the image's single-use
    token, no key) or `public`. `happy` builds, in a hub, a request that succeeds with `status`.
    """

    auth: str
    capability: str | None = None
    status: int = 200
    happy: Callable[[Hub], Call] | None = None
    probes: tuple[Probe, ...] = ()
    # What the happy request also needs, checked once the route's own capability is: retrying a
    # job needs the capability of the call that made it.
    also: tuple[str, ...] = ()


PUBLIC = Endpoint("public")
# Served by some builds of the API and not others: public when present, not required.
OPTIONAL = {("GET", "/v1/openapi.json")}
NONE_SOURCE = {"type": "direct", "origin": {"type": "none"}}


def get(path: str, aims_at: str) -> Probe:
    return Probe(Call("get", path), aims_at)


MATRIX: dict[tuple[str, str], Endpoint] = {
    ("GET", "/v1/health"): PUBLIC,
    ("GET", "/v1/ready"): PUBLIC,
    ("GET", "/v1/openapi.json"): PUBLIC,
    ("GET", SOURCES): Endpoint(
        "key", "images-sources-view", 200, lambda h: Call("get", SOURCES), (
            get(SOURCES + "?filter[search]={v}", "source_id"),
            get(SOURCES + "?filter[search]={v}", "source_name"),
            get(SOURCES + "?filter[identifier]={v}", "source_identifier"),
            get(SOURCES + f"?{EVERY_SOURCE_STATE}&filter[search]={{v}}&include=creators"
                "&meta=images_count", "source_id"),
        )),
    ("POST", SOURCES): Endpoint(
        "key", "images-sources-manage", 201, lambda h: Call("post", SOURCES, NONE_SOURCE), (
            # A reference to another source inside an origin is only text, kept as sent.
            Probe(Call("post", SOURCES, {"type": "direct", "name": "copy", "origin": {
                "type": "docker-registry", "details": {
                    "existing": {"source_id": "{v}"}, "url": "http://127.0.0.1:5000",
                    "target": "team/app:v1"}}}), "source_id"),
        )),
    ("GET", SOURCES + "/{id}"): Endpoint(
        "key", "images-sources-view", 200, lambda h: Call("get", f"{SOURCES}/{h.source['id']}"), (
            get(SOURCES + "/{v}", "source_id"),
            get(SOURCES + "/{v}?include=creators&meta=images_count", "source_id"),
            get(SOURCES + "/{v}?include=integrations&page[size]=1", "source_id"),
        )),
    ("PATCH", SOURCES + "/{id}"): Endpoint(
        "key", "images-sources-manage", 200,
        lambda h: Call("patch", f"{SOURCES}/{h.fresh_source()}", {"name": "renamed"}), (
            Probe(Call("patch", SOURCES + "/{v}", {"name": "taken over"}), "source_id"),
        )),
    ("DELETE", SOURCES + "/{id}"): Endpoint(
        "key", "images-sources-manage", 202,
        lambda h: Call("delete", f"{SOURCES}/{h.fresh_source()}"), (
            Probe(Call("delete", SOURCES + "/{v}"), "source_id"),
        )),
    ("GET", IMAGES): Endpoint(
        "key", "images-view", 200, lambda h: Call("get", IMAGES), (
            get(IMAGES + "?filter[search]={v}", "image_id"),
            get(IMAGES + "?filter[search]={v}", "image_name"),
            get(IMAGES + "?filter[search]={v}", "image_file_name"),
            get(IMAGES + "?filter[source_id]={v}", "source_id"),
            get(IMAGES + "?filter[identifier]={v}", "source_identifier"),
            get(IMAGES + f"?{EVERY_IMAGE_STATE}&filter[search]={{v}}&include=creators,sources",
                "built_image_id"),
            get(IMAGES + "?meta=containers_count&filter[search]={v}", "image_id"),
        )),
    ("POST", IMAGES): Endpoint(
        "key", "images-manage", 201, lambda h: Call("post", IMAGES, {"source_id": h.fresh_source()}), (
            Probe(Call("post", IMAGES, {"source_id": "{v}"}), "source_id"),
            Probe(Call("post", IMAGES, {"source_id": "{v}"}), "upload_source_id"),
        )),
    ("GET", IMAGES + "/{id}"): Endpoint(
        "key", "images-view", 200, lambda h: Call("get", f"{IMAGES}/{h.built_image['id']}"), (
            get(IMAGES + "/{v}", "image_id"),
            get(IMAGES + "/{v}?include=creators,sources", "built_image_id"),
            get(IMAGES + "/{v}?include=stacks,stack_builds,integrations&sort=-id", "image_id"),
            get(IMAGES + "/{v}?meta=containers_count", "image_id"),
        )),
    ("PATCH", IMAGES + "/{id}"): Endpoint(
        "key", "images-manage", 200,
        lambda h: Call("patch", f"{IMAGES}/{h.fresh_image()}", {"name": "renamed"}), (
            Probe(Call("patch", IMAGES + "/{v}", {"name": "taken over"}), "image_id"),
        )),
    ("DELETE", IMAGES + "/{id}"): Endpoint(
        "key", "images-manage", 202, lambda h: Call("delete", f"{IMAGES}/{h.fresh_image()}"), (
            Probe(Call("delete", IMAGES + "/{v}"), "image_id"),
            Probe(Call("delete", IMAGES + "/{v}"), "upload_image_id"),
        )),
    ("POST", IMAGES + "/{id}/tasks"): Endpoint(
        "key", "images-import", 202,
        lambda h: Call("post", f"{IMAGES}/{h.fresh_image(absent=True)}/tasks", {"action": "import"}), (
            Probe(Call("post", IMAGES + "/{v}/tasks", {"action": "import"}), "image_id"),
            Probe(Call("post", IMAGES + "/{v}/tasks", {"action": "import"}), "built_image_id"),
        )),
    ("POST", IMAGES + "/tasks"): Endpoint(
        "key", "images-manage", 202, lambda h: Call("post", IMAGES + "/tasks", {
            "action": "prune", "contents": {"source_ids": [h.fresh_source()]}}), (
            Probe(Call("post", IMAGES + "/tasks", {
                "action": "prune", "contents": {"source_ids": ["{v}"]}}), "source_id"),
            Probe(Call("post", IMAGES + "/tasks", {
                "action": "prune", "contents": {"source_ids": ["{v}"], "dry_run": True}}),
                "build_source_id"),
        )),
    ("POST", IMAGES + "/{id}/upload"): Endpoint(
        # Past the token check, an empty body is the first thing refused.
        "upload-token", None, 422, lambda h: Call(
            "post", f"{IMAGES}/{h.upload_image['id']}/upload?token={h.upload_token}", data=b"",
            headers={"Content-Type": "application/x-tar"}), (
            # Hub B's own token, sent for hub A: no image of hub A answers to it.
            Probe(Call("post", IMAGES + "/{v}/upload?token={token}", data=b"x",
                       headers={"Content-Type": "application/x-tar"}), "upload_image_id"),
            Probe(Call("post", IMAGES + "/{v}/upload?token=guessed", data=b"x",
                       headers={"Content-Type": "application/x-tar"}), "upload_image_id"),
        )),
    ("GET", IMAGES + "/{id}/build-log"): Endpoint(
        "key", "images-view", 200,
        lambda h: Call("get", f"{IMAGES}/{h.built_image['id']}/build-log"), (
            get(IMAGES + "/{v}/build-log", "built_image_id"),
            get(IMAGES + "/{v}/build-log?offset=0", "built_image_id"),
            get(IMAGES + "/{v}/build-log?follow=true", "built_image_id"),
        )),
    ("GET", JOBS): Endpoint(
        "key", "apionly-jobs-view", 200, lambda h: Call("get", JOBS), (
            get(JOBS + "?filter[search]={v}", "job_id"),
            get(JOBS + "?filter[search]={v}", "image_id"),
            get(JOBS + "?filter[search]={v}", "image_name"),
            get(JOBS + "?filter[state]=completed,error&filter[search]={v}&include=creators",
                "build_job_id"),
        )),
    ("GET", JOBS + "/latest"): Endpoint(
        "key", "apionly-jobs-view", 200, lambda h: Call("get", JOBS + "/latest"), (
            get(JOBS + "/latest?include=creators", "job_id"),
        )),
    ("GET", JOBS + "/{id}"): Endpoint(
        "key", "apionly-jobs-view", 200, lambda h: Call("get", f"{JOBS}/{h.jobs[0]}"), (
            get(JOBS + "/{v}", "job_id"),
            get(JOBS + "/{v}", "build_job_id"),
            get(JOBS + "/{v}?wait=0.2", "job_id"),
        )),
    ("POST", JOBS + "/{id}/tasks"): Endpoint(
        "key", "apionly-jobs-view", 202,
        lambda h: Call("post", f"{JOBS}/{h.failed_import()}/tasks", {"action": "retry"}), (
            Probe(Call("post", JOBS + "/{v}/tasks", {"action": "retry"}), "job_id"),
            Probe(Call("post", JOBS + "/{v}/tasks", {"action": "cancel"}), "build_job_id"),
        ), also=("images-import",)),
    ("GET", NOTIFICATIONS): Endpoint(
        "key", "apionly-notifications-listen", 200, lambda h: Call("get", NOTIFICATIONS), (
            # A token is the key's id, an expiry and a signature: another hub's key id opens
            # nothing without the signature only that key's hash makes.
            get(NOTIFICATIONS + "?token={v}.9999999999.forged", "key_id"),
        )),
}


def served_routes() -> list[tuple[str, str]]:
    """Every /v1 method and path the API serves, path parameters written `{id}`."""
    app = create_app()
    return sorted({(method, re.sub(r"<[^>]+>", "{id}", rule.rule))
                   for rule in app.url_map.iter_rules() if rule.rule.startswith("/v1/")
                   for method in rule.methods - {"HEAD", "OPTIONS"}})


ROUTES = served_routes()


def entry(route: tuple[str, str]) -> Endpoint:
    assert route in MATRIX, f"{route[0]} {route[1]} is served but missing from the tenancy matrix"
    return MATRIX[route]


def routes_with(auth: str) -> list[tuple[str, str]]:
    """The routes opened by `auth`; a route missing from the matrix is listed with `key`, to fail."""
    return [r for r in ROUTES if MATRIX.get(r, Endpoint("key")).auth == auth]


def route_id(route: tuple[str, str]) -> str:
    return f"{route[0]} {route[1]}"


PROBES = [(route, probe) for route in ROUTES for probe in MATRIX.get(route, PUBLIC).probes]


def test_every_served_route_is_in_the_matrix_and_every_entry_is_served():
    served = set(ROUTES)
    assert [route_id(r) for r in ROUTES if r not in MATRIX] == []
    assert [route_id(r) for r in set(MATRIX) - served - OPTIONAL] == []


def test_every_route_a_key_opens_is_probed_across_hubs():
    assert [route_id(r) for r in ROUTES if entry(r).auth != "public"
            and not entry(r).probes] == []


# --- two hubs ------------------------------------------------------------------------------------


@dataclass
class Hub:
    """One hub's resources, made through the API with a key holding every capability."""

    api: Api
    source: dict[str, Any]
    image: dict[str, Any]
    build_source: dict[str, Any]
    built_image: dict[str, Any]
    upload_source: dict[str, Any]
    upload_image: dict[str, Any]
    upload_token: str
    jobs: list[str]
    build_log_id: str = ""

    @property
    def tenant(self) -> Tenant:
        return self.api.tenant

    @property
    def values(self) -> dict[str, str]:
        """What a probe may aim at, by name."""
        return {
            "source_id": self.source["id"], "source_name": self.source["name"],
            "source_identifier": self.source["identifier"],
            "build_source_id": self.build_source["id"],
            "upload_source_id": self.upload_source["id"],
            "image_id": self.image["id"], "image_name": self.image["name"],
            "image_file_name": engine_tag(self.image["id"])[0],
            "built_image_id": self.built_image["id"], "upload_image_id": self.upload_image["id"],
            "job_id": self.jobs[0], "build_job_id": self.jobs[1],
            "key_id": self.tenant.key_id,
        }

    @property
    def identifiers(self) -> set[str]:
        """Everything that would betray this hub in another hub's answer."""
        return {*self.values.values(), self.tenant.hub_id, self.tenant.key_id, self.build_log_id,
                self.upload_token, self.built_image["name"]}

    def fresh_source(self) -> str:
        return create_source(self.api, NONE_SOURCE["origin"])["id"]

    def fresh_image(self, absent: bool = False) -> str:
        """A new image; `absent`: of a registry source whose target does not exist (an import
        of it ends in an error and leaves nothing in the engine)."""
        origin = registry_origin("imagejobs-tests/absent:none") if absent else NONE_SOURCE["origin"]
        return create_image(self.api, create_source(self.api, origin)["id"])["id"]

    def failed_import(self) -> str:
        """A job that ended in error: the import of an image the registry does not have."""
        job_id = import_image(self.api, self.fresh_image(absent=True))["job"]["id"]
        assert self.api.wait_for_job(job_id)["state"]["current"] == "error"
        return job_id


def populate(api: Api, label: str, files: FileServer) -> Hub:
    tag = f"{label}-{uuid.uuid4().hex[:10]}"
    source = create_source(api, registry_origin("library/busybox:latest"), name=f"registry-{tag}",
                           identifier=f"registry-id-{tag}")
    image = create_image(api, source["id"], name=f"image-{tag}")
    dockerfile = f"FROM {BASE_IMAGE}\nLABEL org.example.hub={label}\n"
    build_source = create_source(api, {"type": "docker-file", "details": {
        "targz_url": files.add(f"/{tag}.tar.gz", dockerfile_context(dockerfile))}},
        name=f"build-{tag}", identifier=f"build-id-{tag}")
    built_image = create_image(api, build_source["id"], name=f"built-{tag}")
    upload_source = create_source(api, {"type": "cycle-upload"}, name=f"upload-{tag}",
                                  identifier=f"upload-id-{tag}")
    upload_image = create_image(api, upload_source["id"], name=f"upload-image-{tag}")
    token = upload_image["source"]["details"]["origin"]["details"]["token"]
    jobs = [import_image(api, i["id"])["job"]["id"] for i in (image, built_image)]
    return Hub(api, source, image, build_source, built_image, upload_source, upload_image, token,
               jobs)


def finish(hub: Hub) -> Hub:
    """Wait for the hub's imports; refresh what they changed."""
    for job_id in hub.jobs:
        job = hub.api.wait_for_job(job_id)
        assert job["state"]["current"] == "completed", job
    hub.image = hub.api.get(f"{IMAGES}/{hub.image['id']}").get_json()["data"]
    hub.built_image = hub.api.get(f"{IMAGES}/{hub.built_image['id']}").get_json()["data"]
    build_log = hub.api.get(f"{IMAGES}/{hub.built_image['id']}/build-log")
    assert build_log.status_code == 200, build_log.get_json()
    hub.build_log_id = build_log.get_json()["data"]["id"]
    return hub


@dataclass
class Hubs:
    a: Hub
    b: Hub


@pytest.fixture(scope="module")
def hubs(app, worker, docker_client) -> Iterator[Hubs]:
    files = FileServer()
    client = app.test_client()
    a, b = (populate(Api(client, make_tenant()), label, files) for label in ("a", "b"))
    yield Hubs(finish(a), finish(b))
    files.close()
    for hub in (a, b):  # leave the shared engine as found
        for image in (hub.image, hub.built_image):
            with contextlib.suppress(docker.errors.ImageNotFound):
                docker_client.images.remove(image["backend"]["file_name"])


def rows_of(hub_id: str) -> list[tuple]:
    """Every row of the hub's sources, images, jobs and build logs, as stored."""
    with transaction() as session:
        return [tuple(row) for model in (ImageSource, Image, Job, BuildLog)
                for row in session.execute(select(model.__table__).where(model.hub_id == hub_id)
                                           .order_by(model.id))] + [
            tuple(row) for row in session.execute(
                select(BuildLogChunk.__table__)
                .where(BuildLogChunk.image_id.in_(select(Image.id).where(Image.hub_id == hub_id)))
                .order_by(BuildLogChunk.image_id, BuildLogChunk.start))]


# --- tenancy -------------------------------------------------------------------------------------


def answer(response, value: str) -> tuple[int, Any]:
    """Status and body, the probed value written `<value>`, and the ids and times a successful
    create makes written alike (two creates never share them)."""
    text = response.get_data(as_text=True).replace(value, "<value>")
    text = re.sub(r"\b[0-9a-f]{24}\b", "<id>", text)
    text = re.sub(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d(\.\d+)?Z", "<time>", text)
    return response.status_code, json.loads(text)


def missing_like(name: str) -> str:
    """A well-formed value of the same kind that exists in no hub."""
    return new_id() if name.endswith("_id") else f"absent-{uuid.uuid4().hex[:10]}"


@pytest.mark.parametrize("route, probe", PROBES, ids=[p.name for _, p in PROBES])
def test_another_hubs_resource_is_answered_like_one_that_exists_nowhere(hubs, route, probe):
    a, b = hubs.a, hubs.b
    value, missing = b.values[probe.aims_at], missing_like(probe.aims_at)
    before = rows_of(b.tenant.hub_id)

    foreign = probe.call.send(a.api.client, a.tenant.headers, value, b.upload_token)
    nowhere = probe.call.send(a.api.client, a.tenant.headers, missing, b.upload_token)

    assert foreign.status_code < 500 and foreign.is_json, foreign.get_data(as_text=True)
    assert answer(foreign, value) == answer(nowhere, missing)
    shown = foreign.get_data(as_text=True).replace(value, "<value>")
    assert [name for name in b.identifiers if name and name in shown] == []
    assert rows_of(b.tenant.hub_id) == before


def test_a_hubs_lists_and_includes_show_nothing_of_another_hub(hubs):
    a, b = hubs.a, hubs.b
    for path in (f"{SOURCES}?{EVERY_SOURCE_STATE}&include=creators&meta=images_count",
                 f"{IMAGES}?{EVERY_IMAGE_STATE}&include=creators,sources",
                 f"{JOBS}?include=creators&page[size]=100"):
        response = a.api.get(path)
        assert response.status_code == 200, response.get_json()
        document = response.get_json()
        # A source whose origin names another source repeats only what its creator sent.
        document["data"] = [item for item in document["data"]
                            if "existing" not in (item.get("origin") or {}).get("details", {})]
        shown = json.dumps(document)
        assert a.source["id"] in shown or a.image["id"] in shown or a.jobs[0] in shown
        assert [name for name in b.identifiers if name in shown] == [], path


def test_a_prune_in_one_hub_leaves_the_other_hubs_images(hubs, docker_client):
    a, b = hubs.a, hubs.b
    before = rows_of(b.tenant.hub_id)
    response = a.api.post(IMAGES + "/tasks", json={
        "action": "prune", "contents": {"source_ids": [a.source["id"], a.build_source["id"]]}})
    assert response.status_code == 202, response.get_json()

    job = a.api.wait_for_job(response.get_json()["data"]["job"]["id"])

    assert job["state"]["current"] == "completed", job
    output = job["tasks"][0]["output"]
    assert {k: v for k, v in output.items() if k != "summary"} == {
        a.image["id"]: "removed", a.built_image["id"]: "removed"}
    assert [name for name in b.identifiers if name in json.dumps(job)] == []
    assert rows_of(b.tenant.hub_id) == before
    for image in (b.image, b.built_image):
        assert docker_client.images.get(image["backend"]["file_name"]).id == \
            image["backend"]["file_id"]
    with pytest.raises(docker.errors.ImageNotFound):
        docker_client.images.get(a.image["backend"]["file_name"])


# --- capabilities --------------------------------------------------------------------------------


def key_of(hub: Hub, capabilities: list[str]) -> dict[str, str]:
    with transaction() as session:
        _, secret = create_key(session, hub.tenant.hub_id, "capability test", capabilities)
    return {"Authorization": f"Bearer {secret}", "X-Hub-Id": hub.tenant.hub_id}


@pytest.mark.parametrize("route", routes_with("key"), ids=route_id)
def test_each_endpoint_demands_its_capability_and_nothing_more(hubs, route):
    endpoint = entry(route)
    capability = endpoint.capability
    call = endpoint.happy(hubs.a)
    others = [c.value for c in Capability if c.value != capability]

    refused = call.send(hubs.a.api.client, key_of(hubs.a, others))
    error = assert_error(refused, 403, "403.permissions")
    assert error["extra"] == {"capability": capability}

    # The same request, which the refusal left undone, succeeds with that capability alone.
    allowed = call.send(hubs.a.api.client, key_of(hubs.a, [capability, *endpoint.also]))
    assert allowed.status_code == endpoint.status, allowed.get_data(as_text=True)


@pytest.mark.parametrize("route", routes_with("key"), ids=route_id)
def test_a_key_sent_for_another_hub_is_refused_as_for_a_hub_that_exists_nowhere(hubs, route):
    a, b = hubs.a, hubs.b
    call = entry(route).happy(a)
    foreign = call.send(a.api.client, {**a.tenant.headers, "X-Hub-Id": b.tenant.hub_id})
    missing = new_id()
    nowhere = call.send(a.api.client, {**a.tenant.headers, "X-Hub-Id": missing})
    assert_error(foreign, 403, "403.wrong-hub")
    assert answer(foreign, b.tenant.hub_id) == answer(nowhere, missing)


@pytest.mark.parametrize("route", routes_with("upload-token"), ids=route_id)
def test_an_upload_needs_its_token_and_no_key(hubs, route):
    endpoint = entry(route)
    call = endpoint.happy(hubs.a)
    assert_error(call.send(hubs.a.api.client, {}), 422, "422.missing-argument")
    without_token = Call(call.method, call.path.split("?")[0], data=b"", headers=call.headers)
    assert_error(without_token.send(hubs.a.api.client, {}), 401, "401.auth-invalid")


@pytest.mark.parametrize("route", routes_with("public"), ids=route_id)
def test_a_public_endpoint_answers_without_a_key_or_a_hub(client, route):
    entry(route)
    response = getattr(client, route[0].lower())(route[1])
    assert response.status_code == 200, response.get_data(as_text=True)

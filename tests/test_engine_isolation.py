"""The Docker engine is shared by every hub: what one hub's build, import or upload can reach of it.

A build of hub B must use no image that hub B could not pull itself from a registry with its own
credentials, nor reuse hub A's cached layers; a stored registry credential goes only to the
registry it was given for; an image that fails its checks leaves no name in the engine.
"""

from __future__ import annotations

import base64
import dataclasses
import io
import json
import tarfile
import threading
import time
import uuid
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest
from sqlalchemy import update

from app.config import get_settings
from app.db import transaction
from app.images.models import engine_tag
from app.models import Image
from tests.api_calls import Api, assert_error, create_image, create_source, get_image, image_from, make_tenant
from tests.image_builds import dockerfile_context
from tests.servers import FileServer
from tests.services import AUTH_PASSWORD, AUTH_REGISTRY, AUTH_USER, BASE_IMAGE
from workers.engine import BuildFailed, Engine, EngineError, RegistryAuth

PRIVATE_BASE = f"{AUTH_REGISTRY}/private/busybox:latest"  # pushed by deploy/local-services.sh


@pytest.fixture
def hub_b(client) -> Api:
    return Api(client, make_tenant())


def context_url(files: FileServer, dockerfile: str) -> str:
    return files.add(f"/{uuid.uuid4().hex}.tar.gz", dockerfile_context(dockerfile))


def build(api: Api, files: FileServer, dockerfile: str, **details) -> tuple[dict, dict, str]:
    """Build `dockerfile` as a new image of a new source: the ended job, the image, its log."""
    image = image_from(api, {"type": "docker-file",
                             "details": {"targz_url": context_url(files, dockerfile), **details}})
    return reimport(api, image["id"])


def reimport(api: Api, image_id: str) -> tuple[dict, dict, str]:
    response = api.post(f"/v1/images/{image_id}/tasks", json={"action": "import"})
    assert response.status_code == 202, response.get_json()
    job = api.wait_for_job(response.get_json()["data"]["job"]["id"])
    log = api.get(f"/v1/images/{image_id}/build-log").get_json()["data"]["log"]
    return job, get_image(api, image_id), log


def held_id(docker_client, name: str) -> str | None:
    try:
        return docker_client.images.get(name).id
    except Exception:  # noqa: BLE001 (docker's NotFound, or an invalid name)
        return None


@pytest.fixture
def secret_image(api, files, worker, docker_client) -> Iterator[tuple[dict, str]]:
    """Hub A's live image holding a secret file; the secret."""
    secret = f"secret-of-hub-a-{uuid.uuid4().hex}"
    job, image, _ = build(api, files, f"FROM {BASE_IMAGE}\nRUN echo {secret} > /secret\n")
    assert job["state"]["current"] == "completed", job["state"]
    yield image, secret
    docker_client.images.remove(image["backend"]["file_name"])


def test_the_engine_holds_an_image_only_under_a_name_no_registry_serves(secret_image):
    image, _ = secret_image
    assert image["backend"]["file_name"] == f"imagejobs.invalid/{image['id']}:latest"


@pytest.mark.parametrize("reach", [
    "FROM {name}\nRUN cat /secret",
    "FROM {file_id}\nRUN cat /secret",
    "FROM {short_id}\nRUN cat /secret",
    "ARG BASE={name}\nFROM ${{BASE}}\nRUN cat /secret",
    "FROM {name} AS theirs\nFROM {base}\nCOPY --from=theirs /secret /stolen\nRUN cat /stolen",
    "FROM {base}\nCOPY --from={name} /secret /stolen\nRUN cat /stolen",
    "FROM imagejobs/{image_id}:latest\nRUN cat /secret",
], ids=["from-name", "from-id", "from-short-id", "from-arg", "stage-alias", "copy-from",
        "old-name"])
def test_a_build_of_another_hub_cannot_use_an_image_the_engine_holds(
        hub_b, files, secret_image, docker_client, reach):
    image, secret = secret_image
    file_id = image["backend"]["file_id"]
    dockerfile = reach.format(name=image["backend"]["file_name"], file_id=file_id,
                              short_id=file_id.removeprefix("sha256:")[:12], base=BASE_IMAGE,
                              image_id=image["id"]) + "\n"

    job, _, log = build(hub_b, files, dockerfile)

    assert job["state"]["current"] == "error", job["state"]
    assert secret not in log and secret not in job["state"]["error"]["message"]
    # And hub A's image is where it was.
    assert held_id(docker_client, image["backend"]["file_name"]) == file_id


def test_a_private_base_image_one_hub_pulled_is_not_usable_by_a_hub_without_credentials(
        api, hub_b, files, worker, docker_client):
    marker = uuid.uuid4().hex
    dockerfile = f"FROM {PRIVATE_BASE}\nRUN echo {marker}\n"
    credentials = [{"url": f"http://{AUTH_REGISTRY}", "username": AUTH_USER,
                    "token": AUTH_PASSWORD}]
    job, image, _ = build(api, files, dockerfile, credentials=credentials)
    assert job["state"]["current"] == "completed", job["state"]
    assert held_id(docker_client, PRIVATE_BASE)  # the engine holds it now

    job, _, log = build(hub_b, files, dockerfile)

    assert job["state"]["current"] == "error", job["state"]
    assert "no basic auth credentials" in log, log
    assert f"{marker}\n" not in log.replace(f"RUN echo {marker}", "")
    docker_client.images.remove(image["backend"]["file_name"])


def test_a_login_stays_with_its_job_and_never_reaches_the_worker_s_shared_client():
    """A worker process keeps one engine client for its jobs; credentials a job logs in with
    live on a client of that job's alone, so the next job cannot pull with them."""
    with Engine() as first:
        first.login(RegistryAuth(AUTH_USER, AUTH_PASSWORD, AUTH_REGISTRY))
        first.pull(PRIVATE_BASE, None)  # this job may: it logged in
    with Engine() as second, pytest.raises(EngineError) as refused:
        second.pull(PRIVATE_BASE, None)
    assert "credentials" in refused.value.message or "auth" in refused.value.message, \
        refused.value.message


def test_a_build_reuses_only_its_own_image_s_cached_layers(api, hub_b, files, worker,
                                                          docker_client):
    # Each run of this step writes a different nonce, so the nonce tells whose layer an image has.
    dockerfile = (f"FROM {BASE_IMAGE}\n"
                  f"RUN echo {uuid.uuid4().hex} > /dev/null; head -c 16 /dev/urandom | od -An -x "
                  "> /nonce\n")
    job, mine, _ = build(api, files, dockerfile)
    assert job["state"]["current"] == "completed", job["state"]

    job, theirs, log = build(hub_b, files, dockerfile)
    assert job["state"]["current"] == "completed", job["state"]
    assert "Using cache" not in log
    assert theirs["backend"]["file_id"] != mine["backend"]["file_id"]

    # A rebuild of hub A's own image does use its own layers.
    job, again, log = reimport(api, mine["id"])
    assert job["state"]["current"] == "completed", job["state"]
    assert "Using cache" in log
    assert again["backend"]["file_id"] == mine["backend"]["file_id"]
    for image in (mine, theirs):
        docker_client.images.remove(image["backend"]["file_name"])


@pytest.mark.parametrize("origin", [
    {"type": "docker-hub", "details": {"target": "imagejobs.invalid/{id}:latest"}},
    {"type": "docker-registry", "details": {"url": "https://imagejobs.invalid",
                                            "target": "{id}:latest"}},
    {"type": "oci-registry", "details": {"url": "imagejobs.invalid.:443", "target": "{id}"}},
], ids=["docker-hub", "docker-registry", "oci-registry"])
def test_no_source_can_name_the_engine_s_own_namespace(hub_b, secret_image, origin):
    image, _ = secret_image
    body = json.loads(json.dumps(origin).replace("{id}", image["id"]))
    response = hub_b.post("/v1/images/sources", json={"type": "direct", "origin": body})
    assert_error(response, 422, "422.invalid-input")
    assert "imagejobs.invalid" in response.get_json()["error"]["detail"]


# Stored registry credentials --------------------------------------------------------------------

class RecordingRegistry:
    """A registry on loopback that asks for Basic credentials and records every one it is sent."""

    def __init__(self) -> None:
        self.credentials: list[str] = []
        recorded = self.credentials

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:  # noqa: N802 (http.server's naming)
                auth = self.headers.get("Authorization", "")
                if auth.startswith("Basic "):
                    recorded.append(base64.b64decode(auth[6:]).decode())
                self.send_response(401)
                self.send_header("WWW-Authenticate", 'Basic realm="recording"')
                self.send_header("Docker-Distribution-API-Version", "registry/2.0")
                self.send_header("Content-Length", "0")
                self.end_headers()

            do_HEAD = do_GET

            def log_message(self, *args: object) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.address = f"127.0.0.1:{self.server.server_address[1]}"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def recording_registry() -> Iterator[RecordingRegistry]:
    registry = RecordingRegistry()
    yield registry
    registry.close()


HUB_TOKEN = f"hub-token-{uuid.uuid4().hex}"
HUB_ORIGIN = {"type": "docker-hub", "details": {"target": "library/busybox:latest",
                                                "username": "robot", "token": HUB_TOKEN}}


def test_a_docker_hub_source_s_credentials_cannot_be_aimed_at_another_registry(
        api, recording_registry):
    source = create_source(api, HUB_ORIGIN)
    elsewhere = f"{recording_registry.address}/library/busybox:latest"

    # By an image's override (a key that may only manage images can do this) ...
    response = api.post("/v1/images", json={"source_id": source["id"],
                                            "override": {"target": elsewhere}})
    assert_error(response, 422, "422.invalid-input", "/override/target")
    # ... by sending the origin back as shown (token blank) with another registry's target ...
    shown = dict(source["origin"]["details"], target=elsewhere)
    response = api.patch(f"/v1/images/sources/{source['id']}",
                         json={"origin": {"type": "docker-hub", "details": shown}})
    assert_error(response, 422, "422.invalid-input")
    response = api.patch(f"/v1/images/sources/{source['id']}", json={"origin": {
        "type": "docker-hub", "details": {"target": elsewhere, "username": "", "token": ""}}})
    assert_error(response, 422, "422.invalid-input", "/origin/details/token")
    # ... or by a new source naming it with the credentials.
    response = api.post("/v1/images/sources", json={"type": "direct", "origin": {
        "type": "docker-hub", "details": {**HUB_ORIGIN["details"], "target": elsewhere}}})
    assert_error(response, 422, "422.invalid-input", "/origin/details")
    assert recording_registry.credentials == []


def test_a_worker_sends_docker_hub_credentials_nowhere_but_docker_hub(api, worker,
                                                                      recording_registry):
    """Images made before the API refused such targets: the worker refuses them too."""
    image = image_from(api, HUB_ORIGIN)
    elsewhere = f"{recording_registry.address}/library/busybox:latest"
    with transaction() as session:
        session.execute(update(Image).where(Image.id == image["id"])
                        .values(override={"target": elsewhere}))

    response = api.post(f"/v1/images/{image['id']}/tasks", json={"action": "import"})
    job = api.wait_for_job(response.get_json()["data"]["job"]["id"])

    assert job["state"]["current"] == "error"
    assert "go to Docker Hub alone" in job["state"]["error"]["message"]
    assert recording_registry.credentials == []


def test_a_registry_source_s_credentials_go_only_to_its_own_registry(api, worker,
                                                                     recording_registry):
    """An override naming another host is a path on the source's registry, never that host."""
    origin = {"type": "docker-registry", "details": {
        "url": f"http://{AUTH_REGISTRY}", "target": "private/busybox:latest",
        "username": AUTH_USER, "password": AUTH_PASSWORD}}
    source = create_source(api, origin)
    image = create_image(api, source["id"], override={
        "target": f"{recording_registry.address}/library/busybox:latest"})
    response = api.post(f"/v1/images/{image['id']}/tasks", json={"action": "import"})
    job = api.wait_for_job(response.get_json()["data"]["job"]["id"])
    assert job["state"]["current"] == "error"
    assert recording_registry.credentials == []


@pytest.mark.parametrize("kind", ["docker-registry", "oci-registry"])
def test_a_registry_host_the_engine_would_read_as_docker_hub_is_refused(api, kind):
    """`myregistry/app` is Docker Hub's `myregistry/app` to the engine: its credentials too."""
    response = api.post("/v1/images/sources", json={"type": "direct", "origin": {
        "type": kind, "details": {"url": "https://myregistry", "target": "app:v1"}}})
    assert_error(response, 422, "422.invalid-input", "/origin/details/url")


def test_a_worker_sends_no_registry_credentials_to_docker_hub_for_a_bare_host(api, worker):
    """Sources made before the API refused such hosts: the worker refuses them too."""
    image = image_from(api, {"type": "docker-registry", "details": {
        "url": f"http://{AUTH_REGISTRY}", "target": "private/busybox:latest",
        "username": AUTH_USER, "password": AUTH_PASSWORD}})
    with transaction() as session:
        row = session.get(Image, image["id"])
        row.origin = {**row.origin, "details": {**row.origin["details"], "url": "http://myregistry"}}

    response = api.post(f"/v1/images/{image['id']}/tasks", json={"action": "import"})
    job = api.wait_for_job(response.get_json()["data"]["job"]["id"])

    assert job["state"]["current"] == "error"
    assert "read by the Docker engine as a Docker Hub account" in job["state"]["error"]["message"]


# What a failed import leaves --------------------------------------------------------------------

def saved_with_config(docker_client, **config: object) -> bytes:
    """A `docker save` tar of a small image whose config has `config` set, as a loader reads it."""
    tag = f"imagejobs-tests/config:{uuid.uuid4().hex[:8]}"
    context = dockerfile_context(f"FROM {BASE_IMAGE}\nRUN echo {tag} > /made-for\n",
                                 compress=False)
    image, _ = docker_client.images.build(fileobj=io.BytesIO(context), custom_context=True, tag=tag)
    saved = b"".join(image.save(named=False))
    docker_client.images.remove(tag)
    out = io.BytesIO()
    with tarfile.open(fileobj=io.BytesIO(saved)) as source, \
            tarfile.open(fileobj=out, mode="w") as tar:
        manifest = json.load(source.extractfile("manifest.json"))
        document = json.load(source.extractfile(manifest[0]["Config"]))
        document["config"].update(config)
        manifest[0]["Config"] = "config.json"
        for member in source.getmembers():
            if member.name not in ("manifest.json", "repositories") and member.isfile():
                tar.addfile(member, source.extractfile(member))
        for name, data in (("config.json", json.dumps(document).encode()),
                           ("manifest.json", json.dumps(manifest).encode())):
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    return out.getvalue()


def engine_names_of(docker_client, image_id: str) -> list[str]:
    repository, _ = engine_tag(image_id)
    return [tag for image in docker_client.images.list(name=repository) for tag in image.tags]


def test_an_image_whose_config_no_container_could_use_fails_at_once_and_leaves_no_name(
        api, worker, docker_client):
    image = create_image(api, create_source(api, {"type": "cycle-upload"})["id"])
    token = image["source"]["details"]["origin"]["details"]["token"]
    data = saved_with_config(docker_client, ExposedPorts={"http/tcp": {}})

    response = api.post(f"/v1/images/{image['id']}/upload?token={token}", data=data,
                        content_type="application/x-tar")
    assert response.status_code == 202, response.get_json()
    job = api.wait_for_job(response.get_json()["data"]["job"]["id"])

    message = job["state"]["error"]["message"]
    assert "`http/tcp`" in message and "not retried" in message, message
    assert engine_names_of(docker_client, image["id"]) == []
    deleted = api.delete(f"/v1/images/{image['id']}")
    assert api.wait_for_job(deleted.get_json()["data"]["job"]["id"])["state"]["current"] == \
        "completed"
    assert engine_names_of(docker_client, image["id"]) == []


# Time bounds ------------------------------------------------------------------------------------

def test_a_build_is_stopped_at_its_time_limit_and_its_step_does_not_go_on(monkeypatch,
                                                                         docker_client):
    settings = dataclasses.replace(get_settings(), build_timeout_seconds=3)
    monkeypatch.setattr("workers.engine.get_settings", lambda: settings)
    marker = uuid.uuid4().hex
    context = io.BytesIO(dockerfile_context(f"FROM {BASE_IMAGE}\nRUN echo {marker}; sleep 120\n",
                                            compress=False))
    lines: list[str] = []

    with Engine() as engine, pytest.raises(BuildFailed) as failed:
        engine.build(context, dockerfile="Dockerfile", buildargs={}, tag=f"imagejobs-tests/{marker}",
                     cache_from=f"imagejobs-tests/{marker}", on_output=lines.append)

    assert "longer than 3 seconds (IMAGEJOBS_BUILD_TIMEOUT)" in failed.value.message
    assert not failed.value.transient
    assert lines[-1].startswith("ERROR: The build took longer")
    # The engine cancelled the step: its container goes away instead of sleeping on.
    deadline = time.monotonic() + 60
    while any(marker in " ".join(c.attrs["Config"]["Cmd"] or [])
              for c in docker_client.containers.list(all=True)):
        assert time.monotonic() < deadline, "the build's step kept running after its limit"
        time.sleep(0.5)


# Remote ADD sources -----------------------------------------------------------------------------

@pytest.fixture(scope="module")
def internal_server() -> Iterator[FileServer]:
    """A server on a loopback address users' URLs may not reach (only 127.0.0.1 is allowed)."""
    server = FileServer(host="127.0.0.2")
    yield server
    server.close()


@pytest.mark.parametrize("fetch", [
    "ADD {url} /x",
    "add --chmod=644 {url} /x",
    'ADD ["{url}", "/x"]',
    "ARG WHERE={url}\nADD ${{WHERE}} /x",
    "ADD \\\n  {url} \\\n  /x",
], ids=["plain", "flags-lowercase", "json-form", "variable", "continued"])
def test_a_build_cannot_have_the_engine_fetch_an_add_url(api, files, worker, internal_server,
                                                        fetch):
    secret = f"internal-{uuid.uuid4().hex}"
    path = f"/{uuid.uuid4().hex}"
    url = internal_server.add(path, secret.encode())

    job, image, log = build(api, files, f"FROM {BASE_IMAGE}\n{fetch.format(url=url)}\n"
                                        "RUN cat /x\n")

    message = job["state"]["error"]["message"]
    assert job["state"]["current"] == "error" and "not retried" in message, job["state"]
    assert "remote ADD sources are not allowed" in message and "ADD on line" in message, message
    assert secret not in log
    assert internal_server.requests.get(path) is None  # nothing was fetched at all
    assert image["state"]["current"] == "new"


def test_an_onbuild_add_url_is_refused_too(api, files, worker, internal_server):
    url = internal_server.add(f"/{uuid.uuid4().hex}", b"later")
    job, _, _ = build(api, files, f"FROM {BASE_IMAGE}\nONBUILD ADD {url} /x\n")
    assert job["state"]["current"] == "error"
    assert "ONBUILD ADD" in job["state"]["error"]["message"]

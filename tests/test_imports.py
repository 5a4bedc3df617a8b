"""Imports end to end: the API queues, a real worker pulls into the real engine from real registries."""

from __future__ import annotations

import json
import uuid

import pytest
import requests

from tests.conftest import AUTH_PASSWORD, AUTH_REGISTRY, AUTH_USER, REGISTRY, ROOT, TEST_DATABASE
from tests.helpers import (
    assert_failed,
    assert_held_by_engine,
    assert_live_in_engine,
    get_image,
    image_from,
    import_and_wait,
    oci_origin,
    parse_time,
    registry_origin,
    repository_path,
)

pytestmark = pytest.mark.usefixtures("worker")

PUSHED_CONFIG = {
    "user": "nobody",
    "ports": [{"host": 5353, "container": 5353, "type": "udp"},
              {"host": 8080, "container": 8080, "type": "tcp"}],
    "env": {"PATH": "/bin", "GREETING": "hello"},
    "labels": {"org.example.team": "images", "org.example.tier": "test"},
    "command": ["echo ready"],
    "entrypoint": ["/bin/sh", "-c"],
    "volumes": [{"path": "/data", "mode": "rw"}],
    "workdir": "/srv",
    "signal_stop": "SIGINT",
}


@pytest.fixture(autouse=True)
def untag_imported_images(api, docker_client):
    """Leave the shared engine as found: drop the tags this test's imports added."""
    yield
    for image in api.get("/v1/images?page[size]=100").get_json()["data"]:
        if image["backend"]["file_name"]:
            docker_client.images.remove(image["backend"]["file_name"], noprune=True)


def origins(pushed) -> dict[str, dict]:
    """Every way to reach the pushed image, by the name of the way."""
    public, private = repository_path(pushed.public), repository_path(pushed.private)
    return {
        "docker-registry-open": registry_origin(public),
        "docker-registry-password": registry_origin(private, AUTH_REGISTRY, username=AUTH_USER,
                                                    password=AUTH_PASSWORD),
        "docker-registry-token": registry_origin(private, AUTH_REGISTRY, username=AUTH_USER,
                                                 token=AUTH_PASSWORD),
        "oci-registry-user": oci_origin(private, username=AUTH_USER, token=AUTH_PASSWORD),
    }


def broken_origins(pushed) -> dict[str, dict]:
    """Ways to the pushed image that cannot work, by what is wrong with them."""
    public, private = repository_path(pushed.public), repository_path(pushed.private)
    return {
        "wrong-password": registry_origin(private, AUTH_REGISTRY, username=AUTH_USER,
                                          password="not-the-password"),
        "no-credentials": registry_origin(private, AUTH_REGISTRY),
        "unknown-tag": registry_origin(public.rpartition(":")[0] + ":no-such-tag"),
        "unreachable-registry": registry_origin(public, "127.0.0.1:5999"),
    }


def assert_completed_with_steps(job: dict) -> None:
    assert job["state"]["current"] == "completed", job["state"]
    [task] = job["tasks"]
    assert [step["caption"] for step in task["steps"]] == ["Pull", "Verify", "Save"]
    times = [parse_time(step[event]) for step in task["steps"] for event in ("started", "completed")]
    assert times == sorted(times)
    assert times[0] < times[-1]


@pytest.mark.parametrize("way", ["docker-registry-open", "docker-registry-password",
                                 "docker-registry-token", "oci-registry-user"])
def test_an_import_makes_the_image_live_with_its_config(api, docker_client, pushed_image, way):
    image = image_from(api, origins(pushed_image)[way])

    job = import_and_wait(api, image["id"])

    assert_completed_with_steps(job)
    image = get_image(api, image["id"])
    assert_live_in_engine(image, docker_client)
    assert image["config"] == PUSHED_CONFIG
    assert image["backend"]["file_id"] == pushed_image.image_id


def test_a_docker_hub_import_pulls_through_the_mirror(api, docker_client):
    image = image_from(api, {"type": "docker-hub", "details": {"target": "busybox:latest"}})

    job = import_and_wait(api, image["id"])

    assert_completed_with_steps(job)
    image = get_image(api, image["id"])
    assert_live_in_engine(image, docker_client)
    assert image["backend"]["file_id"] == docker_client.images.get("busybox:latest").id


def test_override_target_replaces_the_sources_target(api, docker_client, pushed_image):
    image = image_from(api, registry_origin("tests/absent:v0"),
                       override={"target": repository_path(pushed_image.public)})

    assert_completed_with_steps(import_and_wait(api, image["id"]))
    image = get_image(api, image["id"])
    assert_live_in_engine(image, docker_client)
    assert image["config"] == PUSHED_CONFIG


@pytest.mark.parametrize(("way", "words"), [
    ("wrong-password", ["refused the credentials"]),
    ("no-credentials", ["requires credentials", "has none"]),
    ("unknown-tag", ["does not exist"]),
    ("unreachable-registry", ["could not be reached"]),
])
def test_a_failed_import_ends_in_error_and_leaves_the_image_new(api, pushed_image, way, words):
    image = image_from(api, broken_origins(pushed_image)[way])

    job = import_and_wait(api, image["id"])

    assert_failed(job, get_image(api, image["id"]), *words)


def delete_from_registry(reference: str) -> None:
    """Delete a tag's manifest from the open registry, as its owner might."""
    host, _, path = reference.partition("/")
    repository, _, tag = path.rpartition(":")
    manifests = f"http://{host}/v2/{repository}/manifests"
    accept = {"Accept": "application/vnd.docker.distribution.manifest.v2+json"}
    digest = requests.head(f"{manifests}/{tag}", headers=accept, timeout=10
                           ).headers["Docker-Content-Digest"]
    requests.delete(f"{manifests}/{digest}", timeout=10).raise_for_status()


def test_a_failed_reimport_leaves_a_live_image_live_with_its_backend(api, docker_client, pushed_image):
    doomed = f"{REGISTRY}/tests/doomed-{uuid.uuid4().hex[:8]}:v1"
    docker_client.images.get(pushed_image.image_id).tag(doomed)
    docker_client.images.push(doomed)
    docker_client.images.remove(doomed)
    image = image_from(api, registry_origin(repository_path(doomed)))
    assert_completed_with_steps(import_and_wait(api, image["id"]))
    live = get_image(api, image["id"])
    delete_from_registry(doomed)

    job = import_and_wait(api, image["id"])

    assert job["state"]["current"] == "error"
    assert "does not exist" in job["state"]["error"]["message"]
    image = get_image(api, image["id"])
    assert image["state"]["current"] == "live"
    assert image["state"]["error"]["message"] == job["state"]["error"]["message"]
    assert image["backend"] == live["backend"]
    assert_held_by_engine(image, docker_client)


def test_an_image_imported_twice_completes_again_and_stays_live(api, docker_client, pushed_image):
    image = image_from(api, registry_origin(repository_path(pushed_image.public)))
    first = import_and_wait(api, image["id"])
    before = get_image(api, image["id"])

    second = import_and_wait(api, image["id"])

    assert second["id"] != first["id"]
    assert_completed_with_steps(second)
    image = get_image(api, image["id"])
    assert_live_in_engine(image, docker_client)
    assert image["backend"] == before["backend"]


def test_a_registry_password_is_never_shown_or_logged(api, pushed_image):
    wrong = f"wrong-{uuid.uuid4().hex}"
    documents = []
    for password in (AUTH_PASSWORD, wrong):
        image = image_from(api, registry_origin(repository_path(pushed_image.private), AUTH_REGISTRY,
                                                username=AUTH_USER, password=password))
        documents += [import_and_wait(api, image["id"]), get_image(api, image["id"])]
    assert [d["state"]["current"] for d in documents] == ["completed", "live", "error", "new"]

    shown = json.dumps(documents)
    logged = (ROOT / ".test-logs" / f"worker-{TEST_DATABASE}.log").read_text()
    for password in (AUTH_PASSWORD, wrong):
        assert password not in shown
        assert password not in logged

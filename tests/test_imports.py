"""Imports end to end: the API queues, a real worker pulls into the real engine from real registries."""

from __future__ import annotations

import contextlib
import io
import json
import uuid
from dataclasses import dataclass

import docker.errors
import pytest
import requests

from app.db import ZERO_TIME, transaction
from app.images.models import Image
from app.jobs.actions import Action
from app.jobs.queueing import PULL_QUEUE
from app.jobs.services import NewTask, create_job
from tests.api_calls import (
    assert_error,
    assert_failed,
    assert_held_by_engine,
    assert_live_in_engine,
    create_image,
    create_source,
    get_image,
    image_from,
    import_and_wait,
    import_image,
    oci_origin,
    parse_time,
    registry_origin,
    repository_path,
    stored_image,
)
from tests.image_builds import dockerfile_context
from tests.servers import UnavailableServer
from tests.services import AUTH_PASSWORD, AUTH_REGISTRY, AUTH_USER, BASE_IMAGE, REGISTRY, ROOT, TEST_DATABASE
from workers.engine import Engine, EngineError

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
    held_before = "busybox:latest" in held_names(docker_client)
    image = image_from(api, {"type": "docker-hub", "details": {"target": "busybox:latest"}})

    job = import_and_wait(api, image["id"])

    assert_completed_with_steps(job)
    image = get_image(api, image["id"])
    assert_live_in_engine(image, docker_client)
    # The mirror's library/busybox was pushed from the base image.
    assert image["backend"]["file_id"] == docker_client.images.get(BASE_IMAGE).id
    # The pulled name stays only where the engine held it before the import.
    assert ("busybox:latest" in held_names(docker_client)) == held_before


def test_override_target_replaces_the_sources_target(api, docker_client, pushed_image):
    image = image_from(api, registry_origin("tests/absent:v0"),
                       override={"target": repository_path(pushed_image.public)})

    assert_completed_with_steps(import_and_wait(api, image["id"]))
    image = get_image(api, image["id"])
    assert_live_in_engine(image, docker_client)
    assert image["config"] == PUSHED_CONFIG


@pytest.mark.parametrize(("way", "words"), [
    ("wrong-password", ["refused the credentials", "not retried"]),
    ("no-credentials", ["requires credentials", "has none", "not retried"]),
    ("unknown-tag", ["does not exist", "not retried"]),
    ("unreachable-registry", ["could not be reached", "a temporary fault",
                              "given up after 3 attempts"]),
])
def test_a_failed_import_ends_in_error_and_leaves_the_image_new(api, pushed_image, way, words):
    image = image_from(api, broken_origins(pushed_image)[way])

    job = import_and_wait(api, image["id"])

    assert_failed(job, get_image(api, image["id"]), *words)


def test_a_registry_answering_503_is_retried_with_backoff_then_given_up(api):
    registry = UnavailableServer()
    try:
        image = image_from(api, registry_origin(
            "tests/anything:v1", f"127.0.0.1:{registry.httpd.server_port}"))

        job = import_and_wait(api, image["id"])
    finally:
        registry.close()

    assert_failed(job, get_image(api, image["id"]), "503 Service Unavailable",
                  "a temporary fault", "given up after 3 attempts")
    # Each attempt started the plan over: the steps are the last attempt's, which failed pulling.
    pull, verify, save = job["tasks"][0]["steps"]
    assert pull["caption"] == "Pull" and pull["completed"] == ZERO_TIME
    assert verify["started"] == save["started"] == ZERO_TIME
    waited = (parse_time(pull["started"]) - parse_time(job["events"]["started"])).total_seconds()
    assert waited >= 1 + 3  # IMAGEJOBS_RETRY_SECONDS=1 here, then tripled
    assert registry.requests.get("/v2/tests/anything/manifests/v1", 0) >= 3


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


def held_names(docker_client) -> set[str]:
    """Every tag and digest name the engine holds an image under."""
    return {name for image in docker_client.api.images()
            for name in (image.get("RepoTags") or []) + (image.get("RepoDigests") or [])}


@dataclass(frozen=True)
class FreshImage:
    """An image of its own in a registry, under a name the engine may not hold."""

    reference: str  # registry/repository:tag
    by_digest: str  # registry/repository@sha256:...
    image_id: str


@pytest.fixture
def fresh_image(docker_client):
    """Push a new image to `registry`; the engine keeps its name only when `keep` says so.

    Without `keep` the engine holds the image under no name at all before the test imports it.
    """
    pushed: list[str] = []

    def push(registry: str = REGISTRY, keep: bool = False) -> FreshImage:
        label = uuid.uuid4().hex[:12]
        folder = "private" if registry == AUTH_REGISTRY else "tests"
        reference = f"{registry}/{folder}/fresh-{label}:v1"
        context = io.BytesIO(dockerfile_context(f"FROM {BASE_IMAGE}\nLABEL fresh={label}\n",
                                                compress=False))
        image, _ = docker_client.images.build(fileobj=context, custom_context=True,
                                              tag=reference, rm=True)
        auth = ({"username": AUTH_USER, "password": AUTH_PASSWORD}
                if registry == AUTH_REGISTRY else None)
        for event in docker_client.api.push(reference.rpartition(":")[0], "v1", stream=True,
                                            decode=True, auth_config=auth):
            assert "error" not in event, event
        image.reload()
        [by_digest] = image.attrs["RepoDigests"]
        if keep:
            pushed.append(reference)
        else:
            docker_client.images.remove(reference)
            assert image.id not in {i["Id"] for i in docker_client.api.images(all=True)}
        return FreshImage(reference, by_digest, image.id)

    yield push
    for reference in pushed:
        with contextlib.suppress(docker.errors.ImageNotFound):
            docker_client.images.remove(reference, noprune=True)


def fresh_origins(fresh: FreshImage) -> dict[str, dict]:
    """Ways to a fresh image, by the name of the way."""
    if fresh.reference.startswith(AUTH_REGISTRY):
        return {"password": registry_origin(repository_path(fresh.reference), AUTH_REGISTRY,
                                            username=AUTH_USER, password=AUTH_PASSWORD)}
    return {"tag": registry_origin(repository_path(fresh.reference)),
            "digest": registry_origin(repository_path(fresh.by_digest))}


@pytest.mark.parametrize(("registry", "way"), [(REGISTRY, "tag"), (REGISTRY, "digest"),
                                               (AUTH_REGISTRY, "password")])
def test_an_import_removes_the_name_its_pull_made(api, docker_client, fresh_image, registry, way):
    fresh = fresh_image(registry)
    image = image_from(api, fresh_origins(fresh)[way])

    assert_completed_with_steps(import_and_wait(api, image["id"]))

    image = get_image(api, image["id"])
    assert_live_in_engine(image, docker_client)
    assert image["backend"]["file_id"] == fresh.image_id
    held = docker_client.images.get(fresh.image_id).attrs
    assert held["RepoTags"] == [image["backend"]["file_name"]]
    assert held["RepoDigests"] == []
    assert not {fresh.reference, fresh.by_digest} & held_names(docker_client)


def test_an_import_keeps_a_name_the_engine_held_before(api, docker_client, fresh_image):
    fresh = fresh_image(keep=True)
    image = image_from(api, registry_origin(repository_path(fresh.reference)))

    assert_completed_with_steps(import_and_wait(api, image["id"]))

    image = get_image(api, image["id"])
    assert_live_in_engine(image, docker_client)
    assert docker_client.images.get(fresh.reference).id == fresh.image_id
    assert set(docker_client.images.get(fresh.image_id).attrs["RepoTags"]) == {
        fresh.reference, image["backend"]["file_name"]}


def test_a_deleted_import_leaves_nothing_in_the_engine(api, docker_client, fresh_image):
    fresh = fresh_image()
    image = image_from(api, registry_origin(repository_path(fresh.reference)))
    assert_completed_with_steps(import_and_wait(api, image["id"]))

    response = api.delete(f"/v1/images/{image['id']}")
    assert response.status_code == 202, response.get_json()
    job = api.wait_for_job(response.get_json()["data"]["job"]["id"])

    assert job["state"]["current"] == "completed", job
    with pytest.raises(docker.errors.ImageNotFound):
        docker_client.images.get(fresh.image_id)


def test_two_imports_of_one_new_name_at_once_both_complete(api, docker_client, fresh_image):
    fresh = fresh_image()
    source = create_source(api, registry_origin(repository_path(fresh.reference)))
    images = [create_image(api, source["id"]) for _ in range(2)]

    jobs = [import_image(api, image["id"])["job"]["id"] for image in images]

    for job_id in jobs:
        assert_completed_with_steps(api.wait_for_job(job_id))
    for image in images:
        assert_live_in_engine(get_image(api, image["id"]), docker_client)
    assert fresh.reference not in held_names(docker_client)


def test_a_pull_says_whether_it_made_the_name(docker_client, fresh_image):
    fresh = fresh_image()
    with Engine() as engine:
        first = engine.pull(fresh.reference, None)
        again = engine.pull(fresh.reference, None)
        engine.untag(fresh.reference)

    assert (first.image_id, first.name, first.created) == (fresh.image_id, fresh.reference, True)
    assert (again.image_id, again.created) == (fresh.image_id, False)


def test_tagging_an_image_the_engine_does_not_hold_is_transient(docker_client):
    with Engine() as engine, pytest.raises(EngineError) as raised:
        engine.tag(f"sha256:{'0' * 64}", f"imagejobs/absent-{uuid.uuid4().hex[:8]}", "latest")

    assert raised.value.transient
    assert "no longer holds" in raised.value.message


def test_an_origin_that_no_longer_reads_is_refused_and_ends_a_queued_import_saying_why(api, tenant):
    image_id = stored_image(tenant)
    with transaction() as session:
        session.get(Image, image_id).origin = {"type": "docker-registry",
                                               "details": {"target": "team/app:v1"}}
    reason = ("The origin stored with the image cannot be read (`/details/url`: Field required); "
              "save the source's origin again and make a new image of it.")

    response = api.post(f"/v1/images/{image_id}/tasks", json={"action": "import"})
    assert assert_error(response, 422, "422.invalid-argument")["detail"] == reason

    # One queued before its origin changed: the worker ends it, in the same words.
    with transaction() as session:
        job_id = create_job(session, hub_id=tenant.hub_id,
                            creator={"id": tenant.key_id, "type": "api-key"},
                            action=Action.IMAGE_IMPORT, queue=PULL_QUEUE, caption="Import",
                            subject_id=image_id, task=NewTask(header="import", caption="Import",
                                                              input={"image_id": image_id})).id
    job = api.wait_for_job(job_id)
    assert_failed(job, get_image(api, image_id), reason)

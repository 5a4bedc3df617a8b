"""Deleting images, pruning the images of sources, and deleting sources, against the real engine."""

from __future__ import annotations

import uuid

import docker.errors
import pytest

from tests.api_calls import (
    assert_error,
    create_image,
    create_source,
    get_image,
    import_and_wait,
    listed_ids,
    registry_origin,
    repository_path,
)


@pytest.fixture
def live_image(api, worker, pushed_image):
    """Make a live image of `pushed_image` in the engine; call it again for more."""
    source = create_source(api, registry_origin(repository_path(pushed_image.public)))

    def make(source_id: str = source["id"]) -> dict:
        image = create_image(api, source_id)
        assert import_and_wait(api, image["id"])["state"]["current"] == "completed"
        return get_image(api, image["id"])

    make.source = source
    return make


@pytest.fixture
def container_of(docker_client):
    """A (stopped) container made from an image; removed at the end of the test."""
    made = []

    def create(image: dict):
        container = docker_client.containers.create(image["backend"]["file_name"], "true",
                                                    name=f"uses-{uuid.uuid4().hex[:8]}",
                                                    network_mode="none")
        made.append(container)
        return container

    yield create
    for container in made:
        container.remove(force=True)


def delete(api, image_id: str) -> dict:
    response = api.delete(f"/v1/images/{image_id}")
    assert response.status_code == 202, response.get_json()
    return response.get_json()["data"]


def engine_holds(docker_client, reference: str) -> bool:
    try:
        docker_client.images.get(reference)
        return True
    except docker.errors.ImageNotFound:
        return False


def prune(api, source_ids: list[str], dry_run: bool = False) -> dict:
    response = api.post("/v1/images/tasks", json={
        "action": "prune", "contents": {"source_ids": source_ids, "dry_run": dry_run}})
    assert response.status_code == 202, response.get_json()
    return api.wait_for_job(response.get_json()["data"]["job"]["id"])


def test_a_deleted_image_leaves_the_engine_and_the_default_list(api, docker_client, live_image):
    image = live_image()
    assert engine_holds(docker_client, image["backend"]["file_name"])

    descriptor = delete(api, image["id"])
    assert descriptor["action"] == "delete"
    assert descriptor["job"]["queue"] == "imagejobs-node-test-node"
    assert get_image(api, image["id"])["state"]["current"] == "deleting"
    job = api.wait_for_job(descriptor["job"]["id"])

    assert job["state"]["current"] == "completed", job
    assert job["tasks"][0]["output"] == {"result": "removed"}
    gone = get_image(api, image["id"])
    assert gone["state"]["current"] == "deleted"
    assert gone["events"]["deleted"] != "0001-01-01T00:00:00Z"
    assert not engine_holds(docker_client, image["backend"]["file_name"])
    assert image["id"] not in listed_ids(api.get("/v1/images"))
    assert image["id"] in listed_ids(api.get("/v1/images?filter[state]=deleted"))


def test_deleting_one_image_keeps_another_of_the_same_layers(api, docker_client, live_image):
    first, second = live_image(), live_image()
    assert first["backend"]["file_id"] == second["backend"]["file_id"]

    api.wait_for_job(delete(api, first["id"])["job"]["id"])

    assert engine_holds(docker_client, second["backend"]["file_name"])
    assert get_image(api, second["id"])["state"]["current"] == "live"


def test_an_image_a_container_uses_is_not_removed_and_the_job_says_why(
        api, docker_client, live_image, container_of):
    image = live_image()
    container = container_of(image)

    job = api.wait_for_job(delete(api, image["id"])["job"]["id"])

    assert job["state"]["current"] == "error"
    assert container.name in job["state"]["error"]["message"]
    kept = get_image(api, image["id"])
    assert kept["state"]["current"] == "live"
    assert container.name in kept["state"]["error"]["message"]
    assert engine_holds(docker_client, image["backend"]["file_name"])


def test_an_image_never_imported_is_deleted_without_an_engine(api):
    image = create_image(api, create_source(api, {"type": "none"})["id"])
    descriptor = delete(api, image["id"])
    assert descriptor["job"]["queue"] == "imagejobs-maintenance"


def test_deleting_twice_or_importing_a_deleted_image_is_refused(api, live_image):
    image = live_image()
    job_id = delete(api, image["id"])["job"]["id"]
    assert_error(api.delete(f"/v1/images/{image['id']}"), 403, "403.invalid-state")
    api.wait_for_job(job_id)

    assert_error(api.delete(f"/v1/images/{image['id']}"), 403, "403.invalid-state")
    assert_error(api.post(f"/v1/images/{image['id']}/tasks", json={"action": "import"}), 403,
                 "403.invalid-state")


def test_another_hubs_image_cannot_be_deleted(api, client, other_tenant, live_image):
    from tests.api_calls import Api

    image = live_image()
    assert_error(Api(client, other_tenant).delete(f"/v1/images/{image['id']}"), 404, "404.image")
    assert get_image(api, image["id"])["state"]["current"] == "live"


def test_a_dry_run_prune_reports_without_removing(api, docker_client, live_image, container_of):
    free, used = live_image(), live_image()
    container = container_of(used)

    job = prune(api, [live_image.source["id"]], dry_run=True)

    output = job["tasks"][0]["output"]
    assert output[free["id"]] == "would be removed"
    assert output[used["id"]].startswith("would be kept") and container.name in output[used["id"]]
    assert output["summary"] == "1 image(s) would be removed, 1 kept"
    for image in (free, used):
        assert get_image(api, image["id"])["state"]["current"] == "live"
        assert engine_holds(docker_client, image["backend"]["file_name"])


def test_a_prune_removes_the_free_images_and_keeps_the_used_ones(
        api, docker_client, live_image, container_of):
    free, used = live_image(), live_image()
    container = container_of(used)
    other_source = create_source(api, used["source"]["details"]["origin"])
    bystander = live_image(other_source["id"])

    job = prune(api, [live_image.source["id"]])

    assert job["state"]["current"] == "completed", job
    output = job["tasks"][0]["output"]
    assert output[free["id"]] == "removed"
    assert output[used["id"]].startswith("kept") and container.name in output[used["id"]]
    assert bystander["id"] not in output
    assert get_image(api, free["id"])["state"]["current"] == "deleted"
    assert not engine_holds(docker_client, free["backend"]["file_name"])
    assert get_image(api, used["id"])["state"]["current"] == "live"
    assert get_image(api, bystander["id"])["state"]["current"] == "live"


def test_more_prunes_at_once_than_worker_slots_all_end(api, docker_client, live_image,
                                                      pushed_image):
    """The suite's worker has two slots: a prune waiting in a slot for its delete would leave
    three prunes waiting for ever."""
    origin = registry_origin(repository_path(pushed_image.public))
    sources = [create_source(api, origin)["id"] for _ in range(3)]
    images = [live_image(source_id) for source_id in sources]
    started = [api.post("/v1/images/tasks", json={
        "action": "prune", "contents": {"source_ids": [source_id]}}) for source_id in sources]
    assert [response.status_code for response in started] == [202] * 3

    jobs = [api.wait_for_job(response.get_json()["data"]["job"]["id"], timeout=60)
            for response in started]

    for image, job in zip(images, jobs, strict=True):
        assert job["state"]["current"] == "completed", job
        assert job["tasks"][0]["output"] == {image["id"]: "removed",
                                             "summary": "1 image(s) removed, 0 kept"}
        assert get_image(api, image["id"])["state"]["current"] == "deleted"
        assert not engine_holds(docker_client, image["backend"]["file_name"])


def test_a_prune_keeps_an_image_whose_import_is_queued(api, tenant, live_image):
    free, never_imported = live_image(), create_image(api, live_image.source["id"])
    waiting = create_image(api, live_image.source["id"])
    import_id = queued_import(tenant, waiting["id"])

    job = prune(api, [live_image.source["id"]])

    output = job["tasks"][0]["output"]
    assert output[free["id"]] == output[never_imported["id"]] == "removed"
    assert get_image(api, never_imported["id"])["state"]["current"] == "deleted"
    assert output[waiting["id"]] == "kept: an import of it is queued"
    assert get_image(api, waiting["id"])["state"]["current"] == "new"
    assert api.get(f"/v1/jobs/{import_id}").get_json()["data"]["state"]["current"] == "queued"


def queued_import(tenant, image_id: str) -> str:
    """An import waiting its turn: on a queue no worker reads, as when every worker is busy."""
    from app.db import transaction
    from app.jobs.services import NewTask, create_job

    with transaction() as session:
        return create_job(session, hub_id=tenant.hub_id, action="image.import",
                          creator={"id": tenant.key_id, "type": "api-key"},
                          queue="imagejobs-test-idle", caption="Import image",
                          subject_id=image_id, task=NewTask(header="import", caption="Import",
                                                            input={"image_id": image_id})).id


@pytest.mark.parametrize("contents, status, code", [
    ({"source_ids": []}, 422, "422.invalid-input"),
    ({}, 422, "422.missing-argument"),
    ({"source_ids": ["0" * 24]}, 404, "404.image.source"),
])
def test_a_prune_of_no_or_unknown_sources_is_refused(api, contents, status, code):
    assert_error(api.post("/v1/images/tasks", json={"action": "prune", "contents": contents}),
                 status, code)


def test_a_prune_of_another_hubs_source_is_refused(api, client, other_tenant):
    from tests.api_calls import Api

    foreign = create_source(Api(client, other_tenant), {"type": "none"})
    assert_error(api.post("/v1/images/tasks", json={
        "action": "prune", "contents": {"source_ids": [foreign["id"]]}}), 404, "404.image.source",
        source="/contents/source_ids/0")


def test_deleting_a_source_deletes_its_images_then_the_source(api, docker_client, live_image):
    images = [live_image(), live_image()]
    source_id = live_image.source["id"]

    response = api.delete(f"/v1/images/sources/{source_id}")
    assert response.status_code == 202
    job = api.wait_for_job(response.get_json()["data"]["job"]["id"])

    assert job["state"]["current"] == "completed", job
    source = api.get(f"/v1/images/sources/{source_id}").get_json()["data"]
    assert source["state"]["current"] == "deleted"
    assert source["events"]["deleted"] != "0001-01-01T00:00:00Z"
    for image in images:
        assert get_image(api, image["id"])["state"]["current"] == "deleted"
    assert source_id not in listed_ids(api.get("/v1/images/sources"))


def test_a_source_whose_image_is_in_use_stays_live_and_says_why(api, live_image, container_of):
    container = container_of(live_image())
    source_id = live_image.source["id"]

    job = api.wait_for_job(api.delete(f"/v1/images/sources/{source_id}").get_json()["data"]
                           ["job"]["id"])

    assert job["state"]["current"] == "error"
    source = api.get(f"/v1/images/sources/{source_id}").get_json()["data"]
    assert source["state"]["current"] == "live"
    assert container.name in source["state"]["error"]["message"]

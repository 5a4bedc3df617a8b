"""POST /v1/jobs/{id}/tasks: retrying a job that ended in error or expired, and cancelling a
queued one; checked through the API, with a real worker where a worker could act."""

from __future__ import annotations

import time
import uuid
from datetime import timedelta

import pytest
from sqlalchemy import func, select, update

from app.db import transaction, utcnow
from app.hubs.services import create_key
from app.jobs import execution, queueing, services
from app.models import Image, Job
from tests.api_calls import (
    Api,
    Tenant,
    assert_error,
    create_image,
    create_source,
    get_image,
    import_image,
    registry_origin,
)
from workers import runner


@pytest.fixture(autouse=True)
def broker_unheard(monkeypatch):
    """The jobs these tests make are not published, as if the broker were away: a worker another
    test started must not claim them before the test has done with them. The sweeper publishes
    only a job left unpublished for a while, and due (`queued_import` moves it an hour away)."""
    monkeypatch.setattr(queueing, "publish", lambda action, job_id, queue: False)


# An image nobody pushed: the registry says so at once, and the import ends in error.
ABSENT = registry_origin("tests/absent:v1")
NONE_ORIGIN = {"type": "none"}


def queued_import(api: Api) -> tuple[str, str]:
    """(image id, job id) of an import queued and not yet claimed: its schedule is an hour away,
    so no worker can claim it before the test does what it means to."""
    image = create_image(api, create_source(api, ABSENT)["id"])
    job_id = import_image(api, image["id"])["job"]["id"]
    with transaction() as session:
        session.execute(update(Job).where(Job.id == job_id).values(
            schedule=utcnow() + timedelta(hours=1)))
    return image["id"], job_id


def end_in_error(job_id: str, message: str = "the registry refused it") -> None:
    """End the job as a worker's failure does."""
    with transaction() as session:
        execution.fail(session, session.get(Job, job_id, with_for_update=True), message)


def task(api: Api, job_id: str, action: str, **kwargs):
    return api.post(f"/v1/jobs/{job_id}/tasks", json={"action": action}, **kwargs)


def job_count(hub_id: str) -> int:
    with transaction() as session:
        return session.scalar(select(func.count()).select_from(Job).where(Job.hub_id == hub_id))


def get_job(api: Api, job_id: str) -> dict:
    response = api.get(f"/v1/jobs/{job_id}")
    assert response.status_code == 200, response.get_json()
    return response.get_json()["data"]


# --- retry ---------------------------------------------------------------------------------------


@pytest.mark.parametrize("ending", ["error", "expired"])
def test_retrying_an_ended_import_queues_the_same_work_again(api: Api, ending):
    image_id, job_id = queued_import(api)
    if ending == "error":
        end_in_error(job_id)
    else:
        with transaction() as session:
            session.execute(update(Job).where(Job.id == job_id).values(expires=utcnow()))
        assert execution.claim(job_id, "test") is None  # finds it due, and expires it
    first = get_job(api, job_id)
    assert first["state"]["current"] == ending

    response = task(api, job_id, "retry")

    assert response.status_code == 202, response.get_json()
    descriptor = response.get_json()["data"]
    assert descriptor["action"] == "import"
    again = get_job(api, descriptor["job"]["id"])
    assert again["id"] != job_id and again["retry_of"] == job_id
    assert again["state"]["current"] == "queued"
    assert (again["queue"], again["tasks"][0]["input"], again["caption"]) == (
        first["queue"], first["tasks"][0]["input"], first["caption"])
    assert "retry_of" not in first


@pytest.mark.parametrize("state", ["queued", "running", "completed"])
def test_a_job_that_did_not_end_in_error_cannot_be_retried(api: Api, state):
    _, job_id = queued_import(api)
    if state != "queued":
        with transaction() as session:
            session.execute(update(Job).where(Job.id == job_id).values(state=state))
    before = job_count(api.tenant.hub_id)

    error = assert_error(task(api, job_id, "retry"), 403, "403.invalid-state")

    assert f"`{state}`" in error["detail"] and "retried" in error["detail"]
    assert job_count(api.tenant.hub_id) == before


def test_retrying_an_import_of_an_image_deleted_meanwhile_is_refused(api: Api):
    image_id, job_id = queued_import(api)
    end_in_error(job_id)
    with transaction() as session:
        session.execute(update(Image).where(Image.id == image_id).values(state="deleted"))
    before = job_count(api.tenant.hub_id)

    error = assert_error(task(api, job_id, "retry"), 403, "403.invalid-state")

    assert "deleted" in error["detail"]
    assert job_count(api.tenant.hub_id) == before


def test_retrying_a_delete_queues_a_delete_of_the_same_image(api: Api):
    image = create_image(api, create_source(api, NONE_ORIGIN)["id"])
    job_id = api.delete(f"/v1/images/{image['id']}").get_json()["data"]["job"]["id"]
    end_in_error(job_id, "the node is gone")
    assert get_image(api, image["id"])["state"]["current"] == "new"  # back at rest

    response = task(api, job_id, "retry")

    assert response.status_code == 202, response.get_json()
    assert get_job(api, response.get_json()["data"]["job"]["id"])["retry_of"] == job_id
    assert get_image(api, image["id"])["state"]["current"] == "deleting"


def test_retrying_needs_the_capability_of_the_jobs_action(api: Api, client):
    _, job_id = queued_import(api)
    end_in_error(job_id)
    with transaction() as session:
        key, secret = create_key(session, api.tenant.hub_id, "viewer",
                                 ["apionly-jobs-view", "images-manage"])
    viewer = Api(client, Tenant(api.tenant.hub_id, key.id, secret))
    before = job_count(api.tenant.hub_id)

    error = assert_error(task(viewer, job_id, "retry"), 403, "403.permissions")

    assert error["extra"]["capability"] == "images-import"
    assert job_count(api.tenant.hub_id) == before


def test_another_hubs_job_is_not_found(api: Api, client, other_tenant):
    _, job_id = queued_import(api)
    end_in_error(job_id)
    theirs = Api(client, other_tenant)
    for action in ("retry", "cancel"):
        assert_error(task(theirs, job_id, action), 404, "404.job")
    assert get_job(api, job_id)["state"]["current"] == "error"


@pytest.mark.parametrize("job_id", ["a%00b", "not-an-id", "0" * 25])
def test_a_job_id_that_cannot_exist_is_not_found(api: Api, job_id):
    for action in ("retry", "cancel"):
        assert_error(task(api, job_id, action), 404, "404.job")


def test_an_unknown_action_is_refused(api: Api):
    _, job_id = queued_import(api)
    assert_error(task(api, job_id, "pause"), 422, "422.invalid-input", "/action")


def test_a_retry_sent_again_with_its_key_queues_one_job(api: Api):
    _, job_id = queued_import(api)
    end_in_error(job_id)
    key = {"Idempotency-Key": str(uuid.uuid4())}
    first = task(api, job_id, "retry", headers=key)
    end_in_error(first.get_json()["data"]["job"]["id"])  # no equal job stands in for it now
    again = task(api, job_id, "retry", headers=key)
    assert again.get_json() == first.get_json() and again.status_code == 202


# --- cancel --------------------------------------------------------------------------------------


def test_cancelling_a_queued_import_ends_it_in_error_naming_the_key(api: Api):
    image_id, job_id = queued_import(api)

    response = task(api, job_id, "cancel")

    assert response.status_code == 202, response.get_json()
    assert response.get_json()["data"]["job"]["id"] == job_id
    job = get_job(api, job_id)
    assert job["state"]["current"] == "error"
    assert api.tenant.key_id in job["state"]["error"]["message"]
    assert "Cancelled" in job["state"]["error"]["message"]
    assert job["tasks"][0]["state"]["current"] == "error"
    assert job["events"]["completed"] != "0001-01-01T00:00:00Z"
    assert get_image(api, image_id)["state"]["current"] == "new"
    assert execution.claim(job_id, "test") is None  # no worker can take it


def test_cancelling_a_queued_delete_puts_the_image_back_at_rest(api: Api):
    image = create_image(api, create_source(api, NONE_ORIGIN)["id"])
    job_id = api.delete(f"/v1/images/{image['id']}").get_json()["data"]["job"]["id"]
    assert get_image(api, image["id"])["state"]["current"] == "deleting"

    assert task(api, job_id, "cancel").status_code == 202

    rested = get_image(api, image["id"])
    assert rested["state"]["current"] == "new"
    assert api.tenant.key_id in rested["state"]["error"]["message"]


def running(job_id: str) -> execution.Claim:
    """Claim the queued job as a worker would (none of the suite's can: it is not published)."""
    with transaction() as session:
        session.execute(update(Job).where(Job.id == job_id).values(schedule=utcnow()))
    claim = execution.claim(job_id, "test-worker")
    assert claim is not None
    return claim


def running_import(api: Api) -> tuple[str, execution.Claim]:
    image_id, job_id = queued_import(api)
    claim = running(job_id)
    with execution.fenced(claim) as (session, _):
        session.get(Image, image_id, with_for_update=True).move_to("downloading")
    return image_id, claim


def test_cancelling_a_running_import_records_the_request_and_answers_at_once(api: Api):
    _, claim = running_import(api)

    response = task(api, claim.job_id, "cancel")

    assert response.status_code == 202, response.get_json()
    assert response.get_json()["data"]["job"]["id"] == claim.job_id
    assert get_job(api, claim.job_id)["state"]["current"] == "running"  # its worker ends it
    with transaction() as session:
        job = session.get(Job, claim.job_id)
        assert job.cancel_requested_by == api.tenant.key_id
        assert utcnow() - job.cancel_requested_at < timedelta(minutes=1)
    assert execution.cancel_requested(claim) == (
        f"Cancelled by API key {api.tenant.key_id} while it was running.")


def test_cancelling_twice_is_answered_as_once(api: Api):
    _, claim = running_import(api)
    first = task(api, claim.job_id, "cancel")
    with transaction() as session:
        asked = session.get(Job, claim.job_id).cancel_requested_at

    again = task(api, claim.job_id, "cancel")

    assert (again.status_code, again.get_json()) == (first.status_code, first.get_json())
    with transaction() as session:
        assert session.get(Job, claim.job_id).cancel_requested_at == asked  # the first request's
    with pytest.raises(execution.Cancelled), execution.fenced(claim):
        pass
    runner._fail(claim, "the connection was cut")
    assert task(api, claim.job_id, "cancel").status_code == 202  # ended by it: still the answer


def test_a_cancel_accepted_before_the_final_write_ends_the_job_in_error(api: Api):
    """The worker's completing write comes after the cancel: it is refused, and the runner ends
    the job in error instead, its image put back as a failed import leaves it."""
    image_id, claim = running_import(api)
    assert task(api, claim.job_id, "cancel").status_code == 202

    with pytest.raises(execution.Cancelled) as refused, execution.fenced(claim) as (session, job):
        execution.complete(session, job, {"image_id": image_id})
    runner._fail(claim, refused.value.message)

    job = get_job(api, claim.job_id)
    message = f"Cancelled by API key {api.tenant.key_id} while it was running."
    assert job["state"]["current"] == "error"
    assert job["state"]["error"]["message"] == message == job["tasks"][0]["error"]["message"]
    image = get_image(api, image_id)
    assert image["state"]["current"] == "new"
    assert image["state"]["error"]["message"] == message


def test_a_failure_met_after_a_cancel_ends_the_job_with_the_cancel_not_a_retry(api: Api):
    _, claim = running_import(api)
    assert task(api, claim.job_id, "cancel").status_code == 202

    runner._fail(claim, "The Docker engine is not reachable (ConnectionError).", transient=True)

    job = get_job(api, claim.job_id)
    assert job["state"]["current"] == "error"
    assert job["state"]["error"]["message"] == (
        f"Cancelled by API key {api.tenant.key_id} while it was running.")


def test_the_sweeper_ends_a_cancelled_job_whose_worker_died_instead_of_queueing_it(api: Api):
    image_id, claim = running_import(api)
    assert task(api, claim.job_id, "cancel").status_code == 202
    with transaction() as session:
        session.execute(update(Job).where(Job.id == claim.job_id).values(
            lease_expires=utcnow() - timedelta(seconds=1)))

    deadline = time.monotonic() + 10
    while get_job(api, claim.job_id)["state"]["current"] == "running":
        assert time.monotonic() < deadline, "the sweeper did not act"
        execution.sweep()  # a worker's sweeper may hold the lock for a moment
        time.sleep(0.1)

    job = get_job(api, claim.job_id)
    assert job["state"]["current"] == "error"
    assert job["state"]["error"]["message"] == (
        f"Cancelled by API key {api.tenant.key_id} while it was running.")
    with transaction() as session:
        assert session.get(Job, claim.job_id).attempt == 1  # not tried again
    assert get_image(api, image_id)["state"]["current"] == "new"


def test_cancelling_an_import_queued_again_for_a_retry_is_the_queued_cancel(api: Api):
    image_id, claim = running_import(api)
    with execution.fenced(claim) as (session, job):
        execution.retry_later(session, job, "the registry was away", 3600)

    assert task(api, claim.job_id, "cancel").status_code == 202

    job = get_job(api, claim.job_id)
    assert job["state"]["current"] == "error"
    assert job["state"]["error"]["message"] == (
        f"Cancelled by API key {api.tenant.key_id} before it was tried again.")
    assert execution.claim(claim.job_id, "test") is None
    assert get_image(api, image_id)["state"]["current"] == "new"


def test_a_running_delete_cannot_be_cancelled(api: Api):
    image = create_image(api, create_source(api, NONE_ORIGIN)["id"])
    job_id = api.delete(f"/v1/images/{image['id']}").get_json()["data"]["job"]["id"]
    running(job_id)

    error = assert_error(task(api, job_id, "cancel"), 403, "403.invalid-state")

    assert error["detail"] == ("A running `image.delete` job cannot be cancelled: it is short, "
                               "and a delete stopped half-way could leave the image neither kept "
                               "whole nor removed. Wait for it to end.")
    assert get_job(api, job_id)["state"]["current"] == "running"
    with transaction() as session:
        assert session.get(Job, job_id).cancel_requested_at is None


@pytest.mark.parametrize("what", ["prune", "source delete"])
def test_a_running_prune_or_source_delete_cannot_be_cancelled(api: Api, what):
    source = create_source(api, NONE_ORIGIN)
    if what == "prune":
        response = api.post("/v1/images/tasks", json={
            "action": "prune", "contents": {"source_ids": [source["id"]]}})
    else:
        response = api.delete(f"/v1/images/sources/{source['id']}")
    assert response.status_code == 202, response.get_json()
    job_id = response.get_json()["data"]["job"]["id"]
    running(job_id)

    error = assert_error(task(api, job_id, "cancel"), 403, "403.invalid-state")

    assert "cannot be cancelled" in error["detail"] and "half-way" in error["detail"]
    assert get_job(api, job_id)["state"]["current"] == "running"


def test_cancelling_a_running_import_needs_the_import_capability(api: Api, client):
    _, claim = running_import(api)
    with transaction() as session:
        key, secret = create_key(session, api.tenant.hub_id, "viewer",
                                 ["apionly-jobs-view", "images-manage"])
    viewer = Api(client, Tenant(api.tenant.hub_id, key.id, secret))

    error = assert_error(task(viewer, claim.job_id, "cancel"), 403, "403.permissions")

    assert error["extra"]["capability"] == "images-import"
    with transaction() as session:
        assert session.get(Job, claim.job_id).cancel_requested_at is None


def test_another_hubs_running_job_is_not_found(api: Api, client, other_tenant):
    _, claim = running_import(api)
    assert_error(task(Api(client, other_tenant), claim.job_id, "cancel"), 404, "404.job")
    with transaction() as session:
        assert session.get(Job, claim.job_id).cancel_requested_at is None


@pytest.mark.parametrize("ending", ["error", "completed"])
def test_a_finished_job_cannot_be_cancelled(api: Api, ending):
    _, job_id = queued_import(api)
    end_in_error(job_id)
    if ending == "completed":
        with transaction() as session:
            session.execute(update(Job).where(Job.id == job_id).values(state="completed"))
    error = assert_error(task(api, job_id, "cancel"), 403, "403.invalid-state")
    assert "already ended" in error["detail"]


def test_a_worker_never_runs_a_cancelled_job(api: Api, worker, monkeypatch):
    image_id, job_id = queued_import(api)
    assert task(api, job_id, "cancel").status_code == 202
    monkeypatch.undo()  # the broker is back
    # Its message reaches the worker (published again, due now), and then another job's after it.
    with transaction() as session:
        session.execute(update(Job).where(Job.id == job_id).values(
            schedule=utcnow(), published_at=None))
        services.publish(session, session.get(Job, job_id))
    other = create_image(api, create_source(api, ABSENT)["id"])
    control = api.wait_for_job(import_image(api, other["id"])["job"]["id"])
    assert control["state"]["current"] == "error"  # the worker did take the next job
    time.sleep(1)

    job = get_job(api, job_id)
    assert job["state"]["current"] == "error" and "Cancelled" in job["state"]["error"]["message"]
    assert job["events"]["started"] == "0001-01-01T00:00:00Z"
    with transaction() as session:
        assert session.get(Job, job_id).attempt == 0
    assert get_image(api, image_id)["state"]["current"] == "new"


def test_the_task_endpoint_is_documented_as_an_extension(client):
    paths = client.get("/v1/openapi.json").get_json()["paths"]
    operation = paths["/v1/jobs/{job_id}/tasks"]["post"]
    assert operation["x-imagejobs-extension"] is True
    assert "403" in operation["responses"] and "404" in operation["responses"]
    job = client.get("/v1/openapi.json").get_json()["components"]["schemas"]["Job"]
    assert job["properties"]["retry_of"]["x-imagejobs-extension"] is True
    assert "retry_of" not in job.get("required", [])
